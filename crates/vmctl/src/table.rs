//! The `vmctl status` table: OpenBSD's columns, then what the guest tools
//! report.

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

/// The table, header first, one line per VM in the order given, each line
/// ending in a newline. `NAME` and `HOSTNAME` are as wide as their longest
/// entry; nothing is ever cut.
pub fn format_table(vms: &[VmStatus]) -> String {
    let name_w = vms.iter().map(|v| v.name.len()).fold(4, usize::max);
    let host_w = vms
        .iter()
        .map(|v| v.hostname.as_deref().map_or(1, str::len))
        .fold(8, usize::max);
    let mut out = String::new();
    let mut row = |cols: [&str; 11]| {
        let [id, pid, vcpus, maxmem, curmem, tty, owner, state, name, host, ip] = cols;
        out.push_str(&format!(
            "{id:>5} {pid:>5} {vcpus:>5} {maxmem:>7} {curmem:>7} {tty:>7} {owner:>12} {state:>8}   {name:<name_w$} {host:<host_w$} {ip}"
        ));
        // The last column may be a lone "-"; never leave trailing blanks.
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    row([
        "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME", "HOSTNAME", "IP",
    ]);
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
        row([
            &vm.id.to_string(),
            &pid,
            &vm.vcpus.to_string(),
            &mem(vm.maxmem),
            &curmem,
            tty,
            &vm.owner,
            state_name(vm.state),
            &vm.name,
            vm.hostname.as_deref().unwrap_or("-"),
            vm.ip.as_deref().unwrap_or("-"),
        ]);
    }
    out
}

/// The disks, CD-ROM and network interfaces of each VM, one line each:
/// `disk<N> <format> <path>` (format `-` while not known), `cdrom <path>`,
/// and `if<N> <tap> <lladdr>` followed by `switch <name> <bridge>`,
/// `local <host address/len> guest <address>` and `locked` as they apply.
pub fn format_devices(vms: &[VmStatus]) -> String {
    let mut out = String::new();
    for v in vms {
        for (i, d) in v.disks.iter().enumerate() {
            let f = d.format.as_deref().unwrap_or("-");
            out.push_str(&format!("disk{i} {f} {}\n", clean(&d.path)));
        }
        if let Some(c) = &v.cdrom {
            out.push_str(&format!("cdrom {}\n", clean(c)));
        }
        for (i, n) in v.interfaces.iter().enumerate() {
            let mut line = format!("if{i} {} {}", clean(&n.tap), clean(&n.lladdr));
            if let (Some(sw), Some(br)) = (&n.switch, &n.bridge) {
                line.push_str(&format!(" switch {} {}", clean(sw), clean(br)));
            }
            if let (Some(host), Some(guest)) = (&n.local, &n.guest) {
                line.push_str(&format!(" local {} guest {}", clean(host), clean(guest)));
            }
            if n.locked {
                line.push_str(" locked");
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Control characters in a path never reach the terminal as such.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
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
            "disk0 qcow2 /var/vm/a.qcow2\ndisk1 - /tmp/x?[2J.img\ncdrom /iso/install.iso\n\
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
        }
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
