//! Setting up a ring member: [`TcpRing::bind`] listens, [`TcpRingListener::connect`]
//! connects to the successor and accepts the predecessor, each with a handshake (magic,
//! version, byte order, rank, world size, gang token) that the acceptor answers with one
//! status byte; a connection from anyone else (another gang, an older attempt) is
//! rejected and the acceptor keeps waiting for the right peer.

use super::deadline::{Fail, read_exact_by, write_all_by};
use super::{CollectiveError, TcpRing};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

impl TcpRing {
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
}

impl TcpRingListener {
    /// The endpoint `host:port` to report at rendezvous.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Joins the ring: connects to the successor and accepts the predecessor, each with a
    /// handshake carrying `gang` (for example [`crate::collective::gang_token`]`(task_id, attempt)`),
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

impl Fail {
    fn into_setup(self, during: &str) -> SetupError {
        SetupError::Fail(self, during.to_string())
    }
}
