# syntax=docker/dockerfile:1
# mlguard container image.
#   docker build --build-arg MLGUARD_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t REGISTRY/mlguard:TAG .
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

# Builder and runtime share Debian 12 (bookworm), so the binary links against the same glibc.
# Cargo.toml's rust-version is the minimum toolchain; rust:1 follows the latest stable.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# build.rs records this for `mlguard --version` and mlguard_build_info; .git is not in the
# build context, so pass it: --build-arg MLGUARD_GIT_COMMIT=$(git rev-parse --short=12 HEAD)
ARG MLGUARD_GIT_COMMIT
COPY . .
# --locked: build exactly the dependency versions in Cargo.lock, fail if it is stale.
# Registry and target caches persist between builds; the binary is copied out of the cache
# mount so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    MLGUARD_GIT_COMMIT="${MLGUARD_GIT_COMMIT:-unknown}" cargo build --release --locked --bin mlguard \
    && cp target/release/mlguard /mlguard

# distroless/cc: glibc, libgcc and CA certificates, no shell or package manager.
# The :nonroot tag runs as uid/gid 65532, the user the Deployment's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mlguard" \
      org.opencontainers.image.description="Kubernetes admission webhook that enforces ML/GPU resource policy, with policies in Rego" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /mlguard /mlguard
USER 65532:65532
# 8443: TLS webhook (POST /mutate, /validate); 8080: /healthz, /readyz, /metrics.
EXPOSE 8443 8080
ENTRYPOINT ["/mlguard"]
CMD ["serve"]
