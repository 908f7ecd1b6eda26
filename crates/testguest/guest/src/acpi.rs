//! Just enough ACPI to power off and to count CPUs: find the RSDP, walk the
//! XSDT/RSDT, read the FADT's power-management registers, the DSDT's `\_S5`
//! sleep type and the MADT's processor local APIC entries.
//!
//! Tables are read in place (everything is identity mapped). A table length
//! is trusted only up to `MAX_TABLE_LEN`, so a garbage table cannot send a
//! scan through all of memory.

use crate::io::{peek32, peek64, peek8};

/// Size of the common table header (signature .. creator revision).
const SDT_HEADER: u64 = 36;
const MAX_TABLE_LEN: u64 = 1 << 20;
/// Where the RSDP may sit when the boot information does not say.
const RSDP_SCAN: core::ops::Range<u64> = 0xe_0000..0x10_0000;

fn bytes_at(addr: u64, expected: &[u8]) -> bool {
    expected
        .iter()
        .enumerate()
        // SAFETY: callers pass addresses of ACPI tables or the BIOS area.
        .all(|(i, &b)| unsafe { peek8(addr + i as u64) } == b)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    // SAFETY: as in bytes_at.
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(unsafe { peek8(addr + i) })) == 0
}

fn valid_rsdp(addr: u64) -> bool {
    // The ACPI 1.0 part (20 bytes) always carries a checksum.
    bytes_at(addr, b"RSD PTR ") && checksum_ok(addr, 20)
}

/// Physical address of the RSDP: from the boot information (PVH
/// `rsdp_paddr` or `boot_params.acpi_rsdp_addr`), else found by scanning
/// 0xe0000..0xfffff on 16-byte boundaries.
pub fn rsdp() -> Option<u64> {
    let given = crate::boot_rsdp();
    if given != 0 && valid_rsdp(given) {
        return Some(given);
    }
    RSDP_SCAN.step_by(16).find(|&a| valid_rsdp(a))
}

/// Length of the table at `addr`, capped.
fn table_len(addr: u64) -> u64 {
    // SAFETY: addr is a table address from the RSDP/XSDT/FADT.
    u64::from(unsafe { peek32(addr + 4) }).min(MAX_TABLE_LEN)
}

/// Finds the first table with signature `sig` listed in the XSDT (ACPI 2.0+
/// with a non-zero XSDT address) or else the RSDT.
pub fn find_table(sig: &[u8; 4]) -> Option<u64> {
    let rsdp = rsdp()?;
    // SAFETY: rsdp was validated; the root table address comes from it.
    let (root, entry_size) = unsafe {
        let xsdt = if peek8(rsdp + 15) >= 2 {
            peek64(rsdp + 24)
        } else {
            0
        };
        if xsdt != 0 {
            (xsdt, 8)
        } else {
            (u64::from(peek32(rsdp + 16)), 4)
        }
    };
    if root == 0 {
        return None;
    }
    let len = table_len(root);
    let entries = len.saturating_sub(SDT_HEADER) / entry_size;
    (0..entries)
        .map(|i| {
            let at = root + SDT_HEADER + i * entry_size;
            // SAFETY: inside the root table.
            unsafe {
                if entry_size == 8 {
                    peek64(at)
                } else {
                    u64::from(peek32(at))
                }
            }
        })
        .find(|&t| t != 0 && bytes_at(t, sig))
}

/// A Generic Address Structure (only the parts we use).
#[derive(Clone, Copy, Debug)]
pub struct Gas {
    /// 0: system memory, 1: system I/O.
    pub space: u8,
    pub addr: u64,
}

impl Gas {
    /// Reads a GAS at `at`; `None` if its address is 0.
    fn read(at: u64) -> Option<Gas> {
        // SAFETY: `at` is inside a table whose length was checked.
        let (space, addr) = unsafe { (peek8(at), peek64(at + 4)) };
        (addr != 0).then_some(Gas { space, addr })
    }

    pub fn space_name(&self) -> &'static str {
        match self.space {
            0 => "mmio",
            1 => "port",
            _ => "unsupported-space",
        }
    }

    /// Writes one byte to the register. False if the address space is
    /// neither memory nor I/O, or the address is out of our reach.
    pub fn write8(&self, v: u8) -> bool {
        match self.space {
            1 if self.addr <= 0xffff => {
                crate::io::outb(self.addr as u16, v);
                true
            }
            // Our identity map covers the low 4 GiB.
            // SAFETY: the firmware tables name this as a device register.
            0 if self.addr < 1 << 32 => unsafe {
                crate::io::mmio_write8(self.addr, v);
                true
            },
            _ => false,
        }
    }
}

