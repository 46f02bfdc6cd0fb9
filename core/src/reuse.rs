//! Forking a job: which of a new job's encode, capture and distill tasks may stand on a
//! parent job's results instead of running again. A pure function of the two specs
//! ([`reusable`]): each task has a *key*, the named spec values its output depends on, and
//! a task is reusable when the parent planned a task of the same name with the same key.
//!
//! What each key holds, and why:
//! * encode shard s: the prompts (file, negative prompt, the shard's slice), the text
//!   encoder and tokenizer (explicit or the teacher pipeline's), the teacher's dtype and
//!   text width (the embeddings' shape).
//! * capture shard s: the teacher (url, architecture, dtype), the prompts and their slice
//!   (and the encoder inputs for text prompts), the video, the sampler (seed included: it
//!   draws the noise) and the captured steps.
//! * distill (b, r): everything every capture shard depends on (a distill task reads all
//!   of them), the anchor pattern, the feature map, the distill settings, the block and
//!   the rate.
//!
//! Deliberately not in any key: the name, priority, selection rule and budget, the
//! fine-tuning, evaluation, resources (the device: results agree across devices to
//! rounding), checkpoint and retry settings, the VAE, and held-out prompts (those only
//! change which encode shard is the last).

use crate::ids;
use crate::rate::Rate;
use crate::spec::{CaptureShard, JobSpec};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One named input of a task's output: the spec path and its value, as JSON.
type Key = Vec<(&'static str, String)>;

fn value(x: &impl Serialize) -> String {
    serde_json::to_string(x).expect("spec values serialise")
}

/// The new job's tasks that may reuse the parent's, and for each stage that reuses less
/// than all, why not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reuse {
    /// Task names (`capture/shard-0003`, `distill/block-07/rate-4`, ...).
    pub tasks: BTreeSet<String>,
    /// One line per stage of encode, capture and distill: how many tasks may be reused and
    /// which spec fields stopped the rest.
    pub notes: Vec<String>,
}

/// The tasks of `child` whose output equals the parent's task of the same name, because
/// every input it depends on is identical, and which the parent has finished
/// (`finished(task)`; every task counts as finished when asking what *could* be reused).
pub fn reusable(parent: &JobSpec, child: &JobSpec, finished: impl Fn(&str) -> bool) -> Reuse {
    let mut reuse = Reuse::default();
    let mut stage = |name: &str, keys: Vec<(String, Key)>, parent_keys: BTreeMap<String, Key>| {
        let total = keys.len();
        let mut why: BTreeSet<&'static str> = BTreeSet::new();
        let (mut reused, mut unfinished) = (0, 0);
        for (task, key) in keys {
            match parent_keys.get(&task) {
                Some(theirs) if *theirs == key && finished(&task) => {
                    reuse.tasks.insert(task);
                    reused += 1;
                }
                Some(theirs) if *theirs == key => unfinished += 1,
                Some(theirs) => why.extend(differences(theirs, &key)),
                None => {
                    why.insert("(the parent has no such task)");
                }
            }
        }
        if total == 0 {
            return;
        }
        let mut note = format!("{name}: {reused} of {total} reused");
        if unfinished > 0 {
            note.push_str(&format!("; {unfinished} not finished in the parent"));
        }
        if !why.is_empty() {
            let fields = why.into_iter().collect::<Vec<_>>().join(", ");
            note.push_str(&format!("; the rest differ in {fields}"));
        }
        reuse.notes.push(note);
    };
    stage("encode", encode_keys(child), encode_keys(parent).into_iter().collect());
    stage(
        "capture",
        capture_keys(child),
        capture_keys(parent).into_iter().collect(),
    );
    stage(
        "distill",
        distill_keys(child),
        distill_keys(parent).into_iter().collect(),
    );
    reuse
}

/// The fields whose values differ between two keys of the same task kind.
fn differences(a: &Key, b: &Key) -> Vec<&'static str> {
    let theirs: BTreeMap<&str, &String> = a.iter().map(|(k, v)| (*k, v)).collect();
    b.iter()
        .filter(|(k, v)| theirs.get(k) != Some(&v))
        .map(|(k, _)| *k)
        .collect()
}

/// The text encoder's inputs, for text prompts; nothing for embeddings.
fn encoder_inputs(spec: &JobSpec) -> Key {
    if !spec.prompt_source().needs_encoding() {
        return Vec::new();
    }
    let teacher = &spec.teacher;
    let shape = spec.model_shape();
    let mut key = vec![
        ("teacher.text_encoder", value(&teacher.text_encoder)),
        ("teacher.tokenizer", value(&teacher.tokenizer)),
        ("teacher.dtype", value(&teacher.dtype)),
        ("teacher.shape.text_len", value(&shape.text_len)),
        ("teacher.shape.text_dim", value(&shape.text_dim)),
        ("data.negative_prompt", value(&spec.data.negative_prompt)),
    ];
    // Without an explicit encoder or tokenizer they come from the teacher's pipeline.
    if teacher.text_encoder.is_none() || teacher.tokenizer.is_none() {
        key.push(("teacher.url", value(&teacher.url)));
    }
    key
}

fn shard_inputs(shard: &CaptureShard) -> Key {
    vec![(
        "the shard's prompts (data.train_prompts, data.prompts_per_shard)",
        value(&(shard.first_prompt, shard.num_prompts)),
    )]
}

fn encode_keys(spec: &JobSpec) -> Vec<(String, Key)> {
    spec.encode_shard_list()
        .iter()
        .map(|shard| {
            let mut key = vec![("data.prompts", value(&spec.data.prompts))];
            key.extend(encoder_inputs(spec));
            key.extend(shard_inputs(shard));
            (ids::encode_task(shard.shard), key)
        })
        .collect()
}

/// What every capture shard of a spec depends on, whatever its slice of the prompts.
fn capture_common(spec: &JobSpec) -> Key {
    let mut key = vec![
        ("teacher.url", value(&spec.teacher.url)),
        ("teacher.preset/shape", value(&spec.model_shape())),
        ("teacher.dtype", value(&spec.teacher.dtype)),
        ("data.prompts", value(&spec.data.prompts)),
        ("video", value(&spec.video)),
        ("sampler", value(&spec.sampler)),
        ("stages.capture.steps", value(&spec.stages.capture.steps)),
    ];
    key.extend(encoder_inputs(spec));
    key.sort_by_key(|(name, _)| *name);
    key.dedup_by_key(|(name, _)| *name);
    key
}

fn capture_keys(spec: &JobSpec) -> Vec<(String, Key)> {
    spec.capture_shard_list()
        .iter()
        .map(|shard| {
            let mut key = capture_common(spec);
            key.extend(shard_inputs(shard));
            (ids::capture_task(shard.shard), key)
        })
        .collect()
}

fn distill_keys(spec: &JobSpec) -> Vec<(String, Key)> {
    let mut common = capture_common(spec);
    // A distill task trains on every capture shard.
    common.extend([
        ("data.train_prompts", value(&spec.data.train_prompts)),
        ("data.prompts_per_shard", value(&spec.data.prompts_per_shard)),
        ("surgery.anchor_pattern", value(&spec.surgery.anchor_pattern)),
        ("surgery.feature_map", value(&spec.surgery.feature_map)),
        ("stages.distill", value(&spec.stages.distill)),
    ]);
    spec.distill_pairs()
        .into_iter()
        .map(|(block, rate): (u32, Rate)| (ids::distill_task(block, rate), common.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
