//! `vmm`: run one VM in the foreground.
//!
//! This is the per-VM process: the daemon will spawn it (one per VM) and
//! talk to it over a socket; run by hand, it boots a kernel with the
//! console on stdio, a pty or a file, and exits when the guest is done.
//! The exit status says how the VM ended (see `ExitStatus`).

mod confine;
mod control;
mod power;
mod serial_out;
mod size;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use std::time::Duration;
use vm::boot::{BootConfig, BootProtocol};
use vm::cpuid::{self, CpuIdentity, CpuidConfig};

use vm::threads::ThreadKind;
use vm::{Vm, VmConfig, VmExit, VmHandle};

/// How the VM ended, as the process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum ExitStatus {
    /// The guest powered itself off.
    PowerOff = 0,
    /// vmm could not build or run the VM (bad input, KVM error).
    Error = 1,
    // 2 is clap's status for a usage error.
    /// The guest reset and --no-reboot was given.
    Reset = 3,
    /// The guest crashed (triple fault, emulation failure).
    Crash = 4,
    /// Stopped from the host (SIGTERM, SIGINT).
    Stopped = 5,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Boot {
    /// PVH if the ELF has the note, else the 64-bit entry.
    Auto,
    /// 64-bit Linux boot protocol, even if the ELF has a PVH note.
    Linux64,
    /// PVH entry; fails if the ELF has no PVH note.
    Pvh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CgroupFiles {
    Procs,
    Tasks,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BootDev {
    Disk,
    Cdrom,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HvSignature {
    Vmware,
    Kvm,
}

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "Run one virtual machine in the foreground on KVM",
    after_help = "Exit status: 0 guest powered off, 1 error, 2 usage, 3 guest reset \
                  (with --no-reboot), 4 guest crashed, 5 stopped by a signal."
)]
struct Args {
    /// Kernel to boot: a bzImage, or an ELF (vmlinux, our test guests).
    /// Without one the VM boots its disk or CD-ROM through the BIOS.
    #[arg(short, long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Boot this BIOS image (SeaBIOS's bios.bin) instead of a kernel; the
    /// default when no kernel is given is /usr/share/seabios/bios.bin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd"])]
    bios: Option<PathBuf>,
    /// Device the BIOS boots first: disk or cdrom.
    #[arg(long, value_enum, value_name = "DEV", default_value = "disk")]
    boot_device: BootDev,
    /// Initial ramdisk.
    #[arg(short, long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// A virtio-blk disk (repeatable; PCI slots in order): a raw or qcow2
    /// image or a block device; `ro:` first for a read-only disk, `raw:`
    /// or `qcow2:` to say the format instead of recognising it.
    #[arg(short = 'd', long = "disk", value_name = "[ro:][FMT:]PATH", value_parser = parse_disk)]
    disks: Vec<vm::DiskConfig>,
    /// A network interface (repeatable): virtio-net on a tap,
    /// `tap=NAME[,fd=N|fd=control][,mac=XX:XX:XX:XX:XX:XX][,locked][,local=VMID:IDX[,prefix=A/L]][,hostname=NAME]`.
    /// Without `fd` the tap is opened (created) by name; `fd=N` is a tap
    /// descriptor inherited from the parent, `fd=control` one vmd sends on
    /// the control socket. `local=` makes it a local interface: the guest's
    /// DHCP is answered here with the addresses OpenBSD's vmd gives VM
    /// VMID's interface IDX in `prefix` (default 100.64.0.0/10; the host
    /// side's address is vmd's to configure).
    #[arg(long = "net", value_name = "SPEC", value_parser = parse_net)]
    nets: Vec<NetArg>,
    /// A virtio-rng entropy device, fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// An ISO image as a CD-ROM (virtio-scsi), after the disks.
    #[arg(short = 'r', long, value_name = "ISO")]
    cdrom: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        short = 'a',
        long,
        value_name = "STRING",
        default_value = "console=ttyS0"
    )]
    cmdline: String,
    /// Guest memory, in bytes or with a K, M, G suffix.
    #[arg(short, long, value_name = "SIZE", default_value = "512M", value_parser = size::parse)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Where COM1 goes: stdio, pty, none, or file:PATH.
    #[arg(short, long, value_name = "DEST", default_value = "stdio", value_parser = serial_out::parse)]
    serial: serial_out::Dest,
    /// Entry protocol for ELF kernels.
    #[arg(long, value_enum, default_value = "auto")]
    boot: Boot,
    /// CPU features to hide from the guest, comma separated (e.g. cx16,xsave).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_feature)]
    cpu_hide: Vec<cpuid::Feature>,
    /// CPU vendor the guest sees (CPUID leaf 0): intel, amd, or any
    /// 12-character vendor string, e.g. GenuineIntel. Default: the host's.
    #[arg(long, value_name = "VENDOR", value_parser = cpumodel::parse_vendor)]
    cpu_vendor: Option<cpuid::Vendor>,
    /// CPU family the guest sees (CPUID leaf 1), 1 to 270 (0x10e), decimal or 0x hex.
    /// Default: the host's.
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_family)]
    cpu_family: Option<u32>,
    /// CPU model the guest sees, 0 to 255. Default: the host's.
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_model)]
    cpu_model: Option<u32>,
    /// CPU stepping the guest sees, 0 to 15. Default: the host's.
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_stepping)]
    cpu_stepping: Option<u32>,
    /// Hypervisor signature at CPUID 0x40000000: vmware (with KVM's leaves
    /// at 0x40000100, so VMware guest tools attach and Linux keeps
    /// kvm-clock) or kvm (KVM's leaves only).
    #[arg(long, value_enum, default_value = "vmware", value_name = "SIG")]
    hv_signature: HvSignature,
    /// No VMware backdoor (guest tools channel) on ports 0x5658/0x5659.
    #[arg(long)]
    no_tools: bool,
    /// Seconds the guest gets to power off after SIGTERM/SIGINT/SIGHUP
    /// asked it to (through its tools, or the ACPI power button).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    grace: u64,
    /// Exit when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Serve vmd's requests on this socket (JSON lines, see api::vmproc);
    /// with it, the console pty's path goes there too.
    #[arg(long, value_name = "FD")]
    control_fd: Option<i32>,
    /// The first descriptor vmd sends on the control socket (before the
    /// taps) is a bound Unix socket: when the control channel closes (vmd
    /// exited, was killed or is being upgraded) the VM runs on and takes
    /// the next connection from root on it as its new channel, instead of
    /// powering off.
    #[arg(long, requires = "control_fd")]
    reattach: bool,
    /// The next N descriptors vmd sends on the control socket (after the
    /// re-attach socket, before the taps) are files that move a task into
    /// a cgroup (see --cgroup-files): the VM process writes itself into
    /// them before it touches guest memory.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "control_fd")]
    cgroups: usize,
    /// What the --cgroups descriptors are. `procs`: `cgroup.procs`,
    /// written from a thread while the VM is built (moving a process waits
    /// for an RCU grace period, which that overlaps). `tasks`: cgroup v1's
    /// `tasks`, written at once while the process has one thread, which
    /// moves it all without that wait.
    #[arg(long, value_enum, default_value = "procs")]
    cgroup_files: CgroupFiles,
    /// With --confine: the next descriptor vmd sends on the control
    /// socket (after the cgroups' files, before the taps) is a network
    /// namespace, which the VM process joins rather than making one of
    /// its own.
    #[arg(long, requires = "confine", requires = "control_fd")]
    netns: bool,
    /// With --confine: the next descriptor vmd sends (after the network
    /// namespace) is a mount namespace whose root is empty and
    /// read-only; the VM process gets a copy of it rather than making
    /// that root itself.
    #[arg(long, requires = "confine", requires = "control_fd")]
    mntns: bool,
    /// With --confine: vmd started the process as PID 1 of a PID
    /// namespace of its own, so it does not fork into one.
    #[arg(long, requires = "confine")]
    pid_ns: bool,
    /// Open the files `--user-files` lists with this user's rights
    /// (`UID:GID[:GROUP,...]`) rather than the process's: the user named
    /// them, and must not reach through the VM what he could not open
    /// himself (vmd passes it for the files of an instance a user starts).
    #[arg(long, value_name = "UID:GID[:GROUPS]", value_parser = vm::creds::Creds::parse,
          requires = "user_files")]
    open_as: Option<vm::creds::Creds>,
    /// Which files `--open-as` applies to, comma separated: kernel,
    /// initrd, disks (with their base images), cdrom.
    #[arg(
        long,
        value_enum,
        value_name = "LIST",
        value_delimiter = ',',
        requires = "open_as"
    )]
    user_files: Vec<UserFile>,
    /// Confine the VM process (see vmm(8)): its own mount, IPC, UTS,
    /// network and PID namespaces from the start (vmm forks: the VM runs in
    /// the child, PID 1 there); once the VM is built, an empty
    /// root, this uid and gid (not 0), no capabilities, no_new_privs, a
    /// seccomp allowlist on every thread and a narrower one per thread
    /// kind (vCPU, device, control...). Taps must come as descriptors.
    #[arg(long, value_name = "UID:GID", value_parser = confine::parse_identity)]
    confine: Option<confine::Identity>,
    /// What a system call outside the confined process's allowlist does:
    /// kill (the process, with SIGSYS) or log (allowed, logged by the
    /// kernel: for finding what the allowlist misses).
    #[arg(
        long,
        value_enum,
        value_name = "ACTION",
        default_value = "kill",
        requires = "confine"
    )]
    seccomp: confine::OnViolation,
    /// More log output (repeat for debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum UserFile {
    Kernel,
    Initrd,
    Disks,
    Cdrom,
}

