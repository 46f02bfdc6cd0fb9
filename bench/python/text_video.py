"""The PyTorch baselines of model-bench's `umt5-encode` and `vae-decode` phases.

umt5: transformers' UMT5EncoderModel at umT5-xxl's configuration (Wan2.1's text encoder)
with random bf16 weights, encoding a batch of prompts padded to 512 tokens with half of
each real, as WanPipeline calls it (ids and mask). vae: diffusers' AutoencoderKLWan at its
default (Wan2.1) configuration, random bf16 weights, decoding one 480p x 81-frame latent
[1, 16, 21, 60, 104], whole frames or with enable_tiling() (diffusers' default tiles).

One phase per process; prints one JSON line. On the GPU machine with the wheels on
PYTHONPATH:
    python3 bench/python/text_video.py umt5 --batch 8
    python3 bench/python/text_video.py vae [--tiled]
"""
import argparse
import json

import torch


def median_ms(fn, warmup, iters):
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


def umt5(batch):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=256384,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = UMT5EncoderModel(config)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (batch, 512), device="cuda")
    mask = (torch.arange(512, device="cuda") < 256).long().unsqueeze(0).expand(batch, 512)

    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask).last_hidden_state

    ms = median_ms(run, 3, 10)
    print(json.dumps({"phase": "umt5-encode", "impl": "transformers", "batch": batch, "tokens": 512, "ms": ms,
                      "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20}))


def vae(tiled):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoencoderKLWan()
    model = model.to(torch.bfloat16).eval()
    if tiled:
        model.enable_tiling()
    z = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)

    def run():
        with torch.no_grad():
            model.decode(z).sample

    ms = median_ms(run, 1, 3)
    print(json.dumps({"phase": "vae-decode", "impl": "diffusers", "tiled": tiled, "latent": "16x21x60x104",
                      "ms": ms, "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["umt5", "vae"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tiled", action="store_true")
    args = parser.parse_args()
    if args.what == "umt5":
        umt5(args.batch)
    else:
        vae(args.tiled)
