//! Collective communication inside a gang: the gradient all-reduce of data-parallel
//! fine-tuning, one rank per GPU (or per CPU worker process), across processes and hosts.
//!
//! - [`Collective`]: what the trainer calls: `all_reduce_sum` over a list of tensors (in
//!   place; the caller divides by the world size for a mean) and `barrier`.
//! - [`Local`]: world size 1, every call a no-op.
//! - [`tcp::TcpRing`]: a ring all-reduce over TCP between worker processes for CPU tensors,
//!   so multi-worker fine-tuning is tested on machines without GPUs. Each member binds a
//!   port, reports `host:port` at `Rendezvous`, and connects to the others in rank order.
//! - [`nccl::Nccl`]: NCCL for CUDA tensors, loaded at run time from the same `libnccl.so.2`
//!   LibTorch uses (GPU.md, point 3); rank 0 makes the unique id, the coordinator relays it.
//!
//! # Many tensors: segments cut from sizes only
//!
//! A model has about 800 parameter tensors; one collective call per tensor would be
//! latency-bound (NCCL reaches its bus bandwidth only at tens of MB per call). So a call's
//! tensors are read as one logical flat stream (per dtype) and cut into *segments* of at
//! most a bucket size, at tensor boundaries where possible (a tensor bigger than the bucket
//! is split). The cut depends only on the tensors' sizes and dtypes, never on where they sit
//! in memory, so every rank issues the same sequence of collectives: a mismatch would hang
//! NCCL or mix up the ring. Per segment and per rank, independently:
//!
//! - if the segment's pieces lie back to back in memory (a single contiguous tensor, or
//!   gradients that are views into one flat buffer, in order), it is reduced **in place**,
//!   with no copy;
//! - otherwise it is **packed**: `Tensor::cat` of flattened views into a temporary buffer,
//!   reduced, and copied back with one `split_with_sizes_copy_out`.
//!
//! So a trainer that keeps its gradients as views into one flat buffer per dtype pays no
//! copies at all (the fast path, what the GPU benchmark measures as `...-flat`), and
//! separately allocated gradients still go out in a few large calls.
//!
//! # Failures
//!
//! A gang is all-or-nothing (DESIGN.md): a lost member stops the whole gang, which the
//! coordinator requeues from the last checkpoint. Every implementation here has a watchdog:
//! a peer that dies or hangs turns into [`CollectiveError::Timeout`] (or `Io`/`Peer` when
//! the connection visibly broke) within the configured timeout, never a hang, and
//! [`CollectiveError::is_retryable`] tells the caller to fail the task as retryable. After
//! such an error the collective is unusable ([`CollectiveError::Broken`]): the gang must
//! rendezvous again with a new attempt. The timeout bounds each ring step for the TCP ring
//! and each whole call for NCCL (whose progress cannot be observed step by step); either
//! way it must exceed how late a healthy rank may arrive at the same call (the skew between
//! ranks' compute), since the early ranks wait for it.

pub mod nccl;
pub mod tcp;

use std::io;
use std::time::Duration;
use tch::{Kind, Tensor};

pub use nccl::Nccl;
pub use tcp::{TcpRing, TcpRingListener};

/// The collective a trainer uses inside a gang: one rank per device.
pub trait Collective: Send {
    /// This member's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// How many members the gang has.
    fn world_size(&self) -> usize;
    /// Sums `tensors` element-wise across all ranks, in place: afterwards every rank holds
    /// the same sums. Every rank must pass tensors of the same shapes and dtypes in the
    /// same order. The caller divides by [`world_size`](Self::world_size) for a mean.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
}

/// What went wrong in a collective, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// The watchdog fired: a peer did not answer in time (it died, hung, or is partitioned
    /// away).
    #[error(
        "collective timed out on rank {rank} of {world} after {waited:?} while {during}: a peer is gone or hung; \
         fail the task as retryable so the coordinator requeues the whole gang"
    )]
    Timeout {
        rank: usize,
        world: usize,
        during: String,
        waited: Duration,
    },
    /// A socket operation failed: the connection to a peer broke.
    #[error(
        "collective I/O error on rank {rank} while {during}: {source}; the connection to a peer broke: \
         fail the task as retryable so the coordinator requeues the whole gang"
    )]
    Io {
        rank: usize,
        during: String,
        #[source]
        source: io::Error,
    },
    /// A peer closed the connection, or answered something this rank cannot accept (a
    /// handshake from another gang or attempt, a different call sequence).
    #[error("collective peer problem on rank {rank}: {what}")]
    Peer { rank: usize, what: String },
    /// An NCCL call returned an error; `message` is NCCL's own text.
    #[error("NCCL {call} failed on rank {rank}: {code_name} ({code}): {message}")]
    Nccl {
        rank: usize,
        call: &'static str,
        code: i32,
        code_name: &'static str,
        message: String,
    },
    /// A CUDA driver call failed (outside NCCL).
    #[error("CUDA driver {call} failed: {message}; the GPU or its driver is unhealthy: retry the gang elsewhere")]
    Cuda { call: &'static str, message: String },
    /// A library this collective needs is not on this machine.
    #[error("{library} is unavailable: {detail}")]
    Unavailable { library: String, detail: String },
    /// The caller passed something this collective cannot reduce (a bug, not a transient
    /// failure).
    #[error("invalid collective call: {0}")]
    Invalid(String),
    /// An earlier error left this collective unusable.
    #[error(
        "this collective is unusable after an earlier failure ({0}); stop the task (retryable): \
         the gang must rendezvous again as a new attempt"
    )]
    Broken(String),
}

