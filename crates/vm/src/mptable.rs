//! Intel MultiProcessor Specification (1.4) tables for the guest: the MP
//! Floating Pointer Structure and the MP Configuration Table it points at.
//!
//! Why an MP table at all when the ACPI MADT already describes the CPUs and
//! interrupts (and Linux and OpenBSD both prefer it):
//!
//! - **The scan costs seconds here.** A Linux kernel built with
//!   `CONFIG_X86_MPPARSE` (Debian's generic amd64 kernel among them) looks
//!   for the floating pointer early in `setup_arch`, whether or not ACPI is
//!   there: the first 1 KiB of memory, the last 1 KiB of base memory
//!   (639K..640K), the BIOS area 0xf0000..0xfffff, then the EBDA, in 16-byte
//!   steps. Linux 6.1's `smp_scan_config` maps and unmaps the rest of the
//!   range with `early_memremap` at every step, so with no table anywhere it
//!   runs about 3.3 million guest kernel instructions. Guest CPL0 code is
//!   emulated on this project's PVM hosts (see DESIGN.md), which makes that
//!   3.5 s of every Linux boot. With the pointer at the first step of the
//!   second range, the scan stops after 65 steps instead of ~4200.
//! - **Kernels without ACPI** (`acpi=off`, or built without it) learn the
//!   CPUs, the IOAPIC and the ISA interrupt wiring only from this table.
//!
//! So the table says exactly what the ACPI tables say (see `acpi`): one
//! processor per vCPU with APIC id = vCPU index, the IOAPIC with the MADT's
//! id and address, the ISA IRQs wired as the MADT's interrupt source
//! overrides have them, and INTA# of each PCI slot 1..=31 on IOAPIC pin
//! `pci_intx_gsi(slot)`, level triggered and active low, as the DSDT's
//! `_PRT` has it. With both present, Linux and OpenBSD use ACPI and skip
//! this table's contents.
//!
//! Bus ids: PCI bus 0 is MP bus 0, because Linux looks a PCI device's
//! interrupt up by its PCI bus number in the source bus field
//! (`IO_APIC_get_PCI_irq_vector`); the ISA bus is bus 1, as SeaBIOS numbers
//! them (PCI buses first, ISA after).
//!
//! Placement: the floating pointer sits at the start of the last KiB of base
//! memory (`MPTABLE_ADDR`, 0x9fc00, inside the reserved e820 range that runs
//! to 1 MiB) and the configuration table right after it:
//!
//! ```text
//! 0x9fc00  floating pointer (16 bytes, "_MP_", 16-byte aligned)
//! 0x9fc10  configuration table ("PCMP"): 44-byte header, then
//!            one processor entry (20 bytes) per vCPU
//!            bus 0 "PCI   ", bus 1 "ISA   "          (8 each)
//!            IOAPIC                                 (8)
//!            16 ISA I/O interrupt entries           (8 each)
//!            31 PCI I/O interrupt entries (INTA#)   (8 each)
//!            ExtINT -> LINT0, NMI -> LINT1          (8 each)
//! ```
//!
//! That is 460 + 20 * vCPUs bytes of table: 0x9fc10..0x9fdf0 for one vCPU,
//! 0x9fc10..0xa11b4 for 254. Past 27 vCPUs it runs over 0xa0000 into the
//! (equally reserved, RAM-backed) legacy VGA window; it always ends far
//! below the ACPI tables at `ACPI_ADDR` (asserted at compile time).

use std::fmt;

use kvm_bindings::kvm_lapic_state;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::acpi::{IOAPIC_ID, MAX_CPUS, OEM_ID, OEM_TABLE_ID};
use crate::layout::{pci_intx_gsi, ACPI_ADDR, IOAPIC_ADDR, IRQ_SCI, LAPIC_ADDR, MPTABLE_ADDR};

/// Floating pointer length: one 16-byte paragraph (its `length` field is 1).
const FP_LEN: usize = 16;
/// Configuration table header length.
const HEADER_LEN: usize = 44;
/// Processor entries are 20 bytes; every other base entry is 8.
const CPU_ENTRY_LEN: usize = 20;
const ENTRY_LEN: usize = 8;

/// Where the configuration table starts: right after the floating pointer.
pub const MP_CONFIG_ADDR: u64 = MPTABLE_ADDR + FP_LEN as u64;

/// MP spec revision 1.4, in the form both structures carry it.
const SPEC_REV: u8 = 4;

/// Entry types (MP spec 1.4, table 4-3). Entries must appear sorted by type.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor entry CPU flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// I/O APIC entry flags.
const IOAPIC_ENABLED: u8 = 1 << 0;

