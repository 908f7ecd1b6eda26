//! `vmm`: run one VM in the foreground.
//!
//! This is the per-VM process: the daemon will spawn it (one per VM) and
//! talk to it over a socket; run by hand, it boots a kernel with the
//! console on stdio, a pty or a file, and exits when the guest is done.
//! The exit status says how the VM ended (see `ExitStatus`).

mod serial_out;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use std::time::{Duration, Instant};
use vm::boot::{BootConfig, BootProtocol};
use vm::cpuid::{self, CpuidConfig};

use vm::guestrpc::host::CommandStatus;
use vm::guestrpc::tclo::TcloCommand;
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
    #[arg(short, long, value_name = "FILE")]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(short, long, value_name = "FILE")]
    initrd: Option<PathBuf>,
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
    /// Hypervisor signature at CPUID 0x40000000: vmware (with KVM's leaves
    /// at 0x40000100, so VMware guest tools attach and Linux keeps
    /// kvm-clock) or kvm (KVM's leaves only).
    #[arg(long, value_enum, default_value = "vmware", value_name = "SIG")]
    hv_signature: HvSignature,
    /// No VMware backdoor (guest tools channel) on ports 0x5658/0x5659.
    #[arg(long)]
    no_tools: bool,
    /// Seconds a guest whose tools acknowledged a halt request gets to
    /// power off after SIGTERM/SIGINT/SIGHUP before it is powered off.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    grace: u64,
    /// Exit when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// More log output (repeat for debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_feature(s: &str) -> Result<cpuid::Feature, String> {
    cpuid::feature(s).ok_or_else(|| {
        let names: Vec<&str> = cpuid::FEATURES.iter().map(|f| f.name).collect();
        format!("unknown CPU feature {s:?}; known: {}", names.join(" "))
    })
}

struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("vmm: {}: {}", r.level().as_str().to_lowercase(), r.args());
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
            eprintln!("vmm: {e}");
            ExitCode::from(ExitStatus::Error as u8)
        }
    }
}

/// How long the guest tools get to acknowledge a halt request.
const TOOLS_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The first stop signal asks the guest to halt through its tools, if it
/// has them: it gets 3 s to acknowledge and `grace` to power off. Without
/// tools, or on a second signal, the VM is powered off at once.
fn stop_on_signals(sigs: libc::sigset_t, h: VmHandle, grace: Duration) {
    let mut sig = 0;
    // SAFETY: `sigs` is a valid set; sigwait writes `sig`.
    if unsafe { libc::sigwait(&sigs, &mut sig) } != 0 {
        return;
    }
    let id = if h.guest_state().tools_present {
        h.tools_command(TcloCommand::OsHalt)
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let Some(id) = id else {
        log::info!("signal {sig}: powering the VM off");
        h.power_off();
        return;
    };
    log::info!("signal {sig}: asking the guest tools to halt (again to force)");
    let h2 = h.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        loop {
            match h2.tools_status(id) {
                Some(CommandStatus::Acked(_)) => break,
                Some(s) if s.is_final() || start.elapsed() > TOOLS_ACK_TIMEOUT => {
                    log::warn!("guest tools did not acknowledge the halt ({s:?}): powering off");
                    h2.power_off();
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
            if start.elapsed() > TOOLS_ACK_TIMEOUT {
                log::warn!("guest tools did not acknowledge the halt: powering off");
                h2.power_off();
                return;
            }
        }
        std::thread::sleep(grace);
        log::warn!("guest did not power off within {grace:?} of its halt: powering off");
        h2.power_off();
    });
    // SAFETY: as above.
    if unsafe { libc::sigwait(&sigs, &mut sig) } == 0 {
        log::info!("signal {sig}: powering the VM off");
        h.power_off();
    }
}

fn run(args: Args, sigs: libc::sigset_t) -> Result<ExitStatus, String> {
    let cfg = VmConfig {
        mem_size: args.memory,
        vcpus: args.cpus,
        boot: BootConfig {
            kernel: args.kernel,
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
        },
        reboot: !args.no_reboot,
        guest_tools: !args.no_tools,
        uuid: vm::random_uuid(),
    };
    let console = serial_out::open(&args.serial).map_err(|e| e.to_string())?;
    let mut vm = Vm::new(cfg, console.writer).map_err(|e| e.to_string())?;
    log::info!("booting {} with {} vCPUs", vm.kernel_kind(), args.cpus);
    let handle = vm.handle();
    if let Some(input) = console.input {
        let h = handle.clone();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || serial_out::pump_input(input, |b| h.serial_input(b)))
            .map_err(|e| e.to_string())?;
    }
    let h = handle.clone();
    let grace = Duration::from_secs(args.grace);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || stop_on_signals(sigs, h, grace))
        .map_err(|e| e.to_string())?;

    let exit = vm.run().map_err(|e| e.to_string())?;
    Ok(match exit {
        VmExit::PowerOff => ExitStatus::PowerOff,
        VmExit::ToolsHalt => {
            eprintln!("vmm: halted by guest tools");
            ExitStatus::PowerOff
        }
        VmExit::Reset => {
            eprintln!("vmm: guest reset");
            ExitStatus::Reset
        }
        VmExit::Crash(why) => {
            eprintln!("vmm: guest crashed: {why}");
            ExitStatus::Crash
        }
        VmExit::Stopped => ExitStatus::Stopped,
    })
}