/// What we use from the FADT ("FACP").
#[derive(Clone, Copy, Debug)]
pub struct Fadt {
    /// PM1a_CNT_BLK I/O port, 0 when absent (hardware-reduced ACPI).
    pub pm1a_cnt: u32,
    /// SLEEP_CONTROL_REG (ACPI 5.0+, hardware-reduced ACPI).
    pub sleep_control: Option<Gas>,
    /// RESET_REG and RESET_VALUE, when the FADT flags say it is supported.
    pub reset: Option<(Gas, u8)>,
    /// DSDT address (X_DSDT preferred), 0 if none.
    pub dsdt: u64,
}

pub fn fadt() -> Option<Fadt> {
    let t = find_table(b"FACP")?;
    let len = table_len(t);
    // SAFETY: every field read is inside the table's length.
    unsafe {
        let field32 = |off: u64| if len >= off + 4 { peek32(t + off) } else { 0 };
        let x_dsdt = if len >= 148 { peek64(t + 140) } else { 0 };
        let dsdt = if x_dsdt != 0 {
            x_dsdt
        } else {
            u64::from(field32(40))
        };
        let flags = field32(112);
        // RESET_REG_SUP is flag bit 10; RESET_REG at 116, RESET_VALUE at 128.
        let reset = if flags & (1 << 10) != 0 && len >= 129 {
            Gas::read(t + 116).map(|g| (g, peek8(t + 128)))
        } else {
            None
        };
        let sleep_control = if len >= 256 { Gas::read(t + 244) } else { None };
        Some(Fadt {
            pm1a_cnt: field32(64),
            sleep_control,
            reset,
            dsdt,
        })
    }
}

/// SLP_TYP for S5 (soft off): the first element of the DSDT's `\_S5_`
/// package. In AML that is `NameOp "_S5_" PackageOp PkgLength NumElements
/// element...`, and the element is a small integer: ZeroOp, OneOp or a
/// Byte/Word/DWord prefix with its value.
pub fn s5_slp_typ(dsdt: u64) -> Option<u8> {
    if dsdt == 0 || !bytes_at(dsdt, b"DSDT") {
        return None;
    }
    let end = dsdt + table_len(dsdt);
    let name = (dsdt + SDT_HEADER..end.saturating_sub(8)).find(|&a| bytes_at(a, b"_S5_"))?;
    // SAFETY: reads stay within a few bytes after the name, inside the table
    // (the search stopped 8 bytes before its end).
    unsafe {
        if peek8(name + 4) != 0x12 {
            return None; // not a PackageOp
        }
        // PkgLength: bits 7:6 of the lead byte count the bytes that follow.
        let pkglen_bytes = 1 + u64::from(peek8(name + 5) >> 6);
        let elem = name + 5 + pkglen_bytes + 1; // skip NumElements
        match peek8(elem) {
            0x00 => Some(0),                      // ZeroOp
            0x01 => Some(1),                      // OneOp
            0x0a..=0x0c => Some(peek8(elem + 1)), // Byte/Word/DWordPrefix
            _ => None,
        }
    }
}

/// APIC IDs of the enabled processor local APIC entries (MADT type 0, flag
/// bit 0), in MADT order. Fills `out` and returns how many there are (which
/// may exceed `out.len()`); 0 when there is no MADT.
pub fn madt_lapic_ids(out: &mut [u32]) -> usize {
    let Some(madt) = find_table(b"APIC") else {
        return 0;
    };
    let end = madt + table_len(madt);
    // Header, then the local APIC address (4) and flags (4), then entries.
    let mut at = madt + SDT_HEADER + 8;
    let mut n = 0;
    while at + 2 <= end {
        // SAFETY: inside the table.
        let (kind, len) = unsafe { (peek8(at), u64::from(peek8(at + 1))) };
        if len < 2 || at + len > end {
            break;
        }
        if kind == 0 && len >= 8 {
            // SAFETY: a complete type-0 entry.
            let (apic_id, flags) = unsafe { (peek8(at + 3), peek32(at + 4)) };
            if flags & 1 != 0 {
                if let Some(slot) = out.get_mut(n) {
                    *slot = u32::from(apic_id);
                }
                n += 1;
            }
        }
        at += len;
    }
    n
}
