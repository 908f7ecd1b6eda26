//! vmd's host network plumbing: what the daemon (root, CAP_NET_ADMIN) does so
//! a VM gets a network, while the VM process itself only ever receives a tap
//! file descriptor.
//!
//! - [`open_tap`]: a tap device opened through `/dev/net/tun` (TUNSETIFF),
//!   with a virtio-net header so the VM process can negotiate offloads.
//! - [`Netlink`]: links over rtnetlink (the `rtnetlink` crate, no `ip`
//!   commands): bridges for `switch` blocks, bridge ports, up/down, interface
//!   groups and addresses (the `local interface` address, switch addresses).
//! - [`parse_group`]: an interface group as vm.conf writes it, a number or an
//!   iproute2 group name.
//!
//! Everything acts in the network namespace of the calling thread (taps) or
//! of the thread that opened the [`Netlink`] socket.

mod group;
mod link;
mod tap;

use std::fmt;
use std::io;

pub use group::parse_group;
pub use link::Netlink;
pub use tap::open_tap;

/// An error from the network plumbing. Its message says which interface, what
/// was being done and why it failed, ready to log or to hand to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    errno: Option<i32>,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            errno: None,
        }
    }

    /// `what` failed with `errno`: "what: strerror" plus a hint for the
    /// permission errors.
    fn errno(what: impl fmt::Display, errno: i32) -> Error {
        Error {
            message: format!("{what}: {}", errno_text(errno)),
            errno: Some(errno),
        }
    }

    /// The error number the kernel answered with, if the error came from it.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.errno
    }

    /// The message (the same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// strerror(errno) without std's " (os error N)" suffix, and the hint vmd's
/// users need when the answer is a permission error.
fn errno_text(errno: i32) -> String {
    let text = strerror(errno);
    if errno == libc::EPERM || errno == libc::EACCES {
        format!("{text} (vmd needs CAP_NET_ADMIN)")
    } else {
        text
    }
}

/// strerror(errno): std's text for it without the " (os error N)" suffix.
fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Whether the kernel would take `name` as an interface name
/// (`dev_valid_name`): 1 to 15 bytes, not "." or "..", no '/', ':', white
/// space or NUL.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_messages() {
        assert_eq!(
            Error::errno("creating bridge br0", libc::EPERM).to_string(),
            "creating bridge br0: Operation not permitted (vmd needs CAP_NET_ADMIN)"
        );
        assert_eq!(
            Error::errno("x", libc::ENODEV).to_string(),
            "x: No such device"
        );
        assert_eq!(
            Error::errno("x", libc::ENODEV).raw_os_error(),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("br0"));
        assert!(valid_ifname("tap%d"));
        assert!(valid_ifname("abcdefghijklmno"));
        assert!(!valid_ifname("abcdefghijklmnop"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("."));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a:b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("a\0b"));
    }
}