/// Opens the files `--user-files` names with `--open-as`'s rights, and
/// with `--confine` the kernel and initrd too (a confined process reads
/// them again at guest resets with no file system left to open them
/// from). The kernel, initrd and ISO so opened stay open in the returned
/// list and are named by their descriptors from here on
/// (`/proc/self/fd/N`, which `vm::boot::open_regular` duplicates: the
/// same file whatever happens to its path). Disks and their base images
/// are opened later, with the same rights, by the VM's build.
fn hold_files(args: &mut Args) -> Result<Vec<std::fs::File>, String> {
    let user = args.open_as.clone();
    let named = |f: UserFile| user.is_some() && args.user_files.contains(&f);
    let (kernel_as_user, initrd_as_user, cdrom_as_user, disks_as_user) = (
        named(UserFile::Kernel),
        named(UserFile::Initrd),
        named(UserFile::Cdrom),
        named(UserFile::Disks),
    );
    let confined = args.confine.is_some();
    let mut held = Vec::new();
    let mut open = |path: &mut PathBuf, what: &str, as_user: bool| -> Result<(), String> {
        let opened = match (&user, as_user) {
            (Some(u), true) => u.run(|| vm::boot::open_regular(path)).and_then(|r| r),
            _ => vm::boot::open_regular(path),
        };
        let file = opened.map_err(|e| format!("{what} {}: {e}", path.display()))?;
        *path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        held.push(file);
        Ok(())
    };
    if let Some(k) = args.kernel.as_mut().filter(|_| kernel_as_user || confined) {
        open(k, "kernel", kernel_as_user)?;
    }
    if let Some(i) = args.initrd.as_mut().filter(|_| initrd_as_user || confined) {
        open(i, "initrd", initrd_as_user)?;
    }
    if let Some(c) = args.cdrom.as_mut().filter(|_| cdrom_as_user) {
        open(c, "cdrom", true)?;
    }
    if disks_as_user {
        for d in &mut args.disks {
            d.open_as = user.clone();
        }
    }
    Ok(held)
}

