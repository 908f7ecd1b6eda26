//! Bare-metal x86-64 test guests for the VMM's tests, benchmarks and demo.
//!
//! The guests are built from source (`guest/`, a `#![no_std]` cargo project
//! of its own) by this crate's build script; this crate only says where the
//! ELF files are: [`NAMES`] and [`path`]. From a shell:
//! `cargo run -q -p testguest -- path hello`.
//!
//! # What a guest file is
//! A static ELF64 `ET_EXEC`, linked and loaded at 1 MiB, with two entries:
//! * `e_entry`: 64-bit entry (Linux 64-bit boot protocol state: long mode,
//!   identity map of the low 4 GiB, RSI = `boot_params`);
//! * a Xen `PHYS32_ENTRY` ELF note (PVH): 32-bit protected mode, paging off,
//!   EBX = `hvm_start_info`; `qemu-system-x86_64 -M microvm -kernel FILE`
//!   boots it this way.
//!
//! Either way the guest builds its own page tables, GDT, TSS and IDT with a
//! few thousand instructions at CPL0 and then runs at CPL3 (native speed
//! under PVM). Port I/O from CPL3 is allowed by the TSS I/O bitmap (PVM
//! ignores IOPL); all memory including MMIO is mapped for CPL3.
//!
//! # Serial output (COM1, "\n" line ends)
//! Every guest first prints
//! `testguest <name>: boot via <pvh|elf64> cmdline '<cmdline>'`. Then:
//!
//! | guest | prints | ends |
//! |---|---|---|
//! | `hello` | `hello from testguest` | power-off |
//! | `poweroff` | `poweroff: powering off` | power-off |
//! | `smp` | `smp: cpu <i> apic <id> online` per CPU (any order), then `smp: <n>/<n> cpus online` or `smp: only <k>/<n> cpus online` (after 5 s) | power-off |
//! | `reset` | `reset: boot <k>`; `reset: requesting reset` while `k <= resets` (cmdline `resets=N`, default 1), else `reset: done after <k-1> resets` | reset (i8042 0xFE to port 0x64), then power-off; the boot count lives in CMOS NVRAM byte 0x38 |
//! | `pio` | `pio: count=<N> cycles=<TSC cycles>` for N (`count=`, default 100000) `out` to `port=` (default 0x80) | power-off |
//! | `blk` | a polled virtio-blk driver (modern virtio-pci, split virtqueue, CPL3): `blk: device 00:<dd>.<f> capacity <sectors> sectors blk_size <n> seg_max <n> ro <0\|1> features 0x<hex>`, `blk: serial '<GET_ID>'`, then what the cmdline asks for: a pattern write/read-back check (`check=N at=S seed=X`), a read-only write (`readonly=1`), past-end and unknown-type statuses (`sectorpast=1`, `unknown=1`), benchmarks (`randwrite=N`, `read=1 req=KiB depth=D`); `blk: done`, or `blk: FAIL <why>`; BARs the firmware left at 0 go to `pcimem=0xADDR`; every line, option and the pattern's formula are in `guest/src/bin/blk.rs` | power-off |
//! | `net` | a polled virtio-net driver (modern virtio-pci, split virtqueues, CPL3) with ARP, IPv4, UDP and a DHCP client: `net: device 00:<dd>.<f> mac <xx:..> features 0x<hex> mtu <n\|->`, `net: srcmac <xx:..>` (`srcmac=XX:XX:XX:XX:XX:XX`: every frame it sends, ARP, DHCP, echo and blast, carries that source MAC instead of the device's, and ARP and DHCP name it; frames to either MAC are taken), then `net: dhcp ip <a.b.c.d>/<p> router <r\|-> server <s>` (`dhcp=1`) or `net: ip <a.b.c.d>/<p>` (`ip=`), `net: blast <N> datagrams <bytes> bytes cycles=<C> exits=<E>` (`blast=N to=A.B.C.D:PORT size=B`), `net: echo port <P> ready` and `net: echoed <n>` (`echo=PORT count=N`); `net: done`, or `net: FAIL <why>`; every line and option is in `guest/src/bin/net.rs` | power-off |
//! | `crash` | `crash: triple fault next` | triple fault (KVM_EXIT_SHUTDOWN) |
//! | `tools` | vmt(4)-style guest tools over the VMware backdoor (guestrpc's guest end): `tools: backdoor version <v> type <t>` or `tools: no VMware backdoor`, clock syncs, an RPCI self-test (`selftest=1`), an RPCI benchmark (`bench=N`: `rpci: lb\|hb count=<N> cycles=<C>`), then a TCLO loop answering power commands; every line and option is listed in `guest/src/bin/tools.rs` | power-off or reset on `OS_Halt` / `OS_Reboot` (or after `bench=`); spins for ever without a backdoor |
//!
//! Power-off prints, just before the write, one of
//! `poweroff: ACPI PM1a_CNT port 0x<port> SLP_TYP <n>` or
//! `poweroff: ACPI SLEEP_CONTROL_REG <mmio|port> 0x<addr> SLP_TYP <n>`;
//! without usable ACPI it prints why, writes port 0xf4 (isa-debug-exit) and
//! spins. An unexpected CPU exception prints
//! `testguest: exception <vector> at rip 0x<rip>` and a line of registers,
//! then powers off; a panic prints `testguest: panic: ...` and powers off.

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/names.rs"));

/// Directory of the built guests (absolute, inside this crate's OUT_DIR).
const DIR: &str = env!("TESTGUEST_DIR");

/// Absolute path of the ELF file of guest `name`, `None` if there is no
/// such guest.
pub fn path(name: &str) -> Option<PathBuf> {
    NAMES.contains(&name).then(|| PathBuf::from(DIR).join(name))
}

/// The 512-byte boot sector of the firmware boot tests
/// (`bootsector/bootsector.S`): loaded by a BIOS from a disk or a CD, it
/// prints `bootsector: booted from drive 0x<DL>` on COM1 and powers off
/// through ACPI PM1a_CNT at port 0x604.
pub fn bootsector() -> PathBuf {
    PathBuf::from(env!("BOOTSECTOR_IMG"))
}

/// For tests that boot these guests: true if /dev/kvm can be used. Without
/// it the test should return early (a skip, said on stderr), except under
/// CI (`CI=true`), where this panics: a CI run that skipped every VM test
/// would prove nothing.
pub fn kvm_or_skip() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("/dev/kvm is required under CI: {e}");
            }
            eprintln!("skipping: /dev/kvm unavailable: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_file() {
        assert!(NAMES.contains(&"hello"));
        for name in NAMES {
            let p = path(name).unwrap();
            assert!(p.is_absolute() && p.is_file(), "{}", p.display());
        }
    }

    #[test]
    fn unknown_name_has_no_path() {
        assert_eq!(path("no-such-guest"), None);
        assert_eq!(path(""), None);
    }
}
