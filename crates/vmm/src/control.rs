//! The VM process's end of the channel to vmd (`--control-fd`): JSON lines
//! of `api::vmproc` messages on a socket vmd made with socketpair(2).
//!
//! One thread reads requests and answers them in order; a watcher thread
//! reports guest-tools changes as events. All writes go through one
//! mutex so answers and events never interleave within a line.
//!
//! When vmd goes away (EOF: it exited, was killed, is being upgraded), a
//! VM process started with `--reattach` runs on, detached: what it would
//! tell vmd meanwhile is dropped (its last log lines are kept, and go to
//! the next vmd's log first), and it waits on the socket vmd gave it for
//! the next vmd (root only), which hands it a new stderr and becomes its
//! channel. Without `--reattach`, nobody supervises the VM any more:
//! it is powered off.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::vmproc::{Event, Guest, Reply, Request, RunState};
use vm::guestrpc::host::{GuestState, MAX_GUESTINFO_BYTES, MAX_GUESTINFO_KEYS};
use vm::{RunState as VmRunState, VmHandle};

use crate::power;

#[derive(Clone)]
pub struct Channel {
    /// None while no vmd is attached.
    out: Arc<Mutex<Option<File>>>,
}

impl Channel {
    /// Takes ownership of `fd`.
    ///
    /// # Safety
    /// `fd` must be an open socket nothing else in the process uses.
    pub unsafe fn from_fd(fd: RawFd) -> std::io::Result<(Channel, File)> {
        // SAFETY: the caller's contract.
        let f = unsafe { File::from_raw_fd(fd) };
        let reader = f.try_clone()?;
        Ok((
            Channel {
                out: Arc::new(Mutex::new(Some(f))),
            },
            reader,
        ))
    }

    pub fn send(&self, reply: &Reply) {
        let mut line = serde_json::to_vec(reply).expect("replies serialize");
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // vmd gone: the reader sees EOF and handles it.
        if let Some(out) = out.as_mut() {
            let _ = out.write_all(&line);
        }
    }

    /// Sends nothing more until [`Channel::attach`].
    fn detach(&self) {
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn attach(&self, f: File) {
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn event(&self, e: Event) {
        self.send(&Reply::Event(e));
    }
}

/// Log lines written while no vmd is attached (Some then), for the next.
static KEPT: Mutex<Option<VecDeque<String>>> = Mutex::new(None);

/// How many log lines are kept while detached: the last ones.
const KEPT_LINES: usize = 64;

/// Keeps log line `line` for the next vmd if none is attached: true if
/// so, false if it is to be written now.
pub fn keep_if_detached(line: &str) -> bool {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(q) = kept.as_mut() else {
        return false;
    };
    if q.len() == KEPT_LINES {
        q.pop_front();
    }
    q.push_back(line.to_owned());
    true
}

/// From now on log lines are kept (see [`keep_if_detached`]).
fn keep_log() {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.get_or_insert_with(VecDeque::new);
}

/// Writes the lines kept while detached to stderr (vmd's new pipe), and
/// writes lines there from now on.
fn flush_kept_log() {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(q) = kept.take() {
        let mut err = std::io::stderr().lock();
        for line in q {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// Most descriptors one start hands over (taps): more than a VM has PCI
/// slots for interfaces.
const MAX_FDS: usize = 32;

/// Receives the `n` descriptors vmd sends first on the control socket (one
/// byte carrying them as SCM_RIGHTS), before any JSON line. Fewer or more
/// than `n`, or a truncated control message, is an error: the VM would
/// otherwise get the wrong tap on an interface.
pub fn recv_fds(fd: RawFd, n: usize) -> std::io::Result<Vec<OwnedFd>> {
    use std::io::{Error, ErrorKind};
    if n > MAX_FDS {
        return Err(Error::new(ErrorKind::InvalidInput, "too many descriptors"));
    }
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut cbuf = [0u64; 2 + MAX_FDS / 2 + 2];
    // SAFETY: a zeroed msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let got = loop {
        // SAFETY: msg points at live buffers of the sizes it states.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r;
        }
        let e = Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG macros walk the buffer recvmsg filled, within
    // msg_controllen; each SCM_RIGHTS payload is an array of ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..len / std::mem::size_of::<i32>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if got != 1 || msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() != n {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("expected {n} descriptors, got {}", fds.len()),
        ));
    }
    Ok(fds)
}

/// What vmd sees of the guest's tools.
pub fn guest(s: &GuestState, now_ms: Option<u64>) -> Guest {
    let mut addresses = Vec::new();
    for nic in &s.nics {
        for a in &nic.addrs {
            addresses.push(format!("{}/{}", a.addr, a.prefix_len));
        }
    }
    Guest {
        tools: s.tools_present,
        tools_version: s.tools_version,
        hostname: s.hostname.clone(),
        ip: s.ipv4.map(|a| a.to_string()),
        addresses,
        nics: s
            .nics
            .iter()
            .map(|n| api::v1::GuestNic {
                mac: n.mac.clone(),
                addresses: n
                    .addrs
                    .iter()
                    .map(|a| format!("{}/{}", a.addr, a.prefix_len))
                    .collect(),
            })
            .collect(),
        os_name: s.os_full_name.clone().or_else(|| s.os_name.clone()),
        uptime_secs: s.uptime.map(|u| u.secs()),
        last_poll_ago_ms: s.last_poll_ms.zip(now_ms).map(|(p, n)| n.saturating_sub(p)),
        last_state_change: s
            .last_state_change
            .and_then(|c| c.power_state())
            .map(|p| format!("{p:?}").to_lowercase()),
    }
}

fn run_state(h: &VmHandle, stopping: bool) -> RunState {
    match h.state() {
        VmRunState::Paused => RunState::Paused,
        VmRunState::Stopping => RunState::Stopping,
        VmRunState::Running if stopping => RunState::Stopping,
        VmRunState::Running => RunState::Running,
    }
}

/// Serves vmd's requests until EOF; then, with a re-attach socket
/// (`listener`), serves the next vmd that connects on it, and so on for
/// as long as the VM runs; without one, powers the VM off. A vmd that
/// re-attaches is told the console's pty (`tty`) again: the one that
/// started the VM may have died before it read it.
pub fn serve(
    ch: Channel,
    input: File,
    h: VmHandle,
    listener: Option<OwnedFd>,
    tty: Option<String>,
) {
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (ch, h) = (ch.clone(), h.clone());
        // Started by the spawner, as every thread of a confined VM
        // process: this thread's own filter has no clone.
        vm::threads::spawn(vm::threads::ThreadKind::Control, "watch-guest", move || {
            watch_guest(ch, h)
        })
    };
    if let Err(e) = watch {
        eprintln!("vmm: cannot watch the guest tools: {e}");
    }
    let mut input = input;
    loop {
        for line in BufReader::new(&input).lines() {
            let Ok(line) = line else { break };
            let reply = match serde_json::from_str::<Request>(&line) {
                Err(e) => Reply::Error {
                    message: format!("bad request: {e}"),
                },
                Ok(req) => handle(req, &h, &stopping),
            };
            ch.send(&reply);
        }
        let Some(listener) = &listener else {
            log::warn!("vmd closed the control channel: powering off");
            h.power_off();
            return;
        };
        ch.detach();
        keep_log();
        log::warn!("vmd closed the control channel: the VM runs on, waiting for vmd");
        input = match accept_vmd(listener) {
            Ok(f) => f,
            Err(e) => {
                // Nothing can reach this VM any more: nobody could stop it.
                flush_kept_log();
                log::error!("the re-attach socket: {e}: powering off");
                h.power_off();
                return;
            }
        };
        flush_kept_log();
        match input.try_clone() {
            Ok(out) => ch.attach(out),
            Err(e) => {
                log::error!("the new control channel: {e}: powering off");
                h.power_off();
                return;
            }
        }
        log::info!("vmd re-attached");
        if let Some(path) = &tty {
            ch.event(Event::Tty { path: path.clone() });
        }
    }
}

