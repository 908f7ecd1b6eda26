//! The parsed configuration: what vmd needs to know, with every default filled in.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One mebibyte, the unit guest memory is rounded to.
pub const MIB: u64 = 1024 * 1024;
/// Memory of a VM that does not say (`memory 512M`).
pub const DEFAULT_MEMORY: u64 = 512 * MIB;
/// The smallest memory size accepted (`memory`, and `parse_size` in general).
pub const MIN_MEMORY: u64 = 2 * MIB;
/// vCPUs of a VM that does not say.
pub const DEFAULT_CPUS: u32 = 1;
/// Most vCPUs a VM may have.
pub const MAX_CPUS: u32 = 254;
/// Most disks per VM (OpenBSD's `VMM_MAX_DISKS_PER_VM`).
pub const MAX_DISKS: usize = 4;
/// Most network interfaces per VM (OpenBSD's `VMM_MAX_NICS_PER_VM`).
pub const MAX_INTERFACES: usize = 4;
/// Longest VM name, in characters: OpenBSD's `VMM_MAX_NAME_LEN` (64) less its NUL, as
/// OpenBSD's vmctl refuses a name of 64 ("name too long").
pub const MAX_VM_NAME_LEN: usize = 63;
/// Grace period, in seconds, between a guest acknowledging a halt and vmd powering it off.
pub const DEFAULT_GRACE_SECS: u64 = 120;
/// Seconds between two waves of a staggered start.
pub const DEFAULT_STAGGER_DELAY_SECS: u64 = 30;
/// Highest routing domain (OpenBSD's `RT_TABLEID_MAX`).
pub const MAX_RDOMAIN: u32 = 255;

/// Checks a VM's name by OpenBSD's rule, the same for vm.conf and for the API: 1 to
/// [`MAX_VM_NAME_LEN`] ASCII letters, digits, `.`, `-` and `_`, starting with a letter or a
/// digit. Digits alone are refused too: `vmctl` and the API take those for VM ids (OpenBSD's
/// vmctl does the same: "invalid vm name"). So a name never carries a `/`, a space, an escape
/// sequence or a newline into a path, a log line or a terminal.
///
/// The error says why, in words that fit `invalid vm name "NAME": WHY` (the name quoted with
/// [`quote_vm_name`] where it came from a client).
pub fn check_vm_name(name: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    Err(if name.is_empty() {
        "empty"
    } else if name.chars().nth(MAX_VM_NAME_LEN).is_some() {
        "longer than 63 characters"
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        "all digits"
    } else if name.chars().any(char::is_whitespace) {
        "contains whitespace"
    } else if name.chars().any(char::is_control) {
        "contains a non-printable character"
    } else if name.contains('/') {
        "contains \"/\""
    } else if !name.chars().all(allowed) {
        "contains a character other than letters, digits, \".\", \"-\" and \"_\""
    } else if name.starts_with(['.', '-', '_']) {
        "starts with \".\", \"-\" or \"_\""
    } else {
        return Ok(());
    })
}

/// `name` quoted for a message, as Rust's `{:?}` quotes it (control characters escaped), and
/// cut after [`MAX_VM_NAME_LEN`] characters with `...` and its full length: a message about a
/// 70,000-character name need not repeat it.
pub fn quote_vm_name(name: &str) -> String {
    match name.char_indices().nth(MAX_VM_NAME_LEN) {
        None => format!("{name:?}"),
        Some((at, _)) => format!("{:?}... ({} characters)", &name[..at], name.chars().count()),
    }
}

/// Where something was defined.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// An error (or warning) in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the message is about the file as a whole (it could not be read) or
    /// about a `-D` macro.
    pub line: u32,
    pub message: String,
}

/// `file:line: message` (`file: message` at line 0), always one line of visible
/// characters: messages quote what the file says (`syntax error near "..."`, a bad
/// group name, a path), which may hold control characters, and this is what `vmd -n`
/// prints to a terminal and vmd writes to its log. Those characters are written as
/// escapes, as the API's `text::printable` writes them: `\n`, `\t`, `\r`, `\xHH`
/// for other C0 controls and DEL, `\u{H}` for C1 controls and the characters that
/// reorder or hide text. Backslashes stay as they are.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, message) = (printable(&self.file), printable(&self.message));
        if self.line == 0 {
            write!(f, "{file}: {message}")
        } else {
            write!(f, "{file}:{}: {message}", self.line)
        }
    }
}

