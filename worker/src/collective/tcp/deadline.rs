//! Socket I/O with a deadline: every read and write of the ring (and of its set-up) must
//! finish by an instant, or fails as [`Fail::Timeout`]; a peer that went away is
//! [`Fail::Closed`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) enum Fail {
    Timeout,
    Closed,
    Io(io::Error),
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

pub(super) fn write_all_by(mut stream: &TcpStream, buf: &[u8], deadline: Instant) -> Result<(), Fail> {
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

pub(super) fn read_exact_by(mut stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Fail> {
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
