#!/usr/bin/env bash
# The main job on the embedded defaults: a local coordinator (redb store and object
# store under .demo/), the tiny CPU job of configs/tiny.yaml submitted through surgeryctl,
# and its status. Everything it writes stays under .demo/ (make clean-demo removes it).
#
# Today this shows the control plane end to end (submit, plan, queue, status); the worker
# runtime that executes the stages is the next issue, so the job waits for workers and
# `surgeryctl status` says so.
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"

cargo build --quiet -p surgery-coordinator -p surgeryctl
bin="$root_dir/target/debug"
demo="$root_dir/.demo"
mkdir -p "$demo"

"$bin/surgery-coordinator" --listen 127.0.0.1:0 --data-dir "$demo/coordinator" \
    --object-store-url "file://$demo/objects" --log-format json >"$demo/coordinator.log" 2>&1 &
coordinator=$!
trap 'kill -TERM $coordinator 2>/dev/null; wait $coordinator 2>/dev/null || true' EXIT

addr=""
for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*"listen":"\([^"]*\)".*coordinator serving.*/\1/p; s/.*coordinator serving.*"listen":"\([^"]*\)".*/\1/p' "$demo/coordinator.log" | head -n1)"
    [ -n "$addr" ] && break
    if ! kill -0 "$coordinator" 2>/dev/null; then
        echo "demo: the coordinator did not start:" >&2
        cat "$demo/coordinator.log" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$addr" ] || { echo "demo: the coordinator did not report its address" >&2; exit 1; }
export SURGERY_ADDR="http://$addr"
echo "== coordinator on $SURGERY_ADDR (status page: $SURGERY_ADDR/, log: .demo/coordinator.log)"

echo "== surgeryctl validate configs/tiny.yaml"
"$bin/surgeryctl" validate configs/tiny.yaml

echo "== surgeryctl submit configs/tiny.yaml"
job="$("$bin/surgeryctl" submit configs/tiny.yaml --request-id "demo-$(date +%s)")"
echo "$job"

echo "== surgeryctl status $job"
"$bin/surgeryctl" status "$job"

echo "== surgeryctl list"
"$bin/surgeryctl" list

echo "== surgeryctl workers"
"$bin/surgeryctl" workers

echo "== the job is planned and queued; it runs once workers register (worker runtime: next issue)"
