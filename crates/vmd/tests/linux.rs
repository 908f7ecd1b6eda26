//! Real Linux under a real vmd: the Linux test fixture (crates/linux-fixture)
//! booted from a vm.conf, its console read through `vmctl console`, its
//! power handled through its own means, and Debian's unmodified
//! open-vm-tools talking to our backdoor.
//!
//! Each test is one boot (the expensive part: about a minute of emulated
//! kernel code on this project's PVM hosts) with several checks batched
//! into it. The guest's `/init` prints `VMD-TEST <what> ...` markers on the
//! console; every wait is bounded, and a guest that stops or hangs is
//! reported with its last console lines and vmd's log (where vmm reports a
//! crash with the vCPU registers).
//!
//! They are part of the workspace's tests (`.ci/run` builds the kernel
//! first, so a failed build is reported as such); `.ci/linux-fixture` runs
//! only them. They passed ten runs in a row before joining (2026-12-07).

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use linux_fixture::images;
use linux_fixture::kernel::Kernel;

/// How long a boot may take to reach `/init`: ~45 s on an idle 2-core
/// PVM host, several times that when every test boots at once.
const BOOT: Duration = Duration::from_secs(400);
/// A step after boot: a few forks and execs of ~1 s each.
const STEP: Duration = Duration::from_secs(120);

/// One VM's console, as `vmctl console` shows it on a terminal of ours.
struct Console<'a> {
    d: &'a TestDaemon,
    name: String,
    pty: Pty,
    client: Option<Child>,
    seen: String,
    /// How much of `seen` earlier waits consumed.
    pos: usize,
}

impl<'a> Console<'a> {
    fn attach(d: &'a TestDaemon, name: &str) -> Console<'a> {
        let pty = Pty::open();
        let mut cmd = d.vmctl_cmd();
        {
            let slave = pty.slave();
            cmd.args(["console", name])
                .stdin(stdio_of(&slave))
                .stdout(stdio_of(&slave))
                .stderr(Stdio::null());
        }
        let client = cmd.spawn().expect("spawn vmctl console");
        drop(cmd);
        Console {
            d,
            name: name.to_owned(),
            pty,
            client: Some(client),
            seen: String::new(),
            pos: 0,
        }
    }

    /// Waits for a console line containing `needle` after what earlier
    /// waits saw; returns it. Fails the test with the console's tail and
    /// vmd's log after `timeout`.
    fn wait(&mut self, needle: &str, timeout: Duration) -> String {
        let start = self.pos;
        // Whole lines only: the text after the last newline may be half a line.
        let found = read_until(&self.pty.master, &mut self.seen, timeout, |s| {
            s[start..]
                .split('\n')
                .rev()
                .skip(1)
                .any(|l| l.contains(needle))
        });
        if !found {
            self.fail(&format!(
                "no console line with {needle:?} within {timeout:?}"
            ));
        }
        let mut at = start;
        for l in self.seen[start..].split_inclusive('\n') {
            at += l.len();
            if l.ends_with('\n') && l.contains(needle) {
                self.pos = at;
                return l.trim_end_matches(['\r', '\n']).to_owned();
            }
        }
        unreachable!("read_until saw the line")
    }

    /// What the console showed until now (without waiting).
    fn seen_so_far(&mut self) -> &str {
        read_until(
            &self.pty.master,
            &mut self.seen,
            Duration::from_millis(10),
            |_| false,
        );
        &self.seen
    }

    /// Types `line` and Enter on the console.
    fn type_line(&self, line: &str) {
        self.pty.write(format!("{line}\r").as_bytes());
    }

    /// Fails the test with the console's last lines and vmd's log. A VM
    /// still running is powered off first, so that the log says where its
    /// vCPUs were (vmm logs their registers at a forced power-off).
    fn fail(&self, why: &str) -> ! {
        if self.d.vm(&self.name).state == VmState::Running {
            let _ = self.d.vmctl(&["stop", "-f", "-w", &self.name]);
        }
        let tail: Vec<&str> = self.seen.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "vm {}: {why}\n--- last console lines\n{}\n--- vmd log\n{}",
            self.name,
            tail.join("\n"),
            self.d.log()
        );
    }
}

impl Drop for Console<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A vm.conf block booting the fixture kernel with `initrd`. The grace
/// period covers vmtoolsd's power script, which forks a few dozen times
/// (~45 s of a slow emulated guest).
fn vm_block(name: &str, kernel: &Kernel, initrd: &std::path::Path) -> String {
    vm_block_with(name, kernel, initrd, "", "")
}

