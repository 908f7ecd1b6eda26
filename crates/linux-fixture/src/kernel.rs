//! The kernel tests boot, and what the VM must present for it to run.
//!
//! By default this is the fixture kernel: Debian's `linux-source-6.1`
//! built by `build-kernel` (beside this crate's Cargo.toml) with the
//! configuration and patches in `kernel/`, cached outside the repository.
//! It runs on this project's PVM hosts, whose KVM emulates guest kernel
//! code instruction by instruction and rejects a few instructions a stock
//! kernel needs; every workaround lives in the fixture (patches, config,
//! the command line and CPU settings below), never in the VMM, which boots
//! stock kernels on VT-x/SVM hosts. There `VMD_FIXTURE_KERNEL=stock`
//! switches the same tests to Debian's stock `linux-image-cloud-amd64`
//! (fetched by `.ci/fetch-linux`), booted with none of the workarounds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Which kernel the tests boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The tailored kernel with the PVM workarounds (the default).
    Fixture,
    /// Debian's stock cloud kernel (`VMD_FIXTURE_KERNEL=stock`): for hosts
    /// with hardware virtualization, where nothing needs working around.
    Stock,
}

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub kind: Kind,
    /// The image to boot: the fixture's ELF `vmlinux` (entered through its
    /// PVH note: no decompressor runs on the emulated CPU) or the stock
    /// bzImage.
    pub image: PathBuf,
    /// Where the image came from, for messages (`linux-source-6.1 6.1.x`).
    pub package: String,
}

/// The CPU the fixture kernel must be shown.
///
/// An Intel CPU, whatever the host's vendor: on an AMD host Linux takes
/// its AMD-only FPU workaround on the first return to user space
/// (`fnclex; emms; fild`), which the CPL0 emulator rejects. Family 6
/// model 44 (Westmere-EP) is an Intel CPU old enough that Linux expects
/// none of the features hidden below.
pub const CPU_VENDOR: &str = "intel";
pub const CPU_FAMILY: u32 = 6;
pub const CPU_MODEL: u32 = 44;

/// Features hidden from the fixture kernel: instructions the CPL0
/// emulator cannot run (cx16: SLUB's cmpxchg16b; xsave: FPU init's
/// xrstor; popcnt; smap/smep: stac/clac in the entry code) and fast-string
/// features that make the kernel zero memory a byte at a time through an
/// emulated `rep stosb` (erms, fsrm), plus features the emulator does
/// not model (pcid, invpcid, fsgsbase, rdrand, rdseed). Without the
/// TSC-deadline timer the LAPIC timer runs in its periodic mode, as on a
/// Westmere: the fixture keeps a periodic tick (`nohz=off`), and with
/// TSC-deadline every tick is a reprogramming, two more emulated MSR
/// writes and a TSC read each (~0.5M emulated instructions per boot).
pub const CPU_HIDE: &[&str] = &[
    "cx16",
    "xsave",
    "popcnt",
    "pcid",
    "rdrand",
    "fsgsbase",
    "smep",
    "erms",
    "invpcid",
    "rdseed",
    "smap",
    "fsrm",
    "tsc_deadline_timer",
];

/// Kernel command-line settings the fixture needs. The guest sees some
/// host features whatever CPUID says (the emulator does not consult it),
/// so Linux is also told to clear them itself: `clearcpuid` takes the
/// kernel's own bit numbers (word * 32 + bit) for pcid, popcnt, rdrand,
/// fsgsbase, smep, erms, invpcid, rdseed, smap and fsrm.
///
/// `highres=off nohz=off` keep the periodic tick: each tick of the
/// high-resolution one-shot machinery runs about three times the emulated
/// instructions of a periodic one (measured to the power-off of a busybox
/// boot: 30.7 M instructions and 54 s against 28.8 M and 48 s).
const FIXTURE_CMDLINE: &str =
    "noxsave clearcpuid=145,151,158,288,295,297,298,306,308,580 highres=off nohz=off";

/// Command-line settings both kernels get: the console on COM1, no reboot
/// loop after a panic (the VM ends and the test sees it), and only
/// errors on the console: each byte written to the UART is two exits and
/// a few hundred emulated instructions (loglevel=7 costs 0.8 M more
/// instructions per boot). Tests read what they need with `dmesg`.
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4";

