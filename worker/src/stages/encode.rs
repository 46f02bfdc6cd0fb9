//! Encode: a slice of the job's text prompts (and their negative prompts) becomes umT5
//! embeddings exactly as diffusers' WanPipeline builds them (cleaned text, the tokenizer
//! padding to `text_len` with the EOS kept on truncation, the encoder masked, each row
//! trimmed to its length and zero-padded back), written to `encode/shard-{s}` for capture,
//! fine-tuning and evaluation to read. Runs once per slice; a retry rewrites the shard
//! whole (one put), so a reader never sees half of one.

use super::folders::model_folder;
use super::model_inputs::{kind_of, read_url};
use super::task::{TaskError, TaskOutput};
use super::{CaptureShard, TaskContext, pipeline, prompt_file};
use crate::storage::tensors;
use crate::text::{PromptTokenizer, Umt5Encoder, wan_prompt_embeds};
use std::collections::BTreeMap;
use surgery_core::layout;
use tch::Tensor;

/// Prompts encoded per encoder call: bounds activation memory at 512 tokens.
const BATCH: usize = 8;

pub fn run(ctx: &TaskContext, params: CaptureShard) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let source = spec.prompt_source();
    let bytes = read_url(ctx, &spec.data.prompts)?;
    let all =
        prompt_file::parse(source, &spec.data.prompts, &bytes, &spec.data.negative_prompt).map_err(TaskError::Fatal)?;
    let needed = spec.data.train_prompts + spec.data.heldout_prompts;
    let prompts = prompt_file::slice(
        &all,
        &spec.data.prompts,
        params.first_prompt,
        params.num_prompts,
        needed,
    )
    .map_err(TaskError::Fatal)?;

    let urls = pipeline::resolve(ctx)?;
    let missing = |what: &str, field: &str| {
        TaskError::Fatal(format!(
            "data.prompts is text ({}), so the job needs a {what}: teacher.url ({}) is not a diffusers pipeline \
             folder with one (no model_index.json listing it) and teacher.{field} is not set",
            spec.data.prompts, spec.teacher.url
        ))
    };
    let encoder_url = urls
        .text_encoder
        .ok_or_else(|| missing("text encoder", "text_encoder"))?;
    let tokenizer_url = urls.tokenizer.ok_or_else(|| missing("tokenizer", "tokenizer"))?;
    let tokenizer_dir = model_folder(ctx, &tokenizer_url)?;
    let tokenizer = PromptTokenizer::load(&tokenizer_dir).map_err(TaskError::fatal)?;
    let encoder_dir = model_folder(ctx, &encoder_url)?;
    let kind = kind_of(spec.teacher.dtype);
    let encoder = Umt5Encoder::load(&encoder_dir, ctx.device, kind).map_err(TaskError::fatal)?;
    let text_len = spec.model_shape().text_len as usize;
    let text_dim = i64::from(spec.model_shape().text_dim);
    if encoder.config().d_model != text_dim {
        return Err(TaskError::Fatal(format!(
            "the text encoder at {encoder_url} makes {}-wide embeddings; the teacher's text_dim is {text_dim}",
            encoder.config().d_model
        )));
    }

    let embed = |texts: Vec<String>| -> Result<Tensor, TaskError> {
        let mut rows = Vec::new();
        for chunk in texts.chunks(BATCH) {
            ctx.handle.check()?;
            let out = wan_prompt_embeds(&tokenizer, &encoder, chunk, text_len).map_err(TaskError::fatal)?;
            rows.push(out.to_kind(kind).to_device(tch::Device::Cpu));
        }
        Ok(Tensor::cat(&rows, 0))
    };
    let mut out = BTreeMap::new();
    out.insert(
        "prompt_embeds".to_string(),
        embed(prompts.iter().map(|p| p.prompt.clone()).collect())?,
    );
    if spec.sampler.guidance > 1.0 {
        // Negatives repeat (most jobs have one): each distinct one is encoded once.
        let mut distinct: Vec<String> = prompts.iter().map(|p| p.negative.clone()).collect();
        distinct.sort();
        distinct.dedup();
        let encoded = embed(distinct.clone())?;
        let rows: Vec<i64> = prompts
            .iter()
            .map(|p| {
                distinct
                    .binary_search(&p.negative)
                    .expect("every negative is in the list") as i64
            })
            .collect();
        out.insert(
            "negative_embeds".to_string(),
            encoded.index_select(0, &Tensor::from_slice(&rows)),
        );
    }
    for (name, t) in &out {
        if t.isfinite().all().int64_value(&[]) == 0 {
            return Err(TaskError::Retryable(format!(
                "the text encoder produced non-finite {name}"
            )));
        }
    }
    let path = layout::encode_shard(params.shard);
    let named: Vec<(&str, &Tensor)> = out.iter().map(|(n, t)| (n.as_str(), t)).collect();
    ctx.block_on(job.put(&path, tensors::to_bytes(&named)))
        .map_err(TaskError::retryable)?;
    ctx.handle.log(
        "info",
        format!(
            "encoded prompts {}..{} into {path}",
            params.first_prompt,
            params.first_prompt + params.num_prompts
        ),
    );
    Ok(TaskOutput {
        metrics: BTreeMap::from([("prompts".to_string(), f64::from(params.num_prompts))]),
        artifacts: vec![path],
        labels: BTreeMap::new(),
        report: true,
    })
}
