//! What the daemon reports about the guest besides its host name and first
//! address, built the way open-vm-tools' vmtoolsd builds it, so that a
//! VMware host shows a vmt guest as it shows a vmtoolsd one:
//!
//! - the NICs ([`Nic`], `SetGuestInfo  10`, NicInfo v3 XDR): every
//!   interface that is up, not loopback and has an Ethernet address,
//!   with its MAC as `aa:bb:cc:dd:ee:ff` and its IPv4 and IPv6 addresses
//!   (not loopback ones), at most 16 NICs; vmtoolsd's default exclusions
//!   (`docker*`, `veth*`: containers' ends) unless configured otherwise;
//!   each address with vmtoolsd's status (IPv4 "preferred", IPv6
//!   "unknown");
//! - the OS ([`OsInfo`]): vmtoolsd's short name (`debian12-64`,
//!   `other6xlinux-64`), full name (`Linux <release> <distro>`) and
//!   detailed data (`architecture='X86' bitness='64' ...`), from
//!   `/etc/os-release` (or `/usr/lib/os-release`) and uname(2), as
//!   open-vm-tools' `lib/misc/hostinfoPosix.c` reads them. Its table of
//!   distribution short names is larger; [`short_name`] has the common
//!   ones and vmtoolsd's generic `otherNxlinux` for the rest.
//!   Sent as one `SetGuestInfo  11` (INFO_OS_DETAILED) as modern vmtoolsd
//!   does, or as keys 5 and 6 to a host that refuses key 11;
//! - the uptime (`SetGuestInfo  7`) in hundredths of a second.
//!
//! Nothing here touches the system: `crate::sys` gathers, this shapes.

use guestrpc::guestinfo::nicinfo::{AddressStatus, EncodeError, IpEntry, NicEntry, MAX_NICS};
use guestrpc::guestinfo::{format_set_guest_info_nics_with, format_set_guest_info_os};

/// vmtoolsd's default `exclude-nics`: container ends.
pub const DEFAULT_EXCLUDE_NICS: [&str; 2] = ["docker*", "veth*"];
/// Most addresses reported per NIC: vmtoolsd's limit for hosts that take
/// only version 2 reports (`INFO_IPADDRESS_V2_MAX_IPS`), which keeps a
/// report of 16 NICs within one 64 KiB message.
pub const MAX_ADDRS_PER_NIC: usize = 64;

/// One NIC as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The interface's name (for `vmt status`; not sent).
    pub name: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its addresses, in the kernel's order.
    pub addrs: Vec<IpEntry>,
}

impl Nic {
    /// `eth0 52:54:00:12:34:56 10.0.0.2/24 fe80::1/64`, for `vmt status`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {}", self.name, self.mac);
        for a in &self.addrs {
            s.push_str(&format!(" {}/{}", a.addr, a.prefix_len));
        }
        s
    }
}

/// A MAC as vmtoolsd writes it.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// `name` against a shell-style pattern (`*`, `?`), as vmtoolsd's
/// `exclude-nics` patterns (GLib's `g_pattern_match_simple`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard match with one backtrack point.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some('*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == '?' || c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Whether an interface is excluded by `patterns`.
pub fn excluded(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

/// The `SetGuestInfo  10` request for `nics`: at most 16 NICs and
/// [`MAX_ADDRS_PER_NIC`] addresses each (the rest left out, as vmtoolsd
/// leaves out what is over its limits), vmtoolsd's address status.
pub fn nicinfo_request(nics: &[Nic]) -> Result<Vec<u8>, EncodeError> {
    let entries: Vec<NicEntry<'_>> = nics
        .iter()
        .take(MAX_NICS as usize)
        .map(|n| NicEntry {
            mac: &n.mac,
            addrs: n.addrs.get(..MAX_ADDRS_PER_NIC).unwrap_or(&n.addrs),
        })
        .collect();
    // 64 bytes of header and list, 44 per NIC and 40 per address at most.
    let size = 64 + entries.len() * 44 + entries.iter().map(|e| e.addrs.len() * 40).sum::<usize>();
    let mut buf = vec![0u8; size];
    let n = format_set_guest_info_nics_with(&mut buf, &entries, AddressStatus::Vmtoolsd)?.len();
    buf.truncate(n);
    Ok(buf)
}

/// The guest OS as vmtoolsd names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsInfo {
    /// `SetGuestInfo  6`: `debian12-64`, `other6xlinux-64`.
    pub short_name: String,
    /// `SetGuestInfo  5`: `Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm) ...`.
    pub full_name: String,
    /// The detailed data of `SetGuestInfo  11`: `name='value'` pairs.
    pub detailed: String,
}