/// [`vm_block`] with more kernel arguments and more vm.conf lines.
fn vm_block_with(
    name: &str,
    kernel: &Kernel,
    initrd: &std::path::Path,
    cmdline: &str,
    lines: &str,
) -> String {
    format!(
        "vm \"{name}\" {{\n\tdisable\n\tkernel \"{}\"\n\tinitrd \"{}\"\n\tcmdline \"{}\"\n\tmemory 128M\n\tgrace 240\n{lines}{}}}\n",
        kernel.image.display(),
        initrd.display(),
        kernel.cmdline(cmdline),
        kernel
            .vm_conf_cpu()
            .lines()
            .map(|l| format!("\t{l}\n"))
            .collect::<String>()
    )
}

fn kvm_and_kernel() -> Option<Kernel> {
    if !kvm_or_skip() {
        return None;
    }
    Some(Kernel::required())
}

/// Boots Linux from a vm.conf, reads its console through `vmctl console`,
/// types into it, lets the guest reboot itself in place and then power
/// itself off: the VM process survives the reboot (same pid, the kernel
/// starts again) and ends with the power-off. Its disk runs on INTx
/// (`pci=nomsi`: the IOAPIC pin the ACPI _PRT names) and reads the same
/// after the reboot reset the device.
#[test]
fn linux_boots_reboots_in_place_and_powers_off() {
    let Some(kernel) = kvm_and_kernel() else {
        return;
    };
    let init = "\
hostname fixture
echo \"VMD-TEST init uptime=$(cut -d' ' -f1 /proc/uptime)\"
echo \"VMD-TEST cpu $(grep -m1 vendor_id /proc/cpuinfo)\"
if dmesg | grep -q -e 'Can.t read CTR' -e 'i8042.*failed'; then echo 'VMD-TEST i8042 failed'; else echo 'VMD-TEST i8042 ok'; fi
echo \"VMD-TEST disk $(dd if=/dev/vda bs=4096 count=1 2>/dev/null | md5sum) intx=$(grep virtio /proc/interrupts | grep -c IO-APIC)\"
echo \"VMD-TEST hwrng $(cat /sys/class/misc/hw_random/rng_current) $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n') $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n')\"
echo 'VMD-TEST ready: type reboot or poweroff'
read cmd
echo \"VMD-TEST got $cmd\"
case \"$cmd\" in
reboot) reboot -f ;;
poweroff) poweroff -f ;;
esac
echo 'VMD-TEST unknown command'
sleep 1000
";
    let image = images::busybox(init).expect("busybox image");
    let initrd = images::write("power", &image).expect("write image");
    let dir = fresh_dir();
    let disk = dir.join("disk.img");
    let data = pattern(1 << 20, 7);
    std::fs::write(&disk, &data).unwrap();
    let want_disk = format!("{}  - intx=", md5_hex(&data[..4096]));
    let conf = vm_block_with(
        "lin",
        &kernel,
        &initrd,
        "pci=nomsi",
        &format!("\tdisk \"{}\"\n", disk.display()),
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in(dir);
    let start = Instant::now();
    d.vmctl_ok(&["start", "lin"]);
    let mut con = Console::attach(&d, "lin");
    let pid = d.vm("lin").pid.expect("a pid");

    let init_line = con.wait("VMD-TEST init", BOOT);
    eprintln!("lin: /init after {:?} ({init_line})", start.elapsed());
    let cpu = con.wait("VMD-TEST cpu", STEP);
    assert!(
        cpu.contains("GenuineIntel") || kernel.kind == linux_fixture::kernel::Kind::Stock,
        "{cpu}"
    );
    let i8042 = con.wait("VMD-TEST i8042", STEP);
    assert!(i8042.ends_with("ok"), "Linux's i8042 probe failed: {i8042}");
    let check_disk = |line: String| {
        assert!(
            line.contains(&want_disk) && !line.ends_with("intx=0"),
            "disk over INTx: {line} (want {want_disk}N, N > 0)"
        );
    };
    check_disk(con.wait("VMD-TEST disk", STEP));
    // vmd gives every VM a virtio-rng; Linux's stock driver reads it.
    let rng = con.wait("VMD-TEST hwrng", STEP);
    let words: Vec<&str> = rng.split_whitespace().collect();
    assert!(
        words.len() == 5
            && words[2].starts_with("virtio_rng")
            && words[3..].iter().all(|w| w.len() == 64)
            && words[3] != words[4],
        "/dev/hwrng is not our virtio-rng giving 32 fresh bytes a read: {rng}"
    );
    con.wait("VMD-TEST ready", STEP);
    con.type_line("reboot");
    con.wait("VMD-TEST got reboot", STEP);

    // The guest resets; the VM process stays and boots the kernel again.
    con.wait("VMD-TEST init", BOOT);
    assert_eq!(
        d.vm("lin").pid,
        Some(pid),
        "reboot in place: same VM process"
    );
    check_disk(con.wait("VMD-TEST disk", STEP));
    con.wait("VMD-TEST ready", STEP);
    con.type_line("poweroff");
    con.wait("VMD-TEST got poweroff", STEP);
    let vm = d.wait_vm("lin", "ended after its power-off", STEP, |v| {
        v.pid.is_none() && v.state != VmState::Running
    });
    assert_eq!(vm.last_exit.as_deref(), Some("powered off"), "{vm:#?}");
    assert!(!process_exists(pid), "vmm {pid} outlived its VM");
}

