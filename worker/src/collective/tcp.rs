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

use super::{Collective, CollectiveError, Staged, kind_name, segments};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const MAGIC: [u8; 8] = *b"SRGRING\0";
const VERSION: u32 = 1;
/// Written in native byte order: a peer with the other byte order reads it reversed (data
/// travels as native f32 bytes, so such a peer is refused).
const BYTE_ORDER: u32 = 0x0102_0304;
const MAX_TOKEN: usize = 4096;
/// How long an accepted connection may take to send its handshake before the acceptor
/// drops it and goes back to waiting for the real predecessor.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// Acceptor's answers to a handshake.
const ACK_OK: u8 = 0;
const ACK_WRONG_GANG: u8 = 1;
const ACK_WRONG_WORLD: u8 = 2;
const ACK_WRONG_RANK: u8 = 3;

fn ack_reason(code: u8) -> &'static str {
    match code {
        ACK_WRONG_GANG => "another gang token (a member of another task or an older attempt)",
        ACK_WRONG_WORLD => "another world size",
        ACK_WRONG_RANK => "a rank that is not its predecessor",
        _ => "an unknown reason",
    }
}

/// The listening half of a ring member, between `bind` and `connect`.
#[derive(Debug)]
pub struct TcpRingListener {
    listener: TcpListener,
    endpoint: String,
}

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

    /// Listens on an ephemeral port of `host` (a name or address this machine has, that the
    /// other members can reach; `0.0.0.0` listens everywhere but is only reachable as such
    /// from this machine). Returns the listener and the endpoint `host:port` to report at
    /// rendezvous.
    pub fn bind(host: &str) -> Result<(TcpRingListener, String), CollectiveError> {
        let listener = TcpListener::bind((host, 0)).map_err(|source| CollectiveError::Io {
            rank: 0,
            during: format!("binding a port on {host:?} for the CPU collective (is this the machine's own address?)"),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| CollectiveError::Io {
                rank: 0,
                during: "reading the bound port".into(),
                source,
            })?
            .port();
        let endpoint = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok((
            TcpRingListener {
                listener,
                endpoint: endpoint.clone(),
            },
            endpoint,
        ))
    }

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

impl TcpRingListener {
    /// The endpoint `host:port` to report at rendezvous.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Joins the ring: connects to the successor and accepts the predecessor, each with a
    /// handshake carrying `gang` (for example [`super::gang_token`]`(task_id, attempt)`),
    /// within `timeout`; the same `timeout` then bounds every ring step. `endpoints` are all
    /// members' endpoints in rank order, this member's own at `rank`. World size 1 opens no
    /// sockets.
    pub fn connect(
        self,
        rank: usize,
        endpoints: &[String],
        gang: &str,
        timeout: Duration,
    ) -> Result<TcpRing, CollectiveError> {
        let world = endpoints.len();
        if world == 0 || rank >= world {
            return Err(CollectiveError::Invalid(format!(
                "rank {rank} with {world} endpoints: need 0 <= rank < world size"
            )));
        }
        if gang.len() > MAX_TOKEN {
            return Err(CollectiveError::Invalid(format!(
                "gang token of {} bytes (at most {MAX_TOKEN})",
                gang.len()
            )));
        }
        let own_port = self.listener.local_addr().map(|a| a.port()).ok();
        let listed_port = endpoints[rank].rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        if own_port.is_some() && listed_port != own_port {
            return Err(CollectiveError::Invalid(format!(
                "endpoints[{rank}] is {:?} but this member listens on {}: pass the endpoints in rank order",
                endpoints[rank], self.endpoint
            )));
        }
        let mut ring = TcpRing {
            rank,
            world,
            next: None,
            prev: None,
            timeout,
            bucket_bytes: TcpRing::DEFAULT_BUCKET_BYTES,
            seq: 0,
            broken: None,
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + timeout;
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let give_up = AtomicBool::new(false);
        let hello = hello_bytes(rank, world, gang);
        let (next, prev) = std::thread::scope(|s| {
            let connector = s.spawn(|| {
                let r = connect_next(&endpoints[next_rank], &hello, deadline, &give_up);
                if r.is_err() {
                    give_up.store(true, Ordering::SeqCst);
                }
                r
            });
            let prev = accept_prev(&self.listener, prev_rank, world, gang, deadline, &give_up);
            if prev.is_err() {
                give_up.store(true, Ordering::SeqCst);
            }
            (
                connector
                    .join()
                    .unwrap_or(Err(Fail::Closed.into_setup("connecting (thread panicked)"))),
                prev,
            )
        });
        let setup_err = |e: SetupError, peer: usize| -> CollectiveError {
            match e {
                SetupError::Fail(Fail::Timeout, during) => CollectiveError::Timeout {
                    rank,
                    world,
                    during: format!("{during} (rank {peer})"),
                    waited: timeout,
                },
                SetupError::Fail(Fail::Closed, during) => CollectiveError::Peer {
                    rank,
                    what: format!("{during}: rank {peer} closed the connection during the handshake"),
                },
                SetupError::Fail(Fail::Io(source), during) => CollectiveError::Io {
                    rank,
                    during: format!("{during} (rank {peer})"),
                    source,
                },
                SetupError::Rejected(what) => CollectiveError::Peer { rank, what },
                SetupError::GaveUp => CollectiveError::Peer {
                    rank,
                    what: format!("stopped waiting for rank {peer} because the other half of the ring set-up failed"),
                },
            }
        };
        // Report the root cause: the half that failed first, not the one that gave up.
        match (next, prev) {
            (Ok(n), Ok(p)) => {
                ring.next = Some(n);
                ring.prev = Some(p);
                Ok(ring)
            }
            (Err(e), Err(SetupError::GaveUp)) | (Err(e), Ok(_)) => Err(setup_err(e, next_rank)),
            (_, Err(e)) => Err(setup_err(e, prev_rank)),
        }
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

// ------------------------------------------------------------------ set-up

enum SetupError {
    Fail(Fail, String),
    Rejected(String),
    GaveUp,
}

fn hello_bytes(rank: usize, world: usize, gang: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + gang.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_ne_bytes());
    b.extend_from_slice(&BYTE_ORDER.to_ne_bytes());
    b.extend_from_slice(&(rank as u32).to_ne_bytes());
    b.extend_from_slice(&(world as u32).to_ne_bytes());
    b.extend_from_slice(&(gang.len() as u32).to_ne_bytes());
    b.extend_from_slice(gang.as_bytes());
    b
}

/// Connects to the successor (retrying while it is not listening yet), sends the hello and
/// waits for its verdict.
fn connect_next(
    endpoint: &str,
    hello: &[u8],
    deadline: Instant,
    give_up: &AtomicBool,
) -> Result<TcpStream, SetupError> {
    let during = format!("connecting to {endpoint}");
    let mut last_err: Option<io::Error> = None;
    let stream = loop {
        if give_up.load(Ordering::SeqCst) {
            return Err(SetupError::GaveUp);
        }
        let now = Instant::now();
        if now >= deadline {
            let detail = last_err.map(|e| format!("; last error: {e}")).unwrap_or_default();
            return Err(SetupError::Fail(Fail::Timeout, format!("{during}{detail}")));
        }
        let addrs: Vec<SocketAddr> = match endpoint.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_err = Some(e);
                Vec::new()
            }
        };
        let mut connected = None;
        for addr in addrs {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(2));
            if wait.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, wait) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(s) = connected {
            break s;
        }
        // Not listening yet, or not reachable yet: try again shortly.
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = stream.set_nodelay(true);
    write_all_by(&stream, hello, deadline)
        .map_err(|f| SetupError::Fail(f, format!("{during}: sending the handshake")))?;
    let mut ack = [0u8; 1];
    read_exact_by(&stream, &mut ack, deadline)
        .map_err(|f| SetupError::Fail(f, format!("{during}: waiting for the handshake answer")))?;
    if ack[0] != ACK_OK {
        return Err(SetupError::Rejected(format!(
            "the member at {endpoint} rejected this member's handshake: it expects {}; this member is stale or \
             was given the wrong endpoints: stop the task (retryable)",
            ack_reason(ack[0])
        )));
    }
    Ok(stream)
}

/// Accepts connections until one is the predecessor of this gang; rejects the others.
fn accept_prev(
    listener: &TcpListener,
    prev_rank: usize,
    world: usize,
    gang: &str,
    deadline: Instant,
    give_up: &AtomicBool,
) -> Result<TcpStream, SetupError> {
    // Non-blocking accept, polled, so the deadline and the give-up flag are honoured.
    listener
        .set_nonblocking(true)
        .map_err(|e| SetupError::Fail(Fail::Io(e), "preparing the listener".into()))?;
    let mut rejected: Vec<String> = Vec::new();
    loop {
        if give_up.load(Ordering::SeqCst) {
            return Err(SetupError::GaveUp);
        }
        if Instant::now() >= deadline {
            let note = if rejected.is_empty() {
                String::new()
            } else {
                format!("; rejected meanwhile: {}", rejected.join(", "))
            };
            return Err(SetupError::Fail(
                Fail::Timeout,
                format!("waiting for the predecessor to connect{note}"),
            ));
        }
        let (stream, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(SetupError::Fail(Fail::Io(e), "accepting the predecessor".into())),
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let hello_deadline = deadline.min(Instant::now() + HELLO_WAIT);
        match read_hello(&stream, hello_deadline) {
            Ok((rank, peer_world, token)) => {
                let verdict = if token != gang.as_bytes() {
                    ACK_WRONG_GANG
                } else if peer_world != world {
                    ACK_WRONG_WORLD
                } else if rank != prev_rank {
                    ACK_WRONG_RANK
                } else {
                    ACK_OK
                };
                let answered = write_all_by(&stream, &[verdict], deadline);
                if verdict == ACK_OK {
                    answered.map_err(|f| SetupError::Fail(f, "answering the predecessor's handshake".into()))?;
                    return Ok(stream);
                }
                rejected.push(format!("{from} claiming rank {rank} ({})", ack_reason(verdict)));
            }
            // Not one of us (or too slow): drop it and keep waiting.
            Err(why) => rejected.push(format!("{from} ({why})")),
        }
    }
}

fn read_hello(stream: &TcpStream, deadline: Instant) -> Result<(usize, usize, Vec<u8>), String> {
    let mut head = [0u8; 28];
    read_exact_by(stream, &mut head, deadline).map_err(|f| format!("no handshake: {f:?}"))?;
    if head[..8] != MAGIC {
        return Err("not a ring handshake".into());
    }
    let word = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().unwrap());
    if word(8) != VERSION {
        return Err(format!("handshake version {} (this member speaks {VERSION})", word(8)));
    }
    if word(12) != BYTE_ORDER {
        return Err("a peer with another byte order".into());
    }
    let token_len = word(24) as usize;
    if token_len > MAX_TOKEN {
        return Err(format!("gang token of {token_len} bytes"));
    }
    let mut token = vec![0u8; token_len];
    read_exact_by(stream, &mut token, deadline).map_err(|f| format!("truncated handshake: {f:?}"))?;
    Ok((word(16) as usize, word(20) as usize, token))
}

// ------------------------------------------------------------------ deadline I/O

#[derive(Debug)]
enum Fail {
    Timeout,
    Closed,
    Io(io::Error),
}

impl Fail {
    fn into_setup(self, during: &str) -> SetupError {
        SetupError::Fail(self, during.to_string())
    }
}

/// The socket timeout for the next system call: what is left of the deadline (at least
/// 1 ms: a zero timeout means "none" to the OS).
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        None
    } else {
        Some(left.max(Duration::from_millis(1)))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

fn write_all_by(mut stream: &TcpStream, buf: &[u8], deadline: Instant) -> Result<(), Fail> {
    let mut done = 0;
    while done < buf.len() {
        let Some(left) = remaining(deadline) else {
            return Err(Fail::Timeout);
        };
        stream.set_write_timeout(Some(left)).map_err(Fail::Io)?;
        match stream.write(&buf[done..]) {
            Ok(0) => return Err(Fail::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) if is_closed(&e) => return Err(Fail::Closed),
            Err(e) => return Err(Fail::Io(e)),
        }
    }
    Ok(())
}

fn read_exact_by(mut stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Fail> {
    let mut done = 0;
    while done < buf.len() {
        let Some(left) = remaining(deadline) else {
            return Err(Fail::Timeout);
        };
        stream.set_read_timeout(Some(left)).map_err(Fail::Io)?;
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(Fail::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) if is_closed(&e) => return Err(Fail::Closed),
            Err(e) => return Err(Fail::Io(e)),
        }
    }
    Ok(())
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