impl OsInfo {
    /// The `SetGuestInfo  11` request.
    pub fn detailed_request(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 32 + 648 + self.detailed.len() + 1];
        let n = format_set_guest_info_os(
            &mut buf,
            self.short_name.as_bytes(),
            self.full_name.as_bytes(),
            self.detailed.as_bytes(),
        )
        .map(<[u8]>::len)
        .unwrap_or(0);
        buf.truncate(n);
        buf
    }
}

/// The os-release fields vmtoolsd reads, in its order (`osReleaseFields`).
const OS_RELEASE_FIELDS: [&str; 6] = [
    "PRETTY_NAME",
    "NAME",
    "VERSION_ID",
    "BUILD_ID",
    "VERSION",
    "CPE_NAME",
];
/// vmtoolsd's `MAX_DETAILED_FIELD_LEN`: longer values are cut.
const MAX_FIELD: usize = 1023;

/// What vmtoolsd takes from an os-release file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `PRETTY_NAME`, `NAME`, `VERSION_ID`, `BUILD_ID`, `VERSION`,
    /// `CPE_NAME`, when present.
    pub fields: [Option<String>; 6],
    /// Every value found, in the file's order, joined by spaces: vmtoolsd's
    /// "distro" string, which goes into the full name.
    pub distro: String,
}

impl OsRelease {
    fn get(&self, name: &str) -> Option<&str> {
        let i = OS_RELEASE_FIELDS.iter().position(|&f| f == name)?;
        self.fields[i].as_deref()
    }
}

/// Parses os-release text as vmtoolsd does: `KEY="value"` (up to the
/// last `"` of the line) or `KEY=value`; single quotes are taken off too
/// (the format allows them; vmtoolsd keeps them). `None` when no field is
/// there or a double-quoted value is not closed (vmtoolsd then ignores the
/// file).
pub fn parse_os_release(text: &str) -> Option<OsRelease> {
    let mut r = OsRelease::default();
    let mut any = false;
    for line in text.lines() {
        for (i, field) in OS_RELEASE_FIELDS.iter().enumerate() {
            let Some(raw) = line
                .strip_prefix(field)
                .and_then(|rest| rest.strip_prefix('='))
            else {
                continue;
            };
            let value = if let Some(q) = raw.strip_prefix('"') {
                &q[..q.rfind('"')?]
            } else if let Some(q) = raw.strip_prefix('\'') {
                q.rfind('\'').map_or(q, |e| &q[..e])
            } else {
                raw
            };
            let mut value = value.to_owned();
            if value.len() > MAX_FIELD {
                let mut cut = MAX_FIELD;
                while !value.is_char_boundary(cut) {
                    cut -= 1;
                }
                value.truncate(cut);
            }
            if any {
                r.distro.push(' ');
            }
            r.distro.push_str(&value);
            r.fields[i] = Some(value);
            any = true;
        }
    }
    any.then_some(r)
}

/// The kernel's major and minor version from uname's release
/// (`6.1.0-18-amd64` → 6, 1), as `Hostinfo_OSVersion`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

/// vmtoolsd's names for a Linux it does not recognise
/// (`HostinfoDefaultLinux`): the full distro text and the short name.
fn default_linux(release: &str) -> (String, &'static str) {
    let (major, minor) = kernel_version(release);
    let (full, short) = match (major, minor) {
        (0..=1, _) | (2, 0..=3) => ("Other OSes", "other"),
        (2, 4..=5) => ("Other Linux 2.4.x kernel", "other24xlinux"),
        (2, _) => ("Other Linux 2.6.x kernel", "other26xlinux"),
        (3, _) => ("Other Linux 3.x kernel", "other3xlinux"),
        (4, _) => ("Other Linux 4.x kernel", "other4xlinux"),
        (5, _) => ("Other Linux 5.x kernel", "other5xlinux"),
        (6, _) => ("Other Linux 6.x kernel", "other6xlinux"),
        _ => {
            return (
                format!("Other Linux {major}.{minor} kernel"),
                "other5xlinux",
            )
        }
    };
    (full.to_owned(), short)
}

