//! ACPI tables for the guest: RSDP -> XSDT -> FADT (-> FACS, DSDT), MADT.
//!
//! This is classic ACPI, not the hardware-reduced flavour: OpenBSD and Linux
//! both shut down through the fixed-feature power button and `\_S5`, which
//! needs the PM1 event/control blocks the FADT points at (the PIIX4-like
//! block at port 0x600, see `layout`).
//!
//! PCI: the DSDT's host bridge `PCI0` is bus 0, with the BAR window
//! `PCI_MMIO_START..PCI_MMIO_END` and a `_PRT` that wires INTA# of every
//! slot 1..=31 to IOAPIC pin `pci_intx_gsi(slot)` (16..=23, level, active
//! low). The MCFG describes the bus's ECAM at `PCI_ECAM_ADDR`, which a
//! PNP0C02 motherboard-resource device reserves (as the e820 map does), so
//! that Linux accepts it. A VM without PCI devices gets none of the three:
//! as on QEMU's microvm, its guest has no bus to enumerate (on PVM the
//! Linux fixture's boot spent 1.0M emulated instructions and 160 exits to
//! user space, 1-2 s of 37, on an empty one). The chipset's ports stay
//! (configuration mechanism #1, the reset register).
//!
//! Everything lives in `[ACPI_ADDR, ACPI_END)` with the RSDP first, so a guest
//! that scans the legacy BIOS area (0xe0000..0xfffff, 16-byte steps) finds it
//! as well as one that is handed its address (PVH `rsdp_paddr`, Linux
//! `boot_params.acpi_rsdp_addr`):
//!
//! ```text
//! 0xe0000  RSDP   (36 bytes, rev 2, XSDT only)
//! 0xe0040  FACS   (64 bytes, 64-byte aligned as the spec requires)
//! 0xe0080  XSDT   (36 + 8 * 3 bytes: FADT, MADT, MCFG; 8 less without PCI)
//! 0xe00c0  FADT   (276 bytes, revision 6)
//! 0xe01e0  MADT   (44 + 8 * cpus + 12 + 2 * 10 + 6 bytes)
//! ...      MCFG   (44 + 16 bytes, right after the MADT, 16-byte aligned)
//! ...      DSDT   (right after the MCFG, 16-byte aligned)
//! ```

use std::fmt;

use acpi_tables::aml::{
    self, AddressSpace as AmlAddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed,
    Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{
    pci_intx_gsi, ACPI_ADDR, ACPI_END, IOAPIC_ADDR, IRQ_COM1, IRQ_KBD, IRQ_RTC, IRQ_SCI,
    LAPIC_ADDR, MMIO_HOLE_END, MMIO_HOLE_START, PCI_ECAM_ADDR, PCI_ECAM_SIZE, PCI_MMIO_END,
    PCI_MMIO_START, PM1A_CNT_LEN, PM1A_CNT_PORT, PM1A_EVT_LEN, PM1A_EVT_PORT, PM_TMR_LEN,
    PM_TMR_PORT, S5_SLP_TYP,
};

/// OEM id in every table header and the RSDP (6 bytes, space padded).
pub const OEM_ID: [u8; 6] = *b"VMD   ";
/// OEM table id in every table header (8 bytes, space padded).
pub const OEM_TABLE_ID: [u8; 8] = *b"VMDVM   ";
/// OEM revision; bump when the tables change in a way a guest could notice.
pub const OEM_REVISION: u32 = 1;

/// Most vCPUs the tables can describe. xAPIC ids are 8 bits and 0xff is the
/// broadcast id, so ids 0..=254; the MADT processor uid is 8 bits too and
/// 0xff means "all processors" in the Local APIC NMI entry. APIC id and uid
/// are both the vCPU index (as `cpuid` reports it), hence 255 vCPUs.
pub const MAX_CPUS: u32 = 255;

/// I/O port of the PCI reset control register (`RESET_REG`): writing
/// `RESET_VALUE` there resets the machine, as on a PIIX/ICH chipset.
pub const RESET_PORT: u16 = 0xcf9;
/// Hard reset (bit 2 "reset CPU" | bit 1 "system reset"), what PCs use.
pub const RESET_VALUE: u8 = 0x06;

/// ACPI id of the I/O APIC in the MADT. KVM's in-kernel IOAPIC resets its
/// ID register to 0 and keeps only 4 bits of it, so a `num_cpus` id would be
/// unrepresentable past 15 vCPUs and would make OpenBSD rewrite the register
/// ("misconfigured as apic 0"). IOAPIC and local APIC ids are separate
/// namespaces on xAPIC systems, and QEMU's tables use 0 too.
pub const IOAPIC_ID: u8 = 0;

/// The PCI bus the host bridge decodes and the ECAM covers: bus 0 alone
/// (no bridges behind it).
const PCI_BUS: u8 = 0;
/// PCI segment (domain) of that bus.
const PCI_SEGMENT: u16 = 0;
/// Device slots on the bus that can hold a device: 0 is the host bridge.
pub const PCI_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;

// The host bridge's BAR window lies in the MMIO hole below the ECAM, which
// ends below the IOAPIC and LAPIC pages: none of them is PCI's to hand out.
// The ECAM covers exactly one bus (32 devices x 8 functions x 4 KiB).
const _: () = assert!(MMIO_HOLE_START <= PCI_MMIO_START && PCI_MMIO_START < PCI_MMIO_END);
const _: () = assert!(PCI_MMIO_END <= PCI_ECAM_ADDR);
const _: () = assert!(PCI_ECAM_ADDR + PCI_ECAM_SIZE <= IOAPIC_ADDR);
const _: () = assert!(IOAPIC_ADDR < LAPIC_ADDR && LAPIC_ADDR < MMIO_HOLE_END);
const _: () = assert!(PCI_ECAM_SIZE == 32 * 8 * 4096);
const _: () = assert!(PCI_ECAM_ADDR.is_multiple_of(PCI_ECAM_SIZE));

/// FADT length for revision 6 (ACPI 6.x, with the hypervisor vendor id).
const FADT_LEN: usize = 276;

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU `i` has APIC id and ACPI processor uid `i`.
    pub num_cpus: u32,
    /// Guest RAM in bytes. The tables themselves live in RAM at `ACPI_ADDR`,
    /// so the guest must have at least `ACPI_END` bytes.
    pub mem_size: u64,
    /// PCI slots that hold a device (in [`PCI_SLOTS`]): the `_PRT` routes
    /// only these. Devices are not hot-plugged, and every entry costs the
    /// guest's AML interpreter time at boot (on PVM, emulated time: all
    /// 31 slots cost a Linux boot ~0.8M emulated instructions). Without
    /// any, the tables describe no PCI bus at all.
    pub pci_slots: Vec<u8>,
}

