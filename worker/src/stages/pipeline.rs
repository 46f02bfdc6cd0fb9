//! Where the teacher's models are: `teacher.url` is either a diffusers transformer folder
//! or a diffusers pipeline folder (model_index.json beside transformer/, text_encoder/,
//! tokenizer/, vae/). The decision is a pure function of the spec and the folder's
//! model_index.json ([`model_urls`]); [`resolve`] reads that one file, so a pipeline's
//! other models are only downloaded by the stages that use them.

use super::TaskContext;
use super::folders::model_folder;
use super::task::TaskError;
use crate::storage::Storage;
use std::path::PathBuf;
use surgery_core::spec::TeacherSpec;

/// The file that makes a folder a diffusers pipeline.
pub const MODEL_INDEX: &str = "model_index.json";

/// The URLs of the teacher's models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUrls {
    pub transformer: String,
    pub text_encoder: Option<String>,
    pub tokenizer: Option<String>,
    pub vae: Option<String>,
}

/// `{url}/{sub}` for a local path or an object-store URL.
pub fn join_url(url: &str, sub: &str) -> String {
    format!("{}/{sub}", url.trim_end_matches('/'))
}

/// The models of `teacher`, given the bytes of `{teacher.url}/model_index.json` when the
/// folder has one. A model set in the spec wins over the pipeline's.
pub fn model_urls(teacher: &TeacherSpec, model_index: Option<&[u8]>) -> Result<ModelUrls, String> {
    let Some(bytes) = model_index else {
        return Ok(ModelUrls {
            transformer: teacher.url.clone(),
            text_encoder: teacher.text_encoder.clone(),
            tokenizer: teacher.tokenizer.clone(),
            vae: teacher.vae.clone(),
        });
    };
    let index: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| format!("{}: not a JSON object: {e}", join_url(&teacher.url, MODEL_INDEX)))?;
    if !index.contains_key("transformer") {
        return Err(format!(
            "{} lists no `transformer`: this pipeline has no Wan transformer to distil",
            join_url(&teacher.url, MODEL_INDEX)
        ));
    }
    // A component the index lists as [null, null] is absent from the pipeline.
    let listed = |name: &str| {
        index
            .get(name)
            .is_some_and(|v| v.as_array().is_none_or(|parts| parts.iter().any(|p| !p.is_null())))
    };
    let component = |name: &str, set: &Option<String>| {
        set.clone()
            .or_else(|| listed(name).then(|| join_url(&teacher.url, name)))
    };
    Ok(ModelUrls {
        transformer: join_url(&teacher.url, "transformer"),
        text_encoder: component("text_encoder", &teacher.text_encoder),
        tokenizer: component("tokenizer", &teacher.tokenizer),
        vae: component("vae", &teacher.vae),
    })
}

/// The teacher's models, from the spec and the folder's model_index.json if it has one.
pub fn resolve(ctx: &TaskContext) -> Result<ModelUrls, TaskError> {
    let teacher = &ctx.input.spec.teacher;
    let storage = Storage::from_url(&teacher.url).map_err(TaskError::fatal)?;
    let index = ctx
        .block_on(storage.get_opt(MODEL_INDEX))
        .map_err(TaskError::retryable)?;
    model_urls(teacher, index.as_deref()).map_err(TaskError::Fatal)
}

/// A local copy of the teacher's transformer folder.
pub fn transformer_folder(ctx: &TaskContext) -> Result<PathBuf, TaskError> {
    let urls = resolve(ctx)?;
    model_folder(ctx, &urls.transformer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher(url: &str) -> TeacherSpec {
        TeacherSpec {
            url: url.into(),
            text_encoder: None,
            tokenizer: None,
            vae: None,
            preset: None,
            shape: None,
            dtype: Default::default(),
        }
    }

    const WAN_INDEX: &str = r#"{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [null, null],
        "vae": ["diffusers", "AutoencoderKLWan"]}"#;

    #[test]
    fn a_transformer_folder_is_the_transformer() {
        let mut spec = teacher("s3://b/wan/transformer");
        spec.vae = Some("s3://b/wan/vae".into());
        let urls = model_urls(&spec, None).unwrap();
        assert_eq!(urls.transformer, "s3://b/wan/transformer");
        assert_eq!(urls.text_encoder, None);
        assert_eq!(urls.vae.as_deref(), Some("s3://b/wan/vae"));
    }

    #[test]
    fn a_pipeline_folder_names_its_models_and_the_spec_overrides_them() {
        let mut spec = teacher("s3://b/Wan2.1-T2V-1.3B-Diffusers/");
        let urls = model_urls(&spec, Some(WAN_INDEX.as_bytes())).unwrap();
        assert_eq!(urls.transformer, "s3://b/Wan2.1-T2V-1.3B-Diffusers/transformer");
        assert_eq!(
            urls.text_encoder.as_deref(),
            Some("s3://b/Wan2.1-T2V-1.3B-Diffusers/text_encoder")
        );
        assert_eq!(
            urls.tokenizer.as_deref(),
            Some("s3://b/Wan2.1-T2V-1.3B-Diffusers/tokenizer")
        );
        assert_eq!(urls.vae.as_deref(), Some("s3://b/Wan2.1-T2V-1.3B-Diffusers/vae"));
        spec.text_encoder = Some("/fast/umt5".into());
        let urls = model_urls(&spec, Some(WAN_INDEX.as_bytes())).unwrap();
        assert_eq!(urls.text_encoder.as_deref(), Some("/fast/umt5"));
    }

    #[test]
    fn an_index_without_a_model_leaves_it_out() {
        let index = r#"{"transformer": ["diffusers", "WanTransformer3DModel"], "vae": [null, null]}"#;
        let urls = model_urls(&teacher("/m"), Some(index.as_bytes())).unwrap();
        assert_eq!(urls.vae, None);
        assert_eq!(urls.tokenizer, None);
    }

    #[test]
    fn a_bad_index_says_which_file_and_why() {
        let err = model_urls(&teacher("/m"), Some(b"[1, 2")).unwrap_err();
        assert!(err.starts_with("/m/model_index.json: not a JSON object"), "{err}");
        let err = model_urls(&teacher("/m"), Some(br#"{"vae": ["diffusers", "AutoencoderKLWan"]}"#)).unwrap_err();
        assert!(err.contains("lists no `transformer`"), "{err}");
    }
}
