"""The quality testbed's ablation table, produced by jobs through the coordinator.

Starts a coordinator and several `surgery-worker run --device cuda` processes (one slot each,
sharing the GPU), submits one job per variant on a testbed teacher (written by
`surgery-worker testbed train`), waits for them, and prints and writes the table of
docs/QUALITY.md from each job's evaluate/report.json (ground-truth metrics of the student,
the teacher's, the teacher's seed-to-seed spread) and export/report.json (FLOPs, speed).

Variants (METHOD.md / the paper's claims in shape):
  linear-init         every block linear, phi at its initialisation (no distillation, no fine-tune)
  linear-distilled    every block linear, distilled, no fine-tune
  linear-distilled-ft every block linear, distilled and fine-tuned
  homogeneous-r2/r4/r8  the k lowest-error blocks at one rate, k chosen so the attention
                      FLOPs meet the knapsack's budget; distilled and fine-tuned
  knapsack            the cost-aware knapsack at the same FLOP budget; distilled, fine-tuned
  knapsack-no-teacher the same, fine-tuned without the teacher term

Usage (GPU machine, repo root, release binaries in BIN):
  python3 bench/testbed/ablation.py --testbed DIR --bin BIN --out OUT [--workers 8] [--deadline-s 540]
"""
import argparse
import copy
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import yaml  # PyYAML ships with the GPU image's Python

BUDGET = 0.5


def variants(base, layers):
    def job(name, selection, distill_steps=None, finetune_steps=None, teacher_weight=None, rates=None):
        spec = copy.deepcopy(base)
        spec["name"] = name
        spec["surgery"]["selection"] = selection
        if rates is not None:
            spec["surgery"]["rates"] = rates
        if distill_steps is not None:
            spec["stages"]["distill"]["steps"] = distill_steps
        if finetune_steps is not None:
            spec["stages"]["finetune"]["steps"] = finetune_steps
        if teacher_weight is not None:
            spec["stages"]["finetune"]["teacher_loss_weight"] = teacher_weight
        return spec

    all_linear = {"layout": [{"blocks": list(range(layers)), "rate": "linear"}]}
    out = [
        job("linear-init", all_linear, distill_steps=0, finetune_steps=0),
        job("linear-distilled", all_linear, finetune_steps=0),
        job("linear-distilled-ft", all_linear),
    ]
    # k blocks at rate R cost about (1 - k (1 - 1/R) / L) of softmax: the smallest k that
    # meets the budget (the export report states the exact FLOPs each reached).
    for rate in (2, 4, 8):
        k = next(k for k in range(1, layers + 1) if 1 - k * (1 - 1 / rate) / layers <= BUDGET + 1e-9)
        out.append(job(f"homogeneous-r{rate}", {"homogeneous": {"rate": rate, "blocks": k}}))
    knapsack = {"knapsack": {"budget": BUDGET, "cost": "flops"}}
    out.append(job("knapsack", knapsack))
    out.append(job("knapsack-no-teacher", knapsack, teacher_weight=0.0))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--testbed", required=True, help="folder `surgery-worker testbed train` wrote")
    p.add_argument("--bin", required=True, help="folder with surgery-coordinator, surgery-worker, surgeryctl")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/testbed-gpu.yaml")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--deadline-s", type=float, default=540)
    p.add_argument("--only", default=".", help="regex over variant names")
    p.add_argument("--resume", action="store_true", help="restart the coordinator and workers on the last run's store and wait for its jobs")
    args = p.parse_args()
    started = time.time()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path("/tmp/ablation")
    if not args.resume:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True, exist_ok=True)
    testbed = pathlib.Path(args.testbed).resolve()
    bin_dir = pathlib.Path(args.bin).resolve()

    base = yaml.safe_load(open(args.config))
    base["teacher"]["url"] = f"file://{testbed}/teacher"
    base["data"]["prompts"] = f"file://{testbed}/prompts.safetensors"
    # Sized for one GPU call: fewer steps than configs/testbed-gpu.yaml, same structure.
    base["data"]["heldout_prompts"] = 12
    base["sampler"]["steps"] = 20
    base["stages"]["capture"]["steps"] = list(range(0, 20, 2))
    base["stages"]["distill"].update({"steps": 200, "batch": 8, "updates_per_batch": 4})
    base["stages"]["finetune"].update({"steps": 100, "global_batch": 16})
    base["stages"]["evaluate"]["steps"] = 20
    layers = base["teacher"]["shape"]["layers"]
    jobs = [v for v in variants(base, layers) if re.search(args.only, v["name"])]

    procs = []
    log = open(work / "coordinator.log", "a")
    coord = subprocess.Popen(
        [str(bin_dir / "surgery-coordinator"), "--listen", "127.0.0.1:7171", "--data-dir", str(work / "store"),
         "--object-store-url", f"file://{work}/objects"], stdout=log, stderr=subprocess.STDOUT)
    procs.append(coord)
    os.environ["SURGERY_ADDR"] = "http://127.0.0.1:7171"
    time.sleep(2)
    for i in range(args.workers):
        wlog = open(work / f"worker-{i}.log", "a")
        procs.append(subprocess.Popen(
            [str(bin_dir / "surgery-worker"), "run", "--name", f"gpu-{i}", "--device", "cuda",
             "--cache-dir", str(work / f"cache-{i}")], stdout=wlog, stderr=subprocess.STDOUT))
    ids = {}
    try:
        if args.resume:
            time.sleep(1)
            listing = json.loads(subprocess.run([str(bin_dir / "surgeryctl"), "list", "--output", "json"],
                                                check=True, capture_output=True, text=True).stdout)
            ids = {j["name"]: j["id"] for j in listing["jobs"]}
            for j in listing["jobs"]:
                if j["state"] in ("failed", "cancelled"):
                    subprocess.run([str(bin_dir / "surgeryctl"), "resume", j["id"]], check=False)
        for spec in [] if args.resume else jobs:
            path = work / f"{spec['name']}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            job = subprocess.run([str(bin_dir / "surgeryctl"), "submit", str(path)], check=True,
                                 capture_output=True, text=True).stdout.strip()
            ids[spec["name"]] = job
            print(f"submitted {spec['name']}: {job}", flush=True)
        states = {}
        while time.time() - started < args.deadline_s:
            listing = json.loads(subprocess.run([str(bin_dir / "surgeryctl"), "list", "--output", "json"],
                                                check=True, capture_output=True, text=True).stdout)
            states = {j["id"]: j["state"] for j in listing["jobs"]}
            if all(states.get(j) in ("succeeded", "failed", "cancelled") for j in ids.values()):
                break
            time.sleep(5)
        print(json.dumps(states), flush=True)
        # The table first: the reports are files, and a device call that runs out of time
        # during the shutdown below must not lose them.
        write_table(work, out, ids, states)
    finally:
        # SIGTERM makes workers checkpoint and release their leases; all at once, so the
        # shutdown costs one grace period, not one per process.
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        grace = time.time() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, grace - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"ablation took {time.time() - started:.0f} s", flush=True)