impl AcpiConfig {
    /// Slots of `pci_slots` that exist, in order.
    fn slots(&self) -> impl Iterator<Item = u8> + Clone + '_ {
        existing(&self.pci_slots)
    }

    /// Whether the tables describe a PCI bus: see [`has_pci`].
    pub fn has_pci(&self) -> bool {
        has_pci(&self.pci_slots)
    }
}

fn existing(slots: &[u8]) -> impl Iterator<Item = u8> + Clone + '_ {
    slots.iter().copied().filter(|s| PCI_SLOTS.contains(s))
}

/// Whether a VM whose devices sit in `slots` has a PCI bus (in its
/// tables, its ECAM window, its e820 map): only when it holds a device
/// (the guest would only spend boot time finding it empty).
pub fn has_pci(slots: &[u8]) -> bool {
    existing(slots).next().is_some()
}

/// Why the tables could not be built.
#[derive(Debug)]
pub enum AcpiError {
    /// No vCPUs: there is nothing to boot.
    NoCpus,
    /// More vCPUs than xAPIC ids / MADT uids can name.
    TooManyCpus { requested: u32, max: u32 },
    /// Guest RAM does not reach the end of the ACPI area.
    MemoryTooSmall { mem_size: u64, needed: u64 },
    /// The tables need more than the reserved area.
    TablesTooLarge { size: u64, available: u64 },
    /// Writing a table into guest memory failed.
    GuestMemory(GuestMemoryError),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoCpus => write!(f, "ACPI: a VM needs at least one vCPU"),
            AcpiError::TooManyCpus { requested, max } => write!(
                f,
                "ACPI: {requested} vCPUs requested, but xAPIC ids allow at most {max}"
            ),
            AcpiError::MemoryTooSmall { mem_size, needed } => write!(
                f,
                "ACPI: guest memory of {mem_size:#x} bytes does not cover the ACPI area \
                 (needs {needed:#x})"
            ),
            AcpiError::TablesTooLarge { size, available } => write!(
                f,
                "ACPI: tables need {size} bytes, only {available} reserved at {ACPI_ADDR:#x}"
            ),
            AcpiError::GuestMemory(e) => write!(f, "ACPI: writing tables to guest memory: {e}"),
        }
    }
}

impl std::error::Error for AcpiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcpiError::GuestMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds the ACPI tables for `cfg` and writes them into `mem` at
/// `ACPI_ADDR`. Returns the address of the RSDP (always `ACPI_ADDR`), which
/// the boot loader passes on to the guest.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(cfg)?;
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, *addr)
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(tables.rsdp)
}

/// The tables as placed blobs, before they are copied into guest memory.
struct Tables {
    rsdp: GuestAddress,
    blobs: Vec<(GuestAddress, Vec<u8>)>,
}

/// Hands out addresses in the ACPI area, in order.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, len: usize, align: u64) -> u64 {
        let addr = self.next.next_multiple_of(align);
        self.next = addr + len as u64;
        addr
    }
}

