//! Prompt text to the Wan transformer's text conditioning, natively: the umT5 encoder and
//! its tokenizer, so capture and evaluation jobs can embed prompts without a Python
//! process, and so the embeddings are the pipeline's. [`tokenize`] cleans prompts like
//! diffusers' `WanPipeline` and tokenizes them like transformers 5's `T5Tokenizer` (the
//! `tokenizers` crate on the pipeline's tokenizer.json); `umt5` (next) is transformers'
//! `UMT5EncoderModel` in tch, loaded from a transformers folder (single or sharded
//! safetensors, fp32/bf16/fp16); `wan_prompt_embeds` (next) is `WanPipeline._get_t5_prompt_embeds`.
//! Parity with transformers and diffusers is tested against committed goldens in
//! `worker/tests/umt5.rs` (generator: `scripts/golden/make_umt5_golden.py`). This module
//! owns text only: the diffusion transformer that consumes the embeddings is
//! [`crate::model`].

mod html5_entities;
pub mod tokenize;

use std::path::PathBuf;

use tch::Kind;

pub use tokenize::{PromptTokenizer, TokenBatch, prompt_clean};

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
