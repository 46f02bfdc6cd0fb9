//! The student: the teacher's transformer with chosen blocks' self-attention replaced by
//! hybrid attention, each block with its own rate, anchor pattern and feature maps.
//!
//! On disk a student is a diffusers-format folder - the teacher's `config.json` and one
//! safetensors file holding the teacher's tensors plus every converted block's
//! `blocks.{i}.attn1.phi_{q,k}.*` - and `surgery.json`, which names each converted block's
//! rate and anchor pattern, the feature-map shape and the shared normaliser the feature
//! maps were trained for (a phi trained under one normaliser is mis-scaled under the
//! other, so loading refuses a student made with another one than this worker computes). diffusers itself can read the
//! teacher part; [`Student::load`] reads all of it back to the same outputs.

use crate::attention::SelfAttention;
use crate::attention::hybrid::{HybridAttention, HybridConfig, Normaliser};
use crate::model::weights::{self, WeightsError};
use crate::model::{WanConfig, WanTransformer};
use serde::{Deserialize, Serialize};
use std::path::Path;
use surgery_core::rate::Rate;
use surgery_core::spec::{AnchorPattern, FeatureMapSpec};
use tch::nn::VarStore;
use tch::{Device, Kind};

/// File beside the diffusers files that makes a folder a student.
pub const SURGERY_FILE: &str = "surgery.json";
const FORMAT: u32 = 1;

/// One converted block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertedBlock {
    pub block: u32,
    /// An integer R >= 2 or `linear` (rate 1 blocks are simply not listed).
    pub rate: Rate,
    pub anchor_pattern: AnchorPattern,
}

/// The contents of `surgery.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeryConfig {
    pub format: u32,
    pub feature_map: FeatureMapSpec,
    /// The shared normaliser of the hybrid blocks (METHOD.md section 1). Absent in
    /// students made before the normaliser revision (they used `anchor_sum`).
    #[serde(default)]
    pub normaliser: Option<Normaliser>,
    /// In block order; blocks not listed keep softmax attention.
    pub blocks: Vec<ConvertedBlock>,
}

impl SurgeryConfig {
    pub fn new(feature_map: FeatureMapSpec, mut blocks: Vec<ConvertedBlock>) -> SurgeryConfig {
        blocks.sort_by_key(|b| b.block);
        SurgeryConfig {
            format: FORMAT,
            feature_map,
            normaliser: Some(Normaliser::default()),
            blocks,
        }
    }

    /// Every block's rate: 1 (softmax) unless converted.
    pub fn rates(&self, blocks: usize) -> Vec<Rate> {
        let mut rates = vec![Rate::Softmax; blocks];
        for b in &self.blocks {
            if let Some(slot) = rates.get_mut(b.block as usize) {
                *slot = b.rate;
            }
        }
        rates
    }

