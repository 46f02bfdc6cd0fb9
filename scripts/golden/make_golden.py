#!/usr/bin/env python3
"""Generate the parity goldens for the Rust Wan2.1 transformer (worker/src/model).

What it writes, for each tiny configuration below, into worker/tests/golden/<name>/:
  * config.json + diffusion_pytorch_model.safetensors: a random-weight diffusers
    `WanTransformer3DModel` saved with `save_pretrained` (diffusers format, fp32);
  * io.safetensors: the inputs (latents, timestep, encoder_hidden_states), diffusers'
    fp32 output, intermediates to localise a mismatch (rope cos/sin [N, d], the patch
    embedding, temb, timestep_proj [B, 6, dim], the projected text, block 0's
    self-attention q and k [H, N, d] of sample 0 as SDPA receives them, the output of
    block 0), and the output of the same checkpoint loaded by diffusers in bf16
    (`output_bf16`, stored as f32; diffusers keeps its fp32 modules fp32).

Needs: Python 3.11, torch 2.11, diffusers==0.42.1, safetensors (the repo's reference
environment is /work/pyvenv). Run from the repository root:

    /work/pyvenv/bin/python scripts/golden/make_golden.py

The output is deterministic for a given torch/diffusers version (fixed seeds, CPU). CI
and `cargo test` do not need Python: the generated files are committed and the Rust
test worker/tests/parity.rs reads them. Re-run only when the configurations change.

Weights: diffusers initialises some parameters to constants (norm weights to 1, biases
to 0, RMSNorm weights to 1), which would let a wrong code path go unnoticed, so every
parameter is re-drawn: linear/conv weights N(0, 1/fan_in), biases N(0, 0.2^2), norm
weights 1 + N(0, 0.2^2), scale_shift_tables N(0, 0.5^2).
"""

import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import WanTransformer3DModel

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "worker" / "tests" / "golden"

# Three configurations that differ in heads, head dim (so the t/h/w RoPE split differs),
# depth, channels, cross_attn_norm, eps, patch size, frames and aspect ratio.
CONFIGS = {
    # head_dim 16: RoPE split t/h/w = 8/4/4. 3 x 8 x 12 latent -> 3 x 4 x 6 = 72 tokens.
    "tiny_a": dict(
        model=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=48,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ),
        latent=(2, 4, 3, 8, 12),
        text_len=8,
        timestep=[999.0, 500.0],
        seed=1,
    ),
    # head_dim 8: split 4/2/2; no norm2 (cross_attn_norm False); out != in channels.
    # 5 x 4 x 16 latent -> 5 x 2 x 8 = 80 tokens (wide).
    "tiny_b": dict(
        model=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=3,
            attention_head_dim=8,
            in_channels=4,
            out_channels=6,
            text_dim=24,
            freq_dim=20,
            ffn_dim=40,
            num_layers=3,
            cross_attn_norm=False,
            qk_norm="rms_norm_across_heads",
            eps=1e-5,
            rope_max_seq_len=512,
        ),
        latent=(2, 4, 5, 4, 16),
        text_len=5,
        timestep=[1.0, 733.0],
        seed=2,
    ),
    # One head of 12: split 4/4/4; an asymmetric patch (2, 1, 2) so the unpatchify order
    # of (frame, height, width) and (p_t, p_h, p_w) is exercised; fractional timesteps.
    # 4 x 5 x 6 latent -> 2 x 5 x 3 = 30 tokens (tall).
    "tiny_c": dict(
        model=dict(
            patch_size=(2, 1, 2),
            num_attention_heads=1,
            attention_head_dim=12,
            in_channels=3,
            out_channels=2,
            text_dim=8,
            freq_dim=8,
            ffn_dim=24,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=64,
        ),
        latent=(2, 3, 4, 5, 6),
        text_len=3,
        timestep=[0.0, 250.5],
        seed=3,
    ),
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter so that no code path sees a constant (see module doc)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if "scale_shift_table" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif p.ndim == 1:  # LayerNorm / RMSNorm weights
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
            else:  # linear [out, in] or conv [out, in, kt, kh, kw]
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def capture(model: WanTransformer3DModel) -> tuple[dict, list]:
    """Forward hooks that record the intermediates the Rust test compares."""
    seen: dict[str, torch.Tensor] = {}

    def rope_hook(_m, _inp, out):
        cos, sin = out  # [1, N, 1, d] each, float32
        seen["rope_cos"] = cos[0, :, 0, :].contiguous()
        seen["rope_sin"] = sin[0, :, 0, :].contiguous()

    def patch_hook(_m, _inp, out):
        seen["patch_embedding"] = out.flatten(2).transpose(1, 2).contiguous()  # [B, N, dim]

    def cond_hook(_m, _inp, out):
        temb, timestep_proj, text, _img = out
        seen["temb"] = temb
        seen["timestep_proj"] = timestep_proj.unflatten(1, (6, -1))  # [B, 6, dim]
        seen["text"] = text

    def block0_hook(_m, _inp, out):
        seen["block0_out"] = out

    handles = [
        model.rope.register_forward_hook(rope_hook),
        model.patch_embedding.register_forward_hook(patch_hook),
        model.condition_embedder.register_forward_hook(cond_hook),
        model.blocks[0].register_forward_hook(block0_hook),
    ]
    return seen, handles


