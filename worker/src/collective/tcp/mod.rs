//! A ring all-reduce over TCP between worker processes, for CPU tensors: the collective of
//! multi-worker fine-tuning on machines without GPUs (and in CI).
//!
//! # Setting up
//!
//! 1. [`TcpRing::bind`] listens on an ephemeral port of `host` and returns the endpoint
//!    `host:port` that the worker reports at `Rendezvous`.
//! 2. Once the coordinator answers with every member's endpoint in rank order,
//!    [`TcpRingListener::connect`] connects to the successor (`rank + 1`) and accepts the
//!    predecessor (`rank - 1`), both at once. The connector sends a handshake (magic,
//!    version, byte order, rank, world size, gang token); the acceptor answers with one
//!    status byte. A connection from anyone else, in particular a member of an older
//!    attempt of the task (another gang token), is rejected and the acceptor keeps
//!    waiting for the right peer.
//!
//! # The all-reduce
//!
//! Reduce-scatter then all-gather over the flattened f32 buffer in `world` chunks: each rank
//! sends and receives `2 (world - 1) / world` of the buffer, the bandwidth-optimal ring.
//! Each chunk is summed in a fixed order along the ring and then copied verbatim to every
//! rank, so all ranks end with bit-identical results, run after run. bf16 and f16 tensors
//! are reduced in f32 and rounded once at the end. Tensors are cut into segments of at most
//! [`TcpRing::DEFAULT_BUCKET_BYTES`] (see the module docs of [`super`]); before each
//! segment the neighbours exchange its sequence number and length, so ranks that call with
//! different tensors fail with [`CollectiveError::Invalid`] instead of mixing data.
//!
//! # The watchdog
//!
//! Every socket read and write has a deadline: a ring step (send one chunk to the successor
//! while receiving one from the predecessor) must finish within the ring's `timeout` of its
//! start, and so must connecting. A peer that hangs yields [`CollectiveError::Timeout`]; one
//! whose process died closes its sockets, which yields [`CollectiveError::Peer`] at once.
//! The timeout must also cover how late a healthy peer may arrive at the same call (the
//! skew between ranks' compute), since the first step waits for it. On any error the ring
//! shuts its sockets down, so its neighbours fail promptly too instead of waiting out their
//! own timeouts, and the ring refuses further calls ([`CollectiveError::Broken`]).
//!
//! Here: the ring and its all-reduce; `handshake`: binding, connecting and the handshake;
//! `deadline`: socket reads and writes with a deadline.

mod deadline;
mod handshake;

use super::{Collective, CollectiveError, Staged, kind_name, segments};
use deadline::{Fail, read_exact_by, write_all_by};
pub use handshake::TcpRingListener;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A connected member of a TCP ring.
#[derive(Debug)]
pub struct TcpRing {
    rank: usize,
    world: usize,
    /// To the successor, `rank + 1` (we send on it); `None` for world size 1.
    next: Option<TcpStream>,
    /// From the predecessor, `rank - 1` (we receive on it).
    prev: Option<TcpStream>,
    timeout: Duration,
    bucket_bytes: usize,
    /// Segments sent so far; checked against the predecessor's.
    seq: u64,
    broken: Option<String>,
}

impl TcpRing {
    /// Default segment size: 64 MiB of f32 (16 Mi elements). Large enough that per-segment
    /// overheads (a header round trip, 2 (world - 1) thread spawns) vanish, small enough
    /// that packing bf16 tensors into f32 costs little memory.
    pub const DEFAULT_BUCKET_BYTES: usize = 64 << 20;