/// `[ro:][raw:|qcow2:]PATH`: without a format the image's first bytes
/// decide (the qcow2 magic, else raw).
fn parse_disk(s: &str) -> Result<vm::DiskConfig, String> {
    let (ro, rest) = match s.strip_prefix("ro:") {
        Some(p) => (true, p),
        None => (false, s),
    };
    let (format, path) = if let Some(p) = rest.strip_prefix("raw:") {
        (Some(disk::Format::Raw), p)
    } else if let Some(p) = rest.strip_prefix("qcow2:") {
        (Some(disk::Format::Qcow2), p)
    } else {
        (None, rest)
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(vm::DiskConfig::new(PathBuf::from(path), format, ro))
}

/// One `--net`: the interface, and whether its tap comes over the control
/// socket (vmd opens taps, which needs CAP_NET_ADMIN the VM process has no
/// use for otherwise).
#[derive(Clone, Debug)]
struct NetArg {
    cfg: vm::NetDevConfig,
    fd_from_control: bool,
}

fn parse_net(s: &str) -> Result<NetArg, String> {
    let mut n = vm::NetDevConfig {
        tap: String::new(),
        tap_fd: None,
        mac: None,
        locked: false,
        local: None,
    };
    let mut fd_from_control = false;
    let mut local = None;
    let mut prefix = netcfg::local::DEFAULT_PREFIX4;
    let mut hostname = None;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "tap" => n.tap = v.to_owned(),
            "fd" if v == "control" => fd_from_control = true,
            "fd" => n.tap_fd = Some(v.parse().map_err(|_| format!("fd {v:?}: not a number"))?),
            "mac" => {
                let b: Vec<u8> = v
                    .split(':')
                    .map(|x| u8::from_str_radix(x, 16))
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("mac {v:?}: six hex bytes with colons"))?;
                let mac: [u8; 6] = b
                    .try_into()
                    .map_err(|_| format!("mac {v:?}: six hex bytes with colons"))?;
                if mac[0] & 1 != 0 {
                    return Err(format!("mac {v}: a multicast address"));
                }
                n.mac = Some(mac);
            }
            "locked" => n.locked = true,
            "local" => {
                let (id, idx) = v
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                    .ok_or_else(|| format!("local {v:?}: VMID:IDX"))?;
                local = Some((id, idx));
            }
            "prefix" => {
                prefix = v
                    .split_once('/')
                    .and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok()?)))
                    .filter(|&(_, l)| l <= 32)
                    .ok_or_else(|| format!("prefix {v:?}: an IPv4 prefix, A.B.C.D/LEN"))?;
            }
            "hostname" => hostname = Some(v.to_owned()),
            other => return Err(format!("unknown interface setting {other:?}")),
        }
    }
    if n.tap.is_empty() {
        return Err("an interface needs tap=NAME".into());
    }
    if let Some((id, idx)) = local {
        let a = netcfg::local::local_addrs(prefix, None, id, idx).map_err(|e| e.to_string())?;
        n.local = Some(vm::LocalNet {
            host: a.host4,
            guest: a.guest4,
            prefix_len: netcfg::local::PREFIX_LEN4,
            hostname: hostname.unwrap_or_else(|| format!("vm{id}")),
        });
    }
    Ok(NetArg {
        cfg: n,
        fd_from_control,
    })
}

