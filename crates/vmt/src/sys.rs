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

/// Where log lines go.
#[derive(Debug)]
pub enum LogTarget {
    /// Standard error, `vmt: ` before each line (the foreground daemon).
    Stderr,
    /// Syslog (the detached daemon).
    Syslog(crate::syslog::Syslog),
}

/// The real [`System`](crate::daemon::System): the kernel's host name and
/// interface addresses, power through the init ([`crate::power`]) or the
/// configured commands, the kernel's clock, log lines on standard error
/// or to syslog, the status file.
#[derive(Debug)]
pub struct LinuxSystem {
    /// The command run on `OS_Halt`; `None`: the init's way.
    pub halt: Option<Vec<String>>,
    /// The command run on `OS_Reboot`; `None`: the init's way.
    pub reboot: Option<Vec<String>>,
    /// Where the init's files are looked for (`run/systemd/system`,
    /// `run/initctl`): `/`.
    pub root: std::path::PathBuf,
    /// The init's pid (1).
    pub init_pid: i32,
    /// Whether the last resort may call reboot(2). Off unless the daemon
    /// turns it on: tests use this type on the machine that runs them.
    pub may_reboot: bool,
    /// Whether the clock may be stepped or slewed. Off unless the daemon
    /// turns it on, for the same reason: a test's fake host has a clock of
    /// its own, and the machine running the test is not the test's.
    pub may_set_clock: bool,
    /// Where [`monotonic`](crate::daemon::System::monotonic) counts from.
    pub started: std::time::Instant,
    /// Lines above this level are not logged.
    pub log_level: crate::config::LogLevel,
    /// Where lines go.
    pub log: LogTarget,
    /// Where the status goes (`None`: nowhere).
    pub status_file: Option<std::path::PathBuf>,
    /// Interfaces left out of the NIC report (shell patterns).
    pub exclude_nics: Vec<String>,
    /// The power command running, with its name.
    child: Option<(String, std::process::Child)>,
    /// The status file could not be written (logged once).
    status_failed: bool,
}

impl Default for LinuxSystem {
    fn default() -> Self {
        LinuxSystem {
            halt: None,
            reboot: None,
            root: "/".into(),
            init_pid: 1,
            may_reboot: false,
            may_set_clock: false,
            started: std::time::Instant::now(),
            log_level: crate::config::LogLevel::Info,
            log: LogTarget::Stderr,
            status_file: None,
            exclude_nics: crate::report::DEFAULT_EXCLUDE_NICS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            child: None,
            status_failed: false,
        }
    }
}

impl LinuxSystem {
    /// The way `action` is done here: the configured command, or the
    /// init's way.
    pub fn power_way(&self, action: crate::daemon::Power) -> crate::power::Way {
        use crate::daemon::Power;
        use crate::power;
        let configured = match action {
            Power::Halt => &self.halt,
            Power::Reboot => &self.reboot,
        };
        if let Some(argv) = configured {
            return power::Way::Command(argv.clone());
        }
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", self.init_pid));
        let init = power::detect(&self.root, &proc_dir);
        power::way(&init, self.init_pid, action)
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

    fn nics(&mut self) -> Option<Vec<crate::report::Nic>> {
        nics(&self.exclude_nics)
    }

    fn os_info(&mut self) -> Option<crate::report::OsInfo> {
        os_info(&self.root)
    }

    fn uptime_centis(&mut self) -> Option<u64> {
        uptime_centis()
    }

    fn power(&mut self, action: crate::daemon::Power) -> Result<String, String> {
        let way = self.power_way(action);
        let how = way.to_string();
        if let Some(child) = way.start()? {
            let name = match &way {
                crate::power::Way::Command(argv) => argv[0].clone(),
                _ => how.clone(),
            };
            self.child = Some((name, child));
        }
        Ok(how)
    }

    fn power_failed(&mut self) -> Option<String> {
        let (name, child) = self.child.as_mut()?;
        let why = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(st)) if st.success() => None,
            Ok(Some(st)) => Some(format!("{name}: {st}")),
            Err(e) => Some(format!("{name}: {e}")),
        };
        self.child = None;
        why
    }

    fn force_power(&mut self, action: crate::daemon::Power) -> String {
        if !self.may_reboot {
            return "not allowed here".to_owned();
        }
        crate::power::last_resort(action).to_string()
    }

    fn publish(&mut self, status: &crate::status::Status) {
        let Some(path) = &self.status_file else {
            return;
        };
        match crate::status::write_atomically(path, &status.render()) {
            Ok(()) => self.status_failed = false,
            Err(e) if !self.status_failed => {
                let line = format!("{}: {e}", path.display());
                self.status_failed = true;
                self.log(crate::config::LogLevel::Error, &line);
            }
            Err(_) => {}
        }
    }

    fn log(&mut self, level: crate::config::LogLevel, line: &str) {
        if level > self.log_level {
            return;
        }
        match &mut self.log {
            LogTarget::Stderr => eprintln!("vmt: {line}"),
            LogTarget::Syslog(s) => s.log(level, line),
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
        if !self.may_set_clock {
            return Err("not allowed here".to_owned());
        }
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
        if !self.may_set_clock {
            return Err("not allowed here".to_owned());
        }
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

/// Bits set in a netmask (its prefix length), as vmtoolsd counts them.
fn prefix_len(mask: &[u8]) -> u8 {
    mask.iter().map(|b| b.count_ones() as u8).sum()
}

/// An interface address from `getifaddrs(3)` with its prefix length, when
/// it is IPv4 or IPv6.
///
/// # Safety
/// `ifa` must be a node of a list `getifaddrs` returned, not yet freed.
unsafe fn address(ifa: &libc::ifaddrs) -> Option<guestrpc::guestinfo::nicinfo::IpEntry> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if ifa.ifa_addr.is_null() {
        return None;
    }
    // SAFETY: non-null, from getifaddrs.
    let family = libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family });
    let mask = ifa.ifa_netmask;
    let (addr, prefix) = match family {
        libc::AF_INET => {
            // SAFETY: an AF_INET address (and netmask) is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            let bits = (!mask.is_null())
                // SAFETY: as above.
                .then(|| unsafe { &*mask.cast::<libc::sockaddr_in>() })
                .map_or(0, |m| prefix_len(&m.sin_addr.s_addr.to_ne_bytes()));
            (
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                bits,
            )
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address (and netmask) is a sockaddr_in6.
            let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
            let bits = (!mask.is_null())
                // SAFETY: as above.
                .then(|| unsafe { &*mask.cast::<libc::sockaddr_in6>() })
                .map_or(0, |m| prefix_len(&m.sin6_addr.s6_addr));
            (IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), bits)
        }
        _ => return None,
    };
    Some(guestrpc::guestinfo::nicinfo::IpEntry {
        addr,
        prefix_len: prefix,
    })
}