    /// Sets the segment size in bytes of f32 (every rank must use the same).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> TcpRing {
        self.bucket_bytes = bytes.max(4);
        self
    }

    /// The watchdog timeout of each ring step.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn err_broken(&self) -> Result<(), CollectiveError> {
        match &self.broken {
            Some(why) => Err(CollectiveError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Records the first failure and shuts the sockets down so the neighbours notice now.
    fn fail(&mut self, err: CollectiveError) -> CollectiveError {
        if self.broken.is_none() {
            self.broken = Some(err.to_string());
        }
        for s in [&self.next, &self.prev].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        err
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `send` to the successor while receiving `recv` from the predecessor, both
    /// within one deadline. Concurrent, because both neighbours send at the same time: with
    /// chunks larger than the socket buffers, send-then-receive would deadlock the ring.
    fn exchange(&self, send: &[u8], recv: &mut [u8], during: &str) -> Result<(), CollectiveError> {
        let (Some(next), Some(prev)) = (&self.next, &self.prev) else {
            return Ok(());
        };
        let deadline = Instant::now() + self.timeout;
        let (sent, received) = std::thread::scope(|s| {
            let writer = (!send.is_empty()).then(|| s.spawn(|| write_all_by(next, send, deadline)));
            let received = read_exact_by(prev, recv, deadline);
            if received.is_err() {
                // Unblock the writer now rather than at the deadline.
                let _ = next.shutdown(Shutdown::Both);
            }
            let sent = match writer {
                Some(w) => w.join().unwrap_or(Err(Fail::Closed)),
                None => Ok(()),
            };
            (sent, received)
        });
        // The receive side's error is the informative one (a send fails because we shut the
        // socket down after it).
        if let Err(f) = received {
            return Err(self.io_error(f, format!("{during}: receiving from rank {}", self.prev_rank())));
        }
        if let Err(f) = sent {
            return Err(self.io_error(f, format!("{during}: sending to rank {}", self.next_rank())));
        }
        Ok(())
    }

    fn io_error(&self, f: Fail, during: String) -> CollectiveError {
        match f {
            Fail::Timeout => CollectiveError::Timeout {
                rank: self.rank,
                world: self.world,
                during,
                waited: self.timeout,
            },
            Fail::Closed => CollectiveError::Peer {
                rank: self.rank,
                what: format!(
                    "{during}: the peer closed the connection (its process died or gave up); fail the task as \
                     retryable so the coordinator requeues the whole gang"
                ),
            },
            Fail::Io(source) => CollectiveError::Io {
                rank: self.rank,
                during,
                source,
            },
        }
    }

    /// Checks that the predecessor is about to reduce the same segment as we are.
    fn check_header(&mut self, numel: usize) -> Result<(), CollectiveError> {
        self.seq += 1;
        let mut mine = [0u8; 16];
        mine[..8].copy_from_slice(&self.seq.to_ne_bytes());
        mine[8..].copy_from_slice(&(numel as u64).to_ne_bytes());
        let mut theirs = [0u8; 16];
        self.exchange(&mine, &mut theirs, "exchanging segment headers")?;
        if mine != theirs {
            let seq = u64::from_ne_bytes(theirs[..8].try_into().unwrap());
            let n = u64::from_ne_bytes(theirs[8..].try_into().unwrap());
            return Err(CollectiveError::Invalid(format!(
                "rank {} is at segment #{seq} of {n} elements while rank {} is at #{} of {numel}: the ranks called \
                 all_reduce_sum with different tensors (every rank must pass the same shapes and dtypes in the same \
                 order)",
                self.prev_rank(),
                self.rank,
                self.seq
            )));
        }
        Ok(())
    }

    /// Ring all-reduce (sum) of `data` in place.
    fn ring_all_reduce(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let n = self.world;
        let r = self.rank;
        let len = data.len();
        let bounds = |c: usize| (c * len / n)..((c + 1) * len / n);
        let max_chunk = (0..n).map(|c| bounds(c).len()).max().unwrap_or(0);
        let mut incoming = vec![0f32; max_chunk];
        // Reduce-scatter: after step s, rank r holds chunk (r - s - 1) summed over s + 2
        // ranks; after n - 1 steps it owns the full sum of chunk (r + 1).
        for s in 0..n - 1 {
            let send = bounds((r + n - s) % n);
            let recv = bounds((r + 2 * n - s - 1) % n);
            let buf = &mut incoming[..recv.len()];
            self.exchange(as_bytes(&data[send]), as_bytes_mut(buf), "running the reduce-scatter")?;
            for (d, x) in data[recv].iter_mut().zip(buf.iter()) {
                *d += *x;
            }
        }
        // All-gather: pass the finished chunks around; the receiver overwrites, so every
        // rank ends with the owner's exact bytes.
        for s in 0..n - 1 {
            let send = bounds((r + 1 + n - s) % n);
            let recv = bounds((r + n - s) % n);
            let (send_slice, recv_slice) = disjoint(data, send, recv);
            self.exchange(as_bytes(send_slice), as_bytes_mut(recv_slice), "running the all-gather")?;
        }
        Ok(())
    }

    /// Refuses what the ring cannot reduce, before any byte moves (the ring stays usable).
    fn validate(tensors: &[Tensor]) -> Result<(), CollectiveError> {
        for (i, t) in tensors.iter().enumerate() {
            if !t.defined() {
                return Err(CollectiveError::Invalid(format!(
                    "tensor {i} is undefined (a gradient not computed yet?)"
                )));
            }
            if t.device() != Device::Cpu {
                return Err(CollectiveError::Invalid(format!(
                    "tensor {i} is on {:?}; the TCP ring reduces CPU tensors (use NCCL for CUDA tensors)",
                    t.device()
                )));
            }
            match t.kind() {
                Kind::Float | Kind::BFloat16 | Kind::Half => {}
                other => {
                    return Err(CollectiveError::Invalid(format!(
                        "tensor {i} has dtype {}; the TCP ring reduces f32, bf16 and f16 (in f32)",
                        kind_name(other)
                    )));
                }
            }
        }
        Ok(())
    }

    fn all_reduce_staged(&mut self, staged: &Staged) -> Result<(), CollectiveError> {
        let numels: Vec<usize> = staged.work.iter().map(|t| t.numel()).collect();
        let order: Vec<usize> = (0..numels.len()).collect();
        for seg in segments(&numels, &order, self.bucket_bytes / 4) {
            self.check_header(seg.numel)?;
            match staged.contiguous_span(&seg) {
                Some(addr) => {
                    // SAFETY: the span is `seg.numel` f32 elements of live, contiguous CPU
                    // tensors that lie back to back (checked), disjoint from every other
                    // tensor of the call (checked), and nothing else touches them until the
                    // reduction returns.
                    let data = unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, seg.numel) };
                    self.ring_all_reduce(data)?;
                }
                None => {
                    let packed = staged.pack(&seg);
                    // SAFETY: `packed` is a fresh contiguous f32 CPU tensor of `seg.numel`
                    // elements that only this function references.
                    let data = unsafe { std::slice::from_raw_parts_mut(packed.data_ptr() as *mut f32, seg.numel) };
                    self.ring_all_reduce(data)?;
                    staged.unpack(&seg, &packed);
                }
            }
        }
        Ok(())
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        self.err_broken()?;
        Self::validate(tensors)?;
        if self.world == 1 {
            return Ok(());
        }
        tch::no_grad(|| {
            let staged = Staged::new(tensors, |_| Kind::Float);
            staged.check_disjoint()?;
            // From here on an error may leave the neighbours mid-transfer: the ring is done.
            self.all_reduce_staged(&staged).map_err(|e| self.fail(e))?;
            staged.finish(tensors);
            Ok(())
        })
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.err_broken()?;
        if self.world == 1 {
            return Ok(());
        }
        // One element per rank: every chunk is non-empty, so no rank can finish before all
        // have contributed.
        let mut token = vec![1f32; self.world];
        let world = self.world;
        let result = self.check_header(world).and_then(|()| self.ring_all_reduce(&mut token));
        match result {
            Ok(()) if token.iter().all(|&x| x == world as f32) => Ok(()),
            Ok(()) => Err(self.fail(CollectiveError::Peer {
                rank: self.rank,
                what: format!(
                    "barrier token summed to {token:?}, expected {world} everywhere: the ring is out of step"
                ),
            })),
            Err(e) => Err(self.fail(e)),
        }
    }
}

// ------------------------------------------------------------------ slices

fn as_bytes(s: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any alignment suits u8; same memory, same lifetime.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

fn as_bytes_mut(s: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above, and every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) }
}

/// Borrows two non-overlapping ranges of `data`, one shared and one mutable.
fn disjoint(data: &mut [f32], shared: std::ops::Range<usize>, mutable: std::ops::Range<usize>) -> (&[f32], &mut [f32]) {
    if shared.is_empty() {
        return (&[], &mut data[mutable]);
    }
    if mutable.is_empty() {
        return (&data[shared], &mut []);
    }
    if shared.end <= mutable.start {
        let (lo, hi) = data.split_at_mut(mutable.start);
        (&lo[shared], &mut hi[..mutable.len()])
    } else {
        assert!(mutable.end <= shared.start, "ring chunks overlap");
        let (lo, hi) = data.split_at_mut(shared.start);
        (&hi[..shared.len()], &mut lo[mutable])
    }
}