fn build_tables(cfg: &AcpiConfig) -> Result<Tables, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus {
            requested: cfg.num_cpus,
            max: MAX_CPUS,
        });
    }
    if cfg.mem_size < ACPI_END {
        return Err(AcpiError::MemoryTooSmall {
            mem_size: cfg.mem_size,
            needed: ACPI_END,
        });
    }

    // The DSDT, MADT and MCFG do not point anywhere, so build them first;
    // their sizes then fix every address the FADT, XSDT and RSDP refer to.
    let dsdt = build_dsdt(cfg);
    let madt = build_madt(cfg.num_cpus);
    let mcfg = cfg.has_pci().then(build_mcfg);
    let xsdt_len = 36 + 8 * (2 + usize::from(mcfg.is_some()));

    // Tables 16-byte aligned: the RSDP must be for the legacy scan, the rest
    // just for tidiness. The FACS must be 64-byte aligned.
    let mut at = Placer { next: ACPI_ADDR };
    let rsdp_addr = at.place(Rsdp::len(), 16);
    let facs_addr = at.place(FACS::len(), 64);
    let xsdt_addr = at.place(xsdt_len, 16);
    let fadt_addr = at.place(FADT_LEN, 16);
    let madt_addr = at.place(madt.len(), 16);
    let mcfg_addr = mcfg.as_ref().map(|m| at.place(m.len(), 16));
    let dsdt_addr = at.place(dsdt.len(), 16);
    if at.next > ACPI_END {
        return Err(AcpiError::TablesTooLarge {
            size: at.next - ACPI_ADDR,
            available: ACPI_END - ACPI_ADDR,
        });
    }

    let fadt = build_fadt(facs_addr, dsdt_addr);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(addr) = mcfg_addr {
        xsdt.add_entry(addr);
    }
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);

    let mut facs = FACS::new();
    // Version 2 is the ACPI 4.0+ layout the struct has (X_Firmware_Waking_Vector).
    facs.version = 2;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);

    let mut blobs = vec![
        (GuestAddress(rsdp_addr), to_bytes(&rsdp)),
        (GuestAddress(facs_addr), to_bytes(&facs)),
        (GuestAddress(xsdt_addr), xsdt),
        (GuestAddress(fadt_addr), fadt),
        (GuestAddress(madt_addr), madt.as_slice().to_vec()),
    ];
    if let (Some(addr), Some(mcfg)) = (mcfg_addr, mcfg) {
        blobs.push((GuestAddress(addr), mcfg));
    }
    blobs.push((GuestAddress(dsdt_addr), dsdt.as_slice().to_vec()));
    Ok(Tables {
        rsdp: GuestAddress(rsdp_addr),
        blobs,
    })
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// An I/O port register, as the FADT's X_ blocks and RESET_REG describe it.
fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, port.into())
}

fn build_fadt(facs_addr: u64, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .preferred_pm_profile(PmProfile::Unspecified)
        // HLT works and caches need no flushing help: C1 only.
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // Set means "no fixed-feature sleep button"; PWR_BUTTON stays clear,
        // which announces the fixed-feature power button in PM1 (PWRBTN_STS,
        // bit 8) that vmd presses for a graceful shutdown.
        .flag(Flags::SlpButton)
        // The PM timer is 32 bits wide, not 24.
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);

    // Both pointers are below 4 GiB. The 32-bit FACS pointer alone, because
    // the spec wants X_FIRMWARE_CTRL zero when FIRMWARE_CTRL is used; the
    // DSDT in both fields (same value), as FADT revision 6 readers take
    // X_DSDT and old ones DSDT.
    f.firmware_ctrl = (facs_addr as u32).into();
    f.dsdt = (dsdt_addr as u32).into();
    f.x_dsdt = dsdt_addr.into();

    f.sci_int = (IRQ_SCI as u16).into();
    // No SMM: SMI_CMD = 0 tells the OS the machine is always in ACPI mode
    // (SCI_EN reads as set), so it never tries the ACPI_ENABLE handshake.
    f.smi_cmd = 0.into();

    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
    f.pm1_evt_len = PM1A_EVT_LEN;
    f.pm1_cnt_len = PM1A_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    // PM1_EVT is two 16-bit registers (STS, EN), so word access; the
    // control register is 16-bit and the timer 32-bit.
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_PORT, PM1A_EVT_LEN, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_PORT, PM1A_CNT_LEN, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(PM_TMR_PORT, PM_TMR_LEN, AccessSize::DwordAccess);

    // Latencies above 100 us / 1000 us mean "C2 / C3 not supported".
    f.p_lvl2_lat = 101.into();
    f.p_lvl3_lat = 1001.into();

    // LEGACY_DEVICES (bit 0: ISA-style COM1/RTC), 8042 (bit 1), VGA not
    // present (bit 2). MSI is allowed (bit 3 clear), the CMOS RTC exists
    // (bit 5 clear).
    f.iapc_boot_arch = 0b111.into();

    f.reset_reg = io_gas(RESET_PORT, 1, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;

    let bytes = to_bytes(&f.finalize());
    debug_assert_eq!(bytes.len(), FADT_LEN);
    bytes
}

/// MADT interrupt source override flags (MPS INTI flags).
const MPS_INTI_CONFORMS: u16 = 0;
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_LEVEL: u16 = 0b11 << 2;

/// MADT flags: the machine also has dual 8259 PICs (KVM's in-kernel PIC),
/// which the OS must mask when it switches to the APICs.
const MADT_PCAT_COMPAT: u32 = 1;

/// MADT Interrupt Source Override (type 2): an ISA IRQ not wired to the
/// IOAPIC pin of the same number, or with non-ISA polarity/trigger.
fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut e = [0u8; 10];
    e[0] = 2; // type
    e[1] = 10; // length
    e[2] = 0; // bus: ISA
    e[3] = irq;
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    e[8..10].copy_from_slice(&flags.to_le_bytes());
    e
}

/// MADT Local APIC NMI (type 4) for processor `uid` (0xff: all of them).
fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let f = flags.to_le_bytes();
    [4, 6, uid, f[0], f[1], lint]
}

