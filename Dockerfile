# gatehouse: a static-ish gateway binary on a small Debian runtime image.
# Build: docker build -t gatehouse .
# Run:   docker run -p 8080:8080 -v $PWD/config:/etc/gatehouse gatehouse
#        (the admin listener binds 127.0.0.1 by default; set admin.address: 0.0.0.0:9901 in
#        the file and publish the port only on a trusted network, or enable admin.auth)
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY filters/Cargo.toml filters/Cargo.toml
COPY registry/Cargo.toml registry/Cargo.toml
COPY services/Cargo.toml services/Cargo.toml
RUN mkdir -p src filters/src registry/src services/src benches examples tests/it \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs filters/src/lib.rs registry/src/lib.rs \
 && echo 'fn main() {}' > services/src/main.rs && touch services/src/lib.rs \
 && echo 'fn main() {}' > benches/hot_paths.rs && echo 'fn main() {}' > examples/bare_proxy.rs \
 && echo 'fn main() {}' > tests/it/main.rs \
 && cargo build --release -p gatehouse --locked || true
COPY . .
RUN touch src/main.rs src/lib.rs filters/src/lib.rs registry/src/lib.rs \
 && cargo build --release -p gatehouse --locked \
 && cp target/release/gatehouse /usr/local/bin/gatehouse \
 && gatehouse validate -c config/examples/minimal.yaml

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home gatehouse
COPY --from=build /usr/local/bin/gatehouse /usr/local/bin/gatehouse
COPY config/examples/container.yaml /etc/gatehouse/gatehouse.yaml
COPY config/gatehouse.schema.json /etc/gatehouse/gatehouse.schema.json
USER gatehouse
EXPOSE 8080 9901
# SIGTERM drains in-flight requests for shutdown.grace_period, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "-c", "/etc/gatehouse/gatehouse.yaml"]
