#!/usr/bin/env bash
# The model benchmarks of docs/BENCHMARKS.md, on the GPU machine: each phase of our
# model-bench and of the PyTorch baselines runs in its own process, with nvidia-smi
# sampling the GPU's used memory every 50 ms (the same probe for both sides), and the
# summary prints side-by-side tables. Expects, relative to the repo root:
#   .gpu/model-bench             release build of bench/src/bin/model-bench.rs:
#                                cargo build --release -p surgery-bench --bin model-bench &&
#                                cp target/release/model-bench .gpu/
#   .gpu/wheels/diffusers-*.whl  diffusers 0.42.1 (pure Python)
# and $OUT for the raw results.  Usage: bench/gpu/run.sh [phase-filter-regex]
set -uo pipefail
filter=${1:-.}
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"
P=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$P/torch/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

probe() {
    local name=$1; shift
    [[ "$name" =~ $filter ]] || return 0
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
    [ $rc -eq 0 ] || tail -n 5 "$out/$name.err"
}

# Attention at 480p x 81 frames (32,760 tokens) and x 21 frames (9,360): our fused kernels,
# our eager path, and PyTorch eager.
for tokens in 32760 9360; do
    probe "tch_attention_$tokens" .gpu/model-bench attention --tokens "$tokens"
    probe "tch_attention_${tokens}_eager" env SURGERY_FUSED_KERNELS=0 .gpu/model-bench attention --tokens "$tokens"
    probe "torch_attention_$tokens" python3 bench/python/hybrid_attention.py --tokens "$tokens"
done
probe tch_attention_parts .gpu/model-bench attention-parts --tokens 32760
# Whole-model forward: teacher and all-R8 / all-R16 students, fused and eager, beside diffusers.
for frames in 81 21; do
    res=480p; [ "$frames" = 21 ] && res=480p-21f
    probe "tch_model_$frames" .gpu/model-bench model-forward --frames "$frames"
    probe "tch_model_${frames}_eager" env SURGERY_FUSED_KERNELS=0 .gpu/model-bench model-forward --frames "$frames"
    probe "diffusers_forward_$res" python3 bench/python/diffusers_wan.py forward --res "$res"
done
for res in 480p 320x480; do
    probe "tch_forward_$res" .gpu/model-bench teacher-forward --res "$res"
    probe "tch_train_$res" .gpu/model-bench teacher-train --res "$res"
    probe "diffusers_train_$res" python3 bench/python/diffusers_wan.py train --res "$res"
done
probe tch_finetune_step .gpu/model-bench finetune-step
python3 bench/gpu/summarize.py "$out"