impl CollectiveError {
    /// Whether the task should fail as retryable (requeue the gang, not counted against the
    /// retry budget as a bug would be): lost or hung peers, broken connections, NCCL network
    /// and system errors, a sick GPU. Missing libraries and invalid calls are fatal: the same
    /// worker and code would fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            CollectiveError::Timeout { .. }
            | CollectiveError::Io { .. }
            | CollectiveError::Peer { .. }
            | CollectiveError::Cuda { .. }
            | CollectiveError::Broken(_) => true,
            // ncclInvalidArgument (4) and ncclInvalidUsage (5) are bugs; the rest (CUDA,
            // system, internal, remote errors) come from the machine or the network.
            CollectiveError::Nccl { code, .. } => !matches!(code, 4 | 5),
            CollectiveError::Unavailable { .. } | CollectiveError::Invalid(_) => false,
        }
    }

    /// True for [`CollectiveError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, CollectiveError::Timeout { .. })
    }
}

/// A gang token for the TCP ring handshake: a member of an older attempt of the same task
/// (or of another task) that still has the endpoints is rejected.
pub fn gang_token(task_id: &str, attempt: u32) -> String {
    format!("{task_id}/attempt-{attempt}")
}

/// World size 1: nothing to reduce with, every call is a no-op.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _tensors: &[Tensor]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

// ------------------------------------------------------------------ shared planning

/// A run of `len` elements starting at element `offset` of working tensor `tensor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub tensor: usize,
    pub offset: usize,
    pub len: usize,
}

/// The elements one collective call reduces: consecutive pieces of the logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub pieces: Vec<Piece>,
    pub numel: usize,
}

/// Cuts the logical concatenation of tensors with `numels` elements (indices `order`, in
/// that order) into segments of at most `max_elems`: whole tensors are packed greedily, a
/// tensor bigger than `max_elems` is split into pieces of `max_elems`. Depends on sizes
/// only, so every rank cuts the same segments.
pub(crate) fn segments(numels: &[usize], order: &[usize], max_elems: usize) -> Vec<Segment> {
    let max_elems = max_elems.max(1);
    let mut out = Vec::new();
    let mut cur = Segment {
        pieces: Vec::new(),
        numel: 0,
    };
    for &i in order {
        let n = numels[i];
        if n == 0 {
            continue;
        }
        if n > max_elems {
            if !cur.pieces.is_empty() {
                out.push(std::mem::replace(
                    &mut cur,
                    Segment {
                        pieces: Vec::new(),
                        numel: 0,
                    },
                ));
            }
            let mut offset = 0;
            while offset < n {
                let len = max_elems.min(n - offset);
                out.push(Segment {
                    pieces: vec![Piece { tensor: i, offset, len }],
                    numel: len,
                });
                offset += len;
            }
            continue;
        }
        if cur.numel + n > max_elems {
            out.push(std::mem::replace(
                &mut cur,
                Segment {
                    pieces: Vec::new(),
                    numel: 0,
                },
            ));
        }
        cur.pieces.push(Piece {
            tensor: i,
            offset: 0,
            len: n,
        });
        cur.numel += n;
    }
    if !cur.pieces.is_empty() {
        out.push(cur);
    }
    out
}

/// The tensors a call works on: each caller tensor itself when it is contiguous and of the
/// wire dtype (same storage, reduced in place), else a contiguous copy in the wire dtype
/// that [`Staged::finish`] copies back.
pub(crate) struct Staged {
    pub work: Vec<Tensor>,
    copied: Vec<usize>,
}