fn parse_feature(s: &str) -> Result<cpuid::Feature, String> {
    cpuid::feature(s).ok_or_else(|| {
        format!(
            "unknown CPU feature {s:?}; known: {}",
            cpumodel::feature_names()
        )
    })
}

/// Writes `vmm: MSG` to stderr, ignoring failure: under vmd, stderr is a
/// pipe to it, and once vmd is gone (killed, restarting) a write fails
/// with EPIPE (SIGPIPE is ignored, as Rust programs start), which must
/// not end the VM as `eprintln!`'s panic would. While the VM process
/// knows it is detached, the last lines are kept instead, for the next
/// vmd (see `control::keep_if_detached`).
fn say(msg: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("vmm: {msg}");
    if control::keep_if_detached(&line) {
        return;
    }
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            say(format_args!(
                "{}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            ));
        }
    }
    fn flush(&self) {}
}

/// SIGTERM/SIGINT/SIGHUP power the VM off. They are blocked in every thread
/// (set before any thread starts, so all inherit it) and taken by one
/// thread with sigwait, so no handler runs inside a vCPU thread.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.control_fd == Some(0) && matches!(args.serial, serial_out::Dest::Stdio) {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--control-fd 0 is stdin, which the console on stdio reads: use -s pty, file:PATH or none",
            )
            .exit();
    }
    // A model above 15 only shows in some families (and not in family 6 on
    // AMD): refuse what the guest could not read. Where the vendor or family
    // is the host's, the VM checks once it knows them.
    if let (Some(family), Some(model)) = (args.cpu_family, args.cpu_model) {
        if let Err(e) = cpumodel::check_signature(args.cpu_vendor.as_ref(), family, model) {
            Args::command()
                .error(clap::error::ErrorKind::ValueValidation, e)
                .exit();
        }
    }
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    log::set_boxed_logger(Box::new(StderrLog(level))).expect("first logger");
    log::set_max_level(level);
    let sigs = block_stop_signals();
    match run(args, sigs) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            say(format_args!("{e}"));
            ExitCode::from(ExitStatus::Error as u8)
        }
    }
}

/// The first stop signal asks the guest to shut down (see
/// `power::graceful_stop`); a second one powers the VM off at once.
fn stop_on_signals(sigs: libc::sigset_t, h: VmHandle, grace: Duration) {
    let mut sig = 0;
    // SAFETY: `sigs` is a valid set; sigwait writes `sig`.
    if unsafe { libc::sigwait(&sigs, &mut sig) } != 0 {
        return;
    }
    log::info!("signal {sig}: asking the guest to shut down (again to force)");
    power::graceful_stop(&h, grace);
    // SAFETY: as above.
    if unsafe { libc::sigwait(&sigs, &mut sig) } == 0 {
        log::info!("signal {sig}: powering the VM off");
        h.power_off();
    }
}

