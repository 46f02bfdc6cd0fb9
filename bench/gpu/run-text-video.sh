#!/usr/bin/env bash
# The text-and-video benchmarks and GPU checks of docs/BENCHMARKS.md, on the GPU machine:
# umT5-xxl encoding and the Wan2.1 VAE's 480p x 81-frame decode (ours, beside
# transformers and diffusers in the same run, each phase in its own process under the
# nvidia-smi memory probe), then the CUDA parity tests of the text encoder and the VAE.
# Expects, relative to the repo root:
#   .gpu/model-bench    cargo build --release -p surgery-bench --bin model-bench
#   .gpu/umt5, .gpu/vae the test binaries: cargo test --release -p surgery-worker --test umt5 --test vae --no-run
#   .gpu/wheels/*.whl   diffusers 0.42.1, transformers 5.24.0, tokenizers and their pure-Python deps
# and $OUT for the raw results.
set -uo pipefail
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"
P=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$P/torch/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
date -u +%Y-%m-%d | tee "$out/date.txt"

probe() {
    local name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "/tmp/mem.$name" &
    local sampler=$!
    local start=$SECONDS
    "$@" > "$out/$name.jsonl" 2> "$out/$name.err"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    local peak
    peak=$(sort -n "/tmp/mem.$name" | tail -n 1)
    echo "{\"run\": \"$name\", \"rc\": $rc, \"peak_gpu_mib\": ${peak:-0}, \"seconds\": $((SECONDS - start))}" >> "$out/$name.jsonl"
    echo "$name: rc=$rc peak=${peak}MiB $((SECONDS - start))s"
    cat "$out/$name.jsonl"
    [ $rc -eq 0 ] || tail -n 5 "$out/$name.err"
}

probe tch_umt5 .gpu/model-bench umt5-encode --batch 8
probe torch_umt5 python3 bench/python/text_video.py umt5 --batch 8
probe tch_vae_tiled .gpu/model-bench vae-decode --tiled
probe diffusers_vae_tiled python3 bench/python/text_video.py vae --tiled
probe tch_vae .gpu/model-bench vae-decode
probe diffusers_vae python3 bench/python/text_video.py vae
# CUDA parity against the CPU goldens (their tests skip on a machine without CUDA); each
# alone, as LibTorch settles CUDA's availability at its first call.
cd worker
export CARGO_MANIFEST_DIR=$PWD
../.gpu/umt5 cuda_matches_goldens --nocapture 2>&1 | tail -n 8 | tee "$out/umt5-cuda.txt"
../.gpu/vae cuda_matches_goldens --nocapture 2>&1 | tail -n 8 | tee "$out/vae-cuda.txt"
../.gpu/vae full_size_decode --ignored --nocapture 2>&1 | tail -n 12 | tee "$out/vae-full-size.txt"