impl Staged {
    /// `wire` maps a tensor's dtype to the dtype it travels in.
    pub fn new(tensors: &[Tensor], wire: impl Fn(Kind) -> Kind) -> Staged {
        let mut work = Vec::with_capacity(tensors.len());
        let mut copied = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let kind = wire(t.kind());
            if t.is_contiguous() && t.kind() == kind {
                work.push(t.shallow_clone());
            } else {
                work.push(t.to_kind(kind).contiguous());
                copied.push(i);
            }
        }
        Staged { work, copied }
    }

    /// Copies the reduced working copies back into the caller's tensors (converting dtype).
    pub fn finish(self, tensors: &[Tensor]) {
        for i in self.copied {
            let mut dst = tensors[i].shallow_clone();
            dst.copy_(&self.work[i]);
        }
    }

    /// The address of element `offset` of working tensor `i`.
    pub fn address(&self, i: usize, offset: usize) -> usize {
        let t = &self.work[i];
        t.data_ptr() as usize + offset * t.kind().elt_size_in_bytes()
    }

    /// Two working tensors that share memory would be reduced twice (or alias a `&mut`
    /// slice): refuse them.
    pub fn check_disjoint(&self) -> Result<(), CollectiveError> {
        let mut ranges: Vec<(usize, usize, usize)> = self
            .work
            .iter()
            .enumerate()
            .filter(|(_, t)| t.numel() > 0)
            .map(|(i, t)| {
                let start = t.data_ptr() as usize;
                (start, start + t.numel() * t.kind().elt_size_in_bytes(), i)
            })
            .collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(CollectiveError::Invalid(format!(
                    "tensors {} and {} share memory; pass each gradient once",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(())
    }

    /// Where a segment can be reduced in place: `Some(address)` when its pieces lie back to
    /// back in memory in order (on this rank), `None` when it must be packed.
    pub fn contiguous_span(&self, seg: &Segment) -> Option<usize> {
        let first = seg.pieces.first()?;
        let start = self.address(first.tensor, first.offset);
        let mut end = start;
        for p in &seg.pieces {
            if self.address(p.tensor, p.offset) != end {
                return None;
            }
            end += p.len * self.work[p.tensor].kind().elt_size_in_bytes();
        }
        Some(start)
    }

    /// 1-D views of a segment's pieces (sharing the working tensors' storage).
    pub fn views(&self, seg: &Segment) -> Vec<Tensor> {
        seg.pieces
            .iter()
            .map(|p| self.work[p.tensor].view([-1]).narrow(0, p.offset as i64, p.len as i64))
            .collect()
    }

    /// A fresh contiguous buffer holding a segment's elements, for one that cannot be
    /// reduced in place.
    pub fn pack(&self, seg: &Segment) -> Tensor {
        Tensor::cat(&self.views(seg), 0)
    }

    /// Copies a packed buffer back into the segment's pieces.
    pub fn unpack(&self, seg: &Segment, packed: &Tensor) {
        let views = self.views(seg);
        let sizes: Vec<i64> = seg.pieces.iter().map(|p| p.len as i64).collect();
        // One kernel on CUDA; per-piece copies if LibTorch refuses the out= form.
        if packed.f_split_with_sizes_copy_out(&views, sizes.as_slice(), 0).is_err() {
            for (mut v, p) in views.into_iter().zip(packed.split_with_sizes(sizes.as_slice(), 0)) {
                v.copy_(&p);
            }
        }
    }
}

/// A short name for a dtype in messages.
pub(crate) fn kind_name(kind: Kind) -> String {
    format!("{kind:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(numels: &[usize], max: usize) -> Vec<Vec<(usize, usize, usize)>> {
        let order: Vec<usize> = (0..numels.len()).collect();
        segments(numels, &order, max)
            .into_iter()
            .map(|s| {
                assert_eq!(s.numel, s.pieces.iter().map(|p| p.len).sum::<usize>());
                s.pieces.iter().map(|p| (p.tensor, p.offset, p.len)).collect()
            })
            .collect()
    }

    #[test]
    fn segments_pack_whole_tensors_and_split_big_ones() {
        assert_eq!(cut(&[3, 4, 2], 10), vec![vec![(0, 0, 3), (1, 0, 4), (2, 0, 2)]]);
        assert_eq!(
            cut(&[6, 6, 0, 3], 10),
            vec![vec![(0, 0, 6)], vec![(1, 0, 6), (3, 0, 3)]]
        );
        assert_eq!(
            cut(&[2, 25, 1], 10),
            vec![
                vec![(0, 0, 2)],
                vec![(1, 0, 10)],
                vec![(1, 10, 10)],
                vec![(1, 20, 5)],
                vec![(2, 0, 1)]
            ]
        );
        assert!(cut(&[], 10).is_empty());
        assert!(cut(&[0, 0], 10).is_empty());
    }

    #[test]
    fn in_place_only_when_back_to_back() {
        let flat = Tensor::zeros([10], (Kind::Float, tch::Device::Cpu));
        let tensors = [flat.narrow(0, 0, 4).view([2, 2]), flat.narrow(0, 4, 6)];
        let staged = Staged::new(&tensors, |k| k);
        staged.check_disjoint().unwrap();
        let seg = &segments(&[4, 6], &[0, 1], 100)[0];
        assert_eq!(staged.contiguous_span(seg), Some(flat.data_ptr() as usize));
        // Reversed order: the same memory, but not in stream order.
        let seg = &segments(&[4, 6], &[1, 0], 100)[0];
        assert_eq!(staged.contiguous_span(seg), None);
        let dup = [flat.shallow_clone(), flat.narrow(0, 2, 2)];
        assert!(matches!(
            Staged::new(&dup, |k| k).check_disjoint(),
            Err(CollectiveError::Invalid(_))
        ));
    }
}
