//! The system calls the backdoor needs from user space.

/// The low-bandwidth port; the high-bandwidth one (0x5659) follows it.
pub const BACKDOOR_PORT: u16 = guestrpc::backdoor::PORT_LB;
/// Ports granted: the CPU checks every port an access touches, and the
/// low-bandwidth call is a 4-byte `in` at 0x5658, so 0x5658..=0x565b
/// (which covers the byte-wise high-bandwidth port 0x5659 too).
pub const BACKDOOR_PORTS: u16 = 4;

/// Takes I/O permission for the backdoor ports (`ioperm(2)`): needed on
/// KVM hosts without `kvm.enable_vmware_backdoor=1` (this project's), where
/// a ring-3 `in` on them otherwise faults. Real VMware lets ring 3 through
/// without it, but asking costs nothing. Needs root (CAP_SYS_RAWIO).
pub fn ioperm_backdoor() -> Result<(), String> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let rc = unsafe {
        libc::ioperm(
            libc::c_ulong::from(BACKDOOR_PORT),
            libc::c_ulong::from(BACKDOOR_PORTS),
            1,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let hint = if e.raw_os_error() == Some(libc::EPERM) {
        " (vmt must run as root)"
    } else {
        ""
    };
    Err(format!(
        "ioperm(0x{BACKDOOR_PORT:x}, {BACKDOOR_PORTS}): {e}{hint}"
    ))
}

/// The real [`System`](crate::daemon::System): the kernel's host name and
/// interface addresses, power commands run as programs, log lines on
/// standard error.
#[derive(Clone, Debug)]
pub struct LinuxSystem {
    /// The command run on `OS_Halt` (default `poweroff`).
    pub halt: Vec<String>,
    /// The command run on `OS_Reboot` (default `reboot`).
    pub reboot: Vec<String>,
}

impl Default for LinuxSystem {
    fn default() -> Self {
        LinuxSystem {
            halt: vec!["poweroff".to_owned()],
            reboot: vec!["reboot".to_owned()],
        }
    }
}

impl crate::daemon::System for LinuxSystem {
    fn hostname(&mut self) -> Option<String> {
        hostname()
    }

    fn first_ipv4(&mut self) -> Option<std::net::Ipv4Addr> {
        first_ipv4()
    }

    fn power(&mut self, action: crate::daemon::Power) -> Result<(), String> {
        let argv = match action {
            crate::daemon::Power::Halt => &self.halt,
            crate::daemon::Power::Reboot => &self.reboot,
        };
        let (prog, args) = argv.split_first().ok_or("no command")?;
        let status = std::process::Command::new(prog)
            .args(args)
            .status()
            .map_err(|e| format!("{prog}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{prog}: {status}"))
        }
    }

    fn log(&mut self, line: &str) {
        eprintln!("vmt: {line}");
    }
}

/// The kernel's host name (`gethostname(2)`), if set.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(buf.get(..end)?).into_owned();
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// The first IPv4 address of an interface that is up and not loopback, in
/// `getifaddrs(3)` order (the kernel's interface order).
pub fn first_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` on success; freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        if ifa.ifa_addr.is_null()
            || flags & libc::IFF_UP as libc::c_uint == 0
            || flags & libc::IFF_LOOPBACK as libc::c_uint != 0
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        if libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real implementations on the machine the tests run on: they
    /// answer without failing, and never with a loopback address.
    #[test]
    fn host_name_and_address() {
        if let Some(name) = hostname() {
            assert!(!name.contains('\0'));
        }
        if let Some(ip) = first_ipv4() {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }

    #[test]
    fn power_commands_run_as_programs() {
        use crate::daemon::{Power, System};
        let mut sys = LinuxSystem {
            halt: vec!["true".to_owned()],
            reboot: vec!["false".to_owned()],
        };
        assert_eq!(sys.power(Power::Halt), Ok(()));
        assert!(sys.power(Power::Reboot).unwrap_err().starts_with("false: "));
        sys.halt = vec!["/nonexistent/poweroff".to_owned()];
        assert!(sys.power(Power::Halt).is_err());
    }
}
