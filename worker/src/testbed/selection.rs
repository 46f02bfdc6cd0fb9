//! [`PromptSelection`]: which prompts a testbed teacher trains on and which a job uses, drawn
//! with [`PromptSet::generate`] and nothing else.
//!
//! One prompt set of `teacher_train` training prompts is the teacher's data; its first
//! `job_train` prompts are the job's training prompts (what capture samples), followed by
//! `held_out` prompts, each showing a (shape, colour) pair no training prompt shows. Because a
//! set's training prompts are drawn one after another from their own stream, the first
//! `job_train` of `teacher_train` are exactly the training prompts of a set of `job_train`,
//! and the held-out prompts do not depend on the training count.
//!
//! **decision: `max_objects` simplifies a set through the existing API only.** With
//! `max_objects < 3`, prompts with more objects are dropped from both splits (the generator
//! is asked for more until enough remain). Dropping keeps the split's rules: training prompts
//! still never show a reserved pair, held-out prompts always do. The CPU preset uses it (one
//! object per clip) so a teacher small enough for a test learns something measurable.

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::prompts::{PromptSet, PromptSetSpec};
use super::scene::{MAX_OBJECTS, Prompt};

/// What prompts a testbed teacher and its job use (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSelection {
    pub seed: u64,
    /// Training prompts of the teacher.
    pub teacher_train: usize,
    /// The first this many training prompts are the job's (`data.train_prompts`).
    pub job_train: usize,
    /// Held-out prompts (`data.heldout_prompts`), after the job's training prompts.
    pub held_out: usize,
    /// (shape, colour) pairs only held-out prompts show; see [`PromptSetSpec`].
    pub reserved_pairs: usize,
    /// Probability of the textured background; see [`PromptSetSpec`].
    pub textured_fraction: f64,
    /// Prompts with more objects are dropped (1 to 3; 3 keeps every prompt).
    pub max_objects: usize,
}

/// The drawn prompts of a [`PromptSelection`].
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedPrompts {
    /// The teacher's training prompts; the job's are the first `job_train`.
    pub teacher_train: Vec<Prompt>,
    /// The job's set: `train` = the first `job_train` teacher prompts, then `held_out`.
    pub job: PromptSet,
}

impl PromptSelection {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.teacher_train >= 1, "the teacher needs at least 1 training prompt");
        ensure!(
            self.job_train <= self.teacher_train,
            "the job's {} training prompts must come from the teacher's {}",
            self.job_train,
            self.teacher_train
        );
        ensure!(self.job_train >= 1, "the job needs at least 1 training prompt");
        ensure!(self.held_out >= 1, "at least 1 held-out prompt is needed to evaluate");
        ensure!(
            (1..=MAX_OBJECTS).contains(&self.max_objects),
            "max_objects must be 1 to {MAX_OBJECTS}, got {}",
            self.max_objects
        );
        Ok(())
    }

    fn set_spec(&self, train: usize, held_out: usize) -> PromptSetSpec {
        PromptSetSpec {
            seed: self.seed,
            train,
            held_out,
            reserved_pairs: self.reserved_pairs,
            textured_fraction: self.textured_fraction,
        }
    }

    /// Draws the prompts; deterministic in the selection.
    pub fn draw(&self) -> Result<SelectedPrompts> {
        self.validate()?;
        let keep = |p: &Prompt| p.objects().len() <= self.max_objects;
        // Ask for more until enough prompts survive the filter (first draw: the expected need).
        let surviving_share = self.max_objects as f64 / MAX_OBJECTS as f64;
        let ask = |wanted: usize, split_train: bool| -> Result<(PromptSet, Vec<Prompt>)> {
            let mut asked = ((wanted as f64 / surviving_share) * 1.1).ceil() as usize + 8;
            for _ in 0..8 {
                let (train, held_out) = if split_train { (asked, 1) } else { (1, asked) };
                let set = PromptSet::generate(&self.set_spec(train, held_out))?;
                let pool = if split_train { &set.train } else { &set.held_out };
                let kept: Vec<Prompt> = pool.iter().filter(|p| keep(p)).take(wanted).cloned().collect();
                if kept.len() == wanted {
                    return Ok((set, kept));
                }
                asked *= 2;
            }
            bail!(
                "could not draw {wanted} prompts with at most {} objects",
                self.max_objects
            )
        };
        let (set, teacher_train) = ask(self.teacher_train, true)?;
        let (_, held_out) = ask(self.held_out, false)?;
        let job = PromptSet {
            spec: self.set_spec(self.job_train, self.held_out),
            reserved: set.reserved,
            train: teacher_train[..self.job_train].to_vec(),
            held_out,
        };
        Ok(SelectedPrompts { teacher_train, job })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(max_objects: usize) -> PromptSelection {
        PromptSelection {
            seed: 4,
            teacher_train: 300,
            job_train: 20,
            held_out: 10,
            reserved_pairs: 4,
            textured_fraction: 0.5,
            max_objects,
        }
    }

    #[test]
    fn the_job_set_is_a_prompt_set_of_the_same_seed() {
        let drawn = selection(3).draw().unwrap();
        assert_eq!(drawn.teacher_train.len(), 300);
        // Without a filter the job's set is exactly what PromptSet::generate draws for it.
        let direct = PromptSet::generate(&PromptSetSpec::new(4, 20, 10)).unwrap();
        assert_eq!(drawn.job, direct);
        assert_eq!(drawn.teacher_train[..20], direct.train[..]);
        assert_eq!(drawn, selection(3).draw().unwrap());
    }

    #[test]
    fn max_objects_filters_both_splits_and_keeps_the_rules() {
        let drawn = selection(1).draw().unwrap();
        assert_eq!((drawn.teacher_train.len(), drawn.job.held_out.len()), (300, 10));
        let all = drawn.teacher_train.iter().chain(&drawn.job.held_out);
        assert!(all.clone().all(|p| p.objects().len() == 1));
        assert!(drawn.teacher_train.iter().all(|p| !drawn.job.has_reserved_pair(p)));
        assert!(drawn.job.held_out.iter().all(|p| drawn.job.has_reserved_pair(p)));
        // A larger teacher set extends the smaller one.
        let more = PromptSelection {
            teacher_train: 600,
            ..selection(1)
        }
        .draw()
        .unwrap();
        assert_eq!(more.teacher_train[..300], drawn.teacher_train[..]);
        assert_eq!(more.job, drawn.job);
    }

    #[test]
    fn bad_selections_say_what_is_wrong() {
        let message = |s: PromptSelection| s.draw().unwrap_err().to_string();
        let too_many = PromptSelection {
            job_train: 400,
            ..selection(3)
        };
        assert_eq!(
            message(too_many),
            "the job's 400 training prompts must come from the teacher's 300"
        );
        assert_eq!(message(selection(0)), "max_objects must be 1 to 3, got 0");
        let none = PromptSelection {
            held_out: 0,
            ..selection(3)
        };
        assert_eq!(message(none), "at least 1 held-out prompt is needed to evaluate");
    }
}
