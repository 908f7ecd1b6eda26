//! Guest physical memory map (x86-64).
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM)
//! 0x0000_0500  GDT for the 64-bit entry            (GDT_ADDR)
//! 0x0000_0520  IDT (empty) for the 64-bit entry    (IDT_ADDR)
//! 0x0000_6000  PVH hvm_start_info + memmap         (PVH_INFO_ADDR)
//! 0x0000_7000  Linux boot_params ("zero page")     (ZERO_PAGE_ADDR)
//! 0x0000_9000  PML4, PDPT, 4 PDs: identity map of the low 4 GiB (PML4_ADDR)
//! 0x0002_0000  kernel command line                 (CMDLINE_ADDR, CMDLINE_MAX)
//! 0x0009_fc00  EBDA, VGA, ROMs: reserved to 1 MiB   (EBDA_ADDR)
//! 0x0009_fc00  MP floating pointer + MP table      (MPTABLE_ADDR; to 0xa11b4 at 254 vCPUs)
//! 0x000e_0000  ACPI tables (RSDP first), reserved  (ACPI_ADDR .. ACPI_END)
//! 0x0010_0000  kernel (1 MiB), then RAM up to the 32-bit MMIO hole
//! 0xc000_0000  32-bit MMIO hole; PCI BARs from its start  (PCI_MMIO_START .. PCI_MMIO_END)
//! 0xe000_0000  PCI ECAM (MMCONFIG), bus 0, 1 MiB, reserved  (PCI_ECAM_ADDR, PCI_ECAM_SIZE; with a PCI bus)
//! 0xfec0_0000  IOAPIC                              (IOAPIC_ADDR)
//! 0xfee0_0000  LAPIC                               (LAPIC_ADDR)
//! 0x1_0000_0000  RAM above 4 GiB (what did not fit below the hole)
//! ```
//!
//! The hole starts at 3 GiB like on most PCs and on Firecracker. The VMM
//! assigns the BARs of the PCI devices on bus 0 itself, in the 512 MiB
//! below the ECAM; the ACPI host bridge's `_CRS` offers guests that window
//! and nothing else, and the ECAM is reserved in the e820 map and by an ACPI
//! motherboard-resource device, as Linux wants before it uses the MCFG.

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories (0xb000..0xf000) map 4 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0xb000;
/// Initial stack pointer handed to a 64-bit entry (grows down below the tables).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux caps the command line it reads at 2048 bytes on x86 (COMMAND_LINE_SIZE);
/// our own guests take more, so allow 64 KiB below the EBDA.
pub const CMDLINE_MAX: usize = 0x10000;
pub const EBDA_ADDR: u64 = 0x9fc00;
/// Intel MP floating pointer, then the MP configuration table (`mptable`):
/// the last KiB of base memory, where Linux's second MP scan looks first.
pub const MPTABLE_ADDR: u64 = EBDA_ADDR;
pub const ACPI_ADDR: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
pub const HIMEM_START: u64 = 0x100000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// PCI 32-bit memory window for BARs: from the hole's start to the ECAM.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START; // 0xc000_0000
pub const PCI_MMIO_END: u64 = PCI_ECAM_ADDR; // exclusive
/// PCIe enhanced configuration (ECAM / MMCONFIG) for bus 0 only: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_ADDR: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// IOAPIC pins (GSIs) for PCI INTx: 16..=23, level-triggered, active low, as the _PRT and the MP table say.
pub const PCI_INTX_FIRST_GSI: u32 = 16;
/// The GSI device `slot`'s INTA# is wired to (only INTA# is used: devices are single-function).
pub const fn pci_intx_gsi(slot: u8) -> u32 {
    PCI_INTX_FIRST_GSI + (slot as u32 % 8)
}

/// Smallest guest we accept: the low-memory boot structures plus 1 MiB
/// above the kernel load address is the floor for anything to run.
pub const MIN_MEM: u64 = 2 << 20;

/// ISA IRQs (IOAPIC pins) used by the legacy devices.
pub const IRQ_COM1: u32 = 4;
pub const IRQ_KBD: u32 = 1;
pub const IRQ_RTC: u32 = 8;
pub const IRQ_SCI: u32 = 9;

/// CMOS RTC/NVRAM: index port (0x70), data port (0x71).
pub const RTC_INDEX_PORT: u16 = 0x70;

/// Fixed-hardware ACPI power-management ports (PIIX4-like block at 0x600).
pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_EVT_LEN: u8 = 4;
pub const PM1A_CNT_PORT: u16 = 0x604;
pub const PM1A_CNT_LEN: u8 = 2;
pub const PM_TMR_PORT: u16 = 0x608;
pub const PM_TMR_LEN: u8 = 4;
/// `SLP_TYP` value the DSDT's `\_S5` package advertises.
pub const S5_SLP_TYP: u8 = 5;

/// Guest RAM regions for `mem_size` bytes: below the hole first, the rest
/// above 4 GiB. Returns (guest address, length) pairs.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut v = vec![(0, low)];
    if mem_size > low {
        v.push((MMIO_HOLE_END, mem_size - low));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]
        );
    }
}
