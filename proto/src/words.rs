//! surgery-core's shared vocabulary on the wire: job and task states, stages, failure
//! classes and rates, each converted in one place. The wire's `UNSPECIFIED` has no domain
//! value, so decoding answers `None` for it (and for numbers no enum knows).

use crate::v1 as pb;
use surgery_core::rate::Rate;
use surgery_core::state::{FailureClass, JobState, Stage, TaskState};

impl From<JobState> for pb::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

pub fn job_state(state: pb::JobState) -> Option<JobState> {
    JobState::ALL.into_iter().find(|s| pb::JobState::from(*s) == state)
}

impl From<TaskState> for pb::TaskState {
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::Pending => pb::TaskState::Pending,
            TaskState::Leased => pb::TaskState::Leased,
            TaskState::Running => pb::TaskState::Running,
            TaskState::Succeeded => pb::TaskState::Succeeded,
            TaskState::Failed => pb::TaskState::Failed,
            TaskState::Cancelled => pb::TaskState::Cancelled,
        }
    }
}

pub fn task_state(state: pb::TaskState) -> Option<TaskState> {
    TaskState::ALL.into_iter().find(|s| pb::TaskState::from(*s) == state)
}

impl From<Stage> for pb::Stage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Encode => pb::Stage::Encode,
            Stage::Capture => pb::Stage::Capture,
            Stage::Distill => pb::Stage::Distill,
            Stage::Select => pb::Stage::Select,
            Stage::Finetune => pb::Stage::Finetune,
            Stage::Export => pb::Stage::Export,
            Stage::Evaluate => pb::Stage::Evaluate,
        }
    }
}

pub fn stage(stage: pb::Stage) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| pb::Stage::from(*s) == stage)
}

impl From<FailureClass> for pb::FailureClass {
    fn from(class: FailureClass) -> Self {
        match class {
            FailureClass::Retryable => pb::FailureClass::Retryable,
            FailureClass::Preempted => pb::FailureClass::Preempted,
            FailureClass::Lost => pb::FailureClass::Lost,
            FailureClass::Fatal => pb::FailureClass::Fatal,
        }
    }
}

pub fn failure_class(class: pb::FailureClass) -> Option<FailureClass> {
    FailureClass::ALL
        .into_iter()
        .find(|c| pb::FailureClass::from(*c) == class)
}

/// A wire enum field (an `i32`) as its domain value; `None` for unspecified or unknown.
pub fn decode<W: TryFrom<i32>, D>(raw: i32, to_domain: fn(W) -> Option<D>) -> Option<D> {
    W::try_from(raw).ok().and_then(to_domain)
}

impl From<(u32, Rate)> for pb::BlockRate {
    fn from((block, rate): (u32, Rate)) -> Self {
        pb::BlockRate {
            block,
            rate: rate.code(),
        }
    }
}

impl pb::BlockRate {
    /// The wire pair as the domain's `(block, rate)`.
    pub fn pair(&self) -> (u32, Rate) {
        (self.block, Rate::from_code(self.rate))
    }
}

impl pb::DistillParams {
    pub fn rate(&self) -> Rate {
        Rate::from_code(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_and_unspecified_is_none() {
        for s in JobState::ALL {
            assert_eq!(job_state(s.into()), Some(s));
        }
        for s in TaskState::ALL {
            assert_eq!(task_state(s.into()), Some(s));
            assert_eq!(decode(pb::TaskState::from(s) as i32, task_state), Some(s));
        }
        for s in Stage::ALL {
            assert_eq!(stage(s.into()), Some(s));
        }
        for c in FailureClass::ALL {
            assert_eq!(failure_class(c.into()), Some(c));
        }
        assert_eq!(job_state(pb::JobState::Unspecified), None);
        assert_eq!(stage(pb::Stage::Unspecified), None);
        assert_eq!(decode(99, task_state), None);
    }

    #[test]
    fn rates_travel_as_codes() {
        for rate in [Rate::Softmax, Rate::Hybrid(2), Rate::Hybrid(32), Rate::Linear] {
            let wire = pb::BlockRate::from((3, rate));
            assert_eq!(wire.rate, rate.code());
            assert_eq!(wire.pair(), (3, rate));
        }
        assert_eq!(pb::DistillParams { block: 1, rate: 0 }.rate(), Rate::Linear);
    }
}