fn build_madt(num_cpus: u32) -> Sdt {
    // acpi_tables' MADT builder cannot set the flags field (PCAT_COMPAT) and
    // has no ISO/NMI entries, so build on the generic SDT, which keeps the
    // checksum right, and reuse the crate's LAPIC and IOAPIC entries.
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, LAPIC_ADDR as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);

    let mut entries = Vec::new();
    for i in 0..num_cpus {
        // Callers have checked num_cpus <= MAX_CPUS, so this fits.
        let id = i as u8;
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(IOAPIC_ID, IOAPIC_ADDR as u32, 0).to_aml_bytes(&mut entries);
    // KVM's PIT is wired to IOAPIC pin 2 (pin 0 is the 8259's ExtINT), as
    // on every PC; ISA polarity/trigger (edge, high).
    entries.extend_from_slice(&interrupt_source_override(0, 2, MPS_INTI_CONFORMS));
    // The SCI is level triggered, active high, unlike an ISA IRQ.
    entries.extend_from_slice(&interrupt_source_override(
        IRQ_SCI as u8,
        IRQ_SCI,
        MPS_INTI_ACTIVE_HIGH | MPS_INTI_LEVEL,
    ));
    // NMIs arrive on LINT1 of every CPU (LINT0 is ExtINT from the 8259).
    entries.extend_from_slice(&local_apic_nmi(0xff, MPS_INTI_CONFORMS, 1));
    madt.append_slice(&entries);
    madt
}

/// The MCFG: one ECAM allocation, for segment 0 bus 0 at `PCI_ECAM_ADDR`.
fn build_mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_ADDR, PCI_SEGMENT, PCI_BUS, PCI_BUS);
    to_bytes(&mcfg)
}

/// `IRQNoFlags () {n}`: the small ISA IRQ descriptor (edge, active high,
/// exclusive) that legacy devices use; acpi_tables only has the extended
/// form, which some guests' PNP parsers handle worse for ISA devices.
struct IrqNoFlags(u32);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22); // small item: IRQ (tag 4), 2 bytes
        sink.word(1u16 << self.0);
    }
}

/// A fixed one-range `IO (Decode16, base, base, 1, len)` descriptor.
fn io(base: u16, len: u8) -> IO {
    IO::new(base, base, 1, len)
}

fn build_dsdt(cfg: &AcpiConfig) -> Sdt {
    let mut body = Vec::new();

    // Name (_S5, Package (4) {5, 5, 0, 0}): SLP_TYPa/b for soft-off. The
    // values encode as BytePrefix 0x05, which is the pattern simple guest
    // parsers look for after "_S5_".
    let s5: u8 = S5_SLP_TYP;
    Name::new(
        "_S5_".into(),
        &Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    if cfg.has_pci() {
        pci_devices(cfg, &mut sb);
    }
    legacy_devices(&mut sb);

    // Processor devices (the ACPI 6 form, not the deprecated Processor op):
    // Linux does fine with the MADT alone, but OpenBSD attaches acpicpu(4)
    // (C1 idle via HLT) only to these. _UID matches the MADT processor uid.
    for i in 0..cfg.num_cpus {
        let name = format!("C{i:03X}");
        Device::new(
            Path::new(&name),
            vec![
                &Name::new("_HID".into(), &"ACPI0007"),
                &Name::new("_UID".into(), &i),
            ],
        )
        .to_aml_bytes(&mut sb);
    }

    body.extend_from_slice(&Scope::raw("\\_SB_".into(), sb));

    // Revision 2: integers in this AML are 64 bits wide.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// The PCI host bridge `PCI0` (bus 0, its windows, the `_PRT`) and the
/// motherboard resource that reserves its ECAM.
fn pci_devices(cfg: &AcpiConfig, sb: &mut Vec<u8>) {
    // PCI interrupt routing: INTA# of each slot (the devices are single
    // function and use no other pin) straight to an IOAPIC pin, in the
    // "source 0, GSI in the last field" form. Address 0xSSSS_FFFF is "slot
    // SSSS, any function"; pin 0 is INTA#. GSIs from _PRT entries like
    // these are level triggered, active low.
    let slots = cfg.slots();
    let prt_addrs: Vec<u32> = slots
        .clone()
        .map(|s| (u32::from(s) << 16) | 0xffff)
        .collect();
    let prt_gsis: Vec<u32> = slots.map(pci_intx_gsi).collect();
    let prt_entries: Vec<Package> = prt_addrs
        .iter()
        .zip(&prt_gsis)
        .map(|(addr, gsi)| Package::new(vec![addr, &aml::ZERO, &aml::ZERO, gsi]))
        .collect();
    let prt = Package::new(prt_entries.iter().map(|p| p as &dyn Aml).collect());

    // The PCI host bridge: bus 0 with the whole I/O space except its own
    // config ports, and the BAR window (below the ECAM) of the MMIO hole.
    Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A03")),
            // _ADR next to _HID is frowned upon by the spec (iasl warns),
            // but it is what QEMU's PC DSDT has always carried, so the
            // guests we care about are known to take it.
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    // Bus 0 alone: the MCFG's ECAM covers no other, and
                    // Linux notes a root bus range the ECAM covers only
                    // partly.
                    &AmlAddressSpace::<u16>::new_bus_number(PCI_BUS.into(), PCI_BUS.into()),
                    &io(0xcf8, 8),
                    &AmlAddressSpace::<u16>::new_io(0, 0xcf7, None),
                    &AmlAddressSpace::<u16>::new_io(0xd00, 0xffff, None),
                    &AmlAddressSpace::<u32>::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO_START as u32,
                        (PCI_MMIO_END - 1) as u32,
                        None,
                    ),
                ]),
            ),
            &Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(sb);

    // Motherboard resources: the ECAM, so that Linux, which uses an MCFG
    // region only when firmware reserves it, finds it reserved here too
    // (besides the e820 map, which it checks first).
    Device::new(
        "MRES".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Memory32Fixed::new(
                    true,
                    PCI_ECAM_ADDR as u32,
                    PCI_ECAM_SIZE as u32,
                )]),
            ),
        ],
    )
    .to_aml_bytes(sb);
}

