//! One VM process (`vmm --control-fd 3`) as vmd sees it: spawning it,
//! the JSON-lines channel (requests answered in order, events at any
//! time), and noticing its exit at once.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::vmproc::{Event, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

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
    fn exited(&self, id: u32, status: ExitStatus, stderr_tail: Option<String>);
}

pub struct VmProc {
    pub pid: u32,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Waiters for answers, in request order; None once the channel is
    /// closed (the process is gone: nothing will be answered any more).
    pending: Mutex<Option<VecDeque<oneshot::Sender<Reply>>>>,
}

/// The error of a request whose VM process ended before answering.
pub const EXITED: &str = "the VM process exited";

/// How long a VM process gets to answer a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl VmProc {
    /// Sends `req` and waits for its answer.
    pub async fn request(&self, req: &Request) -> Result<Reply, String> {
        let (tx, rx) = oneshot::channel();
        let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        line.push(b'\n');
        {
            // Queue the waiter under the writer lock so answers, which come
            // in request order, find the waiters in the same order.
            let mut w = self.writer.lock().await;
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .ok_or(EXITED)?
                .push_back(tx);
            w.write_all(&line)
                .await
                .map_err(|e| format!("VM process: {e}"))?;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EXITED.into()),
            Err(_) => Err("the VM process did not answer".into()),
        }
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

/// Starts `vmm` with `args` for VM `id`; events and the exit go to `sink`.
pub fn spawn(
    vmm: &Path,
    args: &[String],
    id: u32,
    name: &str,
    sink: Arc<dyn Sink>,
) -> std::io::Result<Arc<VmProc>> {
    let (ours, theirs) = socketpair()?;
    let mut cmd = tokio::process::Command::new(vmm);
    cmd.args(args)
        .arg("--control-fd")
        .arg(CONTROL_FD.to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        // Its own process group: a ^C or hangup meant for vmd in a terminal
        // must not reach the VMs; vmd stops them itself.
        .process_group(0);
    // `cmd` holds the child's end until it is dropped below.
    let mut child = cmd.spawn()?;
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    let std_stream = std::os::unix::net::UnixStream::from(ours);
    std_stream.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(std_stream)?.into_split();
    let proc = Arc::new(VmProc {
        pid,
        writer: tokio::sync::Mutex::new(write),
        pending: Mutex::new(Some(VecDeque::new())),
    });

    // The VM process's stderr goes to our log, tagged with the VM.
    let stderr = child.stderr.take().expect("stderr is piped");
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

    tokio::spawn(async move {
        let status = child.wait().await;
        // Read what is left on the channel and stderr first: the exit
        // reason arrives just before the process ends.
        let _ = reader.await;
        let tail = stderr_task.await.ok().flatten();
        match status {
            Ok(st) => sink.exited(id, st, tail),
            Err(e) => {
                tracing::error!(vm = id, "waiting for the VM process: {e}");
                sink.exited(
                    id,
                    std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                    tail,
                )
            }
        }
    });
    Ok(proc)
}
