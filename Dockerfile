# syntax=docker/dockerfile:1
#
# Runtime image for argocd-gateway. The binary is NOT compiled here: the image must carry the
# exact binary the test suite ran against, so build it first and hand it in through the context:
#
#   cargo build --release --locked
#   docker build -t argocd-gateway:$(cargo pkgid | cut -d'#' -f2) .
#
# ARG BINARY selects another prebuilt path, e.g. a cross-compiled one:
#   docker build --build-arg BINARY=target/x86_64-unknown-linux-gnu/release/argocd-gateway .

# Stage 1 only fixes the file mode: COPY --chmod needs BuildKit, and the distroless stage has no
# shell to chmod with.
FROM debian:bookworm-slim AS binary
ARG BINARY=target/release/argocd-gateway
COPY ${BINARY} /argocd-gateway
RUN chmod 0555 /argocd-gateway

# The binary links glibc dynamically (and nothing else: TLS is rustls), so the distroless "cc"
# base fits (Debian 12, glibc 2.36: build on Debian 12 or older so the symbols match):
# glibc, libgcc, CA roots, no shell, no package manager. The :nonroot tag runs as
# 65532:65532, the user the Helm chart's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binary /argocd-gateway /argocd-gateway
USER 65532:65532
# glibc gives each thread that allocates its own malloc arena and keeps freed memory in them;
# after a large Argo CD list is decoded that retention alone cost ~13 MiB at 10,000 apps
# (cargo bench --bench relay: 106 → 93 MiB). Two arenas are plenty for a mostly idle daemon.
ENV MALLOC_ARENA_MAX=2
ENTRYPOINT ["/argocd-gateway"]
CMD ["--help"]
