#!/usr/bin/env python3
"""Generate the parity goldens for the Rust umT5 text encoder and tokenizer (worker/src/text).

What it writes into worker/tests/golden_umt5/:
  * tokenizer/: tokenizer.json + tokenizer_config.json as transformers' `T5Tokenizer`
    saves them, converted from a tiny SentencePiece Unigram model (400 pieces, 4 sentinel
    ids) trained here on generated English text. Its normaliser is a small custom rule set
    (full-width letters, a ligature, a curly quote, U+3000, e-acute -> e + combining acute)
    so the `Precompiled` charsmap is exercised without nmt_nfkc's 240 KB table;
  * tokenizer_v4/: the same vocabulary with the normaliser and pre-tokeniser transformers
    4.x's T5 converter wrote (Precompiled + Strip + Replace(" {2,}" -> "▁"); Metaspace
    alone), the shape of older published umT5 tokenizer.json files. transformers 5 does not
    use those two parts of the file (T5Tokenizer rebuilds them), and neither does the Rust
    tokenizer: its ids are the reference here too;
  * encoder/: a tiny random `UMT5EncoderModel` saved with `save_pretrained` (fp32, one
    model.safetensors), and encoder_bf16_sharded/: the same weights saved in bf16 in
    several shards with model.safetensors.index.json;
  * prompts.json: the prompts (raw and as diffusers' `prompt_clean` leaves them), the
    max lengths, and a list of [raw, cleaned] pairs for `prompt_clean` alone (hand-picked
    edge cases of html.unescape and whitespace, then random strings over an alphabet of
    entity fragments and whitespace characters);
  * io.safetensors, for each max length L in MAX_LENS: the token ids and attention masks
    from transformers' tokenizer (`ids_L`, `mask_L`; `ids_v4_L`, `mask_v4_L`), the encoder's
    last_hidden_state in fp32 (`hidden_fp32_L`), and the prompt embeddings that the code of
    diffusers' `WanPipeline._get_t5_prompt_embeds` returns (`embeds_fp32_L`); for the
    longest L also the outputs of the model loaded by transformers in bf16 and in fp16
    (`hidden_bf16_L`, `hidden_fp16_L`, `embeds_bf16_L`, stored as f32) and the relative
    position buckets (`buckets_L`, [L, L]) to localise a mismatch. Every tensor is stored as
    f32 (the ids, masks and buckets exactly).

Needs: Python 3.11, torch 2.11, transformers==5.24.0, tokenizers, sentencepiece,
diffusers==0.42.1, safetensors (the reference environment /work/pyvenv), plus protobuf,
which transformers needs to read a SentencePiece model (`pip install protobuf`). Run from
the repository root:

    /work/pyvenv/bin/python scripts/golden/make_umt5_golden.py

ftfy is not installed in the reference environment, so diffusers' `basic_clean` skips
`ftfy.fix_text`, as the Rust `prompt_clean` does. The script refuses to run with ftfy
installed, since the goldens would then hold ftfy's output.

The output is deterministic for given library versions (fixed seeds, one CPU thread,
SentencePiece trained on one thread). `cargo test` does not need Python: the files are
committed and worker/tests/umt5.rs reads them. Re-run only when the cases change.

Weights: transformers initialises the norm weights to 1, which would let a wrong code path
go unnoticed, so every parameter is re-drawn: embeddings N(0, 1), linear weights
N(0, 1/fan_in), relative position biases N(0, 1), norm weights 1 + N(0, 0.2^2).
"""

import importlib.util
import json
import math
import random
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers.pipelines.wan.pipeline_wan import WanPipeline, prompt_clean
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "worker" / "tests" / "golden_umt5"
SEED = 7

