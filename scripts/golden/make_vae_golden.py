#!/usr/bin/env python3
"""Generate the parity goldens for the Rust Wan2.1 VAE decoder (worker/src/vae).

What it writes into worker/tests/golden_vae/:
  * tiny/: config.json + diffusion_pytorch_model.safetensors: a random-weight diffusers
    `AutoencoderKLWan` in the Wan2.1 layout (temperal_downsample [False, True, True],
    no residual blocks, no patch) saved with `save_pretrained` (fp32, encoder included:
    the Rust loader must ignore it);
  * tiny_bf16/: the same checkpoint saved by diffusers in bf16, then with only the
    tensors the decoder needs (`post_quant_conv.*`, `decoder.*`): the Rust loader must
    not need the encoder (and the golden folder stays small);
  * io.safetensors:
      - `latents` [1, z, 3, 4, 6]: normalised latents, as the transformer produces them;
      - `output`: what WanPipeline decodes from them in fp32 (latents / (1 / std) + mean,
        then `vae.decode(...).sample`, clamped to [-1, 1]), [1, 3, 9, 32, 48];
      - `output_bf16`: the same through the checkpoint loaded by diffusers in bf16 (the
        pipeline casts the latents and the mean / std to the VAE's dtype), stored as f32;
      - `tiled_latents` [1, z, 2, 7, 9] and `tiled_output`: the pipeline's decode with
        `enable_tiling(32, 48, 24, 32)` (tile_sample_min_height, tile_sample_min_width,
        tile_sample_stride_height, tile_sample_stride_width): 3 x 3 overlapping tiles,
        the last row and column one latent pixel wide;
      - `frames_u8`: `output` through the pipeline's postprocess to 8-bit frames
        [F, H, W, 3] ((x * 0.5 + 0.5).clamp(0, 1) * 255, rounded), stored as bf16
        (exact for integers up to 256);
      - intermediates to localise a mismatch, all for the un-normalised `latents`:
        `post_quant_conv` (all frames), and for latent frame 0 alone (first chunk,
        empty cache) `conv_in_frame0`, `mid_block_frame0` and `decoder_frame0` (the
        decoder's output before the clamp); `decoder_frame1` is latent frame 1's
        decoder output (4 frames, second chunk: the cache and the upsamplers' "Rep"
        state are in play).

Needs: Python 3.11, torch 2.11, diffusers==0.42.1, safetensors (the repo's reference
environment is /work/pyvenv). Run from the repository root:

    /work/pyvenv/bin/python scripts/golden/make_vae_golden.py

Deterministic for a given torch/diffusers version (fixed seeds, CPU, one thread). CI and
`cargo test` do not need Python: the files are committed and worker/tests/vae.rs reads
them. Re-run only when the configuration changes.

Weights: diffusers initialises the RMS norms' gammas to 1, and would leave a wrong code
path unnoticed with them, so every parameter is re-drawn: conv weights N(0, 1/fan_in),
biases N(0, 0.2^2), gammas 1 + N(0, 0.2^2); conv_out's weights are halved so that only a
few values (about 0.2%) reach the clamp to [-1, 1] (the script prints the clamped share).
latents_mean ~ N(0, 0.5^2) and latents_std ~ U(0.5, 2.5), per channel.
"""

import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKLWan

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "worker" / "tests" / "golden_vae"

SEED = 7
Z_DIM = 4
MODEL = dict(
    base_dim=8,
    z_dim=Z_DIM,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
LATENT = (1, Z_DIM, 3, 4, 6)
TILED_LATENT = (1, Z_DIM, 2, 7, 9)
# (tile_sample_min_height, tile_sample_min_width, tile_sample_stride_height,
# tile_sample_stride_width): latent tiles 4 x 6 at strides 3 x 4, blends 8 and 16 pixels.
TILING = (32, 48, 24, 32)


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter so that no code path sees a constant (see module doc)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if leaf == "gamma":
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            else:  # conv [out, in, (kt,) kh, kw]
                fan_in = math.prod(p.shape[1:])
                scale = 0.5 if name == "decoder.conv_out.weight" else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in))