/// Whether `c` is written as an escape in a [`Diagnostic`]: a control character, a
/// bidirectional embedding, override or isolate, an invisible mark or joiner, the line
/// and paragraph separators, the byte order mark (the API's `text` module's set).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unprintable) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !unprintable(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.into()
}

impl std::error::Error for Diagnostic {}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub globals: Globals,
    pub switches: Vec<Switch>,
    pub vms: Vec<VmDef>,
}

impl Config {
    /// The VM (or instance) called `name`.
    pub fn vm(&self, name: &str) -> Option<&VmDef> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The switch called `name`.
    pub fn switch(&self, name: &str) -> Option<&Switch> {
        self.switches.iter().find(|s| s.name == name)
    }
}

/// Settings that apply to vmd as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Globals {
    /// `local prefix`: where subnets for `local interface`s come from.
    pub local_prefix: Ipv4Prefix,
    /// `local inet6` was given: local interfaces also get IPv6.
    pub local_inet6: bool,
    /// `local inet6 prefix`: where their IPv6 subnets come from.
    pub local_prefix6: Ipv6Prefix,
    /// `socket owner`; None: root only.
    pub socket_owner: Option<Owner>,
    pub staggered: Staggered,
    /// `grace` at top level: the default for VMs that do not set their own.
    pub grace_secs: u64,
}

impl Default for Globals {
    fn default() -> Self {
        Globals {
            local_prefix: Ipv4Prefix {
                addr: Ipv4Addr::new(100, 64, 0, 0),
                len: 10,
            },
            local_inet6: false,
            local_prefix6: Ipv6Prefix {
                addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
                len: 8,
            },
            socket_owner: None,
            staggered: Staggered::default(),
            grace_secs: DEFAULT_GRACE_SECS,
        }
    }
}

/// `staggered start parallel N delay S`: start enabled VMs N at a time, S seconds apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staggered {
    /// None: as many as the host has CPUs.
    pub parallel: Option<u32>,
    pub delay_secs: u64,
}

impl Default for Staggered {
    fn default() -> Self {
        Staggered {
            parallel: None,
            delay_secs: DEFAULT_STAGGER_DELAY_SECS,
        }
    }
}

/// `USER[:GROUP]` or `:GROUP`, as written: names (or numeric ids) are resolved by vmd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub user: Option<String>,
    pub group: Option<String>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            f.write_str(u)?;
        }
        if let Some(g) = &self.group {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

impl FromStr for Owner {
    type Err = String;

    /// `joe`, `joe:staff`, `:staff` (and numeric ids in either place).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid owner: {s}");
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let ok =
            |n: &str| !n.contains(':') && !n.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok(user) || !group.is_none_or(ok) {
            return Err(bad());
        }
        let owner = Owner {
            user: (!user.is_empty()).then(|| user.to_string()),
            group: group.filter(|g| !g.is_empty()).map(str::to_string),
        };
        if owner.user.is_none() && owner.group.is_none() {
            return Err(bad());
        }
        Ok(owner)
    }
}

/// An IPv4 network prefix, `ADDRESS/LEN`; (de)serialized as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

/// An IPv6 network prefix, `ADDRESS/LEN`; (de)serialized as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Ipv6Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

fn split_prefix<A: FromStr>(s: &str, max: u8) -> Option<(A, u8)> {
    let (a, l) = s.split_once('/')?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = l.parse().ok()?;
    (len <= max).then_some(())?;
    Some((a.parse().ok()?, len))
}

impl FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        split_prefix(s, 32)
            .map(|(addr, len)| Ipv4Prefix { addr, len })
            .ok_or_else(|| format!("invalid IPv4 prefix: {s}"))
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        split_prefix(s, 128)
            .map(|(addr, len)| Ipv6Prefix { addr, len })
            .ok_or_else(|| format!("invalid IPv6 prefix: {s}"))
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl From<Ipv4Prefix> for String {
    fn from(p: Ipv4Prefix) -> String {
        p.to_string()
    }
}

