//! One VM process (`vmm --control-fd 0`) as vmd sees it: spawning it, or
//! re-attaching to one a previous vmd spawned (its socket, a pidfd), the
//! JSON-lines channel (requests answered in order, events at any time),
//! and noticing its exit at once.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::vmproc::{Event, Reply, Request};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

/// The fd number the control socket has in the VM process: its stdin, as
/// inetd hands a service its socket. Being a standard stream, it is placed
/// without code run between fork and exec, so std spawns with posix_spawn
/// (vfork-like) instead of copying the whole daemon with fork: under a
/// burst of starts, that copy was a third of vmd's work.
const CONTROL_FD: i32 = 0;

/// What a VM process tells the daemon, besides answers.
pub trait Sink: Send + Sync + 'static {
    fn event(&self, id: u32, event: Event);
    /// The process ended; `stderr_tail` is the last thing it printed.
    /// `status` is None for a process vmd re-attached to: not its child,
    /// whose exit status went to its parent.
    fn exited(&self, id: u32, status: Option<ExitStatus>, stderr_tail: Option<String>);
}

pub struct VmProc {
    pub pid: u32,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Waiters for answers, in request order; None once the channel is
    /// closed (the process is gone: nothing will be answered any more).
    pending: Mutex<Option<VecDeque<oneshot::Sender<Reply>>>>,
    /// A request line was cut short (its write timed out): the channel
    /// is out of step, and no later request is sent on it.
    broken: AtomicBool,
    /// Wakes the task that waits for the process, to SIGKILL it.
    kill: Notify,
    /// Why it was killed, for its last exit.
    killed_why: Mutex<Option<String>>,
    /// The process has been reaped.
    exited: AtomicBool,
}

/// The error of a request whose VM process ended before answering.
pub const EXITED: &str = "the VM process exited";

/// The error of a request whose VM process did not answer in time (it
/// is stopped, traced, or stuck in the kernel).
pub const NO_ANSWER: &str = "the VM process did not answer";

/// How long connecting to a VM process's re-attach socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a VM process gets to answer a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl VmProc {
    /// Sends `req` and waits for its answer.
    pub async fn request(&self, req: &Request) -> Result<Reply, String> {
        self.request_within(req, REPLY_TIMEOUT).await
    }

    /// Sends `req` and waits for its answer, `bound` at most, sending
    /// included: a process that reads nothing fills the socket buffer,
    /// and a write into it would wait as long as the process.
    pub async fn request_within(&self, req: &Request, bound: Duration) -> Result<Reply, String> {
        let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let deadline = tokio::time::Instant::now() + bound;
        let rx = {
            // Queue the waiter under the writer lock so answers, which come
            // in request order, find the waiters in the same order.
            let Ok(mut w) = tokio::time::timeout_at(deadline, self.writer.lock()).await else {
                return Err(NO_ANSWER.into());
            };
            if self.broken.load(Ordering::Relaxed) {
                return Err(NO_ANSWER.into());
            }
            let (tx, rx) = oneshot::channel();
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .ok_or(EXITED)?
                .push_back(tx);
            match tokio::time::timeout_at(deadline, w.write_all(&line)).await {
                // Its end of the socket is closed: it is exiting (a guest
                // that powered off as the request came), as when it ends
                // before answering.
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(EXITED.into())
                }
                Ok(r) => r.map_err(|e| format!("VM process: {e}"))?,
                Err(_) => {
                    // Part of the line may be in the socket: what follows
                    // would be read as one line with it, and the answers
                    // would no longer match the waiters.
                    self.broken.store(true, Ordering::Relaxed);
                    return Err(NO_ANSWER.into());
                }
            }
            rx
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EXITED.into()),
            Err(_) => Err(NO_ANSWER.into()),
        }
    }

    /// Kills the process (SIGKILL: it works on a stopped process too,
    /// and on one blocked in a system call); `why` becomes the VM's last
    /// exit. The exit is reported to the sink as any other.
    pub fn kill(&self, why: String) {
        if self.exited.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(pid = self.pid, "{why}");
        self.killed_why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.kill.notify_one();
    }

    /// Kills the process unless it has exited `bound` from now: after a
    /// forced stop that it answered, it has no reason to live on.
    pub fn kill_unless_exited_within(self: &Arc<Self>, bound: Duration, why: String) {
        let p = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(bound).await;
            p.kill(why);
        });
    }
}

fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `fds` as one byte with SCM_RIGHTS: what the VM process reads
/// first on the channel (`--net fd=control`).
fn send_fds(sock: &impl AsRawFd, fds: &[OwnedFd]) -> std::io::Result<()> {
    let byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&byte as *const u8).cast_mut().cast(),
        iov_len: 1,
    };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // u64s: aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the buffer has room for one header and `fds.len()` ints.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
        let data = libc::CMSG_DATA(c).cast::<i32>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers; MSG_NOSIGNAL: a VM process that
    // died already is an error here, not a SIGPIPE.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `vmm` with `args` for VM `id`, handing it `fds` (its taps) on
/// the channel; events and the exit go to `sink`. A confined VM process
/// (`--confine`) is started by `pidns` as PID 1 of a PID namespace of
/// its own (`vmm --pid-ns`); without one, it is the child of the process
/// started, which forks it into a PID namespace of its own, says its pid
/// and exits (see `api::vmproc::Forked`): vmd, a child subreaper,
/// inherits it, and watches and reaps it through a pidfd.
pub async fn spawn(
    vmm: &Path,
    args: &[String],
    fds: Vec<OwnedFd>,
    id: u32,
    name: &str,
    sink: Arc<dyn Sink>,
    pidns: Option<&crate::pidns::Spawner>,
) -> std::io::Result<Arc<VmProc>> {
    let (ours, theirs) = socketpair()?;
    let confined = args.iter().any(|a| a.starts_with("--confine"));
    // A confined one started as PID 1 of its namespace by vmd's spawner
    // does not fork (and starts a session of its own, which takes it out
    // of vmd's process group too).
    let pidns = pidns.filter(|_| confined);
    let mut cmd = tokio::process::Command::new(vmm);
    cmd.args(args)
        .args(pidns.map(|_| "--pid-ns"))
        .arg("--control-fd")
        .arg(CONTROL_FD.to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = match pidns {
        Some(spawner) => spawner.spawn(cmd).await?,
        None => {
            // Its own process group: a ^C or hangup meant for vmd in a
            // terminal must not reach the VMs; vmd stops them itself.
            cmd.process_group(0);
            // `cmd` holds the child's end until it is dropped here.
            let child = cmd.spawn()?;
            drop(cmd);
            child
        }
    };
    let pid = child.id().unwrap_or(0);
    if !fds.is_empty() {
        // Our copies close when `fds` drops: the VM process holds the only
        // ones, so its taps go away with it.
        match send_fds(&ours, &fds) {
            Ok(()) => {}
            // The process closed its end: it has already failed (a missing
            // kernel, say). Its exit, reaped below, says why, as for any VM
            // process that fails to start; not an error of ours.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        }
    }
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut stream = std::os::unix::net::UnixStream::from(ours);
    let (pid, process) = match confined && pidns.is_none() {
        false => (pid, Process::Child(child)),
        true => match forked(stream, &mut child).await {
            Ok((s, Some(forked))) => {
                stream = s;
                let pidfd = crate::persist::pidfd_open(forked).and_then(|fd| {
                    // SAFETY: the OwnedFd is a valid descriptor, moved
                    // into the AsyncFd, which closes it when dropped.
                    unsafe { AsyncFd::register(fd) }.map_err(Into::into)
                });
                match pidfd {
                    Ok(fd) => (forked, Process::Pidfd(fd)),
                    Err(e) => {
                        // Not reaped (vmd is its subreaper, and reaps
                        // only through a pidfd): the pid is still its.
                        // SAFETY: a plain system call.
                        unsafe { libc::kill(forked as libc::pid_t, libc::SIGKILL) };
                        return Err(e);
                    }
                }
            }
            // It failed before forking: its exit says why.
            Ok((s, None)) => {
                stream = s;
                (pid, Process::Child(child))
            }
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        },
    };
    wire(pid, stream, stderr, process, id, name, sink)
}

/// Reads what the process vmd started says first on the channel when it
/// is confined: the pid of the VM process it forked, which it then exits
/// (reaped here). None where it exited without forking (`child` is then
/// the process to wait for). The channel, read no further than that
/// line, is handed back.
async fn forked(
    stream: std::os::unix::net::UnixStream,
    child: &mut tokio::process::Child,
) -> std::io::Result<(std::os::unix::net::UnixStream, Option<u32>)> {
    use tokio::io::AsyncReadExt;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    stream.set_nonblocking(true)?;
    let mut s = UnixStream::from_std(stream)?;
    let mut line = Vec::new();
    let read = async {
        // A byte at a time: what follows the line is the VM process's.
        let mut b = [0u8];
        while s.read(&mut b).await? == 1 {
            if b[0] == b'\n' {
                return Ok(true);
            }
            line.push(b[0]);
            if line.len() > 64 {
                return Err(bad("the VM process's pid: a line too long".into()));
            }
        }
        Ok::<_, std::io::Error>(false)
    };
    // The bound of a whole start: one that never forks is one that never
    // comes up, and goes (reaped here, not left behind).
    let bound = crate::state::START_BOUND;
    let Ok(whole) = tokio::time::timeout(bound, read).await else {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        return Err(bad(format!(
            "the VM process did not come up within {} s",
            bound.as_secs()
        )));
    };
    let whole = whole?;
    let s = s.into_std()?;
    if !whole {
        if line.is_empty() {
            return Ok((s, None));
        }
        return Err(bad("the VM process's pid: cut short".into()));
    }
    let api::vmproc::Forked { forked } =
        serde_json::from_slice(&line).map_err(|e| bad(format!("the VM process's pid: {e}")))?;
    // It exits once it has said it; reaped now, not left a zombie.
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(st)) if st.success() => {}
        Ok(Ok(st)) => tracing::warn!(pid = forked, "the VM process's parent: {st}"),
        Ok(Err(e)) => tracing::warn!(pid = forked, "waiting for the VM process's parent: {e}"),
        Err(_) => {
            tracing::warn!(pid = forked, "the VM process's parent did not exit");
            let _ = child.start_kill();
        }
    }
    Ok((s, Some(forked)))
}

