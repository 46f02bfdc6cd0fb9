"""diffusers' WanTransformer3DModel in PyTorch eager: the baseline for the tch teacher.

Wan2.1 T2V 1.3B configuration with random weights, loaded the way from_pretrained loads
bf16 (the _keep_in_fp32_modules stay fp32), batch 1. Times the forward pass and the
forward+backward pass with per-block gradient checkpointing (diffusers'
enable_gradient_checkpointing), at 480x832 (32,760 tokens) and 320x480 (12,600 tokens),
and reports peak GPU memory.

One phase per process (so an external probe sees each phase's peak memory); prints one
JSON line. Run on the GPU machine with diffusers on PYTHONPATH (a pure-Python wheel):
    python3 bench/python/diffusers_wan.py forward --res 480p        (480p-21f: 21 frames)
    python3 bench/python/diffusers_wan.py train --res 320x480
"""
import argparse
import json

import torch
from diffusers import WanTransformer3DModel


def median_ms(fn, warmup=2, iters=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def build():
    # Initialise on the GPU: a 1.4B-parameter init on the CPU takes far longer than the benchmark.
    with torch.device("cuda"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )
    model = model.to("cuda", torch.bfloat16)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.float()
    for name, param in model.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["forward", "train"])
    p.add_argument("--res", choices=["480p", "480p-21f", "320x480"], default="480p")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build()
    # Latent sizes: 480x832 at 81 frames, at 21 frames, and 320x480 at 81 frames.
    frames, height, width = {"480p": (21, 60, 104), "480p-21f": (6, 60, 104), "320x480": (21, 40, 60)}[args.res]
    latents = torch.randn(1, 16, frames, height, width, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([500.0], device="cuda")
    torch.cuda.reset_peak_memory_stats()
    if args.phase == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)

    else:
        model.train()
        model.enable_gradient_checkpointing()
        grad = torch.randn(1, 16, frames, height, width, device="cuda", dtype=torch.bfloat16)

        def run():
            out = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
            out.backward(grad)
            model.zero_grad(set_to_none=True)

    ms = median_ms(run)
    print(json.dumps({
        "phase": "diffusers-" + args.phase, "res": args.res, "ms": ms,
        "allocated_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "params": sum(p.numel() for p in model.parameters()), "device": torch.cuda.get_device_name(),
    }))


if __name__ == "__main__":
    main()
