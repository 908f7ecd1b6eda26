//! Tap devices through `/dev/net/tun`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::valid_ifname;

/// Opens (creating if needed) the tap `name`, or a new one from a kernel
/// pattern like "tap%d".
///
/// The tap is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (the VM process
/// negotiates offloads on it, TUNSETVNETHDRSZ/TUNSETOFFLOAD), the fd is
/// O_RDWR | O_CLOEXEC in blocking mode. Returns the fd and the kernel's name
/// for the tap. The tap lives in the calling thread's network namespace; a
/// tap that is not persistent goes away when the last fd on it is closed.
///
/// Errors keep their `io::ErrorKind` and say what happened: a bad name
/// (InvalidInput, "tap name ...: 1 to 15 characters ..."), a tap in use by
/// another process (EBUSY), missing privileges (EPERM, "vmd needs
/// CAP_NET_ADMIN") and a name taken by something that is not a tap (EINVAL).
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    check_tap_name(name)?;

    // SAFETY: a NUL-terminated path and plain flags; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => " (is the tun module loaded?)",
            Some(libc::EPERM) | Some(libc::EACCES) => " (vmd needs CAP_NET_ADMIN)",
            _ => "",
        };
        return Err(io::Error::new(
            e.kind(),
            format!(
                "opening /dev/net/tun for tap {name}: {}{hint}",
                strerror(&e)
            ),
        ));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // check_tap_name guarantees name.len() < IFNAMSIZ, so a NUL stays last.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;

    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `ifr` is.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        let message = match e.raw_os_error() {
            Some(libc::EBUSY) => format!("tap {name} is in use"),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("tap {name}: permission denied (vmd needs CAP_NET_ADMIN)")
            }
            Some(libc::EINVAL) => format!("{name} exists and is not a tap"),
            _ => format!("opening tap {name}: {}", strerror(&e)),
        };
        return Err(io::Error::new(e.kind(), message));
    }

    // The kernel wrote the name back, NUL-terminated within IFNAMSIZ; read it
    // defensively all the same.
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    let actual = String::from_utf8_lossy(&bytes).into_owned();
    Ok((fd, actual))
}

/// A valid interface name, or a kernel pattern with one "%d".
fn check_tap_name(name: &str) -> io::Result<()> {
    let pattern_ok = match name.find('%') {
        None => true,
        Some(at) => name[at..].starts_with("%d") && !name[at + 2..].contains('%'),
    };
    if !valid_ifname(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?}: 1 to 15 characters, none of them '/', ':' or white space"),
        ));
    }
    if !pattern_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?}: a name pattern has one \"%d\" and no other '%'"),
        ));
    }
    Ok(())
}

/// The error's text without std's " (os error N)" suffix.
fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => crate::strerror(errno),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        assert!(check_tap_name("tap0").is_ok());
        assert!(check_tap_name("tap%d").is_ok());
        assert!(check_tap_name("vm%dx").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "tap%s", "t%d%d", "tap%"] {
            let e = check_tap_name(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().starts_with("tap name"), "{e}");
        }
        assert!(check_tap_name("abcdefghijklmnop")
            .unwrap_err()
            .to_string()
            .contains("1 to 15 characters"));
    }
}
