//! Change notifications for links and addresses: a `NETLINK_ROUTE` socket
//! subscribed to `RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR` and
//! `RTMGRP_IPV6_IFADDR`. The daemon sleeps in [`Watcher::wait`] between
//! its polls; a message (a link appeared, went up or down, an address was
//! added or removed) ends the sleep, and the daemon gathers the NICs again
//! and reports them if they changed. The messages themselves are not
//! parsed: what they say is read back through `getifaddrs(3)`, the one
//! view of the interfaces the reports are built from.
//!
//! A burst (bringing a link up makes several) is taken as one: after the
//! first message the watcher keeps reading until [`QUIET`] passes without
//! one, at most [`MAX_BURST`]. A socket that overflowed (`ENOBUFS`: events
//! were lost) counts as a change.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long the socket must stay silent for a burst to be over.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest a burst is drained before the change is reported anyway.
pub const MAX_BURST: Duration = Duration::from_millis(200);

/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR` (linux/rtnetlink.h).
pub const GROUPS: u32 = 0x1 | 0x10 | 0x100;

/// A subscribed `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Watcher {
    fd: OwnedFd,
}

impl Watcher {
    /// Opens the socket (non-blocking, close-on-exec) and joins the groups.
    /// Needs no privilege. It watches the network namespace of the calling
    /// thread.
    pub fn open() -> io::Result<Watcher> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_nl.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = GROUPS;
        // SAFETY: sa is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher { fd })
    }

    /// Waits up to `timeout` for a notification; whether one came (then
    /// the burst it starts is drained first, see the module's text).
    /// Interrupted by a signal: returns false early, so the caller checks
    /// its stop flag.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if !self.readable(timeout) {
            return false;
        }
        let start = Instant::now();
        self.drain();
        while start.elapsed() < MAX_BURST && self.readable(QUIET) {
            self.drain();
        }
        true
    }

    /// poll(2) for input within `timeout`.
    fn readable(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n > 0 && p.revents & (libc::POLLIN | libc::POLLERR) != 0
    }

    /// Reads every queued message (and a pending `ENOBUFS`).
    fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // Lost events: a change all the same; keep reading.
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => return,
                }
            }
            if n == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening needs no privilege; with nothing happening the wait times
    /// out and says so.
    #[test]
    fn opens_and_times_out() {
        let mut w = Watcher::open().unwrap();
        let t = Instant::now();
        // Changes on the machine may come (other tests' namespaces are
        // their own, but the host's links may move): either answer is
        // fine, and neither takes much longer than asked.
        let _ = w.wait(Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