/// The name of an `ifaddrs` node.
///
/// # Safety
/// As for [`address`].
unsafe fn ifa_name(ifa: &libc::ifaddrs) -> String {
    if ifa.ifa_name.is_null() {
        return String::new();
    }
    // SAFETY: getifaddrs gives NUL-terminated names.
    unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
        .to_string_lossy()
        .into_owned()
}

/// The NICs as vmtoolsd gathers them (open-vm-tools `nicInfoPosix.c`,
/// `GuestInfoGetInterface`): each interface that is up, not loopback, not
/// `excluded` and has a 6-byte link address (its `AF_PACKET` entry), in
/// the kernel's order, with its addresses and those of its aliases
/// (`eth0:1`), loopback addresses left out. At most 16, as the report
/// holds. `None` if `getifaddrs` failed.
pub fn nics(exclude: &[String]) -> Option<Vec<crate::report::Nic>> {
    use crate::report::{excluded, format_mac, Nic};
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` on success; freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut nodes = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        nodes.push(ifa);
        cur = ifa.ifa_next;
    }
    let mut out: Vec<Nic> = Vec::new();
    for ifa in &nodes {
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null, from getifaddrs.
        if libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_PACKET {
            continue;
        }
        let flags = ifa.ifa_flags;
        if flags & libc::IFF_UP as libc::c_uint == 0
            || flags & libc::IFF_LOOPBACK as libc::c_uint != 0
        {
            continue;
        }
        // SAFETY: a node of the list.
        let name = unsafe { ifa_name(ifa) };
        if excluded(&name, exclude) {
            continue;
        }
        // SAFETY: an AF_PACKET address is a sockaddr_ll.
        let sll = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_ll>() };
        if sll.sll_halen != 6 {
            continue;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&sll.sll_addr[..6]);
        let alias = format!("{name}:");
        let addrs = nodes
            .iter()
            .filter(|a| {
                // SAFETY: nodes of the list.
                let n = unsafe { ifa_name(a) };
                n == name || n.starts_with(&alias)
            })
            // SAFETY: nodes of the list.
            .filter_map(|a| unsafe { address(a) })
            .filter(|e| !e.addr.is_loopback())
            .collect();
        out.push(Nic {
            name,
            mac: format_mac(mac),
            addrs,
        });
        if out.len() == guestrpc::guestinfo::nicinfo::MAX_NICS as usize {
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once, after the
    // last use of its nodes.
    unsafe { libc::freeifaddrs(list) };
    Some(out)
}

/// uname(2): sysname, release, machine.
pub fn uname() -> Option<(String, String, String)> {
    // SAFETY: all-zero is a valid utsname for uname to fill.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is valid for writing.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((field(&u.sysname), field(&u.release), field(&u.machine)))
}

/// The guest OS as vmtoolsd names it ([`crate::report::os_info`]), from
/// uname(2) and `ROOT/etc/os-release` or `ROOT/usr/lib/os-release`.
pub fn os_info(root: &std::path::Path) -> Option<crate::report::OsInfo> {
    let (sysname, release, machine) = uname()?;
    let os_release = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read(root.join(p)).ok())
        .and_then(|b| crate::report::parse_os_release(&String::from_utf8_lossy(&b)));
    Some(crate::report::os_info(
        &sysname,
        &release,
        &machine,
        os_release.as_ref(),
    ))
}

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`, what
/// `/proc/uptime` shows), in hundredths of a second.
pub fn uptime_centis() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writing.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 100 + ts.tv_nsec as u64 / 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's NICs, OS and uptime: gathered without failing, in
    /// the report's shape.
    #[test]
    fn nics_os_and_uptime_of_this_machine() {
        let all = nics(&[]).unwrap();
        assert!(all.len() <= 16);
        for n in &all {
            assert_eq!(n.mac.len(), 17, "{n:?}");
            assert!(n.addrs.iter().all(|a| !a.addr.is_loopback()), "{n:?}");
            assert_ne!(n.name, "lo");
        }
        let everything: Vec<String> = vec!["*".into()];
        assert_eq!(nics(&everything).unwrap(), []);
        let os = os_info(std::path::Path::new("/")).unwrap();
        assert!(os.full_name.starts_with("Linux "), "{os:?}");
        assert!(os.detailed.contains("familyName='Linux'"), "{os:?}");
        let a = uptime_centis().unwrap();
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((a as f64 / 100.0 - up).abs() < 2.0, "{a} vs {up}");
        assert_eq!(prefix_len(&[255, 255, 255, 0]), 24);
        assert_eq!(prefix_len(&[0xff; 16]), 128);
    }

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
        // Never the writes here: refused unless the daemon allows them.
        assert_eq!(
            sys.step_clock(-3_600_000_000),
            Err("not allowed here".into())
        );
        assert_eq!(sys.slew_clock(1_000), Err("not allowed here".into()));
        // This test process is no time keeper, and its name is read
        // like theirs.
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(!TIME_KEEPERS.contains(&own.trim_end()));
    }

    /// Waits (at most 10 s) for the power command to end; its failure.
    fn power_outcome(sys: &mut LinuxSystem) -> Option<String> {
        use crate::daemon::System;
        for _ in 0..1000 {
            if let Some(e) = sys.power_failed() {
                return Some(e);
            }
            sys.child.as_ref()?;
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the power command did not end");
    }

    /// Configured commands are spawned, the daemon not blocked on them;
    /// their failure shows up afterwards.
    #[test]
    fn power_commands_run_as_programs() {
        use crate::daemon::{Power, System};
        let mut sys = LinuxSystem {
            halt: Some(vec!["true".to_owned()]),
            reboot: Some(vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()]),
            ..LinuxSystem::default()
        };
        assert_eq!(sys.power(Power::Halt), Ok("true".to_owned()));
        assert_eq!(power_outcome(&mut sys), None);
        assert_eq!(sys.power(Power::Reboot), Ok("sh -c exit 3".to_owned()));
        assert_eq!(
            power_outcome(&mut sys).as_deref(),
            Some("sh: exit status: 3")
        );
        assert_eq!(sys.power_failed(), None, "reported once");
        // A command that hangs does not hold the daemon up.
        sys.halt = Some(vec!["sleep".to_owned(), "30".to_owned()]);
        let t = std::time::Instant::now();
        sys.power(Power::Halt).unwrap();
        assert_eq!(sys.power_failed(), None);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        sys.child.take().unwrap().1.kill().unwrap();
        sys.halt = Some(vec!["/nonexistent/poweroff".to_owned()]);
        assert!(sys
            .power(Power::Halt)
            .unwrap_err()
            .starts_with("/nonexistent/poweroff: "));
        // And the last resort stays off outside the daemon.
        assert_eq!(sys.force_power(Power::Halt), "not allowed here");
    }

    /// Without a configured command, the init decides (here a fake root
    /// with systemd's directory: `systemctl`, whose start is not tried).
    #[test]
    fn the_init_decides_without_a_command() {
        use crate::daemon::Power;
        use crate::power::Way;
        let root = std::env::temp_dir().join(format!("vmt-sys-root-{}", std::process::id()));
        std::fs::create_dir_all(root.join("run/systemd/system")).unwrap();
        let sys = LinuxSystem {
            root: root.clone(),
            ..LinuxSystem::default()
        };
        assert_eq!(
            sys.power_way(Power::Reboot),
            Way::Command(vec!["systemctl".into(), "reboot".into()])
        );
        let sys = LinuxSystem {
            root: root.clone(),
            reboot: Some(vec!["/sbin/my-reboot".into()]),
            ..LinuxSystem::default()
        };
        assert_eq!(
            sys.power_way(Power::Reboot),
            Way::Command(vec!["/sbin/my-reboot".into()])
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_status_file_is_written() {
        use crate::daemon::System;
        let dir = std::env::temp_dir().join(format!("vmt-sys-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmt.status");
        let mut sys = LinuxSystem {
            status_file: Some(path.clone()),
            ..LinuxSystem::default()
        };
        let st = crate::status::Status {
            pid: 7,
            ..Default::default()
        };
        sys.publish(&st);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), st.render());
        std::fs::remove_dir_all(&dir).unwrap();
        // A directory gone: logged once, no panic.
        sys.publish(&st);
        assert!(sys.status_failed);
    }
}
