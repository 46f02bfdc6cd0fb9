//! Forks: a new job takes over its parent's succeeded encode, capture and distill tasks
//! wherever [`reuse::reusable`] finds their inputs identical. The reused tasks are
//! recorded as succeeded with the parent's result and the job that holds their outputs;
//! nothing is copied (workers read those outputs where they are, `TaskAssignment.reused_roots`).

use super::Cluster;
use crate::command::Reject;
use crate::model::*;
use std::sync::Arc;
use surgery_core::reuse;
use surgery_core::spec::JobSpec;

impl Cluster {
    /// The spec of the job a submit forks; refused when there is no such job or its
    /// stored spec no longer parses.
    pub(super) fn fork_source(&self, parent: &str) -> Result<Arc<JobSpec>, Reject> {
        match self.specs.get(parent) {
            None => Err(Reject::NotFound(format!(
                "cannot fork job `{parent}`: there is no such job (surgeryctl list shows the jobs)"
            ))),
            Some(Err(e)) => Err(Reject::Invalid(format!(
                "cannot fork job `{parent}`: its stored spec no longer parses: {e}"
            ))),
            Some(Ok(spec)) => Ok(spec.clone()),
        }
    }

    /// Marks the tasks of a new job that may stand on `parent`'s as succeeded, with the
    /// parent's result; returns a line per stage saying what was reused and why not the rest.
    pub(super) fn take_over(
        &self,
        now: UnixMs,
        parent: &str,
        parent_spec: &JobSpec,
        spec: &JobSpec,
        tasks: &mut [TaskRecord],
    ) -> Vec<String> {
        let succeeded = |task: &str| self.task(parent, task).is_some_and(|t| t.state == TaskState::Succeeded);
        let reuse = reuse::reusable(parent_spec, spec, succeeded);
        for task in tasks.iter_mut().filter(|t| reuse.tasks.contains(&t.id)) {
            let theirs = self.task(parent, &task.id).expect("reusable tasks exist in the parent");
            task.state = TaskState::Succeeded;
            task.result = theirs.result.clone();
            // A fork of a fork reads from the job that ran the task.
            task.reused_from = Some(theirs.reused_from.clone().unwrap_or_else(|| parent.to_string()));
            task.updated_ms = now;
        }
        reuse.notes
    }
}