/// vmtoolsd's short name for a distribution (`HostinfoGetOSShortName`,
/// the common entries of its table, first match in its order): from the
/// lowercased distro text and the version (`VERSION_ID`, else the first
/// number in the text). `None`: not one it knows here.
pub fn short_name(distro: &str, version_id: Option<&str>) -> Option<String> {
    let lower = distro.to_lowercase();
    let version_text = version_id.or_else(|| {
        let at = distro.find(|c: char| c.is_ascii_digit())?;
        distro.get(at..)
    });
    let version: u32 = version_text
        .map(|v| {
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    let table: [(&str, &dyn Fn() -> String); 12] = [
        ("almalinux", &|| "almaLinux".into()),
        ("arch", &|| "Arch".into()),
        ("centos", &|| {
            if version < 6 {
                "centos".into()
            } else {
                format!("centos{version}")
            }
        }),
        ("debian", &|| {
            if version <= 4 {
                "debian4".into()
            } else {
                format!("debian{version}")
            }
        }),
        ("red hat", &|| {
            if !lower.contains("enterprise") {
                "redhat".into()
            } else if version == 0 {
                "rhel".into()
            } else {
                format!("rhel{version}")
            }
        }),
        ("fedora", &|| "Fedora".into()),
        ("flatcar", &|| "flatcar".into()),
        ("gentoo", &|| "Gentoo".into()),
        ("opensuse", &|| "opensuse".into()),
        ("rocky linux", &|| "rockyLinux".into()),
        ("ubuntu", &|| "ubuntu".into()),
        ("vmware photon", &|| "vmware-photon".into()),
    ];
    table
        .iter()
        .find(|(pattern, _)| lower.contains(pattern))
        .map(|(_, name)| name())
}

/// A detailed-data value as vmtoolsd writes it: `'` and `\` escaped with
/// a backslash, trailing white space dropped.
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.truncate(s.trim_end().len());
    s
}

/// The guest OS as vmtoolsd names it, from uname's `sysname`, `release`
/// and `machine` and the os-release file, if any.
pub fn os_info(sysname: &str, release: &str, machine: &str, os: Option<&OsRelease>) -> OsInfo {
    let (distro, short) = match os {
        Some(r) => {
            let short = short_name(&r.distro, r.get("VERSION_ID"))
                .unwrap_or_else(|| default_linux(release).1.to_owned());
            (r.distro.clone(), short)
        }
        None => {
            let (distro, short) = default_linux(release);
            (distro, short.to_owned())
        }
    };
    let bits64 = machine.contains("x86_64") || machine.contains("aarch64");
    let arm = machine.starts_with("aarch64") || machine.starts_with("arm");
    let field = |name: &str| os.and_then(|r| r.get(name)).unwrap_or("");
    // vmtoolsd's detailedDataFields, in their (alphabetical) order; empty
    // ones left out.
    let fields = [
        ("architecture", if arm { "Arm" } else { "X86" }),
        ("bitness", if bits64 { "64" } else { "32" }),
        ("buildNumber", field("BUILD_ID")),
        ("cpeString", field("CPE_NAME")),
        ("distroAddlVersion", field("VERSION")),
        (
            "distroName",
            os.and_then(|r| r.get("NAME")).unwrap_or(sysname),
        ),
        ("distroVersion", field("VERSION_ID")),
        ("familyName", sysname),
        ("kernelVersion", release),
        ("prettyName", field("PRETTY_NAME")),
    ];
    let detailed = fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}='{}'", escape(v)))
        .collect::<Vec<_>>()
        .join(" ");
    OsInfo {
        short_name: if bits64 { format!("{short}-64") } else { short },
        full_name: format!("{sysname} {release} {distro}"),
        detailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const DEBIAN: &str = "\
PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
NAME=\"Debian GNU/Linux\"
VERSION_ID=\"12\"
VERSION=\"12 (bookworm)\"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL=\"https://www.debian.org/\"
";

    #[test]
    fn debian_as_vmtoolsd_names_it() {
        let r = parse_os_release(DEBIAN).unwrap();
        assert_eq!(
            r.distro,
            "Debian GNU/Linux 12 (bookworm) Debian GNU/Linux 12 12 (bookworm)"
        );
        let os = os_info("Linux", "6.1.0-18-amd64", "x86_64", Some(&r));
        assert_eq!(os.short_name, "debian12-64");
        assert_eq!(
            os.full_name,
            "Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm) Debian GNU/Linux 12 12 (bookworm)"
        );
        assert_eq!(
            os.detailed,
            "architecture='X86' bitness='64' distroAddlVersion='12 (bookworm)' \
             distroName='Debian GNU/Linux' distroVersion='12' familyName='Linux' \
             kernelVersion='6.1.0-18-amd64' prettyName='Debian GNU/Linux 12 (bookworm)'"
        );
    }

    /// No os-release (the busybox test guest): vmtoolsd's generic names.
    #[test]
    fn no_os_release() {
        let os = os_info("Linux", "6.1.119", "x86_64", None);
        assert_eq!(os.short_name, "other6xlinux-64");
        assert_eq!(os.full_name, "Linux 6.1.119 Other Linux 6.x kernel");
        assert_eq!(
            os.detailed,
            "architecture='X86' bitness='64' distroName='Linux' familyName='Linux' \
             kernelVersion='6.1.119'"
        );
        assert_eq!(
            os_info("Linux", "7.2.0", "i686", None).short_name,
            "other5xlinux"
        );
        assert_eq!(
            os_info("Linux", "7.2.0", "i686", None).full_name,
            "Linux 7.2.0 Other Linux 7.2 kernel"
        );
        assert_eq!(default_linux("4.19.0").1, "other4xlinux");
        assert_eq!(default_linux("2.6.32").1, "other26xlinux");
    }

    #[test]
    fn short_names() {
        let cases = [
            (
                "Ubuntu 22.04.4 LTS Ubuntu 22.04",
                Some("22.04"),
                Some("ubuntu"),
            ),
            ("Fedora Linux 40", Some("40"), Some("Fedora")),
            ("CentOS Linux 7", Some("7"), Some("centos7")),
            ("Red Hat Enterprise Linux 9.4", Some("9.4"), Some("rhel9")),
            ("Red Hat Linux 9", None, Some("redhat")),
            ("Rocky Linux 9.3", Some("9.3"), Some("rockyLinux")),
            ("Debian GNU/Linux 3.1", None, Some("debian4")),
            ("Alpine Linux v3.19", Some("3.19.1"), None),
        ];
        for (distro, v, want) in cases {
            assert_eq!(short_name(distro, v).as_deref(), want, "{distro}");
        }
        let alpine = parse_os_release("NAME=\"Alpine Linux\"\nVERSION_ID=3.19.1\n").unwrap();
        assert_eq!(
            os_info("Linux", "6.6.0", "x86_64", Some(&alpine)).short_name,
            "other6xlinux-64"
        );
    }

    #[test]
    fn os_release_quirks() {
        // Single quotes, no quotes, an escape kept as vmtoolsd keeps it;
        // a value with a quote is escaped in the detailed data.
        let r =
            parse_os_release("NAME='Weird'\nVERSION_ID=1\nPRETTY_NAME=\"It's \\\"x\\\"\"").unwrap();
        assert_eq!(r.get("NAME"), Some("Weird"));
        assert_eq!(r.get("VERSION_ID"), Some("1"));
        assert_eq!(r.get("PRETTY_NAME"), Some("It's \\\"x\\\""));
        let os = os_info("Linux", "6.1", "x86_64", Some(&r));
        assert!(
            os.detailed.ends_with("prettyName='It\\'s \\\\\"x\\\\\"'"),
            "{}",
            os.detailed
        );
        assert_eq!(
            parse_os_release("ID=debian\n"),
            None,
            "no field vmtoolsd reads"
        );
        assert_eq!(parse_os_release("NAME=\"unclosed\n"), None);
        let long = format!("NAME={}\n", "x".repeat(5000));
        assert_eq!(
            parse_os_release(&long).unwrap().get("NAME").unwrap().len(),
            1023
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth0a1b"));
        assert!(glob_match("docker*", "docker0"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("e?h*", "eth10"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("eth0", "eth0") && !glob_match("eth0", "eth00"));
        let pats: Vec<String> = DEFAULT_EXCLUDE_NICS.iter().map(|s| s.to_string()).collect();
        assert!(excluded("veth12", &pats) && !excluded("ens3", &pats));
    }

    #[test]
    fn nicinfo_requests_keep_to_the_limits() {
        let addr = |i: u32| IpEntry {
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            prefix_len: 8,
        };
        let nics: Vec<Nic> = (0..20)
            .map(|i| Nic {
                name: format!("eth{i}"),
                mac: format_mac([2, 0, 0, 0, 0, i as u8]),
                addrs: (0..100)
                    .map(addr)
                    .chain([IpEntry {
                        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                        prefix_len: 128,
                    }])
                    .collect(),
            })
            .collect();
        let req = nicinfo_request(&nics).unwrap();
        assert!(req.starts_with(b"SetGuestInfo  10 "));
        assert!(req.len() <= guestrpc::proto::MAX_MESSAGE, "{}", req.len());
        let body = &req[b"SetGuestInfo  10 ".len()..];
        let got = guestrpc::guestinfo::nicinfo::decode_v3(body).unwrap();
        assert_eq!(got.len(), 16);
        assert_eq!(got[15].mac, "02:00:00:00:00:0f");
        assert_eq!(got[0].addrs.len(), MAX_ADDRS_PER_NIC);
        assert_eq!(nics[0].summary().split(' ').count(), 2 + 101);
        // An empty list is a report too (vmtoolsd sends one).
        let empty = nicinfo_request(&[]).unwrap();
        assert_eq!(
            guestrpc::guestinfo::nicinfo::decode_v3(&empty[17..]).unwrap(),
            []
        );
    }

    #[test]
    fn detailed_request() {
        let os = os_info("Linux", "6.1.0", "x86_64", None);
        let req = os.detailed_request();
        assert!(req.starts_with(b"SetGuestInfo  11 \x01\0\0\0other6xlinux-64\0"));
        let d = guestrpc::guestinfo::osinfo::decode_os_detailed(&req[17..]).unwrap();
        assert_eq!(d.full_name, os.full_name);
        assert_eq!(d.detailed, os.detailed);
    }
}
