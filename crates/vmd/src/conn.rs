//! The control socket's connections: who may hold how many, and how long
//! a client may take to send a request.
//!
//! Without bounds any user who can reach the socket could lock root out:
//! a thousand idle connections use up vmd's descriptors, and then nobody
//! can ask vmd anything (issue 12, item 3). So:
//!
//! - every connection is counted against its user (SO_PEERCRED's uid, taken
//!   at accept) and against a total; a user other than root is refused past
//!   [`PER_USER`] connections, or once the total reaches [`TOTAL`] less
//!   [`ROOT_RESERVE`], which is kept for root; root is refused only past
//!   [`TOTAL`]. A refused connection is answered `503` with a JSON error and
//!   closed at once;
//! - a request's header must be complete within [`HEADER_TIMEOUT`] of the
//!   connection's start or of the request's first byte, a connection may
//!   sit idle between requests for [`IDLE_TIMEOUT`], a request's body must
//!   arrive within [`BODY_TIMEOUT`] of its header, and an answer that the
//!   client does not read for [`WRITE_TIMEOUT`] ends the connection. The
//!   handler itself is not timed: `/wait` and starts may take long.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};

use crate::auth::Peer;

/// Connections one user other than root may hold open.
pub const PER_USER: usize = 64;
/// Connections open at once, all users together.
pub const TOTAL: usize = 512;
/// Of [`TOTAL`], how many only root may use.
pub const ROOT_RESERVE: usize = 32;
/// From a connection's start, or a request's first byte, to the end of
/// its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Between the end of an answer and the next request's first byte.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// From the end of a request's header to the end of its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may wait for the client to read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body buffered (axum's default limit).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Open connections, per uid and in total.
#[derive(Default)]
pub struct Counts {
    inner: Mutex<CountsInner>,
}

#[derive(Default)]
struct CountsInner {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The user holds this many already.
    User(usize),
    /// All users together hold this many.
    Total(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::User(n) => write!(
                f,
                "too many connections: you have {n} open (limit {PER_USER})"
            ),
            Refusal::Total(n) => write!(f, "too many connections: {n} open"),
        }
    }
}

