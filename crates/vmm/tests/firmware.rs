//! Booting through the BIOS: Debian's SeaBIOS finds our virtio-blk disk
//! on PCI and loads its boot sector (testguest's `bootsector.S`), which
//! prints on COM1 and powers off. The same image boots on QEMU's PC, so
//! the test image is a PC boot sector, not something only we accept.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const BIOS: &str = "/usr/share/seabios/bios.bin";

/// SeaBIOS (Debian's `seabios` package): required under CI, else a skip.
fn bios_or_skip() -> bool {
    if std::path::Path::new(BIOS).is_file() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{BIOS} is required under CI (apt-get install seabios)");
    }
    eprintln!("skipping: no {BIOS}");
    false
}

/// A 1 MiB raw disk whose first sector is the boot sector.
fn boot_disk(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-fw-{}-{name}.img", std::process::id()));
    let mut img = std::fs::read(testguest::bootsector()).unwrap();
    img.resize(1 << 20, 0);
    std::fs::write(&p, img).unwrap();
    p
}

#[test]
fn seabios_boots_the_boot_sector_of_a_virtio_disk() {
    if !kvm_or_skip() || !bios_or_skip() {
        return;
    }
    let disk = boot_disk("raw");
    let mut c = vmm();
    c.args(["-m", "64M", "-d"]).arg(&disk);
    let t = Instant::now();
    let o = run(c, Duration::from_secs(120));
    eprintln!("SeaBIOS to power-off: {:?}", t.elapsed());
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stdout.contains("bootsector: booted from drive 0x80"),
        "{o:?}"
    );

    // `-k` may name the BIOS itself (vm.conf's `boot` may), and a CD-ROM
    // first boot order with no CD-ROM falls back to the disk.
    let mut c = vmm();
    c.args(["-m", "64M", "--boot-device", "cdrom", "-k", BIOS, "-d"])
        .arg(&disk);
    let o = run(c, Duration::from_secs(120));
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stdout.contains("bootsector: booted from drive 0x80"),
        "{o:?}"
    );
    let _ = std::fs::remove_file(&disk);
}

#[test]
fn the_boot_sector_boots_on_qemu_too() {
    if !kvm_or_skip() || !bios_or_skip() {
        return;
    }
    let Ok(qemu) = which("qemu-system-x86_64") else {
        assert!(
            std::env::var("CI").ok().as_deref() != Some("true"),
            "qemu-system-x86_64 is required under CI"
        );
        eprintln!("skipping: no qemu-system-x86_64");
        return;
    };
    let disk = boot_disk("qemu");
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "pc",
        "-accel",
        "kvm",
        "-m",
        "64",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-drive",
    ])
    .arg(format!("file={},format=raw,if=virtio", disk.display()));
    let o = run(c, Duration::from_secs(120));
    assert!(
        o.stdout.contains("bootsector: booted from drive 0x80"),
        "{o:?}"
    );
    let _ = std::fs::remove_file(&disk);
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn seabios_boots_a_qcow2_disk() {
    if !kvm_or_skip() || !bios_or_skip() {
        return;
    }
    let raw = boot_disk("to-qcow2");
    let q = raw.with_extension("qcow2");
    let _ = std::fs::remove_file(&q);
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .status()
        .expect("qemu-img (Debian's qemu-utils)");
    assert!(st.success());
    let mut c = vmm();
    c.args(["-m", "64M", "-d"]).arg(&q);
    let o = run(c, Duration::from_secs(120));
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stdout.contains("bootsector: booted from drive 0x80"),
        "{o:?}"
    );
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&q);
}

/// An El Torito CD (no emulation) whose boot image is the boot sector,
/// made with xorriso (Debian's `xorriso`), plus a file.
pub fn boot_iso(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-fw-{}-{name}.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut img = std::fs::read(testguest::bootsector()).unwrap();
    img.resize(2048, 0);
    std::fs::write(dir.join("boot.img"), img).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the iso\n").unwrap();
    let iso = dir.with_extension("iso");
    let o = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-b",
            "boot.img",
            "-no-emul-boot",
        ])
        .args(["-boot-load-size", "4", "-o"])
        .arg(&iso)
        .arg(&dir)
        .output()
        .expect("xorriso (Debian's xorriso) makes the CD images");
    assert!(o.status.success(), "xorriso: {o:?}");
    let _ = std::fs::remove_dir_all(&dir);
    iso
}

#[test]
fn seabios_boots_a_cdrom() {
    if !kvm_or_skip() || !bios_or_skip() {
        return;
    }
    let iso = boot_iso("cd");
    let disk = std::env::temp_dir().join(format!("vmm-fw-{}-blank.img", std::process::id()));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // A blank disk as well: the boot order puts the CD-ROM first.
    let mut c = vmm();
    c.args(["-m", "64M", "--boot-device", "cdrom", "-r"])
        .arg(&iso)
        .arg("-d")
        .arg(&disk);
    let o = run(c, Duration::from_secs(120));
    assert_eq!(o.code(), Some(0), "{o:?}");
    // SeaBIOS numbers the CD-ROM drive 0xe0 (0x80 is a hard disk).
    assert!(
        o.stdout.contains("bootsector: booted from drive 0xe0"),
        "{o:?}"
    );
    let _ = std::fs::remove_file(&iso);
    let _ = std::fs::remove_file(&disk);
}
