# gatehouse: the gateway binary on a small Debian runtime image.
# Build: docker build -t gatehouse .
# Run with the image's default config (config/examples/container.yaml: proxy on 0.0.0.0:8080,
# probes and /metrics on 0.0.0.0:9902, admin API on loopback inside the container):
#   docker run -p 8080:8080 -p 9902:9902 gatehouse
# Run with your own config: put it in a directory as gatehouse.yaml (start from
# config/examples/container.yaml: listeners on 0.0.0.0, a probe_address) and mount the
# directory; edits are applied without a restart:
#   mkdir -p gw && cp config/examples/container.yaml gw/gatehouse.yaml
#   docker run -p 8080:8080 -p 9902:9902 -v "$PWD/gw:/etc/gatehouse:ro" gatehouse
# Check a file before mounting it: docker run --rm -v "$PWD/gw:/etc/gatehouse:ro" gatehouse validate -c /etc/gatehouse/gatehouse.yaml
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY filters/Cargo.toml filters/Cargo.toml
COPY wasm/Cargo.toml wasm/Cargo.toml
COPY registry/Cargo.toml registry/Cargo.toml
COPY services/Cargo.toml services/Cargo.toml
RUN mkdir -p src filters/src wasm/src registry/src services/src benches examples tests/it \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs filters/src/lib.rs wasm/src/lib.rs registry/src/lib.rs \
 && echo 'fn main() {}' > services/src/main.rs && touch services/src/lib.rs \
 && echo 'fn main() {}' > benches/hot_paths.rs && echo 'fn main() {}' > examples/bare_proxy.rs \
 && echo 'fn main() {}' > tests/it/main.rs \
 && (cargo build --release -p gatehouse --locked || true)
COPY . .
RUN touch src/main.rs src/lib.rs filters/src/lib.rs wasm/src/lib.rs registry/src/lib.rs \
 && cargo build --release -p gatehouse --locked \
 && cp target/release/gatehouse /usr/local/bin/gatehouse \
 && gatehouse validate -c config/examples/container.yaml

FROM debian:bookworm-slim
# ca-certificates: upstream TLS verification; libssl3: the TLS backend (pingora's openssl
# feature, linked against the system's OpenSSL). Beyond that the binary links only glibc,
# libm and libgcc_s (tests/it/deploy.rs checks its ldd output against this list).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgcc-s1 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home gatehouse
COPY --from=build /usr/local/bin/gatehouse /usr/local/bin/gatehouse
COPY config/examples/container.yaml /etc/gatehouse/gatehouse.yaml
COPY config/gatehouse.schema.json /usr/share/gatehouse/gatehouse.schema.json
USER 10001:10001
# 8080: the proxy listener; 9902: the probe listener (/metrics, /healthz, /readyz).
# The admin API (127.0.0.1:9901) stays inside the container.
EXPOSE 8080 9902
# The slim image has no curl: the gateway probes its own readiness.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/gatehouse", "health", "--url", "http://127.0.0.1:9902/readyz"]
# SIGTERM drains in-flight requests for shutdown.grace_period, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "-c", "/etc/gatehouse/gatehouse.yaml"]
