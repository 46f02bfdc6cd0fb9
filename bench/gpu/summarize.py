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

def by_rate(lines, phase):
    return {l["rate"]: l for l in lines if l.get("phase") == phase and "rate" in l}


def attention_table(runs, tokens):
    """Fused (the default), eager (SURGERY_FUSED_KERNELS=0) and PyTorch eager at `tokens`."""
    fused = by_rate(runs.get(f"tch_attention_{tokens}", []), "attention")
    eager = by_rate(runs.get(f"tch_attention_{tokens}_eager", []), "attention")
    torch_ = by_rate(runs.get(f"torch_attention_{tokens}", []), "torch-attention")
    if not fused:
        return
    sd = fused["softmax"]
    kernels = sd.get("kernels", "?")
    print(f"\n{tokens} tokens, B=1, 12 heads of 128, bf16 ({kernels}); ratios against SDPA of the same run")
    print("| attention | fused fwd ms | fwd / SDPA | fused fine-tune ms | fine-tune / SDPA fwd+bwd | fused distill ms | linear part ms | eager fwd ms | PyTorch eager fwd ms | PyTorch fine-tune ms | PyTorch distill ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda d, k: f"{d[k]:.2f}" if k in d else "-"
    for rate in ["softmax", "R2", "R4", "R8", "R16", "R32", "linear"]:
        a, e, b = fused.get(rate, {}), eager.get(rate, {}), torch_.get(rate, {})
        if not a:
            continue
        fr = f"{a['forward_ms'] / sd['forward_ms']:.2f}"
        br = f"{a['finetune_ms'] / sd['finetune_ms']:.2f}"
        print(f"| {rate} | {f(a,'forward_ms')} | {fr} | {f(a,'finetune_ms')} | {br} | {f(a,'distill_ms')} | {f(a,'linear_part_ms')} | {f(e,'forward_ms')} | {f(b,'forward_ms')} | {f(b,'finetune_ms')} | {f(b,'distill_ms')} |")


def model_table(runs):
    """Whole-model forward: teacher and students, fused and eager, beside diffusers."""
    for frames, res in ((81, "480p"), (21, "480p-21f")):
        fused = {l["model"]: l for l in runs.get(f"tch_model_{frames}", []) if "model" in l}
        eager = {l["model"]: l for l in runs.get(f"tch_model_{frames}_eager", []) if "model" in l}
        diff = next((l for l in runs.get(f"diffusers_forward_{res}", []) if "ms" in l), None)
        if not fused:
            continue
        print(f"\nwhole model 480x832, {frames} frames, bf16, batch 1, no gradients; diffusers teacher {diff['ms'] if diff else float('nan'):.1f} ms")
        print("| model | fused ms | speed-up vs fused teacher | eager ms | speed-up vs eager teacher | / diffusers teacher |")
        print("|---|---|---|---|---|---|")
        for name, a in fused.items():
            e = eager.get(name, {})
            ratio = f"{a['ms'] / diff['ms']:.2f}" if diff else "-"
            print(f"| {name} | {a['ms']:.1f} | {fused['teacher']['ms'] / a['ms']:.2f}x | {e.get('ms', float('nan')):.1f} | "
                  f"{eager['teacher']['ms'] / e['ms'] if e and 'teacher' in eager else float('nan'):.2f}x | {ratio} |")
    for l in runs.get("tch_attention_parts", []):
        if l.get("phase") == "attention-parts" and "phi_one_map_ms" in l:
            print("\nlinear part at", l["tokens"], "tokens:", ", ".join(f"{k} {v:.2f}" for k, v in l.items() if k.endswith("_ms")))


def main(folder):
    runs = load(folder)
    print(open(os.path.join(folder, "gpu.txt")).read().strip())
    for tokens in (32760, 9360):
        attention_table(runs, tokens)
    model_table(runs)
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
