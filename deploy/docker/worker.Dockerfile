# syntax=docker/dockerfile:1
#
# The GPU worker image: surgery-worker on CUDA 13 with LibTorch 2.11.0 from PyTorch's own
# cu130 wheel (which brings libtorch_cuda, cuDNN and the libnccl.so.2 the worker loads).
# Build context: the repository root (the repo's .dockerignore keeps target/ and
# .libtorch/ out).
#   docker build -f deploy/docker/worker.Dockerfile -t surgery-worker:dev .

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip unzip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# LibTorch (CPU part) for linking, exactly as setup does on a developer machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    ./scripts/setup-libtorch.sh \
 && cargo build --release --locked -p surgery-worker --bin surgery-worker \
 && install -D -m 0755 target/release/surgery-worker /out/surgery-worker

# glibc 2.39 here; the binary needs at most 2.34.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m pip install --break-system-packages --no-cache-dir torch==2.11.0 \
 && useradd --system --uid 10001 --create-home surgery
COPY --from=build /out/surgery-worker /usr/local/bin/
# The worker dlopens libtorch_cuda.so at start (GPU.md) and finds LibTorch's libnccl.so.2
# next to it; both come from the wheel.
ENV LD_LIBRARY_PATH=/usr/local/lib/python3.12/dist-packages/torch/lib \
    SURGERY_METRICS_ADDR=0.0.0.0:9102 \
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
USER 10001:10001
EXPOSE 9102
ENTRYPOINT ["surgery-worker", "run", "--device", "cuda", "--cache-dir", "/var/cache/surgery"]
