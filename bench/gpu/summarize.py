"""Side-by-side tables of bench/gpu/run.sh's results (JSON lines in one folder)."""
import glob
import json
import os
import sys


def load(folder):
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        name = os.path.basename(path)[: -len(".jsonl")]
        lines = [json.loads(l) for l in open(path) if l.startswith("{")]
        runs[name] = lines
    return runs


def peak_gib(lines):
    for l in lines:
        if "peak_gpu_mib" in l:
            return l["peak_gpu_mib"] / 1024
    return float("nan")


def main(folder):
    runs = load(folder)
    print(open(os.path.join(folder, "gpu.txt")).read().strip())
    tch = {l["rate"]: l for l in runs.get("tch_attention", []) if l.get("phase") == "attention"}
    torch_ = {l["rate"]: l for l in runs.get("torch_attention", []) if l.get("phase") == "torch-attention"}
    if tch:
        sd_f, sd_b = tch["softmax"]["forward_ms"], tch["softmax"]["finetune_ms"]
        print("\n| attention | tch fwd ms | torch fwd ms | tch fine-tune ms | torch fine-tune ms | tch distill ms | torch distill ms | tch fine-tune / tch SDPA fwd+bwd |")
        print("|---|---|---|---|---|---|---|---|")
        for rate in ["softmax", "R2", "R4", "R8", "linear"]:
            a, b = tch.get(rate, {}), torch_.get(rate, {})
            f = lambda d, k: f"{d[k]:.2f}" if k in d else "-"
            ratio = f"{a['finetune_ms'] / sd_b:.2f}" if "finetune_ms" in a else "-"
            print(f"| {rate} | {f(a,'forward_ms')} | {f(b,'forward_ms')} | {f(a,'finetune_ms')} | {f(b,'finetune_ms')} | {f(a,'distill_ms')} | {f(b,'distill_ms')} | {ratio} |")
        print("\n| forward breakdown (tch) | anchor SDPA ms | phi ms | state ms | readout ms | total fwd ms |")
        print("|---|---|---|---|---|---|")
        for rate in ["R2", "R4", "R8", "linear"]:
            a = tch.get(rate)
            if a:
                print(f"| {rate} | {a['anchor_sdpa_ms']:.2f} | {a['phi_ms']:.2f} | {a['state_ms']:.2f} | {a['readout_ms']:.2f} | {a['forward_ms']:.2f} |")
        for l in runs.get("tch_attention", []):
            if l.get("phase") == "attention-check":
                print(f"fast vs exact reference on CUDA ({l['dtype']}): max rel error {l['max_rel_error']:.2e} ok={l['ok']}")
    print("\n| teacher (1.3B, bf16, batch 1) | tch ms | diffusers ms | tch / diffusers | tch MFU | tch peak GiB | diffusers peak GiB (allocated) |")
    print("|---|---|---|---|---|---|---|")
    for phase, label in [("forward", "forward"), ("train", "fwd+bwd, block checkpointing")]:
        for res in ["480p", "320x480"]:
            a = next((l for l in runs.get(f"tch_{phase}_{res}", []) if "ms" in l), None)
            b = next((l for l in runs.get(f"diffusers_{phase}_{res}", []) if "ms" in l), None)
            if not a and not b:
                continue
            ratio = f"{a['ms'] / b['ms']:.3f}" if a and b else "-"
            print(
                f"| {label} {res} | {a['ms'] if a else float('nan'):.1f} | {b['ms'] if b else float('nan'):.1f} | {ratio} | "
                f"{a['mfu'] * 100 if a else float('nan'):.1f}% | {peak_gib(runs.get(f'tch_{phase}_{res}', [])):.1f} | "
                f"{peak_gib(runs.get(f'diffusers_{phase}_{res}', [])):.1f} ({b['allocated_peak_gib'] if b else float('nan'):.1f}) |"
            )
    step = next((l for l in runs.get("tch_finetune_step", []) if "ms" in l), None)
    if step:
        print(
            f"\nfine-tuning step, 1.3B student (15 blocks R2), 480p, batch 1, checkpointing, AdamW on fp32 masters: "
            f"{step['ms']:.0f} ms, peak {peak_gib(runs['tch_finetune_step']):.1f} GiB, {step['params']:,} params, MFU {step['mfu']*100:.1f}%"
        )
    failed = [name for name, lines in runs.items() if any(l.get("rc", 0) != 0 for l in lines)]
    if failed:
        print("FAILED runs:", ", ".join(failed))


if __name__ == "__main__":
    main(sys.argv[1])
