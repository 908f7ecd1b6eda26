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
/// interface addresses, power commands run as programs, the kernel's
/// clock, log lines on standard error.
#[derive(Clone, Debug)]
pub struct LinuxSystem {
    /// The command run on `OS_Halt` (default `poweroff`).
    pub halt: Vec<String>,
    /// The command run on `OS_Reboot` (default `reboot`).
    pub reboot: Vec<String>,
    /// Where [`monotonic`](crate::daemon::System::monotonic) counts from.
    pub started: std::time::Instant,
    /// Lines above this level are not logged.
    pub log_level: crate::config::LogLevel,
}

impl Default for LinuxSystem {
    fn default() -> Self {
        LinuxSystem {
            halt: vec!["poweroff".to_owned()],
            reboot: vec!["reboot".to_owned()],
            started: std::time::Instant::now(),
            log_level: crate::config::LogLevel::Info,
        }
    }
}

/// Processes that keep the clock, by their `comm` (at most 15 bytes:
/// systemd-timesyncd's is cut). OpenNTPD's processes are `ntpd` too.
pub const TIME_KEEPERS: [&str; 6] = [
    "chronyd",
    "ntpd",
    "openntpd",
    "systemd-timesyn",
    "phc2sys",
    "ntimed",
];

/// The first running process named in [`TIME_KEEPERS`], from a scan of
/// `/proc/PID/comm`.
pub fn running_time_keeper() -> Option<String> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end_matches('\n');
        if let Some(k) = TIME_KEEPERS.iter().find(|&&k| k == comm) {
            let k = if *k == "systemd-timesyn" {
                "systemd-timesyncd"
            } else {
                k
            };
            return Some(format!("{k} (pid {})", name.to_string_lossy()));
        }
    }
    None
}

/// The kernel's clock status (`adjtimex(2)` read only).
pub fn clock_status() -> Result<libc::c_int, String> {
    // SAFETY: all-zero is a valid timex (modes 0: read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid timex for the call to fill.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok(tx.status)
}

/// What is left of a singleshot slew, µs (adjtimex read only:
/// `ADJ_OFFSET_SS_READ`).
pub fn slew_left_us() -> Result<i64, String> {
    // SAFETY: all-zero is a valid timex.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_OFFSET_SS_READ;
    // SAFETY: tx is a valid timex.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok(tx.offset)
}

/// `clock_gettime(CLOCK_REALTIME)`.
fn realtime() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writing.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

/// A singleshot slew (adjtime(3)'s `ADJ_OFFSET_SINGLESHOT`): the kernel
/// slews by `offset_us` at 500 ppm, replacing what was left of an earlier
/// one.
fn singleshot(offset_us: i64) -> Result<(), String> {
    // SAFETY: all-zero is a valid timex.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
    // x86-64: the field is 64 bits.
    tx.offset = offset_us;
    // SAFETY: tx is a valid timex.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok(())
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

    fn log(&mut self, level: crate::config::LogLevel, line: &str) {
        if level <= self.log_level {
            eprintln!("vmt: {line}");
        }
    }

    fn realtime_us(&mut self) -> i64 {
        let ts = realtime();
        ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
    }

    fn monotonic(&mut self) -> std::time::Duration {
        self.started.elapsed()
    }

    fn step_clock(&mut self, offset_us: i64) -> Result<(), String> {
        // A slew still under way would take the clock off again after the
        // step: cancelled first (and without the right to, the step fails
        // the same way).
        singleshot(0)?;
        let now = realtime();
        let ns = i128::from(now.tv_sec) * 1_000_000_000
            + i128::from(now.tv_nsec)
            + i128::from(offset_us) * 1_000;
        let ts = libc::timespec {
            tv_sec: (ns.div_euclid(1_000_000_000))
                .try_into()
                .map_err(|_| "time out of range".to_owned())?,
            tv_nsec: ns.rem_euclid(1_000_000_000) as _,
        };
        // SAFETY: ts is a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(format!(
                "clock_settime: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn slew_clock(&mut self, offset_us: i64) -> Result<(), String> {
        singleshot(offset_us)
    }

    fn time_keeper(&mut self) -> Option<String> {
        if let Some(k) = running_time_keeper() {
            return Some(k);
        }
        // The hint: no daemon we know, but something (an NTP or PTP
        // daemon) told the kernel its clock is synchronised.
        match clock_status() {
            Ok(st) if st & libc::STA_UNSYNC == 0 => Some(
                "a time keeper unknown to vmt (the kernel's clock is marked \
                 synchronised: adjtimex STA_UNSYNC clear)"
                    .to_owned(),
            ),
            _ => None,
        }
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

    /// The clock reads (never the writes: the test machine's clock is not
    /// ours to set) answer sensibly.
    #[test]
    fn clock_reads() {
        use crate::daemon::System;
        let mut sys = LinuxSystem::default();
        let t = sys.realtime_us();
        assert!(t > crate::clock::EARLIEST_HOST_TIME_US, "{t}");
        let a = sys.monotonic();
        assert!(sys.monotonic() >= a);
        clock_status().unwrap();
        slew_left_us().unwrap();
        if let Some(k) = sys.time_keeper() {
            assert!(!k.is_empty());
        }
        // This test process is no time keeper, and its name is read
        // like theirs.
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(!TIME_KEEPERS.contains(&own.trim_end()));
    }

    #[test]
    fn power_commands_run_as_programs() {
        use crate::daemon::{Power, System};
        let mut sys = LinuxSystem {
            halt: vec!["true".to_owned()],
            reboot: vec!["false".to_owned()],
            ..LinuxSystem::default()
        };
        assert_eq!(sys.power(Power::Halt), Ok(()));
        assert!(sys.power(Power::Reboot).unwrap_err().starts_with("false: "));
        sys.halt = vec!["/nonexistent/poweroff".to_owned()];
        assert!(sys.power(Power::Halt).is_err());
    }
}
