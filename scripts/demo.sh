#!/usr/bin/env bash
# The main job on the embedded defaults: a local coordinator (redb store, object store
# under .demo/objects), two CPU workers, the tiny random-weight teacher and prompt
# embeddings made on the spot, configs/tiny.yaml submitted through surgeryctl, live
# progress, and the report. Everything stays under .demo/ (make clean-demo removes it).
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"

cargo build --quiet -p surgery-coordinator -p surgeryctl -p surgery-worker
bin="$root_dir/target/debug"
demo="$root_dir/.demo"
rm -rf "$demo"
mkdir -p "$demo"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$bin/surgery-worker" init-demo --dir "$demo"

"$bin/surgery-coordinator" --listen 127.0.0.1:0 --data-dir "$demo/coordinator" \
    --object-store-url "file://$demo/objects" --log-format json >"$demo/coordinator.log" 2>&1 &
pids+=($!)
addr=""
for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*"listen":"\([^"]*\)".*coordinator serving.*/\1/p; s/.*coordinator serving.*"listen":"\([^"]*\)".*/\1/p' "$demo/coordinator.log" | head -n1)"
    [ -n "$addr" ] && break
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "demo: the coordinator did not start:" >&2
        cat "$demo/coordinator.log" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$addr" ] || { echo "demo: the coordinator did not report its address" >&2; exit 1; }
export SURGERY_ADDR="http://$addr"
echo "== coordinator on $SURGERY_ADDR (status page: $SURGERY_ADDR/)"

for i in 1 2; do
    "$bin/surgery-worker" run --name "demo-worker-$i" --device cpu --cache-dir "$demo/cache-$i" \
        >"$demo/worker-$i.log" 2>&1 &
    pids+=($!)
done
echo "== two CPU workers started (logs: .demo/worker-*.log)"

"$bin/surgeryctl" validate configs/tiny.yaml
job="$("$bin/surgeryctl" submit configs/tiny.yaml --request-id "demo-$(date +%s)")"
echo "== submitted $job; following it until it ends"
status=0
"$bin/surgeryctl" watch "$job" || status=$?

echo
"$bin/surgeryctl" status "$job"
echo
"$bin/surgeryctl" metrics "$job" --task finetune | tail -n 5
report="$demo/objects/jobs/$job/export/report.json"
if [ -f "$report" ]; then
    echo
    echo "== report ($report)"
    python3 - "$report" "$demo/objects/jobs/$job/evaluate/report.json" <<'PY' || cat "$report"
import json, sys
r = json.load(open(sys.argv[1]))
print("blocks:", ", ".join(f"{b['block']}={b['rate_name']}" for b in r["blocks"]))
print(f"attention FLOPs saved: {r['attention_flops']['saved_fraction']:.1%}, whole model: {r['model_forward_flops']['saved_fraction']:.1%}")
for d in r["distill"]:
    m = d["metrics"]
    print(f"block {d['block']}: held-out error {m['untrained_heldout_error']:.4f} untrained -> {m['heldout_error']:.4f} distilled")
print(f"fine-tune final loss {r['finetune'].get('final_loss', float('nan')):.4f}")
e = json.load(open(sys.argv[2]))["mean"]
print(f"teacher agreement on held-out prompts: latent PSNR {e['latent_psnr_db']:.1f} dB, " +
      ", ".join(f"v-err@{s} {e[f'velocity_rel_error_sigma_{s}']:.3f}" for s in [0.1, 0.5, 0.9]))
PY
fi
exit $status