def write_table(work, out, ids, states):
    rows = []
    for name, job in ids.items():
        root = work / "objects" / "jobs" / job
        row = {"variant": name, "job": job, "state": states.get(job)}
        for part, rel in (("evaluate", "evaluate/report.json"), ("export", "export/report.json")):
            path = root / rel
            if path.exists():
                row[part] = json.loads(path.read_text())
        rows.append(row)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)


def print_table(rows):
    keys = ["colour_correctness", "shape_correctness", "trajectory_error_px", "area_cv", "centroid_speed_ratio"]
    print("| variant | attention FLOPs | " + " | ".join(keys)
          + " | PSNR vs teacher dB | linear share (teacher's mass) | state |")
    print("|" + "---|" * (len(keys) + 5))
    teacher = spread = None
    for row in rows:
        tb = (row.get("evaluate") or {}).get("testbed")
        ex = row.get("export") or {}
        flops = ex.get("attention_flops", {}).get("student")
        total = ex.get("attention_flops", {}).get("teacher")
        frac = f"{flops / total:.3f}" if flops and total else "-"
        if tb:
            teacher = tb["teacher"]["mean"]
            spread = tb["teacher_seed_spread"]
            m = tb["student"]["mean"]
            cells = [f"{m.get(k, float('nan')):.3f}" for k in keys]
            psnr = f"{tb['student_teacher_psnr_db']:.2f}"
        else:
            cells, psnr = ["-"] * len(keys), "-"
        print(f"| {row['variant']} | {frac} | " + " | ".join(cells)
              + f" | {psnr} | {share_cell(row.get('evaluate'))} | {row['state']} |")
    if teacher:
        print("| teacher | 1.000 | " + " | ".join(f"{teacher.get(k, float('nan')):.3f}" for k in keys)
              + f" | (seeds: {spread['psnr_db']:.2f}) | | - |")
        d = spread["mean_abs_difference"]
        print("| teacher seed-to-seed spread | | " + " | ".join(f"{d.get(k, float('nan')):.3f}" for k in keys) + " | | | |")


def share_cell(evaluate):
    """Mean over the hybrid blocks of the student's linear-branch share, and in brackets the
    teacher's softmax mass on the same tokens (worker/src/attention/linear_share.rs)."""
    blocks = (evaluate or {}).get("linear_share") or []
    if not blocks:
        return "-"
    student = sum(b["student"] for b in blocks) / len(blocks)
    teacher = sum(b["teacher"] for b in blocks) / len(blocks)
    return f"{student:.3f} ({teacher:.3f})"


if __name__ == "__main__":
    sys.exit(main())
