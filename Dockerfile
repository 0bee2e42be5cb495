# tether: one image for every role (proxy, discovery, demo, sample app).
#
#   docker build -t tether .
#   docker run --rm -v "$PWD/conf:/etc/tether:ro" -p 8081:8081 -p 9081:9081 \
#       tether proxy --config /etc/tether/proxy.eu.toml
#
# Configs are mounted at /etc/tether (relative paths in them, such as
# secrets/keyring.toml, resolve against that folder). See docs/deploy.md.

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tether \
 && install -m 0755 target/release/tether /usr/local/bin/tether

# ---- runtime -------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system tether \
 && useradd --system --gid tether --home-dir /nonexistent --shell /usr/sbin/nologin tether \
 && mkdir -p /etc/tether
COPY --from=build /usr/local/bin/tether /usr/local/bin/tether
USER tether:tether
# proxy listener, proxy admin (metrics, health), discovery
EXPOSE 8081 9081 7070
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["proxy", "--config", "/etc/tether/proxy.toml"]