/// How vmd waits for a VM process and kills it.
enum Process {
    /// Its own child, reaped with its exit status.
    Child(tokio::process::Child),
    /// One known by its pidfd, which polls readable once it has exited: a
    /// confined VM process (vmd's child, inherited as a subreaper: reaped
    /// through the pidfd, with its exit status), or one a previous vmd
    /// started (init's child now: its parent gets the status).
    Pidfd(AsyncFd<OwnedFd>),
}

impl Process {
    async fn wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            Process::Child(c) => c.wait().await.map(Some),
            Process::Pidfd(fd) => {
                // Readable for good once it has exited.
                let _ready = fd.readable().await?;
                reap(fd.get_ref()).await
            }
        }
    }

    fn start_kill(&mut self) -> std::io::Result<()> {
        match self {
            Process::Child(c) => c.start_kill(),
            Process::Pidfd(fd) => crate::persist::pidfd_kill(fd.get_ref(), libc::SIGKILL),
        }
    }
}

/// Reaps the process `pidfd` names, which has exited, if it is our child
/// (waitid(P_PIDFD)), and gives its exit status; None if it is not ours.
async fn reap(pidfd: &OwnedFd) -> std::io::Result<Option<ExitStatus>> {
    // Readable means a zombie already; a few tries in case of a delay.
    for _ in 0..100 {
        if let Some(status) = try_reap(pidfd)? {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

/// One waitid(P_PIDFD, WNOHANG): Some(None) where the process is not our
/// child, None where it has not exited yet.
fn try_reap(pidfd: &OwnedFd) -> std::io::Result<Option<Option<ExitStatus>>> {
    // SAFETY: a zeroed siginfo is valid storage for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a plain system call on a descriptor we own.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECHILD) => Ok(Some(None)),
            _ => Err(e),
        };
    }
    // SAFETY: waitid filled in a child's fields (or left them zeroed).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    // As a wait status, which ExitStatus is.
    Ok(Some(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
        libc::CLD_DUMPED => ExitStatus::from_raw(status | 0x80),
        _ => ExitStatus::from_raw(status),
    })))
}

