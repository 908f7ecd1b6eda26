//! The VM process's threads, by kind, and the hook that confines each one
//! as it starts.
//!
//! Every thread the VM process starts for a VM goes through [`spawn`] with
//! its [`ThreadKind`]. By default that is `std::thread::Builder::spawn`
//! and nothing more (tests, an unconfined vmm). A confined vmm calls
//! [`confine_each`] once: from then on each new thread runs the hook with
//! its kind first thing, before it runs anything else (vmm installs the
//! kind's seccomp filter there, see vmm's `confine`), and threads are
//! started by one spawner thread, not by whoever asks: a thread inherits
//! its creator's seccomp filters, so a device thread started by a vCPU
//! thread (a driver enabling its device) would otherwise be held to the
//! vCPU's filter as well as its own, and a vCPU thread would need `clone`.
//! The spawner itself keeps only the process-wide filter and runs nothing
//! but `Builder::spawn`.
//!
//! This crate and `vm` know nothing of seccomp: the hook is a plain
//! function.

use std::io;
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// What a thread of the VM process does, which decides what it may ask
/// of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Runs one vCPU (`KVM_RUN`) and the device models its exits reach.
    Vcpu,
    /// A virtio-blk or virtio-scsi queue: reads and writes an image.
    Disk,
    /// A virtio-net interface: reads and writes its tap.
    Net,
    /// The virtio-rng queue: fills buffers from the host's getrandom.
    Rng,
    /// Copies the console's input (a pty, stdin) to the serial port.
    ConsoleIn,
    /// Serves the VM's control socket (vmd's requests), and the threads
    /// it starts to watch the guest and stop it gracefully.
    Control,
    /// Takes the stop signals (sigwait) and stops the guest.
    Signals,
    /// The process's main thread: builds the VM, runs it (starts and
    /// joins the vCPU threads) and resets it. Not started by [`spawn`]:
    /// whoever confines the others confines it too.
    Main,
}

type Job = Box<dyn FnOnce() + Send>;

struct Confined {
    hook: fn(ThreadKind),
    spawner: Mutex<Sender<Job>>,
}

static CONFINED: OnceLock<Confined> = OnceLock::new();

/// From now on every thread [`spawn`] starts runs `hook` with its kind
/// before anything else, and is started by a spawner thread this starts
/// now (see the module's text). Call it once, before the VM's threads
/// start; the caller's filters are the spawner's. A second call fails.
pub fn confine_each(hook: fn(ThreadKind)) -> io::Result<()> {
    let (tx, rx) = channel::<Job>();
    let confined = Confined {
        hook,
        spawner: Mutex::new(tx),
    };
    CONFINED
        .set(confined)
        .map_err(|_| io::Error::other("threads are confined already"))?;
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    Ok(())
}

/// Whether [`confine_each`] was called.
pub fn confined() -> bool {
    CONFINED.get().is_some()
}

/// Starts a thread of kind `kind` named `name` running `f`; confined (see
/// [`confine_each`]) if the process confines its threads.
pub fn spawn<F, T>(kind: ThreadKind, name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let builder = std::thread::Builder::new().name(name.to_owned());
    let Some(c) = CONFINED.get() else {
        return builder.spawn(f);
    };
    let hook = c.hook;
    let (tx, rx) = sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(builder.spawn(move || {
            hook(kind);
            f()
        }));
    });
    let gone = || io::Error::other("the spawner thread is gone");
    c.spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfined_threads_are_plain_threads() {
        // No test in this crate confines: the process is shared.
        assert!(!confined());
        let t = spawn(ThreadKind::Rng, "t", || {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
        assert_eq!(t.join().unwrap().as_deref(), Some("t"));
    }
}
