//! Disks under the daemon: a `disk` in vm.conf reaches the guest as a
//! virtio-blk device (the `blk` test guest writes, the host reads the
//! image), an image in use by one VM is refused to another with that VM's
//! name, and disk paths from unprivileged users are checked.

mod common;

use std::time::Duration;

use api::v1::VmState;
use common::*;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn image(dir: &std::path::Path, name: &str, size: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p.display().to_string()
}

#[test]
fn a_configured_disk_is_written_by_the_guest_and_not_shared() {
    if !kvm_or_skip() {
        return;
    }
    let dir = fresh_dir();
    let img = image(&dir, "a.img", 4 << 20);
    let conf = format!(
        "vm \"writer\" {{\n\tdisable\n\tkernel \"{blk}\"\n\tcmdline \"check=16 at=3 seed=9\"\n\tmemory 32M\n\tdisk \"{img}\"\n}}\n\
         vm \"holder\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 32M\n\tdisk \"{img}\"\n}}\n",
        blk = guest("blk"),
        tools = guest("tools"),
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in(dir.clone());

    d.vmctl_ok(&["start", "writer"]);
    d.wait_vm("writer", "powered off", Duration::from_secs(30), |v| {
        v.last_exit.is_some() && v.pid.is_none()
    });
    let st = d.vmctl_ok(&["status", "writer"]);
    assert!(st.stdout.contains(&format!("disk0 raw {img}\n")), "{st:?}");
    let bytes = std::fs::read(&img).unwrap();
    for s in 3..19u64 {
        for w in 0..64u64 {
            let at = (s * 512 + w * 8) as usize;
            let got = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            assert_eq!(got, splitmix64(9 ^ (s * 64 + w)), "sector {s} word {w}");
        }
    }

    // While one VM runs on the image, another may not start on it.
    d.vmctl_ok(&["start", "holder"]);
    d.wait_running("holder");
    let o = d.vmctl(&["start", "writer"]);
    assert!(!o.ok(), "{o:?}");
    assert!(
        o.stderr
            .contains(&format!("disk {img} is in use by vm holder")),
        "{o:?}"
    );
    d.vmctl_ok(&["stop", "-f", "holder"]);
    d.wait_vm("holder", "stopped", Duration::from_secs(20), |v| {
        v.state != VmState::Running && v.pid.is_none()
    });
    d.vmctl_ok(&["start", "writer"]);
}

#[test]
fn missing_and_unreadable_disks_are_refused_with_their_name() {
    if !kvm_or_skip() {
        return;
    }
    let dir = fresh_dir();
    let conf = format!(
        "vm \"gone\" {{\n\tdisable\n\tkernel \"{}\"\n\tmemory 32M\n\tdisk \"/nonexistent/vmd-test.img\"\n}}\n",
        guest("blk")
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in(dir);
    let o = d.vmctl(&["start", "gone"]);
    assert!(!o.ok(), "{o:?}");
    assert!(
        o.stderr.contains("/nonexistent/vmd-test.img"),
        "{o:?}\n{}",
        d.log()
    );
}

/// A VM with no kernel boots through the BIOS: here from its CD-ROM
/// (`boot device cdrom`), an El Torito image of the test boot sector, which
/// prints and powers the VM off; status lists the CD-ROM.
#[test]
fn a_vm_without_a_kernel_boots_its_cdrom_through_the_bios() {
    if !kvm_or_skip() {
        return;
    }
    if !std::path::Path::new("/usr/share/seabios/bios.bin").is_file() {
        assert!(
            std::env::var("CI").ok().as_deref() != Some("true"),
            "SeaBIOS is required under CI"
        );
        eprintln!("skipping: no SeaBIOS");
        return;
    }
    let dir = fresh_dir();
    let iso_dir = dir.join("iso");
    std::fs::create_dir(&iso_dir).unwrap();
    let mut boot = std::fs::read(testguest::bootsector()).unwrap();
    boot.resize(2048, 0);
    std::fs::write(iso_dir.join("boot.img"), boot).unwrap();
    let iso = dir.join("boot.iso");
    let o = std::process::Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-b",
            "boot.img",
            "-no-emul-boot",
        ])
        .args(["-boot-load-size", "4", "-o"])
        .arg(&iso)
        .arg(&iso_dir)
        .output()
        .expect("xorriso (Debian's xorriso)");
    assert!(o.status.success(), "{o:?}");
    let img = image(&dir, "blank.img", 1 << 20);
    let conf = format!(
        "vm \"cd\" {{\n\tdisable\n\tmemory 64M\n\tdisk \"{img}\"\n\tcdrom \"{}\"\n\tboot device cdrom\n}}\n",
        iso.display()
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in(dir.clone());
    d.vmctl_ok(&["start", "cd"]);
    let vm = d.wait_vm(
        "cd",
        "powered off by its boot sector",
        Duration::from_secs(60),
        |v| v.last_exit.is_some() && v.pid.is_none(),
    );
    assert_eq!(
        vm.last_exit.as_deref(),
        Some("powered off"),
        "{vm:#?}\n{}",
        d.log()
    );
    let st = d.vmctl_ok(&["status", "cd"]);
    assert!(
        st.stdout.contains(&format!("cdrom {}\n", iso.display())),
        "{st:?}"
    );
}
