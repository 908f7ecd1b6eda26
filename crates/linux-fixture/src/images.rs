//! The initramfs images the Linux tests boot, and the programs of ours
//! they carry.
//!
//! Two images: [`busybox`] (busybox and the test's `/init`: ~2 MB, the
//! fastest boot) and [`guest_tools`] (that plus Debian's unmodified
//! open-vm-tools with their library closure: ~11 MB, which costs ~30 s
//! more of emulated unpacking, so only tests of the guest channel use it).
//! Images are written once per test process into the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::debian;
use crate::initramfs::{Error, Initramfs};

/// What every test `/init` starts with: a shell environment, the kernel
/// filesystems, and a hostname. The test's script follows.
pub const INIT_PRELUDE: &str = "#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
";

/// Files a system with a shell login has, which the guest tools read: the
/// OS they report (`/etc/os-release`), name services for `hostname`.
fn base_files(image: &mut Initramfs) -> Result<(), Error> {
    image
        .file(
            "/etc/os-release",
            "PRETTY_NAME=\"vmd Linux test fixture\"\nNAME=\"vmd-fixture\"\nID=vmd-fixture\nVERSION_ID=1\n",
            0o644,
        )?
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?
        .file("/etc/group", "root:x:0:\n", 0o644)?
        .file("/etc/hosts", "127.0.0.1 localhost\n", 0o644)?
        .file("/etc/nsswitch.conf", "hosts: files\n", 0o644)?
        .dir("/root", 0o700)?;
    Ok(())
}

/// Busybox and `/init` (`INIT_PRELUDE` + `script`).
pub fn busybox(script: &str) -> Result<Initramfs, Error> {
    let mut image = Initramfs::new();
    image.busybox()?;
    base_files(&mut image)?;
    image.init(&format!("{INIT_PRELUDE}{script}"))?;
    Ok(image)
}

/// The open-vm-tools programs the tests run, as Debian ships them.
const TOOLS: &[&str] = &[
    "/usr/bin/vmware-checkvm",
    "/usr/bin/vmware-rpctool",
    "/usr/bin/vmtoolsd",
];

/// The vmtoolsd plugins a guest needs to answer power requests and report
/// itself; the others (vmbackup, resolutionKMS, ...) would only add
/// libraries to unpack.
const PLUGINS: &[&str] = &["libguestInfo.so", "libpowerOps.so", "libtimeSync.so"];
const PLUGIN_DIR: &str = "/usr/lib/x86_64-linux-gnu/open-vm-tools/plugins/vmsvc";

/// [`busybox`] plus Debian's open-vm-tools (checkvm, rpctool, vmtoolsd and
/// its power, guest-info and time-sync plugins, each with its libraries,
/// and the package's `/etc/vmware-tools`), and our `ioperm-exec` wrapper, which grants a program the backdoor
/// ports and execs it (see that program for why).
///
/// `/sbin/shutdown` is the system's shutdown command, which vmtoolsd runs
/// on a halt or reboot request (`shutdown -h now` / `shutdown -r now`):
/// the image has no init system, so it powers off or reboots directly.
pub fn guest_tools(script: &str) -> Result<Initramfs, Error> {
    let mut image = busybox(script)?;
    let packages = debian::fetch_with_libs("open-vm-tools")?;
    let root = packages[0].root().to_path_buf();
    for t in TOOLS {
        image.binary_with_libs(t, root.join(&t[1..]), &packages)?;
    }
    for p in PLUGINS {
        let guest = format!("{PLUGIN_DIR}/{p}");
        image.binary_with_libs(&guest, root.join(&guest[1..]), &packages)?;
    }
    // The power-operation scripts the package installs, which vmtoolsd runs
    // before it acknowledges a halt or reboot ("Error starting script"
    // without them).
    image.tree_with_libs(
        "/etc/vmware-tools",
        root.join("etc/vmware-tools"),
        &packages,
    )?;
    let wrapper = program("ioperm-exec").map_err(|e| Error::Io {
        action: "build ioperm-exec",
        path: PathBuf::from("ioperm-exec"),
        source: std::io::Error::other(e),
    })?;
    // Stripped: a debug build carries megabytes of debug information that
    // the guest would spend seconds of emulated CPU unpacking.
    let stripped = scratch_dir().join("ioperm-exec");
    strip(&wrapper, &stripped)?;
    image.binary_with_libs("/usr/bin/ioperm-exec", stripped, &packages)?;
    image.file(
        "/sbin/shutdown",
        "#!/bin/sh\n# The image has no init: stop the machine directly.\ncase \" $* \" in\n*\" -r \"*) exec reboot -f ;;\n*) exec poweroff -f ;;\nesac\n",
        0o755,
    )?;
    Ok(image)
}

/// Writes a copy of ELF file `from` without symbols or debug information.
fn strip(from: &Path, to: &Path) -> Result<(), Error> {
    let io = |action, path: &Path, source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    }
    let out = Command::new("strip")
        .arg("-o")
        .arg(to)
        .arg(from)
        .output()
        .map_err(|e| io("run strip on", from, e))?;
    if !out.status.success() {
        return Err(io(
            "strip",
            from,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(())
}

/// Writes `image` as `NAME.cpio` in this test process's scratch directory
/// under the target directory, and returns the path.
pub fn write(name: &str, image: &Initramfs) -> Result<PathBuf, Error> {
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        action: "create",
        path: dir.clone(),
        source: e,
    })?;
    let path = dir.join(format!("{name}.cpio"));
    image.write(&path)?;
    Ok(path)
}

fn scratch_dir() -> PathBuf {
    target_profile_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("linux-fixture")
        .join(std::process::id().to_string())
}

/// `target/<profile>` of the running test: tests run from
/// `target/<profile>/deps/NAME-HASH`.
fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? == "deps" {
        Some(deps.parent()?.to_path_buf())
    } else {
        Some(deps.to_path_buf())
    }
}

/// The path of this crate's binary `name`, built (in the running test's
/// profile and target directory; a no-op when it is up to date): the tests
/// of other crates cannot ask cargo for it.
pub fn program(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<()>> = OnceLock::new();
    let _one_at_a_time = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = target_profile_dir().ok_or("cannot tell the target directory")?;
    let path = dir.join(name);
    let profile = dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target = dir.parent().ok_or("no target directory")?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-p", "linux-fixture", "--bin", name])
        .arg("--target-dir")
        .arg(target)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    if profile == "release" {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cargo build --bin {name}: {e}"))?;
    if !out.status.success() || !path.is_file() {
        return Err(format!(
            "cargo build --bin {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(path)
}
