# syntax=docker/dockerfile:1
#
# The coordinator image: surgery-coordinator (entrypoint) and surgeryctl. No GPU stack.
#
# Build context: the repository root.
#   docker build -f deploy/docker/coordinator.Dockerfile -t surgery-coordinator:dev .
# Cargo reads every workspace member's manifest, so the whole source tree is copied.
# The repo's .dockerignore keeps target/, .libtorch/, .gpu/, .demo/ and .git/ out.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Only these two packages: the worker links LibTorch, they do not, so no LibTorch (and
# no protoc: protox compiles the .proto files) is needed. target/ is a cache mount, so
# the binaries are copied out within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p surgery-coordinator -p surgeryctl \
 && install -D -m 0755 -t /out target/release/surgery-coordinator target/release/surgeryctl

FROM debian:bookworm-slim
# The binaries need glibc and libgcc_s only (both in the base); CA roots for https
# object stores.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 surgery \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/surgery --no-create-home \
      --shell /usr/sbin/nologin surgery \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/surgery
COPY --from=build /out/ /usr/local/bin/
# Defaults for `docker run`, as a config file rather than SURGERY_* variables: variables
# would outrank any file a deployment mounts (defaults < file < SURGERY_* < flags).
# Kubernetes points SURGERY_CONFIG at its ConfigMap instead.
COPY <<EOF /etc/surgery/coordinator.yaml
listen: 0.0.0.0:7070
data_dir: /var/lib/surgery
object_store_url: file:///var/lib/surgery/objects
log_format: json
EOF
ENV SURGERY_CONFIG=/etc/surgery/coordinator.yaml
USER 10001:10001
WORKDIR /var/lib/surgery
# The store (coordinator.redb) lives here; mount a volume or it dies with the container.
VOLUME ["/var/lib/surgery"]
# gRPC and HTTP (/, /metrics, /healthz) share this one port.
EXPOSE 7070
ENTRYPOINT ["surgery-coordinator"]
