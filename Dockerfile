# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian as a
# non-root user. The config is mounted at /etc/handover/handover.toml and
# the journal lives in the /var/lib/handover volume.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The manifest names the bench targets; cargo refuses a manifest whose
# targets are missing, even when building only the binary.
COPY benches ./benches
RUN cargo build --release --locked --bin handover

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/handover handover \
 && mkdir -p /var/lib/handover /etc/handover \
 && chown handover /var/lib/handover
COPY --from=build /src/target/release/handover /usr/local/bin/handover
USER handover
# 8443: downstream traffic; 9901: admin API (/livez, /readyz, /metrics).
EXPOSE 8443 9901
VOLUME ["/var/lib/handover"]
ENTRYPOINT ["handover"]
CMD ["serve", "--config", "/etc/handover/handover.toml"]