# Small enough for a < 1 MB golden. max_distance 48 (the real model: 128) so that a
# 64-token prompt reaches the last bucket (the clamp in the bucketing); 4 heads of 10
# (inner dim 40 != d_model 32) so q/k/v and o are not square.
MODEL = dict(
    d_model=32,
    d_kv=10,
    d_ff=64,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=48,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
MAX_LENS = [16, 64]

LONG = (
    "A slow cinematic camera move over a quiet city street at night, bright red and blue light "
    "on wet sand, a woman walks with a child past the tree while a dog runs and jumps over a "
    "lazy brown fox, the ocean wave rolls in under the cloud, birds fly across the sky at sunset "
    "and the car drives fast along the river toward the snow mountain in Tokyo, 2024."
)
PROMPTS = [
    "A cat &amp; a dog  walking in the park at sunset.",
    "   Tokyo street at night,\n\tbright rain &lt;light&gt;   ",
    LONG,
    "café’s ＡＢＣ ﬁsh \u3000naïve über",
    "",
    "Paris &#39;2024&#39; &#x27;video&#x27; &notanentity; &amp done",
    "the fox &amp;amp; the bird",
    "x",
]

# Edge cases of html.unescape (numeric, named, legacy names without ';', longest-prefix
# matches, invalid code points) and of the two whitespace definitions (str.strip's
# isspace() includes U+001C..U+001F, the `regex` module's \s does not).
CLEAN_CASES = [
    "plain",
    "  a  b  ",
    "&amp;amp;amp;",
    "&AMP; &amp &ampx &ampfoo; &notin; &notit; &not &no",
    "&#0;|&#13;|&#128;|&#x80;|&#x9F;|&#xD800;|&#x110000;|&#1;|&#xb;|&#xFDD0;|&#x10FFFF;",
    "&#99999999999999999999999999; &#x0000000041; &#65 &#X41;",
    "&lt&gt &lt;&gt; &LT &quot&apos; &nbsp;x",
    "&#x1F600; &#128512; &NewLine;|&Tab;|",
    "a &&amp; b & c &; &#; &#x; &#xg; &a; &",
    "\x1c lead fs \x1d",
    "\u3000ideographic\u00a0nbsp\u200bzwsp\u2028ls\x85nel",
    "\x1c\x1d\x1e\x1f",
    "tab\tnew\nline\rreturn\x0bvt\x0cff",
    "&abcdefghijklmnopqrstuvwxyzabcdefghijklmn;",
    "&Afr; &acE; &nGt; &NotEqualTilde; &ThickSpace;",
    "ünï &eacute;&Eacute; &#233;",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;",
    "&#x2028; x &#x85; y &#xa0;",
]
FUZZ_ALPHABET = [
    "&", "&", "&", "#", "x", "X", ";", ";", "amp", "lt", "gt", "not", "in", "it", "nbsp",
    "3", "9", "0", "41", "a", "b", "e", "é", " ", " ", "  ", "\t", "\n", "\r", "\x0b",
    "\x1c", "\x1f", "\x85", "\u00a0", "\u3000", "\u2028", "\u200b", "\ufeff",
]


def make_corpus(rng: random.Random) -> list[str]:
    base = (
        "the a an of and in on with at over under cat dog runs jumps lazy quick brown fox video "
        "frame camera slowly slow cinematic move bright red blue green city street night rain light "
        "car drives fast woman man child walks park tree sunset ocean wave beach sand mountain snow "
        "river bird birds fly flies sky cloud quiet wet past while rolls across along toward done "
        "Paris Tokyo café naïve über fish 2024 10 3 & ' < > - \""
    ).split()
    syllables = "ka ro mi tel sun dra vo pen lis qua ther ing ed ly ment pre con ex pro tion al ar bo ce di fu ga ho ju ke la".split()
    pseudo = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    words = base + pseudo
    lines = []
    for _ in range(600):
        ws = [rng.choice(words) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            ws[0] = ws[0].capitalize()
        lines.append(" ".join(ws) + rng.choice([".", "!", ",", "", "?"]))
    return lines


def make_tokenizer(work: Path, rng: random.Random) -> None:
    (work / "corpus.txt").write_text("\n".join(make_corpus(rng)) + "\n")
    # SentencePiece normalisation rules: source code points TAB target code points (hex).
    rules = {"FF21": "41", "FF22": "42", "FF23": "43", "FF41": "61", "FB01": "66 69",
             "3000": "20", "2019": "27", "E9": "65 301"}
    (work / "rules.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in rules.items()))
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "spiece"), vocab_size=400,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        character_coverage=1.0, normalization_rule_tsv=str(work / "rules.tsv"), minloglevel=2,
    )
    spm_dir = work / "spm"
    spm_dir.mkdir()
    shutil.move(work / "spiece.model", spm_dir / "spiece.model")
    tokenizer = T5Tokenizer.from_pretrained(spm_dir, extra_ids=4)
    out = OUT / "tokenizer"
    tokenizer.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("is_local", None)  # where it was loaded from: not part of the tokenizer
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    # The transformers 4.x converter's normaliser and pre-tokeniser (see the module doc).
    spec = json.loads((out / "tokenizer.json").read_text())
    assert spec["normalizer"]["type"] == "Precompiled", spec["normalizer"]
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            spec["normalizer"],
            {"type": "Strip", "strip_left": False, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u2581"},
        ],
    }
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    v4 = OUT / "tokenizer_v4"
    v4.mkdir()
    (v4 / "tokenizer.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    shutil.copy(out / "tokenizer_config.json", v4 / "tokenizer_config.json")


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter so that no code path sees a constant (see module doc)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # linear [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def tokenize(tokenizer, prompts: list[str], max_len: int):
    """What `_get_t5_prompt_embeds` asks of the tokenizer."""
    inputs = tokenizer(
        prompts, padding="max_length", max_length=max_len, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    return inputs.input_ids, inputs.attention_mask


class PipelineStub:
    """The attributes `WanPipeline._get_t5_prompt_embeds` reads from `self`."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._execution_device = torch.device("cpu")


def prompt_embeds(tokenizer, encoder, prompts: list[str], max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' own code, called unbound on a stub holding the tokenizer and encoder."""
    stub = PipelineStub(tokenizer, encoder)
    with torch.no_grad():
        return WanPipeline._get_t5_prompt_embeds(
            stub, prompt=prompts, max_sequence_length=max_len, device=torch.device("cpu"), dtype=dtype
        )


def fuzz_cases(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 12))) for _ in range(count)]