/// `vmctl stop -f` ends a Linux guest at once, whatever it is doing.
#[test]
fn linux_is_stopped_by_force() {
    let Some(kernel) = kvm_and_kernel() else {
        return;
    };
    let image = images::busybox("echo 'VMD-TEST init'\nsleep 1000\n").expect("busybox image");
    let initrd = images::write("force", &image).expect("write image");
    let d = TestDaemon::start(&vm_block("lin", &kernel, &initrd));
    d.vmctl_ok(&["start", "lin"]);
    let mut con = Console::attach(&d, "lin");
    let pid = d.vm("lin").pid.expect("a pid");
    // Mid-boot: the kernel is running emulated code (its console is quiet
    // until /init; a few seconds in, it is setting up memory).
    std::thread::sleep(Duration::from_secs(5));
    let vm = d.vm("lin");
    assert_eq!(vm.state, VmState::Running, "{vm:#?}");
    assert!(
        !con.seen_so_far().contains("VMD-TEST init"),
        "booted too fast to test"
    );
    let t = Instant::now();
    d.vmctl_ok(&["stop", "-f", "-w", "lin"]);
    let took = t.elapsed();
    let vm = d.vm("lin");
    assert!(vm.pid.is_none() && vm.state != VmState::Running, "{vm:#?}");
    assert_eq!(
        vm.last_exit.as_deref(),
        Some("powered off by the host"),
        "{vm:#?}"
    );
    assert!(!process_exists(pid), "vmm {pid} outlived stop -f");
    assert!(took < Duration::from_secs(10), "stop -f took {took:?}");
}