/// Interrupt types of I/O and local interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Interrupt flags: polarity in bits 1:0, trigger mode in bits 3:2. The
/// MADT's interrupt source overrides carry the very same "MPS INTI" encoding.
const INTI_CONFORMS: u16 = 0;
const INTI_ACTIVE_HIGH: u16 = 0b01;
const INTI_ACTIVE_LOW: u16 = 0b11;
const INTI_LEVEL: u16 = 0b11 << 2;

/// Bus ids and 6-byte type strings. The PCI bus's id is its PCI bus number,
/// which is what Linux looks PCI interrupts up by.
const PCI_BUS_ID: u8 = 0;
const PCI_BUS_TYPE: [u8; 6] = *b"PCI   ";
const ISA_BUS_ID: u8 = 1;
const ISA_BUS_TYPE: [u8; 6] = *b"ISA   ";
const BUSES: [(u8, [u8; 6]); 2] = [(PCI_BUS_ID, PCI_BUS_TYPE), (ISA_BUS_ID, ISA_BUS_TYPE)];

/// PCI device slots with an interrupt entry: 0 is the host bridge, which
/// raises none.
const PCI_FIRST_SLOT: u8 = 1;
const PCI_SLOTS: u8 = 32;
/// INTA#, in the low two bits of a PCI source bus IRQ (device in bits 6:2).
const PCI_INTA: u8 = 0;

/// Destination "all local APICs" in a local interrupt entry.
const ALL_LAPICS: u8 = 0xff;

/// ISA IRQ 0 (the PIT) and the IOAPIC pin it is wired to, as the MADT's
/// interrupt source override says; the IOAPIC's pin 0 is the 8259's ExtINT.
const PIT_IRQ: u8 = 0;
const PIT_PIN: u8 = 2;
/// The 8259s' cascade input: never an interrupt source of its own.
const CASCADE_IRQ: u8 = 2;
/// ISA IRQs are 0-15.
const ISA_IRQS: u8 = 16;

/// The version KVM's in-kernel IOAPIC reports in its version register
/// (`IOAPIC_VERSION_ID`). KVM offers no way to read it without a guest.
pub const IOAPIC_VERSION: u8 = 0x11;

/// The version KVM's in-kernel local APIC reports (`APIC_LVR` bits 7:0),
/// used when a vCPU's own LAPIC state does not say (see [`lapic_version`]).
pub const KVM_LAPIC_VERSION: u8 = 0x14;

/// `APIC_LVR`, the version register's offset in the LAPIC register page.
const APIC_LVR: usize = 0x30;

/// Base configuration table length, header included, for `num_cpus` vCPUs.
pub const fn config_table_len(num_cpus: u32) -> usize {
    HEADER_LEN + CPU_ENTRY_LEN * num_cpus as usize + ENTRY_LEN * non_cpu_entries()
}

/// Entries besides the processors: the buses, the IOAPIC, the I/O
/// interrupt entries (ExtINT on pin 0, ISA IRQs 0-15 but the cascade, INTA#
/// of PCI slots 1-31) and the two local interrupt entries.
const fn non_cpu_entries() -> usize {
    BUSES.len() + 1 + io_interrupt_entries() + 2
}

const fn io_interrupt_entries() -> usize {
    1 + (ISA_IRQS as usize - 1) + (PCI_SLOTS - PCI_FIRST_SLOT) as usize
}

/// First byte past the configuration table for `num_cpus` vCPUs.
pub const fn mptable_end(num_cpus: u32) -> u64 {
    MP_CONFIG_ADDR + config_table_len(num_cpus) as u64
}

// The largest table stays below the ACPI tables, and its length fits the
// header's 16-bit field.
const _: () = assert!(mptable_end(MAX_CPUS) <= ACPI_ADDR);
const _: () = assert!(config_table_len(MAX_CPUS) <= u16::MAX as usize);
// Linux and the spec look for the pointer on 16-byte boundaries.
const _: () = assert!(MPTABLE_ADDR.is_multiple_of(16));

/// What the table describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpConfig {
    /// Number of vCPUs; vCPU `i` has local APIC id `i`, vCPU 0 boots.
    pub num_cpus: u32,
    /// The local APIC version the vCPUs report (see [`lapic_version`]).
    /// Linux compares the table's with what the boot CPU's LAPIC says and
    /// complains of a "BIOS bug" when they differ.
    pub lapic_version: u8,
}

/// The local APIC version KVM gives a vCPU, read from its LAPIC state
/// (`KVM_GET_LAPIC`); [`KVM_LAPIC_VERSION`] if the register reads 0.
pub fn lapic_version(lapic: &kvm_lapic_state) -> u8 {
    match lapic.regs[APIC_LVR] as u8 {
        0 => KVM_LAPIC_VERSION,
        v => v,
    }
}

