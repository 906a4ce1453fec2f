# The wsgate image: a static binary on an empty base, run as uid 65532.
#
# It pulls nothing: scripts/image.sh builds the binary with the local Go
# toolchain, lays out the root file system in a temporary directory and
# runs `docker build` there:
#
#   scripts/image.sh                 # → wsgate:<version> and wsgate:latest
#
# Where a registry is reachable, Dockerfile.multistage does the same in
# a golang build stage: docker build -f Dockerfile.multistage -t wsgate .
#
# The root file system (rootfs/ in the build context):
#   /usr/local/bin/wsgate                 the binary (CGO_ENABLED=0, -trimpath)
#   /etc/wsgate/wsgate.yaml               the config it runs: the demo, for a container
#   /etc/wsgate/config.example.yaml       every key with its default, for reference
#   /etc/ssl/certs/ca-certificates.crt    CA bundle, for https upstreams and JWKS URLs
#   /etc/passwd, /etc/group               root and nonroot (65532)
#
# Keep the lines below FROM in step with Dockerfile.multistage (a test
# compares them).
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
COPY rootfs/ /
LABEL org.opencontainers.image.title="wsgate" \
      org.opencontainers.image.description="WebSocket-aware reverse proxy and gateway, configured in YAML" \
      org.opencontainers.image.source="https://github.com/wsgate/wsgate" \
      org.opencontainers.image.documentation="https://github.com/wsgate/wsgate#readme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532
# 8080: the demo's listener; 9901: the admin listener (loopback in the
# demo config: set admin.addr and admin.token to publish it).
EXPOSE 8080 9901
# wsgate healthcheck GETs $WSGATE_HEALTHCHECK_URL, by default the admin
# listener's http://127.0.0.1:9901/healthz; exit 0 on 2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/wsgate", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["-config", "/etc/wsgate/wsgate.yaml"]