/// Debian's unmodified open-vm-tools against our backdoor, in real Linux
/// on a local interface (vmd in a network namespace of the test's): the
/// stock virtio-net driver comes up, busybox `udhcpc` gets the address
/// our DHCP server gives, the host pings the guest and the guest the host;
/// vmware-checkvm sees VMware version 6; vmware-rpctool's guestinfo round
/// trips both ways through vmd's API; vmtoolsd reports the guest's
/// hostname and that DHCP address, and `vmctl stop` halts the guest
/// through it.
#[test]
fn open_vm_tools_talk_to_our_backdoor() {
    let Some(kernel) = kvm_and_kernel() else {
        return;
    };
    let Some(ns) = Netns::new("linux") else {
        return;
    };
    // ioperm-exec grants the backdoor ports (this host lacks
    // kvm.enable_vmware_backdoor) and execs the tool unchanged.
    let init = "\
hostname fixture-guest
echo \"VMD-TEST init uptime=$(cut -d' ' -f1 /proc/uptime)\"
cat > /tmp/dhcp.sh <<'SCRIPT'
#!/bin/sh
case \"$1\" in
bound|renew)
    ip addr add \"$ip/$mask\" dev \"$interface\"
    [ -n \"$router\" ] && ip route add default via \"$router\"
    echo \"VMD-TEST dhcp ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname lease=$lease\" > /dev/console
    ;;
esac
SCRIPT
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -n -q -f -t 20 -T 3 -s /tmp/dhcp.sh > /dev/null 2>&1
echo \"VMD-TEST udhcpc rc=$?\"
ping -c 1 -W 30 100.64.1.2 > /dev/null 2>&1
echo \"VMD-TEST ping-host rc=$?\"
out=$(ioperm-exec vmware-checkvm 2>&1); rc=$?
echo \"VMD-TEST checkvm rc=$rc $out\"
ioperm-exec vmware-rpctool 'info-set guestinfo.fromguest hello from the guest'
echo \"VMD-TEST info-set rc=$?\"
i=0
while [ $i -lt 300 ]; do
    v=$(ioperm-exec vmware-rpctool 'info-get guestinfo.fromhost' 2>/dev/null) && break
    i=$((i + 1))
    sleep 1
done
echo \"VMD-TEST info-get value=$v\"
ioperm-exec vmtoolsd > /tmp/vmtoolsd.log 2>&1 &
echo \"VMD-TEST vmtoolsd pid=$!\"
sleep 600
echo 'VMD-TEST still running'
cat /tmp/vmtoolsd.log
";
    let image = images::guest_tools(init).expect("open-vm-tools image");
    eprintln!("tools image: {} bytes", image.size());
    let initrd = images::write("tools", &image).expect("write image");
    let dir = fresh_dir();
    std::fs::write(
        dir.join("vm.conf"),
        vm_block_with("lin", &kernel, &initrd, "", "\tlocal interface\n"),
    )
    .unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    let start = Instant::now();
    d.vmctl_ok(&["start", "lin"]);
    let mut con = Console::attach(&d, "lin");
    let init_line = con.wait("VMD-TEST init", BOOT);
    eprintln!("lin: /init after {:?} ({init_line})", start.elapsed());

    // VM 1's local interface: the host side is 100.64.1.2/31.
    let dhcp = con.wait("VMD-TEST dhcp", STEP);
    assert_eq!(
        dhcp,
        "VMD-TEST dhcp ip=100.64.1.3 mask=31 router=100.64.1.2 dns=100.64.1.2 hostname=lin lease=4294967295"
    );
    let rc = con.wait("VMD-TEST udhcpc", STEP);
    assert!(rc.ends_with("rc=0"), "{rc}");
    let ping = con.wait("VMD-TEST ping-host", STEP);
    assert!(ping.ends_with("rc=0"), "{ping}");
    let mut ping = std::process::Command::new("ip");
    ping.args([
        "netns",
        "exec",
        ns.name(),
        "ping",
        "-c",
        "1",
        "-W",
        "30",
        "100.64.1.3",
    ]);
    let o = run_bounded(ping, STEP);
    assert!(o.ok(), "the host pinging the guest: {o:?}");

    let checkvm = con.wait("VMD-TEST checkvm", STEP);
    assert!(
        checkvm.contains("rc=0") && checkvm.contains("version 6"),
        "vmware-checkvm: {checkvm}"
    );

    let set = con.wait("VMD-TEST info-set", STEP);
    assert!(set.ends_with("rc=0"), "{set}");
    let o = d.vmctl_ok(&["guestinfo", "lin", "fromguest"]);
    assert_eq!(o.stdout.trim_end(), "hello from the guest", "{o:?}");

    d.vmctl_ok(&["guestinfo", "lin", "fromhost", "set by the host"]);
    let got = con.wait("VMD-TEST info-get", STEP);
    assert!(got.ends_with("value=set by the host"), "{got}");

    con.wait("VMD-TEST vmtoolsd", STEP);
    // A graceful stop: OS_Halt to vmtoolsd, which runs the package's
    // poweroff-vm-default script, acknowledges, and runs `shutdown -h now`.
    reported_then_halted_by_tools(&d, "vmtoolsd", "fixture-guest");
    con.wait("reboot: Power down", STEP);
}