/// Why the table could not be written.
#[derive(Debug)]
pub enum MpTableError {
    /// No vCPUs: there is nothing to describe.
    NoCpus,
    /// More vCPUs than 8-bit xAPIC ids can name (0xff is the broadcast id).
    TooManyCpus { requested: u32, max: u32 },
    /// Writing the table into guest memory failed.
    GuestMemory(GuestMemoryError),
}

impl fmt::Display for MpTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpTableError::NoCpus => write!(f, "MP table: a VM needs at least one vCPU"),
            MpTableError::TooManyCpus { requested, max } => write!(
                f,
                "MP table: {requested} vCPUs requested, but xAPIC ids allow at most {max}"
            ),
            MpTableError::GuestMemory(e) => {
                write!(f, "MP table: writing it to guest memory: {e}")
            }
        }
    }
}

impl std::error::Error for MpTableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MpTableError::GuestMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds the floating pointer and configuration table for `cfg` and writes
/// them into `mem` at `MPTABLE_ADDR`. Returns the floating pointer's address.
pub fn create_mp_table<M: GuestMemory>(
    mem: &M,
    cfg: &MpConfig,
) -> Result<GuestAddress, MpTableError> {
    let bytes = build(cfg)?;
    let addr = GuestAddress(MPTABLE_ADDR);
    mem.write_slice(&bytes, addr)
        .map_err(MpTableError::GuestMemory)?;
    Ok(addr)
}

/// Floating pointer and configuration table, contiguous from `MPTABLE_ADDR`.
fn build(cfg: &MpConfig) -> Result<Vec<u8>, MpTableError> {
    if cfg.num_cpus == 0 {
        return Err(MpTableError::NoCpus);
    }
    if cfg.num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus {
            requested: cfg.num_cpus,
            max: MAX_CPUS,
        });
    }
    let mut out = floating_pointer(MP_CONFIG_ADDR as u32).to_vec();
    out.extend_from_slice(&config_table(cfg));
    Ok(out)
}

/// The byte that makes `bytes` (with 0 in its checksum field) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// `s` space padded (or cut) to `N` bytes, as the MP spec's id strings are.
fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [b' '; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s[..n]);
    out
}

fn floating_pointer(config_addr: u32) -> [u8; FP_LEN] {
    let mut fp = [0u8; FP_LEN];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = (FP_LEN / 16) as u8;
    fp[9] = SPEC_REV;
    // fp[11], feature byte 1 = 0: a configuration table is present (no
    // default configuration). fp[12] bit 7 (IMCR present) stays clear: there
    // is no IMCR, the machine starts in virtual wire mode, with the 8259s
    // reaching the BSP through LINT0 as the local interrupt entries say.
    fp[10] = checksum(&fp);
    fp
}

/// An I/O interrupt assignment: `irq` of source `bus` -> IOAPIC `pin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IoInterrupt {
    kind: u8,
    flags: u16,
    bus: u8,
    irq: u8,
    pin: u8,
}

/// How the ISA IRQs reach the IOAPIC, as the MADT has it: identity, but for
/// the PIT on pin 2 and the ACPI SCI level triggered, active high. Pin 0 is
/// the 8259 pair's output (ExtINT), which is where the PIT's own pin went;
/// the cascade IRQ 2 has no entry. Listing the ExtINT pin also lets a guest
/// fall back to "8259 through the IOAPIC" for its timer, as Linux does when
/// the timer is silent on its assigned pin.
///
/// Then INTA# of each PCI slot but the host bridge's, on the pin the DSDT's
/// `_PRT` names, level triggered and active low as PCI INTx is.
fn io_interrupts() -> Vec<IoInterrupt> {
    let mut v = vec![IoInterrupt {
        kind: INT_TYPE_EXTINT,
        flags: INTI_CONFORMS,
        bus: ISA_BUS_ID,
        irq: 0,
        pin: 0,
    }];
    for irq in (0..ISA_IRQS).filter(|&i| i != CASCADE_IRQ) {
        let pin = if irq == PIT_IRQ { PIT_PIN } else { irq };
        let flags = if u32::from(irq) == IRQ_SCI {
            INTI_ACTIVE_HIGH | INTI_LEVEL
        } else {
            INTI_CONFORMS
        };
        v.push(IoInterrupt {
            kind: INT_TYPE_INT,
            flags,
            bus: ISA_BUS_ID,
            irq,
            pin,
        });
    }
    for slot in PCI_FIRST_SLOT..PCI_SLOTS {
        v.push(IoInterrupt {
            kind: INT_TYPE_INT,
            flags: INTI_ACTIVE_LOW | INTI_LEVEL,
            bus: PCI_BUS_ID,
            irq: (slot << 2) | PCI_INTA,
            // GSI = IOAPIC pin: the MADT's only IOAPIC has GSI base 0.
            pin: pci_intx_gsi(slot) as u8,
        });
    }
    debug_assert_eq!(v.len(), io_interrupt_entries());
    v
}