def main() -> int:
    if transformers.__version__ != "5.24.0" or diffusers.__version__ != "0.42.1":
        print(f"warning: goldens are defined against transformers 5.24.0 and diffusers 0.42.1, found "
              f"{transformers.__version__} and {diffusers.__version__}", file=sys.stderr)
    if importlib.util.find_spec("ftfy") is not None:
        print("error: ftfy is installed; diffusers' prompt_clean would run ftfy.fix_text, which the "
              "Rust port does not (see the module doc)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # deterministic CPU reductions
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    gen = torch.Generator().manual_seed(SEED)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        make_tokenizer(Path(work), rng)
    tokenizer = AutoTokenizer.from_pretrained(OUT / "tokenizer")
    tokenizer_v4 = AutoTokenizer.from_pretrained(OUT / "tokenizer_v4")

    config = UMT5Config(vocab_size=len(tokenizer), **MODEL)
    model = UMT5EncoderModel(config).eval()
    randomise(model, gen)
    model.save_pretrained(OUT / "encoder")
    model.to(torch.bfloat16).save_pretrained(OUT / "encoder_bf16_sharded", max_shard_size="40KB")
    assert (OUT / "encoder_bf16_sharded" / "model.safetensors.index.json").is_file(), "expected shards"

    # Reload what was saved, so the goldens are what the Rust loader reads.
    fp32 = UMT5EncoderModel.from_pretrained(OUT / "encoder").eval()
    bf16 = UMT5EncoderModel.from_pretrained(OUT / "encoder", dtype=torch.bfloat16).eval()
    bf16_sharded = UMT5EncoderModel.from_pretrained(OUT / "encoder_bf16_sharded", dtype=torch.bfloat16).eval()
    fp16 = UMT5EncoderModel.from_pretrained(OUT / "encoder", dtype=torch.float16).eval()
    assert fp32.config._attn_implementation == "sdpa", fp32.config._attn_implementation
    kept = sorted(n for n, p in fp16.named_parameters() if p.dtype == torch.float32)
    assert kept and all(".wo." in n for n in kept), kept  # _keep_in_fp32_modules = ["wo"] in fp16
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # not in bf16

    cleaned = [prompt_clean(p) for p in PROMPTS]
    tensors = {}
    for max_len in MAX_LENS:
        ids, mask = tokenize(tokenizer, cleaned, max_len)
        ids_v4, mask_v4 = tokenize(tokenizer_v4, cleaned, max_len)
        with torch.no_grad():
            hidden = fp32(ids, mask).last_hidden_state
        tensors[f"ids_{max_len}"] = ids
        tensors[f"mask_{max_len}"] = mask
        tensors[f"ids_v4_{max_len}"] = ids_v4
        tensors[f"mask_v4_{max_len}"] = mask_v4
        tensors[f"hidden_fp32_{max_len}"] = hidden
        tensors[f"embeds_fp32_{max_len}"] = prompt_embeds(tokenizer, fp32, PROMPTS, max_len, torch.float32)
    longest = max(MAX_LENS)
    ids, mask = tensors[f"ids_{longest}"], tensors[f"mask_{longest}"]
    with torch.no_grad():
        hidden_bf16 = bf16(ids, mask).last_hidden_state
        assert torch.equal(hidden_bf16, bf16_sharded(ids, mask).last_hidden_state)
        tensors[f"hidden_bf16_{longest}"] = hidden_bf16.float()
        tensors[f"hidden_fp16_{longest}"] = fp16(ids, mask).last_hidden_state.float()
    tensors[f"embeds_bf16_{longest}"] = prompt_embeds(tokenizer, bf16, PROMPTS, longest, torch.bfloat16).float()
    attention = fp32.encoder.block[0].layer[0].SelfAttention
    positions = torch.arange(longest)
    tensors[f"buckets_{longest}"] = attention._relative_position_bucket(positions[None, :] - positions[:, None])

    # Longer texts through the tokenizer alone (no encoder): truncation, tabs and newlines
    # (where the v4 file's own pre-tokeniser would differ), sentinel and special tokens.
    raw_texts = PROMPTS + [
        "tab\there\nnew line", "a </s> b <extra_id_0>c <pad>", "  lead and trail  ", "ＡＢ\u3000ﬁ", LONG + " " + LONG,
    ]
    for max_len in MAX_LENS:
        for name, tok in [("raw", tokenizer), ("raw_v4", tokenizer_v4)]:
            ids, mask = tokenize(tok, raw_texts, max_len)
            tensors[f"ids_{name}_{max_len}"] = ids
            tensors[f"mask_{name}_{max_len}"] = mask

    # All f32, as the Rust reader (model::weights::read_safetensors) reads floats only: the
    # ids (< 2^24), masks and buckets are exact in f32.
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    generator = f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, torch {torch.__version__}"
    save_file(tensors, OUT / "io.safetensors", metadata={"generator": generator})

    clean_inputs = CLEAN_CASES + fuzz_cases(rng, 300)
    prompts_doc = {
        "prompts": PROMPTS,
        "cleaned": cleaned,
        "raw_texts": raw_texts,
        "max_lens": MAX_LENS,
        "clean_cases": [[text, prompt_clean(text)] for text in clean_inputs],
    }
    # ensure_ascii: the control and whitespace characters stay visible in the file.
    (OUT / "prompts.json").write_text(json.dumps(prompts_doc, indent=1, ensure_ascii=True) + "\n")

    # Deterministic, readable configs (no absolute paths).
    for folder in ["encoder", "encoder_bf16_sharded"]:
        path = OUT / folder / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True) + "\n")
    for f in OUT.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # save_file writes 0600

    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    h = tensors[f"hidden_fp32_{longest}"]
    print(f"vocab {len(tokenizer)}; bf16 vs fp32 rel err {rel(tensors[f'hidden_bf16_{longest}'], h):.2e}, "
          f"fp16 vs fp32 {rel(tensors[f'hidden_fp16_{longest}'], h):.2e}; seq lens "
          f"{tensors[f'mask_{longest}'].sum(1).long().tolist()}; golden {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