/// Bytes that are not zero and differ from sector to sector.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// md5 as busybox's md5sum prints it.
fn md5_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Linux's stock virtio-blk driver on our virtio-pci disks, with MSI-X
/// through KVM irqfds: it sees both disks' sizes and serials, reads what
/// the host put in one (a qcow2 overlay made by qemu-img over a raw base),
/// and copies it into the other with a flush; the host finds the copy in
/// the image file after the guest powered off. Its stock virtio-scsi and
/// sr drivers find our CD-ROM and mount its ISO 9660 file system.
#[test]
fn linux_virtio_blk_reads_and_writes_our_disks() {
    let Some(kernel) = kvm_and_kernel() else {
        return;
    };
    let dir = fresh_dir();
    let (base, a, b) = (dir.join("base.img"), dir.join("a.qcow2"), dir.join("b.img"));
    let data = pattern(4 << 20, 42);
    std::fs::write(&base, &data).unwrap();
    let o = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&a)
        .output()
        .expect("qemu-img (Debian's qemu-utils)");
    assert!(o.status.success(), "{o:?}");
    std::fs::File::create(&b).unwrap().set_len(8 << 20).unwrap();
    let iso_dir = dir.join("iso");
    std::fs::create_dir(&iso_dir).unwrap();
    std::fs::write(iso_dir.join("hello.txt"), "hello from the cdrom\n").unwrap();
    let iso = dir.join("cd.iso");
    let o = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-o"])
        .arg(&iso)
        .arg(&iso_dir)
        .output()
        .expect("xorriso (Debian's xorriso)");
    assert!(o.status.success(), "{o:?}");
    let init = "\
echo \"VMD-TEST init uptime=$(cut -d' ' -f1 /proc/uptime)\"
echo \"VMD-TEST sizes $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)\"
echo \"VMD-TEST serial $(cat /sys/block/vda/serial)\"
echo \"VMD-TEST sum $(dd if=/dev/vda bs=65536 count=1 2>/dev/null | md5sum)\"
dd if=/dev/vda of=/dev/vdb bs=65536 count=1 seek=16 conv=fsync 2>/dev/null
echo \"VMD-TEST copy rc=$?\"
grep virtio /proc/interrupts | tr -s ' ' | sed 's/^/VMD-TEST irq /'
mkdir -p /mnt
mount -t iso9660 -o ro /dev/sr0 /mnt
echo \"VMD-TEST cdrom rc=$? $(cat /mnt/hello.txt)\"
umount /mnt
echo 'VMD-TEST done'
poweroff -f
";
    let image = images::busybox(init).expect("busybox image");
    let initrd = images::write("blk", &image).expect("write image");
    let disks = format!(
        "\tdisk \"{}\"\n\tdisk \"{}\"\n\tcdrom \"{}\"\n",
        a.display(),
        b.display(),
        iso.display()
    );
    let conf = vm_block_with("lin", &kernel, &initrd, "", &disks);
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in(dir.clone());
    d.vmctl_ok(&["start", "lin"]);
    let mut con = Console::attach(&d, "lin");
    con.wait("VMD-TEST init", BOOT);
    let sizes = con.wait("VMD-TEST sizes", STEP);
    assert!(sizes.ends_with("sizes 8192 16384"), "{sizes}");
    let serial = con.wait("VMD-TEST serial", STEP);
    assert!(serial.contains("serial vmd-"), "{serial}");
    let sum = con.wait("VMD-TEST sum", STEP);
    assert!(sum.contains(&md5_hex(&data[..65536])), "{sum}");
    let copy = con.wait("VMD-TEST copy", STEP);
    assert!(copy.ends_with("rc=0"), "{copy}");
    let irq = con.wait("VMD-TEST irq", STEP);
    assert!(
        irq.contains("PCI-MSI"),
        "virtio interrupts are not MSI-X: {irq}"
    );
    let cd = con.wait("VMD-TEST cdrom", STEP);
    assert!(cd.ends_with("rc=0 hello from the cdrom"), "{cd}");
    con.wait("VMD-TEST done", STEP);
    d.wait_vm("lin", "ended after its power-off", STEP, |v| {
        v.pid.is_none() && v.state != VmState::Running
    });
    assert!(
        std::fs::read(&base).unwrap() == data,
        "the base image changed"
    );
    let copied = std::fs::read(&b).unwrap();
    assert!(
        copied[1 << 20..(1 << 20) + 65536] == data[..65536],
        "the guest's copy is not in the image"
    );
}

