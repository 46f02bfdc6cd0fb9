//! The folder `surgery-worker testbed train --out DIR` writes, and reading it back.
//!
//! ```text
//! DIR/teacher/config.json, diffusion_pytorch_model.safetensors
//!                                 the teacher in diffusers format (fp32), loadable by
//!                                 model::weights::load and by a job's teacher.url
//! DIR/teacher/testbed.json        TestbedDescription: the generator (with the codec), the
//!                                 latent normalisation and the prompt selection
//! DIR/prompts.safetensors         prompt_embeds [job_train + held_out, L, text_dim], the job's
//!                                 training prompts first, then the held-out ones;
//!                                 negative_embeds [1, L, text_dim], zeros (for guidance)
//! DIR/prompts.json                the same prompts' attribute tuples, a PromptSet
//! DIR/train.json                  the run: settings, loss curve, time, calls
//! DIR/checkpoints/step-*/         training state, to resume
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::description::GeneratorDescription;
use super::latent::LatentNorm;
use super::prompts::PromptSet;
use super::selection::PromptSelection;
use crate::model::weights;

pub const TEACHER_DIR: &str = "teacher";
pub const DESCRIPTION_FILE: &str = "testbed.json";
pub const PROMPTS_FILE: &str = "prompts.safetensors";
pub const PROMPTS_JSON: &str = "prompts.json";
pub const TRAIN_FILE: &str = "train.json";
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// What a testbed teacher was trained on and how to decode its samples: `teacher/testbed.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestbedDescription {
    /// The data generator, its codec included; checked against this build when read.
    pub generator: GeneratorDescription,
    /// Apply `x = z scale + shift` to a sampled latent before the codec decodes it.
    pub latent_norm: LatentNorm,
    /// The prompts the teacher trained on and the job's prompts.
    pub prompts: PromptSelection,
}

impl TestbedDescription {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Parses and checks a description: the generator must be this build's.
    pub fn from_json(text: &str) -> Result<TestbedDescription> {
        let description: TestbedDescription = serde_json::from_str(text)?;
        description.generator.check()?;
        description.latent_norm.validate()?;
        Ok(description)
    }

    /// `teacher/testbed.json` of a teacher folder.
    pub fn read(teacher_dir: &Path) -> Result<TestbedDescription> {
        let path = teacher_dir.join(DESCRIPTION_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a testbed teacher folder has one; `surgery-worker testbed train` writes it)",
                path.display()
            )
        })?;
        Self::from_json(&text).with_context(|| format!("{} is not a usable testbed description", path.display()))
    }
}

/// A folder written by `testbed train`, located from the folder or its `teacher/` subfolder.
#[derive(Debug, Clone)]
pub struct TestbedFolder {
    pub root: PathBuf,
}

impl TestbedFolder {
    pub fn new(root: &Path) -> TestbedFolder {
        TestbedFolder {
            root: root.to_path_buf(),
        }
    }

    /// `dir` is the `--out` folder of `testbed train` or its `teacher/` subfolder.
    pub fn locate(dir: &Path) -> Result<TestbedFolder> {
        if dir.join(TEACHER_DIR).join(DESCRIPTION_FILE).is_file() {
            return Ok(TestbedFolder::new(dir));
        }
        if dir.join(DESCRIPTION_FILE).is_file()
            && let Some(parent) = dir.parent()
            && parent.join(PROMPTS_JSON).is_file()
        {
            return Ok(TestbedFolder::new(parent));
        }
        bail!(
            "{} is not a testbed teacher folder: expected {}/{} (what `surgery-worker testbed train --out {}` writes)",
            dir.display(),
            TEACHER_DIR,
            DESCRIPTION_FILE,
            dir.display()
        )
    }

    pub fn teacher(&self) -> PathBuf {
        self.root.join(TEACHER_DIR)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINT_DIR)
    }

    pub fn train_record(&self) -> PathBuf {
        self.root.join(TRAIN_FILE)
    }

    pub fn description(&self) -> Result<TestbedDescription> {
        TestbedDescription::read(&self.teacher())
    }

    /// The job's prompts (`prompts.json`).
    pub fn prompt_set(&self) -> Result<PromptSet> {
        let path = self.root.join(PROMPTS_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a prompt set", path.display()))
    }

    /// Writes `prompts.json` and `prompts.safetensors` for the job's prompts.
    pub fn write_prompts(&self, set: &PromptSet, description: &TestbedDescription) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        let book = description.generator.code_book()?;
        let prompts: Vec<_> = set.train.iter().chain(&set.held_out).cloned().collect();
        let embeds = book.embed_batch(&prompts);
        let negative = Tensor::zeros(
            [1, book.text_len() as i64, book.text_dim() as i64],
            (Kind::Float, tch::Device::Cpu),
        );
        weights::write_safetensors(
            &self.root.join(PROMPTS_FILE),
            [("prompt_embeds", &embeds), ("negative_embeds", &negative)],
            None,
        )?;
        let path = self.root.join(PROMPTS_JSON);
        std::fs::write(&path, serde_json::to_string_pretty(set)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}