def unnormalise(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """WanPipeline's step before `vae.decode` (pipeline_wan.py), in the VAE's dtype."""
    latents = latents.to(dtype=vae.dtype)
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    return latents / std + mean


def pipeline_decode(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(unnormalise(vae, latents), return_dict=False)[0]


def intermediates(vae: AutoencoderKLWan, latents: torch.Tensor) -> dict:
    """The decoder's stages for latent frames 0 and 1, as `_decode` runs them."""
    seen = {}
    with torch.no_grad():
        x = vae.post_quant_conv(unnormalise(vae, latents))
        seen["post_quant_conv"] = x
        frame0 = x[:, :, :1]
        seen["conv_in_frame0"] = vae.decoder.conv_in(frame0)
        # The mid block of frame 0 with a fresh cache (all slots empty, as in the first chunk).
        cache = [None] * vae._cached_conv_counts["decoder"]
        seen["mid_block_frame0"] = vae.decoder.mid_block(
            seen["conv_in_frame0"], feat_cache=cache, feat_idx=[0]
        )
        vae.clear_cache()
        feat_idx = [0]
        seen["decoder_frame0"] = vae.decoder(
            frame0, feat_cache=vae._feat_map, feat_idx=feat_idx, first_chunk=True
        )
        feat_idx = [0]
        seen["decoder_frame1"] = vae.decoder(x[:, :, 1:2], feat_cache=vae._feat_map, feat_idx=feat_idx)
        vae.clear_cache()
    return seen


def to_u8_frames(video: torch.Tensor) -> torch.Tensor:
    """The pipeline's postprocess (VaeImageProcessor.denormalize, pt_to_numpy,
    numpy_to_pil's rounding) of sample 0: [F, H, W, C] in 0..=255."""
    frames = video[0].permute(1, 0, 2, 3)  # [F, C, H, W]
    frames = (frames * 0.5 + 0.5).clamp(0, 1)
    frames = frames.permute(0, 2, 3, 1).float().numpy()
    return torch.from_numpy((frames * 255).round().astype("uint8"))


def tidy(folder: Path) -> None:
    # Keep config.json deterministic and readable; save_file writes 0600.
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in folder.iterdir():
        f.chmod(0o644)


def main() -> int:
    if diffusers.__version__ != "0.42.1":
        print(f"warning: goldens are defined against diffusers 0.42.1, found {diffusers.__version__}", file=sys.stderr)
    torch.set_num_threads(1)  # deterministic CPU reductions
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    latents_mean = (torch.randn(Z_DIM, generator=gen) * 0.5).tolist()
    latents_std = (0.5 + 2.0 * torch.rand(Z_DIM, generator=gen)).tolist()
    vae = AutoencoderKLWan(**MODEL, latents_mean=latents_mean, latents_std=latents_std).eval()
    randomise(vae, gen)
    OUT.mkdir(parents=True, exist_ok=True)
    fp32_dir, bf16_dir = OUT / "tiny", OUT / "tiny_bf16"
    vae.save_pretrained(fp32_dir, safe_serialization=True)
    vae.to(torch.bfloat16).save_pretrained(bf16_dir, safe_serialization=True)
    tidy(fp32_dir)

    latents = torch.randn(LATENT, generator=gen)
    tiled_latents = torch.randn(TILED_LATENT, generator=gen)

    # Reload what was saved so the goldens are what the Rust loader reads.
    vae = AutoencoderKLWan.from_pretrained(fp32_dir).eval()
    output = pipeline_decode(vae, latents)
    seen = intermediates(vae, latents)
    # The un-tiled decode of the tiled latents, to report what tiling changes.
    untiled = pipeline_decode(vae, tiled_latents)
    vae.enable_tiling(*TILING)
    tiled_output = pipeline_decode(vae, tiled_latents)

    vae_bf16 = AutoencoderKLWan.from_pretrained(bf16_dir, torch_dtype=torch.bfloat16).eval()
    assert vae_bf16.dtype == torch.bfloat16
    output_bf16 = pipeline_decode(vae_bf16, latents)
    decoder_half = {
        name: t.contiguous()
        for name, t in vae_bf16.state_dict().items()
        if name.startswith(("decoder.", "post_quant_conv."))
    }
    save_file(decoder_half, bf16_dir / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    tidy(bf16_dir)

    tensors = {
        "latents": latents,
        "output": output,
        "output_bf16": output_bf16,
        "tiled_latents": tiled_latents,
        "tiled_output": tiled_output,
        "frames_u8": to_u8_frames(output),
        **seen,
    }
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    tensors["frames_u8"] = tensors["frames_u8"].to(torch.bfloat16)
    generator = f"diffusers {diffusers.__version__}, torch {torch.__version__}"
    save_file(tensors, OUT / "io.safetensors", metadata={"generator": generator})
    (OUT / "io.safetensors").chmod(0o644)

    clamped = (output.abs() >= 1.0).float().mean().item()
    rel_bf16 = ((output_bf16.float() - output).abs().max() / output.abs().max()).item()
    rel_tiling = ((tiled_output - untiled).abs().max() / untiled.abs().max()).item()
    sizes = {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
    print(f"output {tuple(output.shape)}, clamped share {clamped:.3f}, bf16 rel err {rel_bf16:.2e}")
    print(f"tiled output {tuple(tiled_output.shape)}, tiled vs untiled rel diff {rel_tiling:.2e}")
    print(f"files {sizes}, total {sum(sizes.values())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