def make(name: str, spec: dict) -> None:
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])

    model = WanTransformer3DModel(**spec["model"]).eval()
    randomise(model, gen)
    model.save_pretrained(folder, safe_serialization=True)

    latents = torch.randn(spec["latent"], generator=gen)
    batch = spec["latent"][0]
    text = torch.randn((batch, spec["text_len"], spec["model"]["text_dim"]), generator=gen)
    timestep = torch.tensor(spec["timestep"], dtype=torch.float32)

    # Reload what was saved so the golden is what the Rust loader reads.
    model = WanTransformer3DModel.from_pretrained(folder).eval()
    seen, handles = capture(model)
    # diffusers' native attention backend calls F.scaled_dot_product_attention through the
    # module attribute; its first call is block 0's self-attention, with q, k [B, H, N, d]
    # after RMSNorm and RoPE: what the Rust `block_self_attention_inputs` returns.
    sdpa = torch.nn.functional.scaled_dot_product_attention
    sdpa_calls = []

    def recording_sdpa(query, key, value, *args, **kwargs):
        sdpa_calls.append((query, key))
        return sdpa(query, key, value, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = recording_sdpa
    try:
        with torch.no_grad():
            output = model(latents, timestep, text, return_dict=False)[0]
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    for h in handles:
        h.remove()
    assert len(sdpa_calls) == 2 * spec["model"]["num_layers"], "expected native SDPA for attn1 and attn2"
    # Sample 0 only, to keep the file small.
    seen["block0_q"] = sdpa_calls[0][0][0]
    seen["block0_k"] = sdpa_calls[0][1][0]

    # The same checkpoint as diffusers runs it in bf16 (fp32 modules kept fp32).
    model_bf16 = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    with torch.no_grad():
        output_bf16 = model_bf16(
            latents.to(torch.bfloat16), timestep, text.to(torch.bfloat16), return_dict=False
        )[0]

    tensors = {
        "latents": latents,
        "timestep": timestep,
        "encoder_hidden_states": text,
        "output": output,
        "output_bf16": output_bf16.float(),
        **seen,
    }
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    # One metadata key: safetensors writes a map's keys in hash order, not deterministically.
    generator = f"diffusers {diffusers.__version__}, torch {torch.__version__}"
    save_file(tensors, folder / "io.safetensors", metadata={"generator": generator})

    # Keep config.json deterministic (no absolute paths) and readable.
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    for f in folder.iterdir():
        f.chmod(0o644)  # save_file writes 0600
    sizes = {f: os.path.getsize(folder / f) for f in sorted(os.listdir(folder))}
    rel_bf16 = ((output_bf16.float() - output).abs().max() / output.abs().max()).item()
    print(f"{name}: output {tuple(output.shape)} max|out| {output.abs().max():.3f} "
          f"bf16 rel err {rel_bf16:.2e} files {sizes}")


def main() -> int:
    if diffusers.__version__ != "0.42.1":
        print(f"warning: goldens are defined against diffusers 0.42.1, found {diffusers.__version__}", file=sys.stderr)
    torch.set_num_threads(1)  # deterministic CPU reductions
    for name, spec in CONFIGS.items():
        make(name, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
