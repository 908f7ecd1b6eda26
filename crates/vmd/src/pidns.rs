//! Starting confined VM processes as PID 1 of a PID namespace of their
//! own, directly.
//!
//! A process cannot move itself into a new PID namespace: unshare(2) with
//! CLONE_NEWPID puts only its later children there. A VM process that
//! made its own therefore had to fork once more and let its first self
//! exit (`vmm --confine` alone still does, run by hand). That fork and
//! exit cost more CPU per start than anything else of the confinement
//! but seccomp (perf over BENCH P4). Here one thread of vmd's takes the
//! step for it: before each spawn it makes a new PID namespace for its
//! children (its own stays vmd's) and spawns the VM process there.
//! (Every thread has its own "namespace for children", so the rest of
//! vmd is untouched.)

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Job = (Command, oneshot::Sender<std::io::Result<Child>>);

/// The thread that spawns VM processes into PID namespaces of their own.
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread, within the current tokio runtime (whose reaper
    /// the children are registered with). An error where the kernel will
    /// not make a PID namespace here (no CAP_SYS_ADMIN, say).
    pub fn start() -> Result<Spawner, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("pidns-spawn".into())
            .spawn(move || {
                // vmd's own namespace, to come back to before each new one
                // (tried once here: the kernel may refuse to make one).
                let own = std::fs::File::open("/proc/thread-self/ns/pid").map(OwnedFd::from);
                let own = match own.and_then(|own| fresh_namespace(&own).map(|()| own)) {
                    Ok(own) => {
                        let _ = ready_tx.send(Ok(()));
                        own
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _entered = runtime.enter();
                for (mut cmd, reply) in queue {
                    // A new namespace for each: once its PID 1 has exited
                    // (as one that failed to exec has), nothing more can
                    // start in one.
                    let spawned = fresh_namespace(&own).and_then(|()| cmd.spawn());
                    // Nobody waits where the start gave up meanwhile: a
                    // VM process nobody tracks must not run on.
                    if let Err(Ok(mut child)) = reply.send(spawned) {
                        let _ = child.start_kill();
                    }
                }
            })
            .map_err(|e| format!("a thread: {e}"))?;
        ready.recv().map_err(|_| "the thread ended".to_string())??;
        Ok(Spawner { jobs })
    }

    /// Spawns `cmd` as PID 1 of a new PID namespace.
    pub async fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("the PID namespace spawner is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the PID namespace spawner is gone"))?
    }
}

/// Makes this thread's next children start in a new PID namespace: back
/// to its own first (a new one may only be made below the caller's own),
/// then a new one.
fn fresh_namespace(own: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setns and unshare with valid flags; they change only this
    // thread's namespace for children.
    unsafe {
        if libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) != 0
            || libc::unshare(libc::CLONE_NEWPID) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two children, each PID 1 of a namespace of its own; vmd's threads
    /// stay in theirs. Needs root, as vmd does.
    #[tokio::test]
    async fn each_child_is_pid_1_of_its_own() {
        // SAFETY: a plain system call.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let s = Spawner::start().unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "echo $$; readlink /proc/self/ns/pid; sleep 1"])
                .stdout(std::process::Stdio::piped());
            let child = s.spawn(cmd).await.unwrap();
            let out = child.wait_with_output().await.unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("1"), "{text}");
            seen.push(lines.next().unwrap().to_owned());
        }
        assert_ne!(seen[0], seen[1]);
        let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_ne!(ours.to_string_lossy(), seen[0]);
        let children = std::fs::read_link("/proc/thread-self/ns/pid_for_children").unwrap();
        assert_eq!(children, ours);
    }
}