/// Our own guest tools (`vmt`, issue 11) in real Linux under vmd, on a
/// local interface (vmd in a network namespace of the test's), the guest
/// run by busybox's init as a small distribution would be. `vmt checkvm`
/// finds the backdoor (through GETVERSION: user-space CPUID here shows
/// the host machine's leaves), `vmt info set` reaches vmd's API, `vmt info
/// get` reads what `vmctl guestinfo` set, and a missing key and an unknown
/// request fail with the host's words. Then the daemon, started by its
/// init script (crates/vmt/dist/vmt.init): it detaches, logs to syslog
/// (busybox syslogd, writing to the console), `vmt status` shows the
/// channel open and what it reported; `vmctl status` shows the hostname
/// and DHCP address, and `vmctl stop` halts the guest through it ("halted
/// by guest tools") the way busybox init expects: SIGUSR2 to PID 1, which
/// runs the inittab's shutdown action (the init script's stop) and powers
/// off. The binary is the static build (`cargo static`), copied alone:
/// the image has no shared libraries.
#[test]
fn vmt_talks_to_our_backdoor() {
    /// Builds the static `vmt` (as crates/vmt's `cargo static` alias does,
    /// in this test's profile and target directory: the tests of one crate
    /// cannot ask cargo for another's binaries) and writes a stripped
    /// copy: a debug build's debug information would cost the guest
    /// seconds of emulated unpacking.
    fn vmt_binary() -> std::path::PathBuf {
        const TARGET: &str = "x86_64-unknown-linux-gnu";
        let exe = std::env::current_exe().unwrap();
        let mut dir = exe.parent().unwrap().to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let profile = dir.file_name().unwrap().to_owned();
        let target = dir.parent().unwrap();
        let mut build =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        build
            .args([
                "rustc",
                "-p",
                "vmt",
                "--bin",
                "vmt",
                "--target",
                TARGET,
                "--target-dir",
            ])
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile == "release" {
            build.arg("--release");
        }
        build.args(["--", "-C", "target-feature=+crt-static"]);
        let o = run_bounded(build, Duration::from_secs(600));
        assert!(o.ok(), "cargo rustc -p vmt (static): {o:?}");
        let stripped = fresh_dir().join("vmt");
        let mut strip = std::process::Command::new("strip");
        strip
            .arg("-o")
            .arg(&stripped)
            .arg(target.join(TARGET).join(&profile).join("vmt"));
        let o = run_bounded(strip, STEP);
        assert!(o.ok(), "strip vmt: {o:?}");
        stripped
    }

    let Some(kernel) = kvm_and_kernel() else {
        return;
    };
    let Some(ns) = Netns::new("vmt") else {
        return;
    };
    // /init (a script, PID 1) hands over to busybox's init, which runs
    // syslogd, the test (once) and, at shutdown, vmt's init script.
    let init = "\
hostname vmt-guest
echo \"VMD-TEST init uptime=$(cut -d' ' -f1 /proc/uptime)\"
exec /sbin/init
";
    let inittab = "\
::sysinit:/sbin/syslogd -O /dev/console
::once:/etc/rc.test
::shutdown:/etc/init.d/vmt stop
";
    let test = "#!/bin/sh
cat > /tmp/dhcp.sh <<'SCRIPT'
#!/bin/sh
case \"$1\" in
bound|renew) ip addr add \"$ip/$mask\" dev \"$interface\" ;;
esac
SCRIPT
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -n -q -f -t 20 -T 3 -s /tmp/dhcp.sh > /dev/null 2>&1
echo \"VMD-TEST udhcpc rc=$?\"
out=$(vmt checkvm 2>&1); rc=$?
echo \"VMD-TEST checkvm rc=$rc $out\"
out=$(vmt checkvm -p 2>&1); rc=$?
echo \"VMD-TEST product rc=$rc $out\"
vmt info set fromguest 'hello from vmt'
echo \"VMD-TEST info-set rc=$?\"
i=0
while [ $i -lt 300 ]; do
    v=$(vmt info get fromhost 2>/dev/null) && break
    i=$((i + 1))
    sleep 1
done
echo \"VMD-TEST info-get value=$v\"
out=$(vmt info get nosuchkey 2>&1); rc=$?
echo \"VMD-TEST missing rc=$rc $out\"
out=$(vmt rpc 'no-such-request' 2>&1); rc=$?
echo \"VMD-TEST unknown rc=$rc $out\"
out=$(/etc/init.d/vmt start 2>&1); rc=$?
echo \"VMD-TEST vmt-start rc=$rc $out\"
out=$(/etc/init.d/vmt status 2>&1); rc=$?
echo \"VMD-TEST service rc=$rc $out\"
i=0
while [ $i -lt 120 ] && ! vmt status 2>/dev/null | grep -q '^ip '; do
    i=$((i + 1))
    sleep 1
done
vmt status 2>&1 | sed 's/^/VMD-TEST status /'
echo 'VMD-TEST status done'
# SIGHUP: a bad file changes nothing, a good one is taken.
cp /etc/vmt.conf /tmp/vmt.conf
echo 'clock_sync_perod 5' > /etc/vmt.conf
/etc/init.d/vmt reload > /dev/null
sleep 3
cp /tmp/vmt.conf /etc/vmt.conf
/etc/init.d/vmt reload > /dev/null
sleep 3
# One hour wrong; with periodic syncs off (vmt.conf) only a resume puts
# it right.
date -s \"@$(( $(date +%s) - 3600 ))\" > /dev/null
echo \"VMD-TEST clock-set $(date +%s)\"
i=0
while [ $i -lt 300 ]; do
    echo \"VMD-TEST clock $(date +%s)\"
    i=$((i + 1))
    sleep 1
