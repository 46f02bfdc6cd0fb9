//! Prompt text to the Wan transformer's text conditioning, natively: the umT5 encoder and
//! its tokenizer, so capture and evaluation jobs can embed prompts without a Python
//! process, and so the embeddings are the pipeline's. [`tokenize`] cleans prompts like
//! diffusers' `WanPipeline` and tokenizes them like transformers 5's `T5Tokenizer` (the
//! `tokenizers` crate on the pipeline's tokenizer.json); [`umt5`] is transformers'
//! `UMT5EncoderModel` in tch, loaded from a transformers folder (single or sharded
//! safetensors, fp32/bf16/fp16); [`wan_prompt_embeds`] is `WanPipeline._get_t5_prompt_embeds`.
//! Parity with transformers and diffusers is tested against committed goldens in
//! `worker/tests/umt5.rs` (generator: `scripts/golden/make_umt5_golden.py`). This module
//! owns text only: the diffusion transformer that consumes the embeddings is
//! [`crate::model`].

mod html5_entities;
pub mod tokenize;
pub mod umt5;

use std::path::PathBuf;

use tch::{Kind, Tensor};

pub use tokenize::{PromptTokenizer, TokenBatch, prompt_clean};
pub use umt5::{Umt5Config, Umt5Encoder};

use crate::model::weights::WeightsError;

/// Why a tokenizer or text encoder could not be loaded or run. Paths are as given.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(
        "{dir} has no config.json: not a transformers model folder (expected the text encoder's folder, e.g. <model>/text_encoder)"
    )]
    MissingConfig { dir: PathBuf },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{path}: feed_forward_proj {found:?} is not supported; the umT5 encoder has a gated-GELU feed-forward (\"gated-gelu\": wi_0, wi_1, wo)"
    )]
    UnsupportedFeedForward { path: PathBuf, found: String },
    #[error("cannot load the text encoder as {kind:?}: only Float, BFloat16 and Half are supported")]
    UnsupportedKind { kind: Kind },
    #[error("{dir} has neither model.safetensors nor model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file ({reason}); re-download or re-save it")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path} is not a valid shard index ({reason})")]
    BadIndex { path: PathBuf, reason: String },
    #[error("{name} is stored twice, in {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("checkpoint {dir} lacks {count} tensor(s) the text encoder needs: {names}")]
    MissingTensors { dir: PathBuf, count: usize, names: String },
    #[error(
        "checkpoint {dir} has {count} tensor(s) the text encoder does not: {names} (a different architecture or config?)"
    )]
    UnexpectedTensors { dir: PathBuf, count: usize, names: String },
    #[error(
        "{name} in {file} has shape {found:?}, the text encoder expects {expected:?} (does config.json match the weights?)"
    )]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{name} in {file} has dtype {dtype}; only F32, F16, BF16 and F64 are supported")]
    UnsupportedDtype { name: String, file: PathBuf, dtype: String },
    #[error("no tokenizer at {path} (expected the pipeline's tokenizer folder, e.g. <model>/tokenizer)")]
    MissingTokenizer { path: PathBuf },
    #[error("{path} is not a usable T5/umT5 tokenizer: {reason}")]
    BadTokenizer { path: PathBuf, reason: String },
    #[error("tokenizing failed: {reason}")]
    Tokenize { reason: String },
    #[error(
        "the tokenizer has {tokenizer} ids but the text encoder's vocabulary only {encoder}: they are not from one pipeline"
    )]
    VocabMismatch { tokenizer: usize, encoder: i64 },
}

/// diffusers' `WanPipeline._get_t5_prompt_embeds(prompts, max_sequence_length=max_len)`
/// (`max_len` is 512 in Wan): each prompt cleaned ([`prompt_clean`]), tokenized to
/// `max_len` with its `</s>`, encoded with its mask, then every row cut to its token count
/// and zero-filled back to `max_len`: [B, max_len, d_model] in the encoder's dtype on its
/// device (the pipeline then casts to the transformer's dtype). Runs without autograd.
pub fn wan_prompt_embeds(
    tokenizer: &PromptTokenizer,
    encoder: &Umt5Encoder,
    prompts: &[String],
    max_len: usize,
) -> Result<Tensor, TextError> {
    if tokenizer.vocab_size() as i64 > encoder.config().vocab_size {
        return Err(TextError::VocabMismatch {
            tokenizer: tokenizer.vocab_size(),
            encoder: encoder.config().vocab_size,
        });
    }
    let cleaned: Vec<String> = prompts.iter().map(|p| prompt_clean(p)).collect();
    let batch = tokenizer.encode_batch(&cleaned, max_len)?;
    let device = encoder.device();
    tch::no_grad(|| {
        let hidden = encoder.forward(&batch.ids, &batch.mask);
        // seq_lens = mask.gt(0).sum(1); [u[:v] for u, v in ...] padded with new_zeros: the
        // positions from each row's length on become exact zeros.
        let seq_lens = batch.mask.gt(0).sum_dim_intlist(1, true, Kind::Int64).to_device(device); // [B, 1]
        let positions = Tensor::arange(max_len as i64, (Kind::Int64, device)).unsqueeze(0); // [1, L]
        let kept = positions.lt_tensor(&seq_lens).unsqueeze(-1); // [B, L, 1]
        Ok(hidden.where_scalarother(&kept, 0.0))
    })
}