/// Why no kernel could be had. The message names the step that failed.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The repository's root (this crate lives in `crates/linux-fixture`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Kernel {
    /// The kernel `VMD_FIXTURE_KERNEL` names (`fixture`, the default, or
    /// `stock`), built or fetched on the first call in this process and
    /// cached on disk, so later calls and later runs cost nothing.
    pub fn get() -> Result<Kernel, Error> {
        static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
        KERNEL
            .get_or_init(|| {
                let kind = match std::env::var("VMD_FIXTURE_KERNEL").as_deref() {
                    Ok("stock") => Kind::Stock,
                    Ok("fixture") | Ok("") | Err(_) => Kind::Fixture,
                    Ok(other) => {
                        return Err(format!(
                            "VMD_FIXTURE_KERNEL={other}: expected `fixture` or `stock`"
                        ))
                    }
                };
                match kind {
                    Kind::Fixture => Self::fixture(),
                    Kind::Stock => Self::stock(),
                }
                .map_err(|e| e.0)
            })
            .clone()
            .map_err(Error)
    }

    /// Like [`Kernel::get`], for tests: a kernel, or a panic whose message
    /// says which step failed. Tests never pass without one.
    pub fn required() -> Kernel {
        Self::get().unwrap_or_else(|e| panic!("the Linux test fixture is not available: {e}"))
    }

    fn fixture() -> Result<Kernel, Error> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-kernel");
        let out = Command::new(&script)
            .output()
            .map_err(|e| Error(format!("cannot run {}: {e}", script.display())))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(Error(format!(
                "{} failed: {}",
                script.display(),
                log.lines()
                    .filter(|l| l.starts_with("build-kernel:"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let image = dir.join("vmlinux");
        if !image.is_file() {
            return Err(Error(format!(
                "{} printed {}, which has no vmlinux",
                script.display(),
                dir.display()
            )));
        }
        let package = std::fs::read_to_string(dir.join("package"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Kernel {
            kind: Kind::Fixture,
            image,
            package,
        })
    }

    fn stock() -> Result<Kernel, Error> {
        let dir = std::env::var_os("VMD_LINUX_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/linux"));
        let fetch = repo_root().join(".ci/fetch-linux");
        let status = Command::new(&fetch)
            .arg(&dir)
            .status()
            .map_err(|e| Error(format!("cannot run {}: {e}", fetch.display())))?;
        if !status.success() {
            return Err(Error(format!(
                "{} {} failed ({status})",
                fetch.display(),
                dir.display()
            )));
        }
        let package = std::fs::read_to_string(dir.join("package"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Kernel {
            kind: Kind::Stock,
            image: dir.join("vmlinuz"),
            package,
        })
    }

    /// The kernel command line: the settings this kernel needs, then
    /// `extra` (the test's own, e.g. `rdinit=/init`).
    pub fn cmdline(&self, extra: &str) -> String {
        let mut c = BASE_CMDLINE.to_owned();
        if self.kind == Kind::Fixture {
            c.push(' ');
            c.push_str(FIXTURE_CMDLINE);
        }
        if !extra.is_empty() {
            c.push(' ');
            c.push_str(extra);
        }
        c
    }

    /// The `cpu` statements of a vm.conf `vm` block (empty for the stock
    /// kernel, which runs on whatever CPU the host has).
    pub fn vm_conf_cpu(&self) -> String {
        match self.kind {
            Kind::Stock => String::new(),
            Kind::Fixture => format!(
                "cpu vendor {CPU_VENDOR} family {CPU_FAMILY} model {CPU_MODEL}\n\
                 cpu hide {{ {} }}\n",
                CPU_HIDE.join(" ")
            ),
        }
    }

    /// The same settings as `vmm` options.
    pub fn vmm_cpu_args(&self) -> Vec<String> {
        match self.kind {
            Kind::Stock => Vec::new(),
            Kind::Fixture => vec![
                "--cpu-vendor".into(),
                CPU_VENDOR.into(),
                "--cpu-family".into(),
                CPU_FAMILY.to_string(),
                "--cpu-model".into(),
                CPU_MODEL.to_string(),
                "--cpu-hide".into(),
                CPU_HIDE.join(","),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(kind: Kind) -> Kernel {
        Kernel {
            kind,
            image: PathBuf::from("/k"),
            package: String::new(),
        }
    }

    #[test]
    fn the_stock_kernel_gets_no_workarounds() {
        let s = k(Kind::Stock);
        assert_eq!(
            s.cmdline("rdinit=/init"),
            format!("{BASE_CMDLINE} rdinit=/init")
        );
        assert!(s.vm_conf_cpu().is_empty());
        assert!(s.vmm_cpu_args().is_empty());
    }

    #[test]
    fn the_fixture_kernel_gets_its_cpu_and_command_line() {
        let f = k(Kind::Fixture);
        assert!(f.cmdline("").contains("clearcpuid="));
        assert_eq!(
            f.vm_conf_cpu().lines().next(),
            Some("cpu vendor intel family 6 model 44")
        );
        assert!(f.vmm_cpu_args().contains(
            &"cx16,xsave,popcnt,pcid,rdrand,fsgsbase,smep,erms,invpcid,rdseed,smap,fsrm,tsc_deadline_timer"
                .to_owned()
        ));
    }
}
