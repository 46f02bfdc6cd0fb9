//! Gangs: the rendezvous where W members check in and rank 0's NCCL unique id is relayed.

use super::{Cluster, Timing};
use crate::command::{GangReady, Reject};
use crate::model::*;

/// 128 bytes, NCCL's ncclUniqueId.
const NCCL_UNIQUE_ID_BYTES: usize = 128;

impl Cluster {
    /// A gang member checks in. Returns the members and rank 0's NCCL id once every
    /// member arrived (and rank 0 brought the id), `None` while some are missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rendezvous(
        &mut self,
        now: UnixMs,
        timing: Timing,
        worker_id: &str,
        full_task_id: &str,
        attempt: u32,
        rank: u32,
        endpoint: &str,
        nccl_unique_id: &[u8],
    ) -> Result<Option<GangReady>, Reject> {
        if rank != 0 && !nccl_unique_id.is_empty() {
            return Err(Reject::Invalid("only rank 0 brings the NCCL unique id".into()));
        }
        if !nccl_unique_id.is_empty() && nccl_unique_id.len() != NCCL_UNIQUE_ID_BYTES {
            return Err(Reject::Invalid(format!(
                "an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes, not {}",
                nccl_unique_id.len()
            )));
        }
        self.touch_worker(now, worker_id)?;
        let (job_id, task_id) = self.split_id(full_task_id)?;
        let task = self.check_holder(worker_id, &job_id, &task_id, attempt)?;
        let lease = task.lease.as_ref().expect("checked");
        let member = lease.member(worker_id).expect("checked");
        if member.rank != rank {
            return Err(Reject::Invalid(format!(
                "{worker_id} holds rank {} of {task_id}, not rank {rank}",
                member.rank
            )));
        }
        let needs_update = !member.arrived
            || member.endpoint.as_deref().unwrap_or("") != endpoint
            || (rank == 0 && !nccl_unique_id.is_empty() && lease.nccl_unique_id.as_deref() != Some(nccl_unique_id));
        let lease = if needs_update {
            let task = self.task_mut(&job_id, &task_id).expect("checked");
            let lease = task.lease.as_mut().expect("checked");
            for m in lease.members.iter_mut().filter(|m| m.worker_id == worker_id) {
                m.arrived = true;
                m.endpoint = (!endpoint.is_empty()).then(|| endpoint.to_string());
                m.deadline_ms = now + timing.lease_ttl_ms;
            }
            if rank == 0 && !nccl_unique_id.is_empty() {
                lease.nccl_unique_id = Some(nccl_unique_id.to_vec());
            }
            &*lease
        } else {
            lease
        };
        let rank0_ready = lease.members.iter().find(|m| m.rank == 0).is_some_and(|m| m.arrived);
        if lease.members.iter().all(|m| m.arrived) && rank0_ready {
            Ok(Some(GangReady {
                members: lease.members.clone(),
                nccl_unique_id: lease.nccl_unique_id.clone().unwrap_or_default(),
            }))
        } else {
            Ok(None)
        }
    }
}
