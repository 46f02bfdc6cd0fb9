//! The model inputs the stages share: the teacher on the task's device (checked against
//! the architecture the spec declares) and the prompt embeddings, each read from the URL
//! the spec names.

use super::TaskContext;
use super::folders::download_folder;
use super::pipeline;
use super::task::TaskError;
use crate::model::{WanTransformer, WeightsError, weights};
use crate::storage::{Storage, tensors};
use crate::student::Student;
use std::ops::Range;
use std::path::PathBuf;
use surgery_core::layout;
use surgery_core::spec::{Dtype, JobSpec};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// The LibTorch dtype of a spec's dtype.
pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::Fp32 => Kind::Float,
    }
}

/// A missing or malformed model is the user's to fix (fatal); a failed read is retried.
fn weights_error(err: WeightsError) -> TaskError {
    match err {
        WeightsError::Io { .. } => TaskError::retryable(err),
        other => TaskError::fatal(other),
    }
}

/// `(folder URL, file name)` of a file URL.
fn split_url(url: &str) -> (&str, &str) {
    match url.rsplit_once('/') {
        Some((dir, file)) if !dir.ends_with(':') && !dir.ends_with("/") => (dir, file),
        _ => (".", url),
    }
}

/// Reads one object given its full URL.
pub fn read_url(ctx: &TaskContext, url: &str) -> Result<bytes::Bytes, TaskError> {
    let (dir, file) = split_url(url);
    let storage = Storage::from_url(dir).map_err(TaskError::fatal)?;
    ctx.block_on(storage.get(file)).map_err(TaskError::retryable)
}

/// The teacher on the task's device in the spec's dtype, checked against the spec.
pub fn teacher(ctx: &TaskContext, spec: &JobSpec) -> Result<(VarStore, WanTransformer), TaskError> {
    let dir = pipeline::transformer_folder(ctx)?;
    let (vs, model) = weights::load(&dir, ctx.device, kind_of(spec.teacher.dtype)).map_err(weights_error)?;
    check_shape(spec, &model)?;
    Ok((vs, model))
}

/// The student in the job's folder `dir` (fresh from the store, at `{cache}/{purpose}/{job}`)
/// on the task's device in the spec's dtype, and the local folder it was loaded from.
pub fn student(ctx: &TaskContext, job: &Storage, dir: &str, purpose: &str) -> Result<(Student, PathBuf), TaskError> {
    let local = download_folder(ctx, job, dir, purpose)?;
    let student =
        Student::load(&local, ctx.device, kind_of(ctx.input.spec.teacher.dtype)).map_err(TaskError::retryable)?;
    Ok((student, local))
}

/// The teacher folder's config.json must describe the architecture the spec declares
/// (the planner and cost model used the spec's).
pub fn check_shape(spec: &JobSpec, model: &WanTransformer) -> Result<(), TaskError> {
    let found = model.config().shape();
    let want = spec.model_shape();
    let pairs = [
        ("layers", found.layers, want.layers),
        ("heads", found.heads, want.heads),
        ("head_dim", found.head_dim, want.head_dim),
        ("ffn_dim", found.ffn_dim, want.ffn_dim),
        ("text_dim", found.text_dim, want.text_dim),
        ("in_channels", found.in_channels, want.in_channels),
        ("out_channels", found.out_channels, want.out_channels),
        ("freq_dim", found.freq_dim, want.freq_dim),
    ];
    for (name, found, want) in pairs {
        if found != want {
            return Err(TaskError::Fatal(format!(
                "the teacher at {} has {name} = {found} but the spec's teacher shape says {want}",
                spec.teacher.url
            )));
        }
    }
    if found.patch != want.patch {
        return Err(TaskError::Fatal(format!(
            "the teacher's patch_size is {:?} but the spec says {:?}",
            found.patch, want.patch
        )));
    }
    Ok(())
}

/// The embeddings of a range of prompts (f32, CPU): from the spec's embedding file, or
/// from the encode stage's shards when the prompts are text.
pub struct Prompts {
    first: u32,
    /// [n, L, text_dim], prompt `first + i` at row i.
    embeds: Tensor,
    /// [1 or n, L, text_dim]: one negative for all, or one per prompt.
    negative: Option<Tensor>,
}

impl Prompts {
    /// Prompt `index`'s embeddings, [1, L, text_dim].
    pub fn text(&self, index: u32) -> Tensor {
        self.embeds.narrow(0, i64::from(index - self.first), 1)
    }

    /// Prompt `index`'s negative embeddings, [1, L, text_dim], when guidance needs them.
    pub fn negative(&self, index: u32) -> Option<Tensor> {
        self.negative.as_ref().map(|n| {
            if n.size()[0] == 1 {
                n.shallow_clone()
            } else {
                n.narrow(0, i64::from(index - self.first), 1)
            }
        })
    }
}

