//! A gang task's meeting point: every member reports where its CPU collective listens (and
//! rank 0 a fresh NCCL unique id) until all have arrived, then builds the collective: NCCL
//! on CUDA, a TCP ring on CPU. How members meet is the [`Rendezvous`] the agent supplies
//! (the coordinator's `Rendezvous` call); this module only decides what to bring and what
//! to build from the answer.

use super::task::{TaskError, TaskHandle};
use crate::collective::{Collective, CollectiveError, Nccl, TcpRing};
use std::time::Duration;
use tch::Device;

/// What a member brings to the meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub rank: u32,
    /// `host:port` of this member's TCP ring listener (CPU gangs), else empty.
    pub endpoint: String,
    /// The NCCL unique id (rank 0 of a CUDA gang), else empty.
    pub nccl_unique_id: Vec<u8>,
}

/// What the meeting answers once every member has arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meeting {
    /// Every member's endpoint, in rank order.
    pub endpoints: Vec<String>,
    /// Rank 0's NCCL unique id.
    pub nccl_unique_id: Vec<u8>,
}

/// How the members of a gang meet. The agent implements it with the coordinator's
/// Rendezvous call.
pub trait Rendezvous: Send + Sync {
    /// Reports `arrival` once and waits a while: `Ok(Some)` when every member has arrived,
    /// `Ok(None)` to call again (not everyone is there yet, or the coordinator is briefly
    /// unreachable), `Err` to end the attempt (a revoked lease is
    /// `TaskError::Stopped(StopReason::Revoked)`).
    fn meet(&self, arrival: &Arrival) -> Result<Option<Meeting>, TaskError>;
}

/// This member's place in its gang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub rank: u32,
    pub world: u32,
    /// The TCP ring handshake's token (`collective::gang_token` of the task and attempt).
    pub token: String,
    /// Where peers reach this worker's TCP ring.
    pub advertise_host: String,
    /// The collectives' watchdog.
    pub timeout: Duration,
}

/// A member of a gang and how it meets the others.
pub struct Gang {
    rendezvous: Box<dyn Rendezvous>,
    member: Member,
}

/// A collective failure ends this attempt of the gang: a lost peer is not counted against
/// the retry budget (like a lost lease), a broken setup is fatal.
pub fn collective_error(err: CollectiveError) -> TaskError {
    if err.is_retryable() {
        TaskError::Lost(err.to_string())
    } else {
        TaskError::Fatal(err.to_string())
    }
}

impl Gang {
    pub fn new(rendezvous: Box<dyn Rendezvous>, member: Member) -> Gang {
        Gang { rendezvous, member }
    }

    pub fn rank(&self) -> usize {
        self.member.rank as usize
    }

    pub fn world_size(&self) -> usize {
        self.member.world as usize
    }

    /// Waits for every member, then connects the collective for `device`.
    pub fn connect(&self, handle: &TaskHandle, device: Device) -> Result<Box<dyn Collective>, TaskError> {
        let rank = self.rank();
        match device {
            Device::Cuda(index) => {
                let id = if rank == 0 {
                    Nccl::unique_id().map_err(collective_error)?.to_vec()
                } else {
                    Vec::new()
                };
                let met = self.meet(handle, String::new(), id)?;
                let id: [u8; 128] = met
                    .nccl_unique_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| TaskError::Lost("rank 0 brought no NCCL unique id".into()))?;
                let nccl =
                    Nccl::new(index, rank, self.world_size(), id, self.member.timeout).map_err(collective_error)?;
                Ok(Box::new(nccl))
            }
            _ => {
                let (listener, endpoint) = TcpRing::bind(&self.member.advertise_host).map_err(collective_error)?;
                let met = self.meet(handle, endpoint, Vec::new())?;
                let ring = listener
                    .connect(rank, &met.endpoints, &self.member.token, self.member.timeout)
                    .map_err(collective_error)?;
                Ok(Box::new(ring))
            }
        }
    }

    fn meet(&self, handle: &TaskHandle, endpoint: String, nccl_unique_id: Vec<u8>) -> Result<Meeting, TaskError> {
        let arrival = Arrival {
            rank: self.member.rank,
            endpoint,
            nccl_unique_id,
        };
        handle.log(
            "info",
            format!("waiting for the gang of {} at rendezvous", self.member.world),
        );
        loop {
            handle.check()?;
            if let Some(met) = self.rendezvous.meet(&arrival)? {
                return Ok(met);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::task::StopReason;
    use std::sync::Mutex;

    fn member(rank: u32, world: u32) -> Member {
        Member {
            rank,
            world,
            token: "t/attempt-1".into(),
            advertise_host: "127.0.0.1".into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Answers "not yet" `pending` times, then the meeting.
    struct Scripted {
        pending: Mutex<u32>,
        seen: Mutex<Vec<Arrival>>,
    }

    impl Rendezvous for Scripted {
        fn meet(&self, arrival: &Arrival) -> Result<Option<Meeting>, TaskError> {
            self.seen.lock().unwrap().push(arrival.clone());
            let mut pending = self.pending.lock().unwrap();
            if *pending > 0 {
                *pending -= 1;
                return Ok(None);
            }
            Ok(Some(Meeting {
                endpoints: vec![arrival.endpoint.clone()],
                nccl_unique_id: Vec::new(),
            }))
        }
    }

    #[test]
    fn a_gang_of_one_on_cpu_meets_until_ready_and_connects() {
        let rendezvous = Box::new(Scripted {
            pending: Mutex::new(2),
            seen: Mutex::new(Vec::new()),
        });
        let gang = Gang::new(rendezvous, member(0, 1));
        let handle = TaskHandle::new("j:t".into(), 1);
        let collective = gang.connect(&handle, Device::Cpu).unwrap();
        assert_eq!((collective.rank(), collective.world_size()), (0, 1));
    }

    struct Revoked;

    impl Rendezvous for Revoked {
        fn meet(&self, _: &Arrival) -> Result<Option<Meeting>, TaskError> {
            Ok(None)
        }
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let gang = Gang::new(Box::new(Revoked), member(1, 2));
        let handle = TaskHandle::new("j:t".into(), 1);
        handle.request_stop(StopReason::Revoked);
        assert_eq!(
            gang.connect(&handle, Device::Cpu).err(),
            Some(TaskError::Stopped(StopReason::Revoked))
        );
    }
}
