//! Running as a daemon: detaching from the terminal and the session that
//! started it, and the pid file that keeps a second daemon away.
//!
//! [`detach`] does what daemon(3) and OpenBSD's daemons do, plus a
//! readiness report: fork, `setsid`, fork again (so the daemon is no
//! session leader and can never acquire a controlling terminal), `chdir
//! /`, umask 022, standard input, output and error on `/dev/null`. The
//! process that ran `vmt` waits until the daemon says it is ready (its pid
//! file written) or why it is not, and exits 0 or 1 accordingly, so an
//! init script or systemd's `Type=forking` sees a failure as one and finds
//! the pid file in place.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What the daemon sends its starter when it is ready.
const READY: &[u8] = b"ready";

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The daemon's end of the readiness report.
#[derive(Debug)]
pub struct Ready(OwnedFd);

impl Ready {
    /// Tells the starter the daemon runs: it exits 0.
    pub fn ok(self) {
        let mut f = File::from(self.0);
        let _ = f.write_all(READY);
    }

    /// Tells the starter why the daemon cannot run: it prints `vmt:
    /// <why>` and exits 1.
    pub fn fail(self, why: &str) {
        let mut f = File::from(self.0);
        let _ = f.write_all(why.as_bytes());
    }
}

/// Detaches (see the module's documentation). Returns in the daemon only;
/// the process that called it exits in here once the daemon reports
/// through [`Ready`]: 0 when it is ready, 1 with the daemon's reason on
/// standard error when not, or when the daemon died before saying.
///
/// Call it while the process has one thread: only the calling thread
/// lives on in the children.
pub fn detach() -> Result<Ready, String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe2"));
    }
    // SAFETY: pipe2 just created them, and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: one thread (the caller's promise); the child only calls
    // async-signal-safe functions before it forks again or exits.
    match unsafe { libc::fork() } {
        -1 => Err(os_error("fork")),
        0 => {
            drop(read_end);
            // SAFETY: setsid and fork are async-signal-safe.
            if unsafe { libc::setsid() } == -1 {
                let mut f = File::from(write_end);
                let _ = f.write_all(os_error("setsid").as_bytes());
                // SAFETY: ends this child without running the parent's
                // exit handlers twice.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: as above.
            match unsafe { libc::fork() } {
                -1 => {
                    let mut f = File::from(write_end);
                    let _ = f.write_all(os_error("fork").as_bytes());
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
                // SAFETY: as above: the session leader leaves at once.
                n if n > 0 => unsafe { libc::_exit(0) },
                _ => {}
            }
            match into_background() {
                Ok(()) => Ok(Ready(write_end)),
                Err(e) => {
                    Ready(write_end).fail(&e);
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        child => {
            drop(write_end);
            let mut status = 0;
            // SAFETY: reaps the short-lived first child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let mut said = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut said);
            if said == READY {
                std::process::exit(0);
            }
            let said = String::from_utf8_lossy(&said);
            if said.is_empty() {
                eprintln!("vmt: the daemon exited while starting");
            } else {
                eprintln!("vmt: {said}");
            }
            std::process::exit(1);
        }
    }
}

/// The daemon's surroundings: `/` as its directory (it keeps no file
/// system busy), umask 022, `/dev/null` for standard input, output and
/// error.
fn into_background() -> Result<(), String> {
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which this process
        // owns.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(os_error("dup2 /dev/null"));
        }
    }
    Ok(())
}

/// The daemon's pid file, locked (`flock`) as long as this value lives and
/// removed when it is dropped. The lock, not the file's existence, says
/// that a daemon runs: a file left by a daemon that was killed is taken
/// over.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    /// Takes `path` for this process and writes its pid there. When
    /// another process holds it: `already running (pid N)`.
    pub fn acquire(path: &Path) -> Result<PidFile, String> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(match text.trim().parse::<u32>() {
                    Ok(pid) => format!("already running (pid {pid}, {})", path.display()),
                    Err(_) => format!("already running ({} is locked)", path.display()),
                });
            }
            return Err(format!("{}: flock: {e}", path.display()));
        }
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_owned(),
            _file: file,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked: a daemon starting now either
        // failed to lock this file or locks a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of the daemon holding the pid file at `path`, if one does (it
/// is locked); `None` when the file is missing or nobody holds it.
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // Nobody holds it (closing the file drops our lock).
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