fn config_table(cfg: &MpConfig) -> Vec<u8> {
    let len = config_table_len(cfg.num_cpus);
    let mut t = Vec::with_capacity(len);

    // Header; length, entry count and checksum are filled in at the end.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0]); // base table length
    t.push(SPEC_REV);
    t.push(0); // checksum
    t.extend_from_slice(&padded::<8>(&OEM_ID));
    t.extend_from_slice(&padded::<12>(&OEM_TABLE_ID));
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer: none
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&[0, 0]); // entry count
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length: none
    t.push(0); // extended table checksum
    t.push(0); // reserved
    debug_assert_eq!(t.len(), HEADER_LEN);

    // Processors. The CPU signature and feature flags stay 0: Linux and
    // OpenBSD read only the APIC id, version and flags, and a second copy
    // of CPUID could only ever disagree with the real one.
    for i in 0..cfg.num_cpus {
        let mut flags = CPU_ENABLED;
        if i == 0 {
            flags |= CPU_BOOTSTRAP;
        }
        // num_cpus <= MAX_CPUS was checked, so the id fits (and is not 0xff).
        t.extend_from_slice(&[ENTRY_PROCESSOR, i as u8, cfg.lapic_version, flags]);
        t.extend_from_slice(&[0; CPU_ENTRY_LEN - 4]);
    }

    for (id, kind) in BUSES {
        t.push(ENTRY_BUS);
        t.push(id);
        t.extend_from_slice(&kind);
    }

    t.extend_from_slice(&[ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, IOAPIC_ENABLED]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());

    for e in io_interrupts() {
        t.extend_from_slice(&[ENTRY_IO_INTERRUPT, e.kind]);
        t.extend_from_slice(&e.flags.to_le_bytes());
        t.extend_from_slice(&[e.bus, e.irq, IOAPIC_ID, e.pin]);
    }

    // The 8259s' INTR on LINT0 (virtual wire), NMIs on LINT1, for every
    // CPU: what the MADT's Local APIC NMI entry (LINT1, all processors)
    // says, and the LINT0 wiring KVM's LAPIC model has.
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind]);
        t.extend_from_slice(&INTI_CONFORMS.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
    }

    debug_assert_eq!(t.len(), len);
    let entries = cfg.num_cpus as usize + non_cpu_entries();
    t[4..6].copy_from_slice(&(len as u16).to_le_bytes());
    t[34..36].copy_from_slice(&(entries as u16).to_le_bytes());
    t[7] = checksum(&t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{create_acpi_tables, AcpiConfig};
    use crate::boot::{e820_map, E820_RESERVED};
    use crate::layout::*;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 64 << 20;

    /// `vm::MAX_VCPUS`, the most a VM is built with.
    const MAX_VCPUS: u32 = crate::MAX_VCPUS;

    fn cfg(num_cpus: u32) -> MpConfig {
        MpConfig {
            num_cpus,
            lapic_version: KVM_LAPIC_VERSION,
        }
    }

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Linux 6.1's `smp_scan_config` over guest memory: 16-byte steps from
    /// `base` for `length` bytes; a hit is "_MP_", length 1, a zero sum over
    /// the 16 bytes and spec revision 1 or 4. Returns the address and the
    /// step it was found at.
    fn smp_scan_config(mem: &GuestMemoryMmap, base: u64, length: u64) -> Option<(u64, u64)> {
        (0..length / 16).find_map(|step| {
            let at = base + step * 16;
            let mpf = read(mem, at, 16);
            let hit = u32_at(&mpf, 0) == u32::from_le_bytes(*b"_MP_")
                && mpf[8] == 1
                && sum(&mpf) == 0
                && (mpf[9] == 1 || mpf[9] == 4);
            hit.then_some((at, step))
        })
    }

    /// Linux's `default_find_smp_config`: the first KiB, the last KiB of
    /// base memory, the BIOS area. (The EBDA comes last, through the BDA's
    /// pointer, which is 0 here.) Returns (scan index, address, step).
    fn find_smp_config(mem: &GuestMemoryMmap) -> Option<(usize, u64, u64)> {
        [(0, 0x400), (639 * 0x400, 0x400), (0xf0000, 0x10000)]
            .iter()
            .enumerate()
            .find_map(|(i, &(base, len))| {
                smp_scan_config(mem, base, len).map(|(at, step)| (i, at, step))
            })
    }

    /// What a reader of the table gets out of it.
    #[derive(Debug, Default)]
    struct Parsed {
        /// (APIC id, version, flags)
        cpus: Vec<(u8, u8, u8)>,
        buses: Vec<(u8, [u8; 6])>,
        /// (id, version, flags, address)
        ioapics: Vec<(u8, u8, u8, u32)>,
        /// (type, flags, bus, bus irq, IOAPIC id, pin)
        io_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
        /// (type, flags, bus, bus irq, LAPIC id, LINT)
        local_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
    }

    /// Reads the configuration table at `addr` the way Linux's
    /// `smp_check_mpc` and `smp_read_mpc` do (plus the header fields they
    /// skip), asserting what they would reject or complain about.
    fn read_mpc(mem: &GuestMemoryMmap, addr: u64) -> Parsed {
        let hdr = read(mem, addr, HEADER_LEN);
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = u16_at(&hdr, 4) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "configuration table checksum");
        assert!(t[6] == 1 || t[6] == 4, "spec revision {}", t[6]);
        assert_eq!(t[6], 4);
        assert_eq!(&t[8..16], b"VMD     ", "OEM id");
        assert_eq!(&t[16..28], b"VMDVM       ", "product id");
        assert_eq!(u32_at(&t, 28), 0, "no OEM table");
        assert_eq!(u32_at(&t, 36), LAPIC_ADDR as u32, "local APIC address");
        assert_eq!(u16_at(&t, 40), 0, "no extended table");

        let mut p = Parsed::default();
        let (mut off, mut count, mut last_type) = (HEADER_LEN, 0, 0);
        while off < len {
            let e = &t[off..];
            assert!(e[0] >= last_type, "entries sorted by type");
            last_type = e[0];
            let elen = match e[0] {
                ENTRY_PROCESSOR => {
                    p.cpus.push((e[1], e[2], e[3]));
                    assert_eq!(&e[4..20], &[0; 16], "signature, features, reserved");
                    CPU_ENTRY_LEN
                }
                ENTRY_BUS => {
                    p.buses.push((e[1], e[2..8].try_into().unwrap()));
                    ENTRY_LEN
                }
                ENTRY_IOAPIC => {
                    p.ioapics.push((e[1], e[2], e[3], u32_at(e, 4)));
                    ENTRY_LEN
                }
                ENTRY_IO_INTERRUPT => {
                    p.io_ints.push((e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]));
                    ENTRY_LEN
                }
                ENTRY_LOCAL_INTERRUPT => {
                    p.local_ints
                        .push((e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]));
                    ENTRY_LEN
                }
                ty => panic!("unknown entry type {ty} at offset {off}"),
            };
            off += elen;
            count += 1;
        }
        assert_eq!(off, len, "entries fill the table exactly");
        assert_eq!(count, u16_at(&t, 34) as usize, "entry count");
        p
    }

    /// The floating pointer at `addr`, checked; returns the table address.
    fn check_floating_pointer(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        let fp = read(mem, addr, 16);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(fp[8], 1, "length in paragraphs");
        assert_eq!(fp[9], 4, "spec revision 1.4");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!(fp[11], 0, "feature 1: configuration table present");
        assert_eq!(&fp[12..16], &[0; 4], "no IMCR, reserved");
        u32_at(&fp, 4) as u64
    }

    #[test]
    fn linux_finds_it_at_the_first_step_of_its_second_scan() {
        let mem = guest();
        // Before: Linux scans all three ranges in vain (the ~4200 steps).
        assert_eq!(find_smp_config(&mem), None);
        assert_eq!(
            create_mp_table(&mem, &cfg(1)).unwrap(),
            GuestAddress(0x9fc00)
        );
        assert_eq!(find_smp_config(&mem), Some((1, 0x9fc00, 0)));
    }

    #[test]
    fn sizes_and_entry_counts_for_1_and_max_vcpus() {
        for (cpus, end) in [(1, 0x9fdf0), (MAX_VCPUS, 0xa11b4), (MAX_CPUS, 0xa11c8)] {
            let mem = guest();
            create_mp_table(&mem, &cfg(cpus)).unwrap();
            let table = check_floating_pointer(&mem, MPTABLE_ADDR);
            assert_eq!(table, 0x9fc10);
            assert_eq!(table % 16, 0);
            let len = u16_at(&read(&mem, table, HEADER_LEN), 4) as usize;
            assert_eq!(len, 44 + 20 * cpus as usize + 8 * 52, "{cpus} vCPUs");
            assert_eq!(len, config_table_len(cpus));
            assert_eq!(table + len as u64, end);
            assert_eq!(mptable_end(cpus), end);

            let p = read_mpc(&mem, table);
            assert_eq!(p.cpus.len() as u32, cpus);
            assert_eq!(p.buses, vec![(0, *b"PCI   "), (1, *b"ISA   ")]);
            assert_eq!(p.ioapics, vec![(IOAPIC_ID, 0x11, 1, 0xfec0_0000)]);
            assert_eq!(p.io_ints.len(), 16 + 31);
            assert_eq!(p.local_ints.len(), 2);
            let entries = u16_at(&read(&mem, table, HEADER_LEN), 34) as u32;
            assert_eq!(entries, cpus + 2 + 1 + 16 + 31 + 2);
            // The byte after the table is untouched.
            assert_eq!(read(&mem, end, 1), [0]);
        }
    }

    #[test]
    fn processors_are_the_vcpus_with_the_bsp_first() {
        let mem = guest();
        let c = MpConfig {
            num_cpus: 4,
            lapic_version: 0x15,
        };
        create_mp_table(&mem, &c).unwrap();
        let p = read_mpc(&mem, MP_CONFIG_ADDR);
        assert_eq!(
            p.cpus,
            vec![
                (0, 0x15, 0b11),
                (1, 0x15, 0b01),
                (2, 0x15, 0b01),
                (3, 0x15, 0b01)
            ]
        );
    }

    #[test]
    fn local_interrupts_extint_on_lint0_nmi_on_lint1_everywhere() {
        let mem = guest();
        create_mp_table(&mem, &cfg(2)).unwrap();
        let p = read_mpc(&mem, MP_CONFIG_ADDR);
        assert_eq!(
            p.local_ints,
            vec![
                (INT_TYPE_EXTINT, 0, ISA_BUS_ID, 0, 0xff, 0),
                (INT_TYPE_NMI, 0, ISA_BUS_ID, 0, 0xff, 1)
            ]
        );
    }

    /// INTA# of PCI slots 1..=31 on pins 16..=23 (`pci_intx_gsi`), level
    /// triggered, active low; found the way Linux's
    /// `IO_APIC_get_PCI_irq_vector` looks for them (source bus = the PCI bus
    /// number, device in bits 6:2 of the source IRQ, pin in bits 1:0).
    #[test]
    fn pci_inta_of_every_slot_on_its_gsi() {
        let mem = guest();
        create_mp_table(&mem, &cfg(2)).unwrap();
        let p = read_mpc(&mem, MP_CONFIG_ADDR);
        let pci_bus = 0u8; // the PCI bus number of the host bridge's bus
        let (id, kind) = p.buses[0];
        assert_eq!((id, &kind[..3]), (pci_bus, &b"PCI"[..]));
        assert!(p.buses.iter().filter(|b| b.0 == pci_bus).count() == 1);

        let pci: Vec<_> = p.io_ints.iter().filter(|e| e.2 == pci_bus).collect();
        assert_eq!(pci.len(), 31);
        for slot in 0..32u8 {
            let hits: Vec<_> = pci
                .iter()
                .filter(|e| e.0 == INT_TYPE_INT && (e.3 >> 2) & 0x1f == slot && e.3 & 3 == 0)
                .collect();
            if slot == 0 {
                assert!(hits.is_empty(), "the host bridge raises no interrupt");
                continue;
            }
            assert_eq!(hits.len(), 1, "slot {slot}");
            let (_, flags, _, irq, apic, pin) = **hits[0];
            assert_eq!(irq, slot << 2, "INTA#");
            assert_eq!(flags, 0b1111, "level, active low");
            assert_eq!(apic, IOAPIC_ID);
            assert_eq!(u32::from(pin), pci_intx_gsi(slot));
            assert!((16..=23).contains(&pin), "slot {slot} on pin {pin}");
        }
        // No other pin of any slot, and the ISA entries stay on pins 0-15.
        assert!(pci.iter().all(|e| e.3 & 3 == 0));
        assert!(p
            .io_ints
            .iter()
            .filter(|e| e.2 != pci_bus)
            .all(|e| e.2 == ISA_BUS_ID && e.5 < 16));
    }

    /// The MADT, found as a guest finds it: RSDP at `ACPI_ADDR`, its XSDT.
    fn madt(mem: &GuestMemoryMmap) -> Vec<u8> {
        let rsdp = read(mem, ACPI_ADDR, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt_len = u32_at(&read(mem, xsdt_addr, 8), 4) as usize;
        let xsdt = read(mem, xsdt_addr, xsdt_len);
        (36..xsdt_len)
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .find_map(|a| {
                let hdr = read(mem, a, 8);
                (&hdr[0..4] == b"APIC").then(|| read(mem, a, u32_at(&hdr, 4) as usize))
            })
            .expect("MADT in the XSDT")
    }

    /// Both tables as the VM writes them; the MP table must say what the
    /// MADT says about CPUs, the IOAPIC and ISA IRQ wiring, entry by entry,
    /// and the two must not overlap.
    #[test]
    fn agrees_with_the_madt() {
        for cpus in [1, 3, MAX_VCPUS] {
            let mem = guest();
            let acpi = AcpiConfig {
                num_cpus: cpus,
                mem_size: MEM,
                pci_slots: Vec::new(),
            };
            create_acpi_tables(&mem, &acpi).unwrap();
            create_mp_table(&mem, &cfg(cpus)).unwrap();
            assert!(mptable_end(cpus) <= ACPI_ADDR, "below the ACPI tables");
            let p = read_mpc(&mem, check_floating_pointer(&mem, MPTABLE_ADDR));
            let madt = madt(&mem);
            assert_eq!(
                u32_at(&madt, 36),
                u32_at(&read(&mem, MP_CONFIG_ADDR, 44), 36)
            );

            let (mut lapic_ids, mut ioapic, mut isos, mut nmi) = (vec![], None, vec![], None);
            let mut off = 44;
            while off < madt.len() {
                let e = &madt[off..off + madt[off + 1] as usize];
                match e[0] {
                    0 if u32_at(e, 4) & 1 != 0 => lapic_ids.push(e[3]),
                    1 => ioapic = Some((e[2], u32_at(e, 4), u32_at(e, 8))),
                    2 => isos.push((e[3], u32_at(e, 4), u16_at(e, 8))),
                    4 => nmi = Some((e[2], u16_at(e, 3), e[5])),
                    _ => {}
                }
                off += e.len();
            }

            // Processors: the same APIC ids, enabled, the first one boots.
            let mp_ids: Vec<u8> = p.cpus.iter().map(|c| c.0).collect();
            assert_eq!(mp_ids, lapic_ids);
            assert!(p.cpus.iter().all(|c| c.2 & CPU_ENABLED != 0));
            let bsps: Vec<u8> = p
                .cpus
                .iter()
                .filter(|c| c.2 & CPU_BOOTSTRAP != 0)
                .map(|c| c.0)
                .collect();
            assert_eq!(bsps, vec![0]);

            // The IOAPIC: same id and address; GSI base 0, so GSI n = pin n.
            let (id, addr, gsi_base) = ioapic.expect("MADT IOAPIC");
            assert_eq!(gsi_base, 0);
            assert_eq!(p.ioapics, vec![(id, IOAPIC_VERSION, IOAPIC_ENABLED, addr)]);

            // ISA IRQs: what ACPI implies, an identity map 0-15 with
            // conforming flags, changed by each override; a pin another
            // IRQ was moved onto is not also its own IRQ's.
            let mut expected: Vec<(u8, u16, u8, u8, u8, u8)> = (0..16u8)
                .filter_map(|irq| {
                    let (pin, flags) = match isos.iter().find(|o| o.0 == irq) {
                        Some(&(_, gsi, flags)) => (gsi as u8, flags),
                        None if isos.iter().any(|o| o.1 == u32::from(irq)) => return None,
                        None => (irq, 0),
                    };
                    Some((INT_TYPE_INT, flags, ISA_BUS_ID, irq, id, pin))
                })
                .collect();
            // (The PCI entries follow the DSDT's _PRT, not the MADT; see
            // pci_inta_of_every_slot_on_its_gsi.)
            // Plus the 8259s on the pin the PIT left: ACPI has no entry for
            // it, the MP spec's virtual wire configurations do.
            expected.push((INT_TYPE_EXTINT, 0, ISA_BUS_ID, 0, id, 0));
            let mut got: Vec<_> = p
                .io_ints
                .iter()
                .copied()
                .filter(|e| e.2 == ISA_BUS_ID)
                .collect();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "{cpus} vCPUs");
            assert!(
                isos.contains(&(0, 2, 0)) && isos.contains(&(9, 9, 0x0d)),
                "{isos:?}"
            );

            // NMI: the MADT's LINT and flags for all processors; ExtINT on
            // the other LINT.
            let (uid, flags, lint) = nmi.expect("MADT local APIC NMI");
            assert_eq!(uid, 0xff);
            assert!(p
                .local_ints
                .contains(&(INT_TYPE_NMI, flags, ISA_BUS_ID, 0, 0xff, lint)));
            assert!(p
                .local_ints
                .contains(&(INT_TYPE_EXTINT, 0, ISA_BUS_ID, 0, 0xff, 1 - lint)));
        }
    }

    /// The table lies in the reserved e820 range, clear of everything else
    /// `layout` places in low memory.
    #[test]
    fn placement_is_reserved_and_collides_with_nothing() {
        let (start, end) = (MPTABLE_ADDR, mptable_end(MAX_CPUS));
        assert_eq!(start, EBDA_ADDR);
        assert_eq!(
            start,
            639 * 1024,
            "last KiB of base memory, Linux's 2nd scan"
        );
        assert!(end <= ACPI_ADDR, "{end:#x} runs into the ACPI tables");

        let reserved = e820_map(MEM, false)
            .into_iter()
            .any(|(a, len, kind)| kind == E820_RESERVED && a <= start && end <= a + len);
        assert!(reserved, "not inside a reserved e820 range");

        let others: &[(&str, u64, u64)] = &[
            ("GDT", GDT_ADDR, IDT_ADDR),
            ("IDT", IDT_ADDR, IDT_ADDR + 16),
            ("boot stack", BOOT_STACK_TOP - 0x1000, BOOT_STACK_TOP),
            ("PVH info", PVH_INFO_ADDR, PVH_INFO_ADDR + 0x1000),
            ("zero page", ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + 0x1000),
            ("PML4", PML4_ADDR, PML4_ADDR + 0x1000),
            ("PDPT", PDPT_ADDR, PDPT_ADDR + 0x1000),
            ("PDs", PD_ADDR, PD_ADDR + 4 * 0x1000),
            ("cmdline", CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX as u64),
            ("ACPI", ACPI_ADDR, ACPI_END),
            ("kernel", HIMEM_START, HIMEM_START + 1),
        ];
        for &(name, a, b) in others {
            assert!(end <= a || b <= start, "MP table overlaps the {name}");
        }
    }

    #[test]
    fn rewriting_over_a_used_guest_restores_it() {
        let mem = guest();
        mem.write_slice(&[0xa5; 0x2000], GuestAddress(MPTABLE_ADDR))
            .unwrap();
        create_mp_table(&mem, &cfg(2)).unwrap();
        assert_eq!(find_smp_config(&mem), Some((1, 0x9fc00, 0)));
        read_mpc(&mem, MP_CONFIG_ADDR);
    }

    #[test]
    fn rejects_bad_configs() {
        let mem = guest();
        assert!(matches!(
            create_mp_table(&mem, &cfg(0)),
            Err(MpTableError::NoCpus)
        ));
        let err = create_mp_table(&mem, &cfg(MAX_CPUS + 1)).unwrap_err();
        assert!(matches!(
            err,
            MpTableError::TooManyCpus {
                requested: 256,
                max: 255
            }
        ));
        assert!(err.to_string().contains("256"));
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_mp_table(&small, &cfg(1)).unwrap_err();
        assert!(matches!(err, MpTableError::GuestMemory(_)));
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn lapic_version_is_read_from_the_lvr() {
        let mut s = kvm_lapic_state::default();
        assert_eq!(lapic_version(&s), KVM_LAPIC_VERSION);
        s.regs[APIC_LVR] = 0x15;
        s.regs[APIC_LVR + 2] = 5; // max LVT entry, not the version
        assert_eq!(lapic_version(&s), 0x15);
    }

    /// A VM as `Vm::new` builds it (real KVM) carries the table, with the
    /// LAPIC version KVM's vCPUs report.
    #[test]
    fn a_built_vm_has_it() {
        if !testguest::kvm_or_skip() {
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vmfd = kvm.create_vm().unwrap();
        vmfd.create_irq_chip().unwrap();
        let lvr = lapic_version(&vmfd.create_vcpu(0).unwrap().get_lapic().unwrap());

        let cfg = crate::VmConfig {
            mem_size: 32 << 20,
            vcpus: 3,
            boot: crate::boot::BootConfig {
                kernel: testguest::path("hello").expect("test guest hello"),
                ..Default::default()
            },
            cpuid: Default::default(),
            reboot: false,
            guest_tools: false,
            uuid: crate::random_uuid(),
            disks: Vec::new(),
            firmware: None,
            cdrom: None,
            nets: Vec::new(),
            rng: false,
        };
        let vm = crate::Vm::new(cfg, Box::new(std::io::sink())).unwrap();
        let mem = vm.memory();
        let (scan, at, step) = find_smp_config(mem).expect("MP table");
        assert_eq!((scan, at, step), (1, MPTABLE_ADDR, 0));
        let p = read_mpc(mem, check_floating_pointer(mem, at));
        assert_eq!(p.cpus, vec![(0, lvr, 0b11), (1, lvr, 1), (2, lvr, 1)]);
        eprintln!("KVM LAPIC version {lvr:#x}");
    }
}