/// The ISA devices every VM has.
fn legacy_devices(sb: &mut Vec<u8>) {
    // Legacy ISA devices, directly under \_SB: there is no PCI-ISA bridge
    // function to hang them from, and PNP enumeration does not need one.
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ONE),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&io(0x3f8, 8), &IrqNoFlags(IRQ_COM1)]),
            ),
        ],
    )
    .to_aml_bytes(sb);

    Device::new(
        "PS2K".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&io(0x60, 1), &io(0x64, 1), &IrqNoFlags(IRQ_KBD)]),
            ),
        ],
    )
    .to_aml_bytes(sb);

    Device::new(
        "RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&io(0x70, 2), &IrqNoFlags(IRQ_RTC)]),
            ),
        ],
    )
    .to_aml_bytes(sb);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 64 << 20;

    fn guest(cfg: &AcpiConfig) -> (GuestMemoryMmap, GuestAddress) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), cfg.mem_size as usize)])
            .unwrap();
        let rsdp = create_acpi_tables(&mem, cfg).unwrap();
        (mem, rsdp)
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

    /// Reads a whole SDT at `addr`, checking it lies in the ACPI area and
    /// sums to zero.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let hdr = read(mem, addr, 36);
        assert_eq!(&hdr[0..4], sig);
        let len = u32_at(&hdr, 4) as usize;
        assert!(len >= 36);
        assert!(
            addr >= ACPI_ADDR && addr + len as u64 <= ACPI_END,
            "{sig:?} outside"
        );
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], &OEM_ID);
        assert_eq!(&t[16..24], &OEM_TABLE_ID);
        t
    }

    /// The tables a guest finds, each checked by `table`.
    struct Found {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        /// None where the VM has no PCI bus.
        mcfg: Option<Vec<u8>>,
        dsdt: Vec<u8>,
    }

    /// Walks RSDP -> XSDT -> tables.
    fn walk(cfg: &AcpiConfig) -> Found {
        let (mem, rsdp_addr) = guest(cfg);
        assert_eq!(rsdp_addr.0, ACPI_ADDR);
        assert_eq!(rsdp_addr.0 % 16, 0, "legacy scan needs 16-byte alignment");

        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[0..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(&rsdp[9..15], &OEM_ID);
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");

        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let tables = if cfg.has_pci() { 3 } else { 2 };
        assert_eq!(xsdt.len(), 36 + 8 * tables);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let fadt = table(&mem, entries[0], b"FACP");
        let madt = table(&mem, entries[1], b"APIC");
        let mcfg = cfg.has_pci().then(|| table(&mem, entries[2], b"MCFG"));

        let dsdt_addr = u64_at(&fadt, 140);
        assert_eq!(u32_at(&fadt, 40) as u64, dsdt_addr, "DSDT and X_DSDT agree");
        let dsdt = table(&mem, dsdt_addr, b"DSDT");

        let facs_addr = u32_at(&fadt, 36) as u64;
        assert_eq!(facs_addr % 64, 0, "FACS alignment");
        assert_eq!(u64_at(&fadt, 132), 0, "X_FIRMWARE_CTRL unused");
        let facs = read(&mem, facs_addr, 64);
        assert_eq!(&facs[0..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);

        // No two tables overlap.
        let mut spans = vec![
            (rsdp_addr.0, 36u64),
            (facs_addr, 64),
            (u64_at(&rsdp, 24), xsdt.len() as u64),
            (entries[0], fadt.len() as u64),
            (entries[1], madt.len() as u64),
            (dsdt_addr, dsdt.len() as u64),
        ];
        if let Some(mcfg) = &mcfg {
            spans.push((entries[2], mcfg.len() as u64));
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {spans:x?}");
        }
        Found {
            fadt,
            madt,
            mcfg,
            dsdt,
        }
    }

    fn check_fadt(fadt: &[u8]) {
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT major revision");
        assert_eq!(u16_at(fadt, 46), 9, "SCI_INT");
        assert_eq!(u32_at(fadt, 48), 0, "SMI_CMD");
        assert_eq!(u32_at(fadt, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(fadt, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(fadt, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(u32_at(fadt, 80), 0, "GPE0_BLK");
        assert_eq!(
            &fadt[88..92],
            &[4, 2, 0, 4],
            "PM1_EVT/PM1_CNT/PM2_CNT/PM_TMR_LEN"
        );
        assert!(u16_at(fadt, 96) > 100, "P_LVL2_LAT disables C2");
        assert!(u16_at(fadt, 98) > 1000, "P_LVL3_LAT disables C3");
        assert_eq!(u16_at(fadt, 109), 0b111, "IAPC_BOOT_ARCH");

        let flags = u32_at(fadt, 112);
        let bit = |n: u32| flags & (1 << n) != 0;
        assert!(bit(0), "WBINVD");
        assert!(bit(2), "PROC_C1");
        assert!(!bit(4), "PWR_BUTTON clear: fixed-feature power button");
        assert!(bit(5), "SLP_BUTTON set: no sleep button");
        assert!(bit(8), "TMR_VAL_EXT");
        assert!(bit(10), "RESET_REG_SUP");
        assert!(!bit(20), "not HW_REDUCED_ACPI");

        // RESET_REG: system I/O, 8 bits at port 0xcf9, byte access.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 120), 0xcf9);
        assert_eq!(fadt[128], 0x06, "RESET_VALUE");

        // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK.
        for (off, port, bits) in [(148, 0x600, 32), (172, 0x604, 16), (208, 0x608, 32)] {
            assert_eq!(fadt[off], 1, "system I/O at {off}");
            assert_eq!(fadt[off + 1], bits, "bit width at {off}");
            assert_eq!(u64_at(fadt, off + 4), port);
        }
    }

    fn check_madt(madt: &[u8], cpus: u32) {
        assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let (mut lapics, mut ioapics, mut isos, mut nmis) = (0u32, 0, vec![], 0);
        let mut off = 44;
        while off < madt.len() {
            let (ty, len) = (madt[off], madt[off + 1] as usize);
            let e = &madt[off..off + len];
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(e[2] as u32, lapics, "processor uid");
                    assert_eq!(e[3] as u32, lapics, "APIC id");
                    assert_eq!(u32_at(e, 4), 1, "enabled");
                    lapics += 1;
                }
                1 => {
                    assert_eq!(len, 12);
                    assert_eq!(e[2], IOAPIC_ID);
                    assert_eq!(u32_at(e, 4), 0xfec0_0000);
                    assert_eq!(u32_at(e, 8), 0, "GSI base");
                    ioapics += 1;
                }
                2 => {
                    assert_eq!(len, 10);
                    isos.push((e[3], u32_at(e, 4), u16_at(e, 8)));
                }
                4 => {
                    assert_eq!(len, 6);
                    assert_eq!((e[2], e[5]), (0xff, 1), "all CPUs, LINT1");
                    nmis += 1;
                }
                _ => panic!("unexpected MADT entry type {ty}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(lapics, cpus);
        assert_eq!(ioapics, 1);
        assert_eq!(nmis, 1);
        assert_eq!(isos, vec![(0, 2, 0), (9, 9, 0x000d)]);
    }

    fn check_mcfg(mcfg: &[u8]) {
        assert_eq!(mcfg.len(), 44 + 16, "one allocation");
        assert_eq!(mcfg[8], 1, "MCFG revision");
        assert_eq!(u64_at(mcfg, 36), 0, "reserved");
        assert_eq!(u64_at(mcfg, 44), 0xe000_0000, "ECAM base");
        assert_eq!(u64_at(mcfg, 44), PCI_ECAM_ADDR);
        assert_eq!(u16_at(mcfg, 52), 0, "segment");
        assert_eq!((mcfg[54], mcfg[55]), (0, 0), "buses 0..=0");
        assert_eq!(u32_at(mcfg, 56), 0, "reserved");
        // One bus: 32 devices x 8 functions x 4 KiB, what is reserved.
        assert_eq!(PCI_ECAM_SIZE, (mcfg[55] - mcfg[54] + 1) as u64 * (1 << 20));
    }

    /// Decodes an AML integer (ZeroOp, OneOp, Byte/Word/DWordPrefix).
    fn aml_int(b: &[u8]) -> u64 {
        aml_int_len(b).0
    }

    /// An AML integer and the bytes it takes.
    fn aml_int_len(b: &[u8]) -> (u64, usize) {
        match b[0] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (b[1] as u64, 2),
            0x0b => (u16_at(b, 1) as u64, 3),
            0x0c => (u32_at(b, 1) as u64, 5),
            op => panic!("not an integer: {op:#x}"),
        }
    }

    /// Decodes a PkgLength: (value, bytes it takes).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let follow = (b[0] >> 6) as usize;
        if follow == 0 {
            return ((b[0] & 0x3f) as usize, 1);
        }
        let mut len = (b[0] & 0x0f) as usize;
        for (i, x) in b[1..=follow].iter().enumerate() {
            len |= (*x as usize) << (4 + 8 * i);
        }
        (len, 1 + follow)
    }

    /// `Name (_PRT, Package { Package { addr, pin, source, index }, ... })`
    /// in `aml`, as (address, pin, source, source index) tuples.
    fn prt(aml: &[u8]) -> Vec<(u64, u64, u64, u64)> {
        let at = aml.windows(4).position(|w| w == b"_PRT").expect("_PRT");
        assert_eq!(aml[at - 1], 0x08, "NameOp before _PRT");
        assert_eq!(aml.windows(4).filter(|w| w == b"_PRT").count(), 1);
        let p = &aml[at + 4..];
        assert_eq!(p[0], 0x12, "PackageOp");
        let (len, n) = pkg_length(&p[1..]);
        let body = &p[1..1 + len];
        let count = body[n] as usize;
        let mut off = n + 1;
        let mut out = Vec::new();
        for _ in 0..count {
            assert_eq!(body[off], 0x12, "PackageOp of an entry");
            let (elen, en) = pkg_length(&body[off + 1..]);
            let e = &body[off + 1..off + 1 + elen];
            assert_eq!(e[en], 4, "4 elements");
            let mut f = [0u64; 4];
            let mut o = en + 1;
            for v in &mut f {
                let (x, l) = aml_int_len(&e[o..]);
                *v = x;
                o += l;
            }
            assert_eq!(o, elen, "entry fully read");
            out.push((f[0], f[1], f[2], f[3]));
            off += 1 + elen;
        }
        assert_eq!(off, len, "package fully read");
        out
    }

    /// The Word/DWord address space descriptors (resource type, min, max,
    /// length) of the `_CRS` that follows PCI0 in `aml`.
    fn pci0_windows(aml: &[u8]) -> Vec<(u8, u64, u64, u64)> {
        let pci0 = aml.windows(4).position(|w| w == b"PCI0").expect("PCI0");
        let crs = pci0 + aml[pci0..].windows(4).position(|w| w == b"_CRS").unwrap();
        // NameOp _CRS, BufferOp PkgLength BufferSize, descriptors.
        let b = &aml[crs + 4..];
        assert_eq!(b[0], 0x11, "BufferOp");
        let (len, n) = pkg_length(&b[1..]);
        let buf = &b[1..1 + len];
        let (size, sn) = aml_int_len(&buf[n..]);
        let res = &buf[n + sn..];
        assert_eq!(res.len() as u64, size);
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let tag = res[off];
            if tag & 0x80 == 0 {
                // Small item: the end tag closes the template.
                if tag >> 3 == 0x0f {
                    break;
                }
                off += 1 + (tag & 7) as usize;
                continue;
            }
            let dlen = u16_at(res, off + 1) as usize;
            let d = &res[off + 3..off + 3 + dlen];
            match tag {
                0x88 => out.push((
                    d[0],
                    u16_at(d, 5) as u64,
                    u16_at(d, 7) as u64,
                    u16_at(d, 11) as u64,
                )),
                0x87 => out.push((
                    d[0],
                    u32_at(d, 7) as u64,
                    u32_at(d, 11) as u64,
                    u32_at(d, 19) as u64,
                )),
                _ => {}
            }
            off += 3 + dlen;
        }
        out
    }

    fn check_dsdt(dsdt: &[u8], cpus: u32) {
        assert_eq!(dsdt[8], 2, "DSDT revision (64-bit integers)");
        let aml = &dsdt[36..];
        let at = aml.windows(4).position(|w| w == b"_S5_").expect("_S5_");
        assert_eq!(aml[at - 1], 0x08, "NameOp before _S5_");
        let pkg = &aml[at + 4..];
        assert_eq!(pkg[0], 0x12, "PackageOp");
        // One-byte PkgLength (bits 7:6 zero), then NumElements.
        assert_eq!(pkg[1] & 0xc0, 0);
        assert_eq!(pkg[2], 4, "NumElements");
        assert_eq!(&pkg[3..5], &[0x0a, 5], "BytePrefix 5");
        assert_eq!(aml_int(&pkg[3..]), S5_SLP_TYP as u64);
        assert_eq!(aml_int(&pkg[5..]), S5_SLP_TYP as u64);

        for needle in [
            &b"_SB_"[..],
            b"PCI0",
            b"COM1",
            b"PS2K",
            b"RTC_",
            b"_CRS",
            b"_BBN",
        ] {
            assert!(aml.windows(needle.len()).any(|w| w == needle), "{needle:?}");
        }

        // _PRT: INTA# of every populated slot (here all of 1..=31) to its
        // GSI, in slot order, in the "source 0, GSI in the index field" form.
        let expected: Vec<_> = (1..=31u8)
            .map(|slot| {
                let addr = ((slot as u64) << 16) | 0xffff;
                (addr, 0, 0, pci_intx_gsi(slot) as u64)
            })
            .collect();
        let got = prt(aml);
        assert_eq!(got, expected);
        assert!(got.iter().all(|e| (16..=23).contains(&e.3)), "GSIs 16-23");
        assert_eq!(got[0].3, 17, "slot 1");
        assert_eq!(got[6].3, 23, "slot 7");
        assert_eq!(got[7].3, 16, "slot 8");

        // PCI0's bus range and BAR window: bus 0, PCI_MMIO_START..PCI_MMIO_END,
        // clear of the ECAM and the APICs.
        let windows = pci0_windows(aml);
        assert!(windows.contains(&(2, 0, 0, 1)), "bus 0 alone: {windows:x?}");
        let mem: Vec<_> = windows.iter().filter(|w| w.0 == 0).collect();
        assert_eq!(
            mem,
            vec![&(0, 0xc000_0000, 0xdfff_ffff, 0x2000_0000)],
            "memory window"
        );
        let (lo, hi) = (mem[0].1, mem[0].2 + 1);
        assert_eq!((lo, hi), (PCI_MMIO_START, PCI_MMIO_END));
        for (name, a, len) in [
            ("ECAM", PCI_ECAM_ADDR, PCI_ECAM_SIZE),
            ("IOAPIC", IOAPIC_ADDR, 0x1000),
            ("LAPIC", LAPIC_ADDR, 0x1000),
        ] {
            assert!(a + len <= lo || hi <= a, "window overlaps the {name}");
        }

        // A PNP0C02 device reserving the ECAM: Memory32Fixed (ReadWrite,
        // 0xe0000000, 0x100000).
        let pnp0c02 = to_bytes(&EISAName::new("PNP0C02"));
        let mres = aml.windows(4).position(|w| w == b"MRES").expect("MRES");
        assert_eq!(
            &aml[mres + 4 + 5..mres + 4 + 5 + pnp0c02.len()],
            &pnp0c02[..]
        );
        let mut m32 = vec![0x86, 9, 0, 1];
        m32.extend_from_slice(&(PCI_ECAM_ADDR as u32).to_le_bytes());
        m32.extend_from_slice(&(PCI_ECAM_SIZE as u32).to_le_bytes());
        let at = aml
            .windows(m32.len())
            .position(|w| w == m32)
            .expect("Memory32Fixed ECAM");
        assert!(at > mres);

        let cpu_devs = aml.windows(9).filter(|w| w == b"ACPI0007\0").count();
        assert_eq!(cpu_devs as u32, cpus);
        let last = format!("C{:03X}", cpus - 1);
        assert!(aml.windows(4).any(|w| w == last.as_bytes()));
    }

    fn cfg(num_cpus: u32) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            mem_size: MEM,
            pci_slots: PCI_SLOTS.collect(),
        }
    }

    #[test]
    fn the_prt_names_only_populated_slots() {
        let mut c = cfg(1);
        c.pci_slots = vec![1, 3, 40];
        let t = walk(&c);
        let got = prt(&t.dsdt[36..]);
        assert_eq!(
            got,
            vec![(0x1ffff, 0, 0, 17), (0x3ffff, 0, 0, 19)],
            "slot 40 does not exist"
        );
    }

    /// Without PCI devices the tables describe no bus: no host bridge,
    /// no ECAM (MCFG, its reservation); the rest as with one.
    #[test]
    fn no_pci_bus_without_pci_devices() {
        for slots in [vec![], vec![0, 32, 40]] {
            let mut c = cfg(2);
            c.pci_slots = slots;
            assert!(!c.has_pci());
            let t = walk(&c);
            assert!(t.mcfg.is_none());
            let aml = &t.dsdt[36..];
            for gone in [&b"PCI0"[..], b"MRES", b"PNP0A03", b"_PRT"] {
                assert!(!aml.windows(gone.len()).any(|w| w == gone), "{gone:?}");
            }
            check_fadt(&t.fadt);
            check_madt(&t.madt, 2);
            for kept in [&b"COM1"[..], b"PS2K", b"RTC_", b"C001", b"_S5_"] {
                assert!(aml.windows(kept.len()).any(|w| w == kept), "{kept:?}");
            }
        }
        let build = |slots: Vec<u8>| {
            let mut c = cfg(1);
            c.pci_slots = slots;
            build_tables(&c).unwrap().blobs.len()
        };
        assert_eq!(build(vec![]), 6, "RSDP, FACS, XSDT, FADT, MADT, DSDT");
        assert_eq!(build(vec![1]), 7);
    }

    #[test]
    fn tables_for_1_4_64_and_max_cpus() {
        for cpus in [1, 4, 64, MAX_CPUS] {
            let t = walk(&cfg(cpus));
            check_fadt(&t.fadt);
            check_madt(&t.madt, cpus);
            check_mcfg(t.mcfg.as_ref().expect("MCFG"));
            check_dsdt(&t.dsdt, cpus);
        }
    }

    #[test]
    fn fixed_addresses() {
        let t = build_tables(&cfg(1)).unwrap();
        let addrs: Vec<u64> = t.blobs.iter().map(|(a, _)| a.0).collect();
        assert_eq!(&addrs[..5], &[0xe0000, 0xe0040, 0xe0080, 0xe00c0, 0xe01e0]);
        assert_eq!(addrs.len(), 7, "RSDP, FACS, XSDT, FADT, MADT, MCFG, DSDT");
    }

    #[test]
    fn rejects_bad_configs() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let err = create_acpi_tables(&mem, &cfg(MAX_CPUS + 1)).unwrap_err();
        assert!(matches!(
            err,
            AcpiError::TooManyCpus {
                requested: 256,
                max: 255
            }
        ));
        assert!(err.to_string().contains("256"));
        assert!(matches!(
            create_acpi_tables(&mem, &cfg(0)),
            Err(AcpiError::NoCpus)
        ));
        let small = AcpiConfig {
            num_cpus: 1,
            mem_size: 0x80000,
            pci_slots: Vec::new(),
        };
        assert!(matches!(
            create_acpi_tables(&mem, &small),
            Err(AcpiError::MemoryTooSmall { .. })
        ));
    }

    #[test]
    fn guest_memory_errors_are_reported() {
        // mem_size claims enough, but the memory given lacks the ACPI area.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_acpi_tables(&mem, &cfg(1)).unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory(_)));
        assert!(std::error::Error::source(&err).is_some());
    }

    /// Writes the tables as files for `iasl -d`: run with
    /// `ACPI_DUMP_DIR=/tmp/acpi [ACPI_DUMP_CPUS=n] cargo test -p vm -- --ignored dump_tables`.
    #[test]
    #[ignore]
    fn dump_tables() {
        let dir = std::env::var("ACPI_DUMP_DIR").unwrap_or_else(|_| "/tmp/acpi".into());
        let cpus = std::env::var("ACPI_DUMP_CPUS").map_or(4, |n| n.parse().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let t = build_tables(&cfg(cpus)).unwrap();
        let names = ["rsdp", "facs", "xsdt", "facp", "apic", "mcfg", "dsdt"];
        for ((_, bytes), name) in t.blobs.iter().zip(names) {
            std::fs::write(format!("{dir}/{name}.dat"), bytes).unwrap();
        }
    }
}
