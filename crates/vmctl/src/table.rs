//! The `vmctl status` table: OpenBSD's columns, then what the guest tools
//! report.
//!
//! Every string in it comes from vmd, and some from further away: the
//! host name is whatever the guest's tools say, paths are whatever a user
//! gave. Each is printed through [`api::text::escape`], so no escape
//! sequence reaches the terminal and no newline starts a line of its own.

use std::borrow::Cow;

use api::text::escape;
use api::v1::{VmState, VmStatus};

use crate::size::fmt_scaled;

pub fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Stopped => "stopped",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::Stopping => "stopping",
        VmState::Disabled => "disabled",
    }
}

/// Whether the VM has a process (what `status -r` and `stop -a` look at).
pub fn is_running(vm: &VmStatus) -> bool {
    !matches!(vm.state, VmState::Stopped | VmState::Disabled)
}

/// The width of `s` on a terminal, near enough: its characters (all
/// printable, once escaped).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` right-aligned in `w` columns.
fn push_right(out: &mut String, s: &str, w: usize) {
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(width(s))));
    out.push_str(s);
}

/// `s` left-aligned in `w` columns.
fn push_left(out: &mut String, s: &str, w: usize) {
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(width(s))));
}

/// The widths of the columns before NAME, right-aligned as OpenBSD's.
const RIGHT: [usize; 8] = [5, 5, 5, 7, 7, 7, 12, 8];