done
sleep 600
echo 'VMD-TEST still running'
";
    let mut image = images::busybox(init).expect("busybox image");
    let vmt = vmt_binary();
    let init_script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmt/dist/vmt.init");
    image
        .copy("/usr/sbin/vmt", &vmt)
        .and_then(|i| i.copy("/etc/init.d/vmt", &init_script))
        .and_then(|i| i.file("/etc/inittab", inittab, 0o644))
        .and_then(|i| i.file("/etc/rc.test", test, 0o755))
        .and_then(|i| i.file("/etc/vmt.conf", "clock_sync_period 0\n", 0o644))
        .expect("vmt in the image");
    // The image holds its own copy.
    let _ = std::fs::remove_dir_all(vmt.parent().unwrap());
    let initrd = images::write("vmt", &image).expect("write image");
    let dir = fresh_dir();
    std::fs::write(
        dir.join("vm.conf"),
        vm_block_with("lin", &kernel, &initrd, "", "\tlocal interface\n"),
    )
    .unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    let start = Instant::now();
    d.vmctl_ok(&["start", "lin"]);
    let mut con = Console::attach(&d, "lin");
    let init_line = con.wait("VMD-TEST init", BOOT);
    eprintln!("lin: /init after {:?} ({init_line})", start.elapsed());
    let rc = con.wait("VMD-TEST udhcpc", STEP);
    assert!(rc.ends_with("rc=0"), "{rc}");

    let checkvm = con.wait("VMD-TEST checkvm", STEP);
    assert_eq!(
        checkvm, "VMD-TEST checkvm rc=0 VMware software version 6 (good)",
        "vmt checkvm"
    );
    let product = con.wait("VMD-TEST product", STEP);
    assert!(product.starts_with("VMD-TEST product rc=0 "), "{product}");

    let set = con.wait("VMD-TEST info-set", STEP);
    assert!(set.ends_with("rc=0"), "{set}");
    let o = d.vmctl_ok(&["guestinfo", "lin", "fromguest"]);
    assert_eq!(o.stdout.trim_end(), "hello from vmt", "{o:?}");

    d.vmctl_ok(&["guestinfo", "lin", "fromhost", "set by the host"]);
    let got = con.wait("VMD-TEST info-get", STEP);
    assert_eq!(got, "VMD-TEST info-get value=set by the host");

    let missing = con.wait("VMD-TEST missing", STEP);
    assert_eq!(
        missing,
        "VMD-TEST missing rc=1 vmt: info get nosuchkey: No value found"
    );
    let unknown = con.wait("VMD-TEST unknown", STEP);
    assert_eq!(unknown, "VMD-TEST unknown rc=1 vmt: Unknown command");

    // The daemon, detached by its init script.
    let started = con.wait("VMD-TEST vmt-start", STEP);
    assert!(
        started.starts_with("VMD-TEST vmt-start rc=0 vmt started (pid "),
        "{started}"
    );
    let service = con.wait("VMD-TEST service", STEP);
    assert!(
        service.starts_with("VMD-TEST service rc=0 vmt is running (pid "),
        "{service}"
    );
    // `vmt status`: the channel, and what the host took.
    for (key, value) in [
        ("channel", "open"),
        ("hostname", "vmt-guest"),
        ("ip", "100.64.1.3"),
    ] {
        let line = con.wait(&format!("VMD-TEST status {key} "), STEP);
        assert_eq!(line, format!("VMD-TEST status {key} {value}"));
    }
    con.wait("VMD-TEST status done", STEP);

    // What vmtoolsd sends besides the host name and IP, as the host shows
    // it: the OS, the uptime, each NIC with its MAC and addresses.
    let vm = d.wait_vm("lin", "the OS, uptime and NICs from vmt", STEP, |v| {
        v.os.is_some() && v.uptime_secs.is_some() && !v.nics.is_empty()
    });
    assert!(
        vm.os.as_deref().is_some_and(|o| o.contains("Linux")),
        "{vm:#?}"
    );
    assert!(vm.uptime_secs.is_some_and(|u| u > 0), "{vm:#?}");
    let lladdr = &vm.interfaces[0].lladdr;
    assert!(
        vm.nics.iter().any(|n| n.mac.eq_ignore_ascii_case(lladdr)
            && n.addresses.iter().any(|a| a == "100.64.1.3/31")),
        "no NIC {lladdr} with 100.64.1.3/31: {vm:#?}"
    );
    let o = d.vmctl_ok(&["status", "lin"]);
    assert!(o.stdout.contains("\nos "), "{o:?}");
    assert!(o.stdout.contains("\nuptime "), "{o:?}");
    assert!(o.stdout.contains("100.64.1.3/31"), "{o:?}");

    // The guest set its clock an hour back; `vmctl pause` and `unpause`
    // make vmt log the resume and step the clock back to the host's.
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let guest_secs = |line: &str| -> i64 {
        line.rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    let set = con.wait("VMD-TEST clock-set", STEP);
    let off = unix_now() - guest_secs(&set);
    assert!((3600 - 60..=3600 + 60).contains(&off), "{set}: {off} s off");
    d.vmctl_ok(&["pause", "lin"]);
    std::thread::sleep(Duration::from_secs(2));
    d.vmctl_ok(&["unpause", "lin"]);
    let corrected = Instant::now();
    loop {
        let line = con.wait("VMD-TEST clock ", STEP);
        if (unix_now() - guest_secs(&line)).abs() <= 5 {
            eprintln!(
                "lin: clock right again {:?} after unpause",
                corrected.elapsed()
            );
            break;
        }
        assert!(
            corrected.elapsed() < Duration::from_secs(120),
            "the guest clock is still wrong 120 s after unpause: {line}"
        );
    }

    // A graceful stop: OS_Halt to vmt, which reports the state change,
    // acknowledges, and signals busybox init.
    reported_then_halted_by_tools(&d, "vmt", "vmt-guest");
    let console = con.seen_so_far().to_owned();
    let at = |needle: &str| {
        console
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} on the console:\n{console}"))
    };
    // syslog (busybox syslogd): LOG_DAEMON, tagged vmt[pid].
    at("daemon.info vmt[");
    at("]: started (pid ");
    let bad = at("]: /etc/vmt.conf:1: unknown keyword 'clock_sync_perod'");
    let kept = at("]: configuration not reloaded; keeping the running one");
    let reloaded = at("]: configuration reloaded");
    assert!(bad < kept && kept < reloaded, "{console}");
    let resumed = at("]: resumed");
    let stepped = at("]: clock (resume): stepped by +3");
    assert!(resumed < stepped, "{console}");
    let halting = at("]: halting: SIGUSR2 to pid 1 (busybox init)");
    let stopped = at("vmt stopped");
    let poweroff = at("Requesting system poweroff");
    assert!(halting < stopped && stopped < poweroff, "{console}");
    for l in console.lines().filter(|l| {
        l.contains("vmt[") || l.contains("VMD-TEST status") || l.contains("vmt stopped")
    }) {
        eprintln!("lin: {}", l.trim_end());
    }
}