/// The embeddings of prompts `range` (indices into the spec's prompts).
pub fn prompts(ctx: &TaskContext, spec: &JobSpec, range: Range<u32>) -> Result<Prompts, TaskError> {
    if spec.prompt_source().needs_encoding() {
        encoded_prompts(ctx, spec, range)
    } else {
        embedded_prompts(ctx, spec, range)
    }
}

/// From the spec's embedding file: `prompt_embeds` [P, L, text_dim] and, for guidance > 1,
/// `negative_embeds` [1 or P, L, text_dim].
fn embedded_prompts(ctx: &TaskContext, spec: &JobSpec, range: Range<u32>) -> Result<Prompts, TaskError> {
    let url = &spec.data.prompts;
    let bytes = read_url(ctx, url)?;
    let mut map =
        tensors::from_bytes(&bytes).map_err(|e| TaskError::Fatal(format!("{url} is not a safetensors file: {e}")))?;
    let embeds = map
        .remove("prompt_embeds")
        .ok_or_else(|| TaskError::Fatal(format!("{url} has no `prompt_embeds` tensor [prompts, L, text_dim]")))?;
    let needed = i64::from(spec.data.train_prompts + spec.data.heldout_prompts);
    let shape = spec.model_shape();
    if embeds.dim() != 3 || embeds.size()[0] < needed || embeds.size()[2] != i64::from(shape.text_dim) {
        return Err(TaskError::Fatal(format!(
            "{url}: `prompt_embeds` is {:?}; the spec needs at least {needed} prompts (train + held-out) of width {}",
            embeds.size(),
            shape.text_dim
        )));
    }
    let negative = map.remove("negative_embeds");
    if spec.sampler.guidance > 1.0 && negative.is_none() {
        return Err(TaskError::Fatal(format!(
            "{url} has no `negative_embeds` [1, L, text_dim], which guidance {} needs",
            spec.sampler.guidance
        )));
    }
    let rows = |t: &Tensor| t.narrow(0, i64::from(range.start), i64::from(range.end - range.start));
    let negative = match negative {
        Some(n) if n.dim() == 3 && n.size()[0] == 1 => Some(n),
        Some(n) if n.dim() == 3 && n.size()[0] == embeds.size()[0] => Some(rows(&n)),
        Some(n) => {
            return Err(TaskError::Fatal(format!(
                "{url}: `negative_embeds` is {:?}; expected [1, L, text_dim] or one per prompt [{}, L, text_dim]",
                n.size(),
                embeds.size()[0]
            )));
        }
        None => None,
    };
    Ok(Prompts {
        first: range.start,
        embeds: rows(&embeds).to_kind(Kind::Float),
        negative: negative.map(|n| n.to_kind(Kind::Float)),
    })
}

/// From the encode stage's shards (`layout::encode_shard`), reading only those `range`
/// overlaps.
fn encoded_prompts(ctx: &TaskContext, spec: &JobSpec, range: Range<u32>) -> Result<Prompts, TaskError> {
    let job = ctx.job_storage()?;
    let shards = spec.encode_shard_list();
    let (mut embeds, mut negative) = (Vec::new(), Vec::new());
    let mut first = None;
    for shard in shards
        .iter()
        .filter(|s| s.first_prompt < range.end && range.start < s.first_prompt + s.num_prompts)
    {
        let path = layout::encode_shard(shard.shard);
        let bytes = ctx.block_on(job.get(&path)).map_err(TaskError::retryable)?;
        let mut map = tensors::from_bytes(&bytes).map_err(TaskError::retryable)?;
        let text = map
            .remove("prompt_embeds")
            .ok_or_else(|| TaskError::Retryable(format!("{path} has no `prompt_embeds`")))?;
        first.get_or_insert(shard.first_prompt);
        embeds.push(text.to_kind(Kind::Float));
        if let Some(n) = map.remove("negative_embeds") {
            negative.push(n.to_kind(Kind::Float));
        }
    }
    let Some(first) = first else {
        return Err(TaskError::Fatal(format!(
            "prompts {range:?} are outside the {} the spec encodes",
            spec.data.train_prompts + spec.data.heldout_prompts
        )));
    };
    let all = Tensor::cat(&embeds, 0);
    let keep = |t: &Tensor| t.narrow(0, i64::from(range.start - first), i64::from(range.end - range.start));
    if spec.sampler.guidance > 1.0 && negative.len() != embeds.len() {
        return Err(TaskError::Retryable(
            "an encode shard has no `negative_embeds`, which guidance needs".into(),
        ));
    }
    let negative = (!negative.is_empty()).then(|| keep(&Tensor::cat(&negative, 0)));
    Ok(Prompts {
        first: range.start,
        embeds: keep(&all),
        negative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_split_into_folder_and_name() {
        assert_eq!(split_url("file:///a/b/p.safetensors"), ("file:///a/b", "p.safetensors"));
        assert_eq!(split_url("s3://bucket/p.safetensors"), ("s3://bucket", "p.safetensors"));
    }
}