    fn check(&self, cfg: &WanConfig) -> Result<(), StudentError> {
        if self.format != FORMAT {
            return Err(StudentError::Surgery(format!(
                "format {} is not supported (this worker reads {FORMAT})",
                self.format
            )));
        }
        let ours = Normaliser::default();
        if self.normaliser != Some(ours) {
            let theirs = self.normaliser.map_or(
                "anchor_sum (c_i = LSE over the anchors; made before the normaliser revision)",
                |n| n.word(),
            );
            return Err(StudentError::Surgery(format!(
                "this student's feature maps were trained with the {theirs} normaliser, but this worker computes \
                 hybrid attention with {} (c_i = LSE over the anchors - log |T_S|, METHOD.md section 1); \
                 its phi would be mis-scaled. Re-run the surgery (capture can be reused) to get a student for this worker",
                ours.word()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for b in &self.blocks {
            if i64::from(b.block) >= cfg.num_layers {
                return Err(StudentError::Surgery(format!(
                    "block {} does not exist; the model has {} blocks",
                    b.block, cfg.num_layers
                )));
            }
            if !seen.insert(b.block) {
                return Err(StudentError::Surgery(format!("block {} is listed twice", b.block)));
            }
            if b.rate == Rate::Softmax || !b.rate.is_valid() {
                return Err(StudentError::Surgery(format!(
                    "block {} has rate {}; a converted block needs R >= 2 or linear",
                    b.block, b.rate
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("surgery.json: {0}")]
    Surgery(String),
}

pub struct Student {
    pub vs: VarStore,
    pub model: WanTransformer,
    pub surgery: SurgeryConfig,
}

/// Puts a hybrid core on every converted block; their feature maps become variables of
/// `vs` under `blocks.{i}.attn1`.
fn convert(vs: &VarStore, model: &mut WanTransformer, surgery: &SurgeryConfig) {
    let cfg = model.config().clone();
    for b in &surgery.blocks {
        let path = vs.root() / "blocks" / i64::from(b.block) / "attn1";
        let hybrid = HybridConfig {
            normaliser: surgery.normaliser.unwrap_or_default(),
            ..HybridConfig::from_spec(
                &surgery.feature_map,
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                b.rate,
                b.anchor_pattern,
            )
        };
        model.set_self_attention(
            b.block as usize,
            SelfAttention::Hybrid(HybridAttention::new(&path, hybrid)),
        );
    }
}

impl Student {
    /// A new student from a teacher folder: the teacher's weights, and freshly initialised
    /// feature maps on the converted blocks (distilled ones are copied in afterwards).
    pub fn from_teacher(
        teacher: &Path,
        surgery: SurgeryConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Student, StudentError> {
        let (vs, mut model) = weights::load(teacher, device, kind)?;
        surgery.check(model.config())?;
        convert(&vs, &mut model, &surgery);
        // The new feature maps follow the model's dtype (diffusers' fp32 modules stay fp32).
        weights::cast_like_diffusers(&vs, kind);
        Ok(Student { vs, model, surgery })
    }

    /// Reads a student folder written by [`Student::save`].
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Student, StudentError> {
        let cfg = weights::read_config(dir)?;
        let path = dir.join(SURGERY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StudentError::File {
            path: path.display().to_string(),
            message: format!("cannot read it ({e}); a student folder has config.json, weights and {SURGERY_FILE}"),
        })?;
        let surgery: SurgeryConfig = serde_json::from_str(&text).map_err(|e| StudentError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        surgery.check(&cfg)?;
        let vs = VarStore::new(device);
        let mut model = WanTransformer::new(&vs.root(), &cfg);
        convert(&vs, &mut model, &surgery);
        weights::load_into(&vs, dir, kind)?;
        Ok(Student { vs, model, surgery })
    }

    /// Writes config.json, the weights (teacher + feature maps) and surgery.json.
    pub fn save(&self, dir: &Path) -> Result<(), StudentError> {
        weights::save(&self.vs, self.model.config(), dir)?;
        let path = dir.join(SURGERY_FILE);
        let text = serde_json::to_string_pretty(&self.surgery).expect("surgery config serialises");
        std::fs::write(&path, text).map_err(|e| StudentError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Copies trained feature-map tensors (`blocks.{i}.attn1.phi_*`, as a distill task
    /// writes them) into the student; every given name must be one of its variables.
    pub fn set_tensors<'a>(
        &mut self,
        tensors: impl IntoIterator<Item = (&'a str, &'a tch::Tensor)>,
    ) -> Result<(), StudentError> {
        let variables = self.vs.variables();
        tch::no_grad(|| {
            for (name, value) in tensors {
                let var = variables
                    .get(name)
                    .ok_or_else(|| StudentError::Surgery(format!("`{name}` is not a parameter of this student")))?;
                if var.size() != value.size() {
                    return Err(StudentError::Surgery(format!(
                        "`{name}` has shape {:?}, the student expects {:?}",
                        value.size(),
                        var.size()
                    )));
                }
                let mut var = var.shallow_clone();
                var.copy_(value);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn golden(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
    }

    fn surgery() -> SurgeryConfig {
        SurgeryConfig::new(
            FeatureMapSpec {
                hidden: 8,
                features: 8,
                chunks: 2,
                eps: 1e-6,
            },
            vec![
                ConvertedBlock {
                    block: 1,
                    rate: Rate::Linear,
                    anchor_pattern: AnchorPattern::Strided,
                },
                ConvertedBlock {
                    block: 0,
                    rate: Rate::Hybrid(2),
                    anchor_pattern: AnchorPattern::Diagonal,
                },
            ],
        )
    }

    fn inputs() -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(11);
        let latents = Tensor::randn([1, 4, 3, 8, 12], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[640f32]);
        let text = Tensor::randn([1, 8, 16], (Kind::Float, Device::Cpu));
        (latents, t, text)
    }

    #[test]
    fn saves_and_loads_back_to_the_same_outputs() {
        crate::runtime::init();
        let student = Student::from_teacher(&golden("tiny_a"), surgery(), Device::Cpu, Kind::Float).unwrap();
        assert!(matches!(student.model.self_attention(0), SelfAttention::Hybrid(h) if h.rate == Rate::Hybrid(2)));
        assert!(matches!(student.model.self_attention(1), SelfAttention::Hybrid(h) if h.rate == Rate::Linear));
        let (latents, t, text) = inputs();
        let before = student.model.forward(&latents, &t, &text);

        let dir = tempfile::tempdir().unwrap();
        student.save(dir.path()).unwrap();
        let again = Student::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(again.surgery, student.surgery);
        let after = again.model.forward(&latents, &t, &text);
        assert_eq!(
            Vec::<f32>::try_from(before.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(after.flatten(0, -1)).unwrap()
        );

        // The teacher differs (the hybrid blocks change the output).
        let (_, teacher) = weights::load(&golden("tiny_a"), Device::Cpu, Kind::Float).unwrap();
        let diff = (teacher.forward(&latents, &t, &text) - &after)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff > 1e-4, "a converted student equals its teacher ({diff})");
    }

    #[test]
    fn distilled_feature_maps_can_be_copied_in() {
        crate::runtime::init();
        let mut student = Student::from_teacher(&golden("tiny_a"), surgery(), Device::Cpu, Kind::Float).unwrap();
        let name = "blocks.1.attn1.phi_q.b2";
        let value = Tensor::full([2, 8], 0.25, (Kind::Float, Device::Cpu));
        student.set_tensors([(name, &value)]).unwrap();
        assert_eq!(student.vs.variables()[name].double_value(&[1, 3]), 0.25);
        let wrong = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let err = student.set_tensors([(name, &wrong)]).unwrap_err().to_string();
        assert!(err.contains("has shape [3], the student expects [2, 8]"), "{err}");
        let err = student
            .set_tensors([("blocks.9.attn1.phi_q.b2", &value)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a parameter of this student"), "{err}");
    }

    #[test]
    fn bad_surgery_files_are_named() {
        crate::runtime::init();
        let mut bad = surgery();
        bad.blocks[0].block = 7;
        let err = Student::from_teacher(&golden("tiny_a"), bad, Device::Cpu, Kind::Float)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "surgery.json: block 7 does not exist; the model has 2 blocks"
        );

        let dir = tempfile::tempdir().unwrap();
        let student = Student::from_teacher(&golden("tiny_a"), surgery(), Device::Cpu, Kind::Float).unwrap();
        student.save(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(SURGERY_FILE)).unwrap();
        let err = Student::load(dir.path(), Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("surgery.json: cannot read it"), "{err}");
        // The weights hold feature maps a plain teacher load does not expect.
        let err = weights::load(dir.path(), Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("phi_"), "{err}");
    }

    #[test]
    fn a_student_of_another_normaliser_is_refused() {
        crate::runtime::init();
        let dir = tempfile::tempdir().unwrap();
        let student = Student::from_teacher(&golden("tiny_a"), surgery(), Device::Cpu, Kind::Float).unwrap();
        student.save(dir.path()).unwrap();
        let path = dir.path().join(SURGERY_FILE);
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(saved["normaliser"], "anchor_mean");

        // Made with the first normaliser (written by this worker's comparison path) ...
        let mut other = saved.clone();
        other["normaliser"] = "anchor_sum".into();
        std::fs::write(&path, other.to_string()).unwrap();
        let err = Student::load(dir.path(), Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("trained with the anchor_sum normaliser"), "{err}");
        assert!(err.contains("Re-run the surgery"), "{err}");

        // ... or before the revision, when surgery.json did not record it.
        let mut old = saved;
        old.as_object_mut().unwrap().remove("normaliser");
        std::fs::write(&path, old.to_string()).unwrap();
        let err = Student::load(dir.path(), Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("made before the normaliser revision"), "{err}");
    }
}