fn run(mut args: Args, sigs: libc::sigset_t) -> Result<ExitStatus, String> {
    // What vmd sends first, before the process forks (the child has them
    // too): a network namespace to join is needed before that.
    let taps = args.nets.iter().filter(|n| n.fd_from_control).count();
    let wanted = taps
        + usize::from(args.reattach)
        + args.cgroups
        + usize::from(args.netns)
        + usize::from(args.mntns);
    let mut received = Vec::new();
    if wanted > 0 {
        let fd = args
            .control_fd
            .ok_or("--net fd=control needs --control-fd")?;
        received =
            control::recv_fds(fd, wanted).map_err(|e| format!("descriptors from vmd: {e}"))?;
    }
    let mut received = received.into_iter();
    let listener = args
        .reattach
        .then(|| received.next().expect("counted above"));
    let mut cgroups: Vec<OwnedFd> = received.by_ref().take(args.cgroups).collect();
    let netns = args.netns.then(|| received.next().expect("counted above"));
    let root = args.mntns.then(|| received.next().expect("counted above"));
    // The mount namespace with the empty root `lock_down` copies.
    let root = if args.confine.is_some() {
        // The network namespace is empty: taps must come open.
        if let Some(n) = args
            .nets
            .iter()
            .find(|n| n.cfg.tap_fd.is_none() && !n.fd_from_control)
        {
            return Err(format!(
                "--confine: tap {} must be passed as a descriptor (fd=N or fd=control)",
                n.cfg.tap
            ));
        }
        // While the process has one thread. Then the VM process is PID 1
        // of its own PID namespace: vmd started it there (--pid-ns), or
        // only the child returns from the fork.
        let ns = netns.as_ref().map(|n| n.as_fd());
        let root = confine::enter_namespaces(ns, root, !args.pid_ns)
            .map_err(|e| format!("--confine: {e}"))?;
        match args.pid_ns {
            true => confine::session_as_pid_1(),
            false => confine::fork_into_pid_namespace(args.control_fd),
        }
        .map_err(|e| format!("--confine: {e}"))?;
        Some(root)
    } else {
        None
    };
    drop(netns);
    // Held until the VM ends: its kernel, initrd and ISO by descriptor.
    let _held = hold_files(&mut args)?;
    // Listening now, in the VM process itself, while it may still call
    // listen(2): the credentials a connecting vmd sees (SO_PEERCRED) are
    // those of the process that called it last, and vmd checks they are
    // this one's.
    if let Some(l) = &listener {
        control::listen(l).map_err(|e| format!("the re-attach socket: {e}"))?;
    }
    if args.cgroup_files == CgroupFiles::Tasks {
        // This thread is the process's only one yet (no device or vCPU
        // thread starts before `Vm::build`): moving it moves the process,
        // and every thread it starts later is born in its cgroups.
        enter_cgroups(&cgroups).map_err(|e| format!("cannot enter its cgroup: {e}"))?;
        cgroups.clear();
    }
    let nets = args
        .nets
        .into_iter()
        .map(|n| {
            let mut cfg = n.cfg;
            if n.fd_from_control {
                // Owned by the VM from here (the device closes it).
                cfg.tap_fd = received.next().map(std::os::fd::IntoRawFd::into_raw_fd);
            }
            cfg
        })
        .collect();
    let cfg = VmConfig {
        mem_size: args.memory,
        vcpus: args.cpus,
        firmware: match (&args.kernel, args.bios) {
            // `-k` may name a BIOS image, as vm.conf's `boot` may.
            (Some(k), _) if !vm::firmware::looks_like_bios(k) => None,
            (kernel, bios) => Some(vm::firmware::FirmwareConfig {
                bios: bios
                    .or_else(|| kernel.clone())
                    .unwrap_or_else(|| PathBuf::from(vm::firmware::DEFAULT_BIOS)),
                boot: match args.boot_device {
                    BootDev::Disk => vm::firmware::BootDevice::Disk,
                    BootDev::Cdrom => vm::firmware::BootDevice::Cdrom,
                },
            }),
        },
        boot: BootConfig {
            kernel: args.kernel.unwrap_or_default(),
            initrd: args.initrd,
            cmdline: args.cmdline,
            protocol: match args.boot {
                Boot::Auto => BootProtocol::Auto,
                Boot::Linux64 => BootProtocol::Linux64,
                Boot::Pvh => BootProtocol::Pvh,
            },
        },
        cpuid: CpuidConfig {
            hide: args.cpu_hide,
            vmware: matches!(args.hv_signature, HvSignature::Vmware),
            identity: CpuIdentity {
                vendor: args.cpu_vendor,
                family: args.cpu_family,
                model: args.cpu_model,
                stepping: args.cpu_stepping,
            },
        },
        reboot: !args.no_reboot,
        guest_tools: !args.no_tools,
        disks: args.disks,
        cdrom: args.cdrom,
        nets,
        rng: args.rng,
        uuid: vm::random_uuid(),
    };
    let control = match args.control_fd {
        // SAFETY: vmd passes us this fd for our exclusive use.
        Some(fd) => Some(
            unsafe { control::Channel::from_fd(fd) }
                .map_err(|e| format!("control fd {fd}: {e}"))?,
        ),
        None => None,
    };
    let console = serial_out::open(&args.serial).map_err(|e| e.to_string())?;
    // Into its cgroups, from a thread of its own while the VM is built;
    // joined before guest memory is touched, and before lock_down wants
    // the process single-threaded again.
    let entering =
        (!cgroups.is_empty()).then(|| std::thread::spawn(move || enter_cgroups(&cgroups)));
    let mut vm = Vm::build(cfg, console.writer).map_err(|e| e.to_string())?;
    if let Some(t) = entering {
        t.join()
            .map_err(|_| "entering its cgroups: the thread panicked".to_string())?
            .map_err(|e| format!("cannot enter its cgroup: {e}"))?;
    }
    vm.load_guest().map_err(|e| e.to_string())?;
    // Built: what it opened it holds. Confined now, while this is the only
    // thread (every later one inherits it all).
    if let Some(who) = args.confine {
        let root = root.ok_or("--confine: no empty root was made")?;
        confine::lock_down(who, root, args.seccomp).map_err(|e| format!("--confine: {e}"))?;
        log::info!(
            "confined: uid {} gid {}, landlock, seccomp",
            who.uid,
            who.gid
        );
    }
    log::info!("booting {} with {} vCPUs", vm.kernel_kind(), args.cpus);
    let handle = vm.handle();
    if let Some(input) = console.input {
        let h = handle.clone();
        vm::threads::spawn(ThreadKind::ConsoleIn, "console-in", move || {
            serial_out::pump_input(input, |b| h.serial_input(b))
        })
        .map_err(|e| e.to_string())?;
    }
    let mut channel = None;
    if let Some((ch, input)) = control {
        if let Some(path) = &console.tty {
            ch.event(api::vmproc::Event::Tty { path: path.clone() });
        }
        let h = handle.clone();
        let c = ch.clone();
        let tty = console.tty.clone();
        vm::threads::spawn(ThreadKind::Control, "control", move || {
            control::serve(c, input, h, listener, tty)
        })
        .map_err(|e| e.to_string())?;
        channel = Some(ch);
    }
    let h = handle.clone();
    let grace = Duration::from_secs(args.grace);
    vm::threads::spawn(ThreadKind::Signals, "signals", move || {
        stop_on_signals(sigs, h, grace)
    })
    .map_err(|e| e.to_string())?;

    let exit = vm.run().map_err(|e| e.to_string())?;
    if let Some(ch) = &channel {
        let reason = match &exit {
            VmExit::PowerOff => "powered off".to_owned(),
            VmExit::ToolsHalt => "halted by guest tools".to_owned(),
            VmExit::Reset => "reset".to_owned(),
            VmExit::Crash(why) => format!("crashed: {why}"),
            VmExit::Stopped => "powered off by the host".to_owned(),
        };
        ch.event(api::vmproc::Event::Exited { reason });
    }
    Ok(match exit {
        VmExit::PowerOff => ExitStatus::PowerOff,
        VmExit::ToolsHalt => {
            say(format_args!("halted by guest tools"));
            ExitStatus::PowerOff
        }
        VmExit::Reset => {
            say(format_args!("guest reset"));
            ExitStatus::Reset
        }
        VmExit::Crash(why) => {
            say(format_args!("guest crashed: {why}"));
            ExitStatus::Crash
        }
        VmExit::Stopped => ExitStatus::Stopped,
    })
}

/// Moves this process (`cgroup.procs`), or this thread (`tasks`), into
/// the cgroups whose files vmd opened.
fn enter_cgroups(procs: &[OwnedFd]) -> std::io::Result<()> {
    use std::io::Write;
    for p in procs {
        std::fs::File::from(p.try_clone()?).write_all(b"0")?;
    }
    Ok(())
}
