# tether: one image for every role (proxy, discovery, demo, sample app).
#
#   docker build -t tether .
#   docker run --rm -v "$PWD/conf:/etc/tether:ro" -p 8081:8081 -p 9081:9081 \
#       tether proxy --config /etc/tether/proxy.eu.toml
#
# With no arguments the container runs `tether proxy --config
# /etc/tether/proxy.toml` (CMD below). Configs are mounted at /etc/tether
# (relative paths in them, such as secrets/keyring.toml, resolve against
# that folder). See docs/deploy.md.
#
# Signals: ENTRYPOINT and CMD are in exec form, so tether is PID 1 and
# `docker stop` delivers SIGTERM to it: Pingora's graceful shutdown (stop
# accepting, finish requests in flight). Give `docker stop -t` more seconds
# than the proxy's grace period; Docker sends SIGKILL after that.

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS build
# Unpinned on purpose: Debian's security updates replace exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tether \
 && install -m 0755 target/release/tether /usr/local/bin/tether

# ---- runtime -------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# A numeric user (10001) so that orchestrators can check runAsNonRoot.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tether \
 && useradd --system --uid 10001 --gid tether --home-dir /nonexistent --shell /usr/sbin/nologin tether \
 && mkdir -p /etc/tether
COPY --from=build /usr/local/bin/tether /usr/local/bin/tether
COPY deploy/docker/healthcheck.sh /usr/local/bin/tether-healthcheck
USER 10001:10001
# proxy listener, proxy admin (metrics, health), discovery
EXPOSE 8081 9081 7070
# GET /healthz on the admin listener (127.0.0.1:9081; bash /dev/tcp, the
# image has no curl). For a discovery container set TETHER_HEALTH_PORT=7070.
ENV TETHER_HEALTH_PORT=9081
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/tether-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["proxy", "--config", "/etc/tether/proxy.toml"]