impl From<Ipv6Prefix> for String {
    fn from(p: Ipv6Prefix) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Ipv4Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl TryFrom<String> for Ipv6Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// A `switch NAME { ... }` block: a Linux bridge that VM interfaces are added to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Switch {
    pub name: String,
    pub line: Location,
    /// `enable`/`disable`: whether vmd sets the switch up at all.
    pub enabled: bool,
    /// `interface`: the bridge device, e.g. `bridge0`.
    pub interface: String,
    pub group: Option<String>,
    /// `locked lladdr`: drop frames whose source is not the VM interface's address.
    pub locked: bool,
    pub rdomain: Option<u32>,
    /// `up`/`down`.
    pub up: bool,
}

/// `format` of a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

impl FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            _ => Err(format!("unrecognized disk format {s}")),
        }
    }
}

/// A `disk PATH [format FMT]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    /// None: not given; vmd looks at the image (qcow2 magic, else raw), like OpenBSD.
    pub format: Option<DiskFormat>,
}

/// `boot device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Disk,
    Cdrom,
    Net,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Net => "net",
        })
    }
}

/// A VM network interface: `[local] interface [NAME] [{ ... }]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The host-side tap device; None: vmd picks the next free `tapN`.
    pub name: Option<String>,
    /// `local interface`: vmd gives it a subnet from `local prefix` and serves DHCP on it.
    pub local: bool,
    pub switch: Option<String>,
    /// The guest-side MAC; None: vmd makes one up.
    pub lladdr: Option<[u8; 6]>,
    /// `locked lladdr`: drop frames from the guest with another source address.
    pub locked: bool,
    pub group: Option<String>,
    pub rdomain: Option<u32>,
    pub up: bool,
}

impl Default for Interface {
    fn default() -> Self {
        Interface {
            name: None,
            local: false,
            switch: None,
            lladdr: None,
            locked: false,
            group: None,
            rdomain: None,
            up: true,
        }
    }
}

/// What `allow instance` lets an instance change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceOption {
    /// `boot`, `boot device`, `kernel`, `initrd`, `cmdline`, and `cpu`: the CPU a guest is
    /// shown is there to suit the kernel it boots.
    Boot,
    Cdrom,
    /// `cpus` (a Linux addition).
    Cpus,
    /// `enable`/`disable`.
    Disable,
    Disk,
    /// Creating instances of the instance (and `allow instance` in it).
    Instance,
    /// `interface`, `local interface`, `interfaces`.
    Interface,
    Memory,
    Owner,
}

impl InstanceOption {
    /// The keyword, as written in `allow instance` and in error messages.
    pub fn keyword(self) -> &'static str {
        match self {
            InstanceOption::Boot => "boot",
            InstanceOption::Cdrom => "cdrom",
            InstanceOption::Cpus => "cpus",
            InstanceOption::Disable => "disable",
            InstanceOption::Disk => "disk",
            InstanceOption::Instance => "instance",
            InstanceOption::Interface => "interface",
            InstanceOption::Memory => "memory",
            InstanceOption::Owner => "owner",
        }
    }

    pub(crate) fn from_keyword(s: &str) -> Option<Self> {
        Some(match s {
            "boot" => InstanceOption::Boot,
            "cdrom" => InstanceOption::Cdrom,
            "cpus" => InstanceOption::Cpus,
            "disable" => InstanceOption::Disable,
            "disk" => InstanceOption::Disk,
            "instance" => InstanceOption::Instance,
            "interface" => InstanceOption::Interface,
            "memory" => InstanceOption::Memory,
            "owner" => InstanceOption::Owner,
            _ => return None,
        })
    }
}

impl fmt::Display for InstanceOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// `cpu ...`: what the guest is told about its CPU. Everything unset: the host's CPU, with
/// every feature KVM offers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuModel {
    /// `cpu vendor`: the 12-character vendor string of CPUID leaf 0 (`intel` and `amd` are
    /// kept as `GenuineIntel` and `AuthenticAMD`).
    pub vendor: Option<String>,
    /// `cpu family`, 1 to 270.
    pub family: Option<u32>,
    /// `cpu model`, 0 to 255.
    pub model: Option<u32>,
    /// `cpu stepping`, 0 to 15.
    pub stepping: Option<u32>,
    /// `cpu hide`: feature names (Linux `/proc/cpuinfo` spellings), no duplicates.
    pub hide: Vec<String>,
}

impl CpuModel {
    /// Nothing set: the guest sees the host's CPU.
    pub fn is_host(&self) -> bool {
        *self == CpuModel::default()
    }
}

