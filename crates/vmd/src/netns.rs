//! The network namespace confined VM processes run in: one, empty (a
//! loopback interface, down, and nothing else), made once when vmd
//! starts and joined by every VM process it confines.
//!
//! A VM process needs no network of its own: its interfaces are taps vmd
//! opened in the host's namespace and hands over open, and its threads may
//! not make a socket (seccomp). Out of the host's namespace it cannot
//! reach the host's interfaces, routes or abstract sockets even if it got
//! past that. A namespace per VM would isolate VM processes from one
//! another further, but the kernel makes and tears down a network
//! namespace in ~2 ms of CPU (its sysctl tables, then a worker's
//! cleanup), most of what confinement added to a VM's start; and with no
//! socket to make there is nothing one could offer the others in it.

use std::os::fd::OwnedFd;

/// Makes the namespace (see `jail::namespace`): nothing is done in it.
pub fn make() -> Result<OwnedFd, String> {
    jail::namespace("netns", libc::CLONE_NEWNET, "net", || Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN), as vmd does.
    #[test]
    fn a_namespace_apart_from_ours() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let ns = make().unwrap();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&ns)
        ))
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino());
        // This thread stayed where it was.
        let again = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert_eq!(ours.ino(), again.ino());
    }
}
