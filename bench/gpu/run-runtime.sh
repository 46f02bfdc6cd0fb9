#!/usr/bin/env bash
# The worker-runtime benchmarks of docs/BENCHMARKS.md on a 2-GPU machine (nvidia-h100-x2):
# capture step, distillation streamed vs resident, checkpoint stall, the fine-tuning step
# on 1 and 2 GPUs, and the gradient all-reduce against torch.distributed; then the
# H100-hours projection of the reference recipe. Expects .gpu/runtime-bench and
# .gpu/allreduce-bench (release builds of bench/src/bin/: cargo build --release -p
# surgery-bench && cp target/release/{runtime,allreduce}-bench .gpu/) and writes raw JSON
# lines under $OUT.
set -uo pipefail
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"
P=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$P/torch/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
step() {
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$out/$name.jsonl" 2> "$out/$name.err"
    local rc=$?
    echo "{\"run\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$out/$name.jsonl"
    echo "$name: rc=$rc $((SECONDS - start))s"
    [ $rc -eq 0 ] || tail -n 5 "$out/$name.err"
}
step capture .gpu/runtime-bench capture-step
step distill .gpu/runtime-bench distill
step stall .gpu/runtime-bench stall
step finetune_1 .gpu/runtime-bench finetune --world 1
step finetune_2 .gpu/runtime-bench finetune --world 2
step allreduce_tch .gpu/allreduce-bench --world 2 --iters 10 --warmup 3
step allreduce_torch python3 bench/python/allreduce_torch.py --world 2 --iters 10
python3 bench/gpu/summarize_runtime.py "$out"