/// The table, header first, one line per VM in the order given, each line
/// ending in a newline. `NAME` and `HOSTNAME` are as wide as their longest
/// entry; nothing is ever cut, however long (the padding is done here:
/// `format!`'s widths stop at 65535 and panic beyond). Strings from vmd are
/// escaped ([`api::text::escape`]).
pub fn format_table(vms: &[VmStatus]) -> String {
    let mut rows: Vec<[Cow<str>; 11]> = vec![[
        "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME", "HOSTNAME", "IP",
    ]
    .map(Cow::Borrowed)];
    for vm in vms {
        let mem = |n: u64| {
            if n == 0 {
                "-".to_string()
            } else {
                fmt_scaled(n)
            }
        };
        let running = is_running(vm);
        let pid = vm.pid.map_or("-".into(), |p| p.to_string());
        let tty = vm
            .tty
            .as_deref()
            .map(|t| t.strip_prefix("/dev/").unwrap_or(t))
            .unwrap_or("-");
        let curmem = if running { mem(vm.curmem) } else { "-".into() };
        rows.push([
            vm.id.to_string().into(),
            pid.into(),
            vm.vcpus.to_string().into(),
            mem(vm.maxmem).into(),
            curmem.into(),
            escape(tty),
            escape(&vm.owner),
            state_name(vm.state).into(),
            escape(&vm.name),
            escape(vm.hostname.as_deref().unwrap_or("-")),
            escape(vm.ip.as_deref().unwrap_or("-")),
        ]);
    }
    let name_w = rows.iter().map(|r| width(&r[8])).fold(4, usize::max);
    let host_w = rows.iter().map(|r| width(&r[9])).fold(8, usize::max);
    let mut out = String::new();
    for row in &rows {
        for (i, w) in RIGHT.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            push_right(&mut out, &row[i], *w);
        }
        out.push_str("   ");
        push_left(&mut out, &row[8], name_w);
        out.push(' ');
        push_left(&mut out, &row[9], host_w);
        out.push(' ');
        out.push_str(&row[10]);
        // The last column may be a lone "-"; never leave trailing blanks.
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

/// The disks, CD-ROM and network interfaces of each VM, one line each:
/// `disk<N> <format> <path>` (format `-` while not known), `cdrom <path>`,
/// and `if<N> <tap> <lladdr>` followed by `switch <name> <bridge>`,
/// `local <host address/len> guest <address>` and `locked` as they apply;
/// then what the guest's tools report: `os <name>`, `uptime <time>` and
/// `nic<N> <mac> <address/len>...`. Paths, names and whatever the guest
/// said are escaped ([`api::text::escape`]).
pub fn format_devices(vms: &[VmStatus]) -> String {
    let mut out = String::new();
    for v in vms {
        for (i, d) in v.disks.iter().enumerate() {
            let f = escape(d.format.as_deref().unwrap_or("-"));
            out.push_str(&format!("disk{i} {f} {}\n", escape(&d.path)));
        }
        if let Some(c) = &v.cdrom {
            out.push_str(&format!("cdrom {}\n", escape(c)));
        }
        for (i, n) in v.interfaces.iter().enumerate() {
            let mut line = format!("if{i} {} {}", escape(&n.tap), escape(&n.lladdr));
            if let (Some(sw), Some(br)) = (&n.switch, &n.bridge) {
                line.push_str(&format!(" switch {} {}", escape(sw), escape(br)));
            }
            if let (Some(host), Some(guest)) = (&n.local, &n.guest) {
                line.push_str(&format!(" local {} guest {}", escape(host), escape(guest)));
            }
            if n.locked {
                line.push_str(" locked");
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(os) = &v.os {
            out.push_str(&format!("os {}\n", escape(os)));
        }
        if let Some(up) = v.uptime_secs {
            out.push_str(&format!("uptime {}\n", fmt_uptime(up)));
        }
        for (i, n) in v.nics.iter().enumerate() {
            let mut line = format!("nic{i} {}", escape(&n.mac));
            for a in &n.addresses {
                line.push(' ');
                line.push_str(&escape(a));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Seconds as uptime(1) shows them: `[D day[s], ]HH:MM:SS`.
fn fmt_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match d {
        0 => format!("{h:02}:{m:02}:{s:02}"),
        1 => format!("1 day, {h:02}:{m:02}:{s:02}"),
        d => format!("{d} days, {h:02}:{m:02}:{s:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_listed_one_per_line() {
        let mut v = vm(1, "a", VmState::Running);
        v.disks = vec![
            api::v1::DiskStatus {
                path: "/var/vm/a.qcow2".into(),
                format: Some("qcow2".into()),
            },
            api::v1::DiskStatus {
                path: "/tmp/x\x1b[2J.img".into(),
                format: None,
            },
        ];
        v.cdrom = Some("/iso/install.iso".into());
        v.interfaces = vec![
            api::v1::InterfaceStatus {
                tap: "tap0".into(),
                switch: None,
                bridge: None,
                lladdr: "fe:e1:ba:00:00:01".into(),
                locked: false,
                local: Some("100.64.1.2/31".into()),
                guest: Some("100.64.1.3".into()),
            },
            api::v1::InterfaceStatus {
                tap: "tap1".into(),
                switch: Some("uplink".into()),
                bridge: Some("br0".into()),
                lladdr: "fe:e1:ba:00:00:02".into(),
                locked: true,
                local: None,
                guest: None,
            },
        ];
        assert_eq!(
            format_devices(&[v]),
            "disk0 qcow2 /var/vm/a.qcow2\ndisk1 - /tmp/x\\x1b[2J.img\ncdrom /iso/install.iso\n\
             if0 tap0 fe:e1:ba:00:00:01 local 100.64.1.2/31 guest 100.64.1.3\n\
             if1 tap1 fe:e1:ba:00:00:02 switch uplink br0 locked\n"
        );
    }

    fn vm(id: u32, name: &str, state: VmState) -> VmStatus {
        VmStatus {
            id,
            name: name.into(),
            pid: None,
            vcpus: 1,
            maxmem: 512 << 20,
            curmem: 0,
            tty: None,
            owner: "root".into(),
            state,
            hostname: None,
            ip: None,
            tools: false,
            last_exit: None,
            disks: Vec::new(),
            cdrom: None,
            interfaces: Vec::new(),
            os: None,
            uptime_secs: None,
            nics: Vec::new(),
        }
    }

    #[test]
    fn what_the_guest_reports_follows_the_devices() {
        let mut v = vm(1, "a", VmState::Running);
        v.os = Some("Debian GNU/Linux 12 (bookworm)\x1b[2J".into());
        v.uptime_secs = Some(86400 + 3600 + 61);
        v.nics = vec![
            api::v1::GuestNic {
                mac: "fe:e1:ba:00:00:01".into(),
                addresses: vec!["100.64.1.3/31".into(), "fe80::1/64".into()],
            },
            api::v1::GuestNic {
                mac: "00:00:00:00:00:00".into(),
                addresses: Vec::new(),
            },
        ];
        assert_eq!(
            format_devices(&[v.clone()]),
            "os Debian GNU/Linux 12 (bookworm)\\x1b[2J\nuptime 1 day, 01:01:01\n\
             nic0 fe:e1:ba:00:00:01 100.64.1.3/31 fe80::1/64\nnic1 00:00:00:00:00:00\n"
        );
        assert_eq!(fmt_uptime(59), "00:00:59");
        assert_eq!(fmt_uptime(3 * 86400 + 7200), "3 days, 02:00:00");
    }

    #[test]
    fn header_is_openbsds_plus_tools() {
        assert_eq!(
            format_table(&[]),
            "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE   NAME HOSTNAME IP\n"
        );
    }

    #[test]
    fn rows() {
        let mut web = vm(1, "web1", VmState::Running);
        web.pid = Some(4242);
        web.vcpus = 2;
        web.maxmem = 1 << 30;
        web.curmem = 26 * (1 << 20) + (1 << 19);
        web.tty = Some("/dev/pts/3".into());
        web.hostname = Some("web1.example.org".into());
        web.ip = Some("100.64.1.3".into());
        web.tools = true;
        let db = vm(2, "db", VmState::Stopped);
        let mut p = vm(3, "paused-one", VmState::Paused);
        p.pid = Some(17);
        p.curmem = 300 << 20;
        p.tty = Some("/dev/pts/12".into());
        p.owner = "alice:staff".into();
        assert_eq!(
            format_table(&[web, db, p]),
            "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE   NAME       HOSTNAME         IP
    1  4242     2    1.0G   26.5M   pts/3         root  running   web1       web1.example.org 100.64.1.3
    2     -     1    512M       -       -         root  stopped   db         -                -
    3    17     1    512M    300M  pts/12  alice:staff   paused   paused-one -                -
"
        );
    }

    #[test]
    fn what_vmd_reports_is_escaped() {
        let mut a = vm(1, "web1", VmState::Running);
        a.hostname = Some("\x1b]0;pwned\x07\x1b[31mevil\nforged line".into());
        a.owner = "a\u{202e}b".into();
        a.tty = Some("/dev/pts/\r1".into());
        let t = format_table(&[a]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(
            t.contains(" \\x1b]0;pwned\\x07\\x1b[31mevil\\nforged line "),
            "{t}"
        );
        assert!(t.contains(" a\\u{202e}b "), "{t}");
        assert!(t.contains(" pts/\\r1 "), "{t}");
        // The columns after an escaped entry still line up.
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find(" IP"), lines[1].rfind(" -"), "{t}");
    }

    #[test]
    fn huge_fields_do_not_panic() {
        // Beyond format!'s widest width (65535), which panics.
        let mut a = vm(1, &"n".repeat(70_000), VmState::Running);
        a.hostname = Some("h".repeat(70_000));
        let b = vm(2, "b", VmState::Stopped);
        let t = format_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let name_at = lines[0].find("NAME").unwrap();
        let host_at = lines[0].find("HOSTNAME").unwrap();
        assert_eq!(host_at, name_at + 70_001);
        assert_eq!(&lines[1][host_at..host_at + 70_000], "h".repeat(70_000));
        assert_eq!(&lines[2][name_at..name_at + 2], "b ");
        assert_eq!(&lines[2][host_at..host_at + 2], "- ");
        assert_eq!(
            lines[2].len(),
            host_at + 70_000 + 2,
            "{:?}",
            &lines[2][host_at..]
        );
    }

    #[test]
    fn long_and_missing_fields_never_cut() {
        let mut a = vm(12345, "a-very-long-virtual-machine-name", VmState::Disabled);
        a.maxmem = 0;
        a.owner = "someone-with-a-long-name:group".into();
        let mut b = vm(7, "b", VmState::Starting);
        b.pid = Some(1234567);
        b.tty = Some("pts/1234567".into());
        b.ip = Some("192.0.2.1".into());
        assert_eq!(
            format_table(&[a, b]),
            "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE   NAME                             HOSTNAME IP
12345     -     1       -       -       - someone-with-a-long-name:group disabled   a-very-long-virtual-machine-name -        -
    7 1234567     1    512M       - pts/1234567         root starting   b                                -        192.0.2.1
"
        );
    }
}