impl Counts {
    /// Counts a new connection of `uid`, unless it is one too many; the
    /// slot gives it back when dropped.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        if uid == 0 {
            if c.total >= TOTAL {
                return Err(Refusal::Total(c.total));
            }
        } else {
            if mine >= PER_USER {
                return Err(Refusal::User(mine));
            }
            if c.total >= TOTAL - ROOT_RESERVE {
                return Err(Refusal::Total(c.total));
            }
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            counts: self.clone(),
            uid,
        })
    }

    /// (total, this uid's) open connections.
    #[cfg(test)]
    fn open(&self, uid: u32) -> (usize, usize) {
        let c = self.inner.lock().unwrap();
        (c.total, c.per_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// One counted connection.
pub struct Slot {
    counts: Arc<Counts>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

/// The control socket, counting and bounding its connections.
pub struct Listener {
    inner: UnixListener,
    counts: Arc<Counts>,
    /// When a refusal or accept error was last logged (seconds since
    /// `epoch`), so that a flood makes one line per 10 s, not one per try.
    last_log: AtomicU64,
    epoch: Instant,
}

impl Listener {
    pub fn new(inner: UnixListener) -> Listener {
        Listener {
            inner,
            counts: Arc::default(),
            last_log: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether to log now (at most once per 10 s).
    fn may_log(&self) -> bool {
        let now = self.epoch.elapsed().as_secs() + 10;
        let last = self.last_log.load(Ordering::Relaxed);
        now >= last + 10
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

fn peer_of(s: &UnixStream) -> Peer {
    match s.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid().unwrap_or(0),
        },
        // Without credentials the peer gets no privileges at all.
        Err(_) => Peer {
            uid: u32::MAX,
            gid: u32::MAX,
            pid: 0,
        },
    }
}

/// The answer to a refused connection, written without reading the
/// request (the socket's buffer is empty: it cannot block).
fn refuse(s: &UnixStream, why: &Refusal) {
    let body = serde_json::to_string(&api::v1::Error {
        error: why.to_string(),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.try_write(answer.as_bytes());
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            let stream = match self.inner.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // connection waits in the backlog; try again shortly.
                    if self.may_log() {
                        tracing::warn!("control socket: accept: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = peer_of(&stream);
            match self.counts.admit(peer.uid) {
                Ok(slot) => return (Conn::new(stream, slot), peer),
                Err(why) => {
                    if self.may_log() {
                        tracing::warn!(
                            "control socket: refused a connection of uid {} (pid {}): {why}",
                            peer.uid,
                            peer.pid
                        );
                    }
                    refuse(&stream, &why);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        // SAFETY: getuid/getgid/getpid have no side effects.
        Ok(unsafe {
            Peer {
                uid: libc::getuid(),
                gid: libc::getgid(),
                pid: libc::getpid(),
            }
        })
    }
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        *stream.remote_addr()
    }
}

/// Where a connection is in its exchange, as far as reading it goes.
#[derive(Debug)]
enum Phase {
    /// Waiting for a request's header to end, by `deadline`. `idle`: no
    /// byte of it yet since an answer (the deadline is the idle one).
    Head {
        deadline: Instant,
        idle: bool,
        /// The line being read has no character but `\r` so far.
        line_empty: bool,
        /// A line with something on it has ended (the request line).
        have_line: bool,
    },
    /// The header is in; the request is the handler's until the answer
    /// is written. Not timed.
    Busy,
}

impl Phase {
    fn head(deadline: Instant, idle: bool) -> Phase {
        Phase::Head {
            deadline,
            idle,
            line_empty: true,
            have_line: false,
        }
    }
}

/// A connection on the control socket: its slot in the counts, and the
/// timeouts on reading requests and writing answers. HTTP is only looked
/// at as far as telling where a header ends and an answer begins.
pub struct Conn {
    stream: UnixStream,
    _slot: Slot,
    phase: Phase,
    read_timer: Pin<Box<Sleep>>,
    /// Since when writing has been blocked, if it is.
    write_blocked: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(stream: UnixStream, slot: Slot) -> Conn {
        let deadline = Instant::now() + HEADER_TIMEOUT;
        Conn {
            stream,
            _slot: slot,
            phase: Phase::head(deadline, false),
            read_timer: Box::pin(tokio::time::sleep_until(deadline)),
            write_blocked: None,
            write_timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Follows the request's bytes `got` while its header is read.
    fn saw(&mut self, got: &[u8]) {
        let Phase::Head {
            deadline,
            idle,
            line_empty,
            have_line,
        } = &mut self.phase
        else {
            return;
        };
        if got.is_empty() {
            return;
        }
        if *idle {
            *idle = false;
            *deadline = Instant::now() + HEADER_TIMEOUT;
        }
        for &b in got {
            match b {
                b'\n' if *line_empty && *have_line => {
                    self.phase = Phase::Busy;
                    return;
                }
                b'\n' => {
                    *have_line |= !*line_empty;
                    *line_empty = true;
                }
                b'\r' => {}
                _ => *line_empty = false,
            }
        }
    }

    /// Follows an answer's bytes: the first write of a final (not 1xx)
    /// answer ends the request; the idle time starts.
    fn wrote(&mut self, buf: &[u8]) {
        if matches!(self.phase, Phase::Busy) {
            let interim =
                buf.len() >= 10 && buf.starts_with(b"HTTP/1.") && buf[8] == b' ' && buf[9] == b'1';
            if !interim {
                self.phase = Phase::head(Instant::now() + IDLE_TIMEOUT, true);
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Phase::Head { deadline, idle, .. } = this.phase else {
                    return Poll::Pending;
                };
                if this.read_timer.deadline() != deadline {
                    this.read_timer.as_mut().reset(deadline);
                }
                if this.read_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out(if idle {
                        "idle connection"
                    } else {
                        "request header not received in time"
                    })));
                }
                Poll::Pending
            }
        }
    }
}

impl Conn {
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let since = *self.write_blocked.get_or_insert_with(Instant::now);
        let deadline = since + WRITE_TIMEOUT;
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        if self.write_timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out("answer not read in time")));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.write_blocked = None;
                if n > 0 {
                    this.wrote(buf);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Middleware: reads a request's whole body within [`BODY_TIMEOUT`]
/// before its handler runs, so that a client that sends its body slowly
/// holds the connection no longer than that.
pub async fn read_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let error = |code: StatusCode, msg: &str| {
        (
            code,
            axum::Json(api::v1::Error {
                error: msg.to_owned(),
            }),
        )
            .into_response()
    };
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or cut short",
        ),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        ),
    }
}

/// Raises the soft limit on open descriptors to the hard one (systemd's
/// default soft limit is 1024); returns the limit now in force.
pub fn raise_nofile() -> io::Result<libc::rlim_t> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                return Err(io::Error::last_os_error());
            }
            r = want;
        }
    }
    Ok(r.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_bounded_and_root_keeps_a_reserve() {
        let c = Arc::new(Counts::default());
        let mut held = Vec::new();
        for _ in 0..PER_USER {
            held.push(c.admit(1000).unwrap());
        }
        assert_eq!(c.admit(1000).err(), Some(Refusal::User(PER_USER)));
        // Other users fill the rest but root's reserve.
        let mut uid = 1001;
        while c.open(0).0 < TOTAL - ROOT_RESERVE {
            match c.admit(uid) {
                Ok(s) => held.push(s),
                Err(Refusal::User(_)) => uid += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            c.admit(uid + 1).err(),
            Some(Refusal::Total(TOTAL - ROOT_RESERVE))
        );
        for _ in 0..ROOT_RESERVE {
            held.push(c.admit(0).unwrap());
        }
        assert_eq!(c.admit(0).err(), Some(Refusal::Total(TOTAL)));
        // Closing gives the slots back.
        held.clear();
        assert_eq!(c.open(1000), (0, 0));
        assert!(c.admit(1000).is_ok());
    }

    #[tokio::test]
    async fn header_end_and_answers_move_the_phase() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = Arc::new(Counts::default());
        let mut conn = Conn::new(a, c.admit(5).unwrap());
        conn.saw(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(matches!(conn.phase, Phase::Head { idle: false, .. }));
        conn.saw(b"\n\r");
        assert!(matches!(conn.phase, Phase::Head { .. }));
        conn.saw(b"\nbody");
        assert!(matches!(conn.phase, Phase::Busy));
        conn.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(matches!(conn.phase, Phase::Busy));
        conn.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(conn.phase, Phase::Head { idle: true, .. }));
        // Leading empty lines do not end a header; bare \n works too.
        conn.saw(b"\r\n\nGET / HTTP/1.1\n");
        assert!(matches!(conn.phase, Phase::Head { idle: false, .. }));
        conn.saw(b"\n");
        assert!(matches!(conn.phase, Phase::Busy));
    }
}
