//! What survives vmd: a record of each running VM in vmd's state
//! directory (`/run/vmd` by default, 0700), beside the socket each VM
//! process listens on for the next vmd (`vmm --reattach`). A vmd that
//! starts reads the records, checks that each process is still the one
//! recorded (pid and start time, and the program), and re-attaches to it
//! (see `Daemon::adopt`); records of processes that are gone are removed.
//!
//! Records are written whole to a temporary file and renamed into place:
//! a vmd killed while writing leaves the old record or the new one.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use api::v1::InterfaceStatus;
use serde::{Deserialize, Serialize};
use vmconf::VmDef;

use crate::state::UserFiles;

/// One running VM, as vmd started it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: u32,
    pub name: String,
    pub pid: u32,
    /// The process's start time (/proc/PID/stat, field 22, clock ticks
    /// since boot): a pid reused by another process has another.
    pub start_time: u64,
    /// Its program's name (/proc/PID/comm) once it ran its VM.
    #[serde(default)]
    pub comm: Option<String>,
    /// The definition it was started with (overrides applied).
    pub def: VmDef,
    #[serde(default)]
    pub user_files: Option<UserFiles>,
    #[serde(default)]
    pub disk_formats: Vec<String>,
    /// Its taps (they live as long as its process holds them).
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    /// The uid it is confined as (None: unconfined).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Its console's pty.
    #[serde(default)]
    pub tty: Option<String>,
    /// The cgroups it runs in (none: cgroups were not used).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// vmd's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub dir: PathBuf,
    /// `lock` in it, flock(2)ed for as long as this vmd runs: two vmds on
    /// one state directory would take each other's VMs. (Close-on-exec:
    /// VM processes do not hold it, or no vmd could start while they run.)
    _lock: std::sync::Arc<std::fs::File>,
}

/// The state directory that goes with control socket `socket` when none
/// is given: the socket's path without `.sock` (`/run/vmd.sock` ->
/// `/run/vmd`), or with `.d` added where it has no such suffix. So two
/// vmds on two sockets never share one.
pub fn default_dir(socket: &Path) -> PathBuf {
    let s = socket.as_os_str().to_string_lossy();
    match s.strip_suffix(".sock") {
        Some(base) if !base.is_empty() && !base.ends_with('/') => PathBuf::from(base),
        _ => PathBuf::from(format!("{s}.d")),
    }
}

impl StateDir {
    /// Creates the directory (0700, root's) if missing; refuses one that
    /// is not a directory or that others may write into.
    pub fn open(dir: PathBuf) -> Result<StateDir, String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let shown = dir.display().to_string();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("state directory {shown}: {e}")),
        }
        let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{shown}: {e}"))?;
        if !m.is_dir() {
            return Err(format!("state directory {shown}: not a directory"));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(format!(
                "state directory {shown}: must be ours and writable by nobody else"
            ));
        }
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| format!("state directory {shown}: lock: {e}"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {
                    format!("state directory {shown}: another vmd uses it")
                }
                _ => format!("state directory {shown}: lock: {e}"),
            });
        }
        Ok(StateDir {
            dir,
            _lock: std::sync::Arc::new(lock),
        })
    }

    fn record_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("vm-{id}.json"))
    }

    /// Where VM `id`'s process listens for a vmd that re-attaches.
    pub fn socket_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("vm-{id}.sock"))
    }

    fn bridges_path(&self) -> PathBuf {
        self.dir.join("bridges.json")
    }

    /// Writes `rec`, replacing the one of the same id.
    pub fn write(&self, rec: &Record) {
        let path = self.record_path(rec.id);
        if let Err(e) = write_atomic(&path, &serde_json::to_vec_pretty(rec).unwrap_or_default()) {
            tracing::error!(vm = %rec.name, "{}: {e}", path.display());
        }
    }

    /// Forgets VM `id`: its record and its socket.
    pub fn remove(&self, id: u32) {
        for p in [self.record_path(id), self.socket_path(id)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: {e}", p.display()),
            }
        }
    }

    /// Every record there is, by id; one that cannot be read is removed
    /// (and its socket), and said so.
    pub fn records(&self) -> Vec<Record> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("vm-")
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match std::fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.id == id => out.push(r),
                Ok(r) => {
                    tracing::warn!("{name}: the record of vm {} ({}): dropped", r.id, r.name);
                    self.remove(id);
                }
                Err(e) => {
                    tracing::warn!("{name}: unreadable record ({e}): dropped");
                    self.remove(id);
                }
            }
        }
        out.sort_by_key(|r| r.id);
        out
    }

    /// Records the bridges this vmd created and leaves behind (its VMs'
    /// taps are on them), for the next vmd to remove at its exit.
    pub fn write_bridges(&self, names: &[String]) {
        let path = self.bridges_path();
        if names.is_empty() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        if let Err(e) = write_atomic(&path, &serde_json::to_vec(names).unwrap_or_default()) {
            tracing::error!("{}: {e}", path.display());
        }
    }

    /// The bridges a previous vmd created and left behind.
    pub fn take_bridges(&self) -> Vec<String> {
        let path = self.bridges_path();
        let names = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        names
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // No fsync: the records describe processes, which a reboot ends
    // anyway; the rename is what makes a vmd killed meanwhile harmless.
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The fields of /proc/PID/stat after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Process `pid`'s start time (clock ticks after boot), if it runs (a
/// zombie does not count).
pub fn start_time(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    if f.first().map(String::as_str) == Some("Z") {
        return None;
    }
    // Field 22 of stat; this list starts at field 3.
    f.get(22 - 3)?.parse().ok()
}

/// Process `pid`'s program name, as the kernel keeps it.
pub fn comm(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim_end_matches('\n').to_owned())
}

/// A pidfd for `pid` (pidfd_open(2)): it names that process and no later
/// one of the same pid, and polls readable once it has exited.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain system call; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `sig` to the process `pidfd` names (never to a pid's next owner).
pub fn pidfd_kill(pidfd: &OwnedFd, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dirs() {
        assert_eq!(
            default_dir(Path::new("/run/vmd.sock")),
            Path::new("/run/vmd")
        );
        assert_eq!(
            default_dir(Path::new("/tmp/x/sock")),
            Path::new("/tmp/x/sock.d")
        );
        assert_eq!(
            default_dir(Path::new("/tmp/.sock")),
            Path::new("/tmp/.sock.d")
        );
    }

    #[test]
    fn our_own_start_time() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert!(comm(me).is_some());
    }
}