/// VM `lin`'s guest tools (`tools`) report `hostname` and the local
/// interface's guest address; `vmctl stop -w` then halts the guest through
/// them ("halted by guest tools") and its VM process is gone.
fn reported_then_halted_by_tools(d: &TestDaemon, tools: &str, hostname: &str) {
    let vm = d.wait_vm("lin", &format!("hostname and IP from {tools}"), STEP, |v| {
        v.hostname.is_some() && v.ip.is_some()
    });
    assert_eq!(vm.hostname.as_deref(), Some(hostname), "{vm:#?}");
    assert_eq!(vm.ip.as_deref(), Some("100.64.1.3"), "{vm:#?}");
    let pid = vm.pid.expect("a pid");
    let mut stop = d.vmctl_cmd();
    stop.args(["stop", "-w", "lin"]);
    let o = run_bounded(stop, Duration::from_secs(300));
    assert!(o.ok(), "vmctl stop: {o:?}\nvmd:\n{}", d.log());
    let vm = d.vm("lin");
    assert!(vm.pid.is_none() && vm.state != VmState::Running, "{vm:#?}");
    assert_eq!(
        vm.last_exit.as_deref(),
        Some("halted by guest tools"),
        "{vm:#?}\nvmd:\n{}",
        d.log()
    );
    assert!(!process_exists(pid));
}