/// A `vm NAME { ... }` or `vm PARENT instance NAME { ... }` block, with defaults (and, for an
/// instance, the parent's settings) filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmDef {
    pub name: String,
    /// Where the `vm` statement is.
    pub line: Location,
    /// `enable`/`disable`: whether vmd starts the VM when it starts.
    pub enabled: bool,
    /// `kernel PATH` or `boot PATH`.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub boot_device: Option<BootDevice>,
    pub cdrom: Option<PathBuf>,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    /// Bytes, a whole number of MiB.
    pub memory: u64,
    pub cpus: u32,
    /// `cpu`: the CPU identity and hidden features (absent in JSON from before it existed).
    #[serde(default)]
    pub cpu: CpuModel,
    pub owner: Option<Owner>,
    pub grace_secs: u64,
    /// Sorted, no duplicates.
    pub allow_instance: Vec<InstanceOption>,
    /// `allow instance { owner USER[:GROUP] }`: who may create instances of this VM.
    #[serde(default)]
    pub instance_owner: Option<Owner>,
    /// `vm PARENT instance NAME`: the parent's name.
    pub instance_of: Option<String>,
}

impl VmDef {
    /// A VM with every setting at its default (enabled, 512M, 1 vCPU, nothing attached).
    pub fn new(name: impl Into<String>) -> Self {
        VmDef {
            name: name.into(),
            line: Location::default(),
            enabled: true,
            kernel: None,
            initrd: None,
            cmdline: None,
            boot_device: None,
            cdrom: None,
            disks: Vec::new(),
            interfaces: Vec::new(),
            memory: DEFAULT_MEMORY,
            cpus: DEFAULT_CPUS,
            cpu: CpuModel::default(),
            owner: None,
            grace_secs: DEFAULT_GRACE_SECS,
            allow_instance: Vec::new(),
            instance_owner: None,
            instance_of: None,
        }
    }

    /// Whether `allow instance` lets instances change `opt`.
    pub fn allows(&self, opt: InstanceOption) -> bool {
        self.allow_instance.contains(&opt)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_lladdr(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses an Ethernet address like ether_aton(3): six groups of one or two hex digits,
/// separated by colons. Multicast addresses are refused: they cannot be a NIC's address.
pub fn parse_lladdr(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("invalid address: {s}");
    let mut mac = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6
            || part.is_empty()
            || part.len() > 2
            || !part.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        mac[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("invalid address: {s} (multicast)"));
    }
    Ok(mac)
}

#[cfg(test)]
mod vm_name_tests {
    use super::*;

    #[test]
    fn openbsds_rule() {
        for good in [
            "web-1.example_2",
            "a",
            "1web",
            "W",
            "x.-_",
            "9a",
            &"b".repeat(MAX_VM_NAME_LEN),
        ] {
            assert_eq!(check_vm_name(good), Ok(()), "{good:?}");
        }
        let long = "a".repeat(70_000);
        for (bad, why) in [
            ("", "empty"),
            (
                &"b".repeat(MAX_VM_NAME_LEN + 1),
                "longer than 63 characters",
            ),
            (&long, "longer than 63 characters"),
            ("42", "all digits"),
            ("a b", "contains whitespace"),
            ("a\nb", "contains whitespace"),
            ("\x1b[31m", "contains a non-printable character"),
            ("a\u{7f}", "contains a non-printable character"),
            ("a/b", "contains \"/\""),
            ("..", "starts with \".\", \"-\" or \"_\""),
            ("-x", "starts with \".\", \"-\" or \"_\""),
            (".x", "starts with \".\", \"-\" or \"_\""),
            ("_x", "starts with \".\", \"-\" or \"_\""),
        ] {
            assert_eq!(check_vm_name(bad), Err(why), "{bad:?}");
        }
        for bad in ["a:b", "é", "a\u{202e}b", "a$b", "a\\b", "a*", "a%2F"] {
            assert_eq!(
                check_vm_name(bad),
                Err("contains a character other than letters, digits, \".\", \"-\" and \"_\""),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quoted_for_messages() {
        assert_eq!(quote_vm_name("web1"), "\"web1\"");
        assert_eq!(quote_vm_name("a\x1b[31m\n"), "\"a\\u{1b}[31m\\n\"");
        let long = "a".repeat(70_000);
        assert_eq!(
            quote_vm_name(&long),
            format!("\"{}\"... (70000 characters)", "a".repeat(MAX_VM_NAME_LEN))
        );
    }
}