/// Makes `sock` (bound by vmd) listen. Called before confinement: the
/// peer credentials a connecting vmd sees (SO_PEERCRED: the pid it
/// checks) are those of the process that called listen(2) last.
pub fn listen(sock: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: listen(2) on a descriptor we own.
    if unsafe { libc::listen(sock.as_raw_fd(), 4) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for a vmd on `listener`: the next connection from a root
/// process that sends one descriptor first, the new stderr (a pipe to
/// vmd's log), which replaces fd 2. Connections from anyone else, or
/// that send something else first, are closed. (The socket lies in vmd's
/// 0700 state directory: only root reaches it anyway.)
fn accept_vmd(listener: &OwnedFd) -> std::io::Result<File> {
    use std::io::Error;
    loop {
        // SAFETY: accept4 on our listening socket; no address wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED | libc::EMFILE | libc::ENFILE) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                _ => return Err(e),
            }
        }
        // SAFETY: accept4 returned a fresh descriptor, ours.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        match peer_uid(&conn) {
            Ok(0) => {}
            Ok(uid) => {
                log::warn!("re-attach socket: refused a connection from uid {uid}");
                continue;
            }
            Err(e) => {
                log::warn!("re-attach socket: {e}");
                continue;
            }
        }
        let stderr = match recv_fds(conn.as_raw_fd(), 1) {
            Ok(mut fds) => fds.pop().expect("one"),
            Err(e) => {
                log::warn!("re-attach socket: no stderr from vmd: {e}");
                continue;
            }
        };
        // SAFETY: dup3 onto fd 2, which stays open throughout: a line
        // written meanwhile goes to the old pipe or the new one.
        if unsafe { libc::dup3(stderr.as_raw_fd(), 2, 0) } < 0 {
            return Err(Error::other(format!(
                "new stderr: {}",
                Error::last_os_error()
            )));
        }
        return Ok(File::from(conn));
    }
}

