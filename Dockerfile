# pkce-proxy in a container. Not built or run by the project's tests or CI
# (no container registry there); the tests check that the settings and the
# health check below are ones the binary accepts.
#
#   docker build -t pkce-proxy .
#   docker run --rm -p 8443:8443 -e PKCE_PROXY_UPSTREAM=http://login.internal:8080 pkce-proxy

# The builder and the runtime share one Debian release, so that the binary
# finds the glibc it was linked against.
FROM rust:1.95-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pkce-proxy \
    && install -D -m 0755 target/release/pkce-proxy /out/pkce-proxy

# glibc, libgcc and CA certificates (for an https:// upstream or rediss://),
# no shell; "nonroot" is uid and gid 65532.
FROM gcr.io/distroless/cc-debian13:nonroot
COPY --from=build /out/pkce-proxy /usr/local/bin/pkce-proxy
# Every other setting is a PKCE_PROXY_ variable, a flag or a TOML file
# (--config); PKCE_PROXY_UPSTREAM is required.
ENV PKCE_PROXY_LISTEN=0.0.0.0:8443 \
    PKCE_PROXY_ADMIN_LISTEN=0.0.0.0:9901 \
    PKCE_PROXY_LOG_FORMAT=json
USER 65532:65532
# 8443: clients; 9901: /healthz, /readyz and /metrics (keep it private).
EXPOSE 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/pkce-proxy", "probe", "--timeout", "2", "http://127.0.0.1:9901/readyz"]
ENTRYPOINT ["/usr/local/bin/pkce-proxy"]