/// Re-attaches to VM `id`'s process `pid`, started by a previous vmd
/// with `--reattach`: connects to its socket `sock`, checks that the
/// process listening there is `pid` (SO_PEERCRED), hands it a new stderr
/// (a pipe to our log) and watches its exit through `pidfd`, opened by
/// the caller, which has checked that it names the process it recorded.
pub async fn attach(
    sock: &Path,
    pid: u32,
    pidfd: OwnedFd,
    id: u32,
    name: &str,
    sink: Arc<dyn Sink>,
) -> Result<Arc<VmProc>, String> {
    // Not a blocking connect: one whose backlog is full (a VM process that
    // is stopped, and earlier vmds' connections still queued) would hang
    // vmd's start; this one fails at once then.
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(sock))
        .await
        .map_err(|_| format!("{}: connecting timed out", sock.display()))?
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    // As the API's peers are known (conn.rs): SO_PEERCRED.
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?
        .pid();
    if peer != Some(pid as i32) {
        let who = peer.map_or_else(
            || "an unknown process".to_string(),
            |p| format!("process {p}"),
        );
        return Err(format!(
            "{}: {who} listens there, not {pid}",
            sock.display()
        ));
    }
    let stream = stream
        .into_std()
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    let (read, write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    send_fds(&stream, &[write]).map_err(|e| format!("handing over stderr: {e}"))?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
        .map_err(|e| format!("stderr pipe: {e}"))?;
    // SAFETY: the OwnedFd is a valid descriptor, moved into the AsyncFd,
    // which closes it when dropped and nothing replaces it meanwhile.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| format!("pidfd: {e}"))?;
    wire(pid, stream, stderr, Process::Pidfd(pidfd), id, name, sink)
        .map_err(|e| format!("the control channel: {e}"))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets up the channel (`stream`), the log of `stderr` and the wait for
/// the exit of VM `id`'s process.
fn wire(
    pid: u32,
    std_stream: std::os::unix::net::UnixStream,
    stderr: impl AsyncRead + Unpin + Send + 'static,
    mut process: Process,
    id: u32,
    name: &str,
    sink: Arc<dyn Sink>,
) -> std::io::Result<Arc<VmProc>> {
    std_stream.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(std_stream)?.into_split();
    let proc = Arc::new(VmProc {
        pid,
        writer: tokio::sync::Mutex::new(write),
        pending: Mutex::new(Some(VecDeque::new())),
        broken: AtomicBool::new(false),
        kill: Notify::new(),
        killed_why: Mutex::new(None),
        exited: AtomicBool::new(false),
    });

    // The VM process's stderr goes to our log, tagged with the VM.
    let vm = name.to_owned();
    let stderr_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut last = None;
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::info!(vm = %vm, "{}", l.strip_prefix("vmm: ").unwrap_or(&l));
            last = Some(l);
        }
        last
    });

    let p = proc.clone();
    let s = sink.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<Reply>(&l) {
                Ok(Reply::Event(e)) => s.event(id, e),
                Ok(r) => {
                    let waiter = p
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                        .and_then(VecDeque::pop_front);
                    if let Some(w) = waiter {
                        let _ = w.send(r);
                    }
                }
                Err(e) => tracing::warn!(vm = id, "bad message from VM process: {e}"),
            }
        }
        // The process is gone (or closed its end): what is still waiting
        // for an answer fails now, and so does any later request, instead
        // of each waiting out REPLY_TIMEOUT.
        p.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
    });

    let p = proc.clone();
    tokio::spawn(async move {
        // A kill is done here, on the child itself (or through its pidfd):
        // it is not reaped yet, so its pid cannot be another process's.
        let status = tokio::select! {
            st = process.wait() => st,
            () = p.kill.notified() => {
                if let Err(e) = process.start_kill() {
                    tracing::error!(vm = id, "killing the VM process: {e}");
                }
                process.wait().await
            }
        };
        p.exited.store(true, Ordering::Relaxed);
        // Read what is left on the channel and stderr first: the exit
        // reason arrives just before the process ends.
        let _ = reader.await;
        let tail = stderr_task.await.ok().flatten();
        let killed = p
            .killed_why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(why) = killed {
            // Ours, unless it ended on its own meanwhile (which only the
            // status of a child tells).
            let by_us = match &status {
                Ok(Some(st)) => st.signal() == Some(libc::SIGKILL),
                Ok(None) => true,
                Err(_) => false,
            };
            if by_us {
                sink.event(id, Event::Exited { reason: why });
            }
        }
        match status {
            Ok(st) => sink.exited(id, st, tail),
            Err(e) => {
                tracing::error!(vm = id, "waiting for the VM process: {e}");
                sink.exited(id, Some(ExitStatus::from_raw(1 << 8)), tail)
            }
        }
    });
    Ok(proc)
}