/// The uid of the process at the other end of `conn`.
fn peer_uid(conn: &OwnedFd) -> std::io::Result<u32> {
    // SAFETY: a zeroed ucred is valid; getsockopt fills it within its size.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn handle(req: Request, h: &VmHandle, stopping: &std::sync::atomic::AtomicBool) -> Reply {
    use std::sync::atomic::Ordering::Relaxed;
    match req {
        Request::Status => Reply::Status {
            state: run_state(h, stopping.load(Relaxed)),
            guest: guest(&h.guest_state(), h.tools_now_ms()),
        },
        Request::Pause => {
            if h.state() == VmRunState::Paused {
                return Reply::Error {
                    message: "already paused".into(),
                };
            }
            if power::pause(h) {
                Reply::Ok
            } else {
                Reply::Error {
                    message: "the VM is stopping".into(),
                }
            }
        }
        Request::Resume => {
            if power::resume(h) {
                Reply::Ok
            } else {
                Reply::Error {
                    message: "not paused".into(),
                }
            }
        }
        Request::Stop { force: true, .. } => {
            h.power_off();
            Reply::Ok
        }
        Request::Stop {
            force: false,
            grace_secs,
        } => {
            if stopping.swap(true, Relaxed) {
                return Reply::Error {
                    message: "already stopping".into(),
                };
            }
            if h.state() == VmRunState::Paused {
                // A paused guest cannot shut itself down.
                power::resume(h);
            }
            power::graceful_stop(h, Duration::from_secs(grace_secs));
            Reply::Ok
        }
        Request::GuestinfoList => guestinfo_list(h),
        Request::GuestinfoGet { key } => guestinfo_get(h, &key),
        Request::GuestinfoSet { key, value } => guestinfo_set(h, &key, &value),
    }
}

fn error(message: impl Into<String>) -> Reply {
    Reply::Error {
        message: message.into(),
    }
}

/// Guest bytes as text (see `api::v1::Guestinfo`).
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// The guestinfo requests work on the store the backdoor device serves the
// guest from, under its lock (a vCPU in a backdoor exit waits that long):
// each takes one copy and nothing more.

fn guestinfo_list(h: &VmHandle) -> Reply {
    match h.with_tools(|t| t.guestinfo().map(|(k, v)| (lossy(k), lossy(v))).collect()) {
        Ok(vars) => Reply::Guestinfo { vars },
        Err(e) => error(e.to_string()),
    }
}

fn guestinfo_get(h: &VmHandle, key: &str) -> Reply {
    let key = match api::v1::guestinfo_key(key) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    match h.with_tools(|t| t.get_guestinfo(key).map(lossy)) {
        Ok(value) => Reply::GuestinfoValue { value },
        Err(e) => error(e.to_string()),
    }
}

/// vmd has checked key and value already; they are checked here again
/// because this process owns the store, and what it holds must stay what
/// a guest could have written.
fn guestinfo_set(h: &VmHandle, key: &str, value: &str) -> Reply {
    let checked = api::v1::guestinfo_key(key)
        .and_then(|k| api::v1::check_guestinfo_value(k, value).map(|()| k));
    let key = match checked {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    match h.with_tools(|t| t.set_guestinfo(key, value.as_bytes())) {
        Ok(Ok(())) => Reply::Ok,
        Ok(Err(_full)) => error(format!(
            "guestinfo store full: at most {MAX_GUESTINFO_KEYS} variables and \
             {MAX_GUESTINFO_BYTES} bytes of keys and values"
        )),
        Err(e) => error(e.to_string()),
    }
}

/// How long the watcher sleeps without news before it checks whether the
/// VM is stopping. News itself wakes it at once.
const GUEST_WATCH_IDLE: Duration = Duration::from_secs(1);

/// Tools report in bursts (a dozen RPCIs at boot, a batch of guest info
/// now and then): after the first news the watcher lets the burst settle
/// this long, so that one event to vmd carries all of it.
const GUEST_NEWS_SETTLE: Duration = Duration::from_millis(10);

/// Reports what the guest tools say whenever it changes (ignoring the
/// poll time, which changes every poll). Sleeps until the guest reports
/// something: a hundred idle VMs cost no wakeups.
fn watch_guest(ch: Channel, h: VmHandle) {
    let mut last: Option<Guest> = None;
    let mut seen = 0;
    loop {
        let Some(reports) = h.wait_guest_news(seen, GUEST_WATCH_IDLE) else {
            return; // no guest tools, nothing to watch
        };
        if h.state() == VmRunState::Stopping {
            return;
        }
        if reports == seen {
            continue;
        }
        std::thread::sleep(GUEST_NEWS_SETTLE);
        seen = h
            .wait_guest_news(reports, Duration::ZERO)
            .unwrap_or(reports);
        let mut g = guest(&h.guest_state(), None);
        g.last_poll_ago_ms = None;
        if last.as_ref() != Some(&g) {
            ch.event(Event::Guest { guest: g.clone() });
            last = Some(g);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The API's guestinfo limits are stated as numbers (vmctl depends on
    /// the API types only); they must be the protocol's.
    #[test]
    fn guestinfo_limits_are_the_protocols() {
        assert_eq!(
            api::v1::GUESTINFO_MAX_MESSAGE,
            vm::guestrpc::proto::MAX_MESSAGE
        );
    }
}
