//! PCI configuration space, bus 0 enumeration, BAR sizing and assignment:
//! what a driver at CPL3 needs to find a device and reach its registers.
//!
//! # Configuration access
//! [`Pci::open`] prefers ECAM (PCI Express enhanced configuration access):
//! the ACPI MCFG table's entry for segment 0 that covers bus 0, if its base
//! lies below 4 GiB (the runtime identity-maps only the low 4 GiB). Without
//! an MCFG it looks for a `_CBA` object in the DSDT (QEMU's microvm with
//! `pcie=on` has no MCFG; its host bridge's `_CBA` says where ECAM is; see
//! `dsdt_cba`). Without either it uses configuration mechanism #1: the
//! address
//! `0x8000_0000 | bus << 16 | dev << 11 | fn << 8 | offset & 0xfc` written
//! to port 0xcf8, the data at port `0xcfc + (offset & 3)`. ECAM registers
//! are read and written with accesses of the register's width, as are the
//! data port's.
//!
//! # BARs
//! [`Pci::bar`] reads a BAR of a type-0 header and sizes it (all ones
//! written with the function's memory and I/O decoding off, the old value
//! put back). A memory BAR at address 0, or at or above 4 GiB (out of the
//! identity map), is unusable as it stands: [`Pci::assign_bar`] moves it
//! into a [`MemWindow`], a bump allocator over guest-physical addresses the
//! platform leaves to PCI. The window comes from the command line
//! (`pcimem=0xADDR`, up to the 4 GiB line; [`MemWindow::from_cmdline`]):
//! where the firmware assigns no BARs (QEMU's microvm with `pcie=on`:
//! its 32-bit MMIO window starts at 0xc000_0000), the test says where.

use crate::io::{inb, inl, inw, outb, outl, outw, peek16, peek32, peek64, peek8};

/// Configuration space offsets (type-0 header).
pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION: u16 = 0x08;
pub const CLASS: u16 = 0x09;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_ID: u16 = 0x2e;
pub const CAP_PTR: u16 = 0x34;

/// Command register bits.
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Status register: the capability list is present.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Header type bit 7: a multi-function device.
const HEADER_MULTIFUNCTION: u8 = 0x80;

/// The identity map ends here (see the runtime's page tables).
const MAPPED_END: u64 = 1 << 32;

/// A function's address on segment 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl core::fmt::Display for Bdf {
    /// `bb:dd.f` in hexadecimal, as lspci writes it.
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// How configuration space is reached.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Memory-mapped (MCFG): base of the region and the buses it covers.
    Ecam {
        base: u64,
        start_bus: u8,
        end_bus: u8,
    },
    /// Ports 0xcf8/0xcfc.
    Cf8,
}

/// One present function.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface.
    pub class: [u8; 3],
    /// Header type without the multi-function bit.
    pub header_type: u8,
}

/// What kind of BAR.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// A sized BAR.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    /// Address it decodes at (0: unassigned).
    pub addr: u64,
    /// Size in bytes, a power of two.
    pub size: u64,
}

impl Bar {
    /// A memory BAR the CPU can reach through the identity map.
    pub fn usable(&self) -> bool {
        self.kind != BarKind::Io && self.addr != 0 && self.addr + self.size <= MAPPED_END
    }
}

/// Configuration space access.
#[derive(Clone, Copy, Debug)]
pub struct Pci {
    access: Access,
}

impl Pci {
    /// ECAM from the MCFG table when there is a usable entry (see the
    /// module comment), otherwise ports 0xcf8/0xcfc.
    pub fn open() -> Pci {
        Pci {
            access: mcfg_bus0().or_else(dsdt_cba).unwrap_or(Access::Cf8),
        }
    }

    /// Uses the given access method.
    pub fn with_access(access: Access) -> Pci {
        Pci { access }
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Address of the register in ECAM, `None` for port access or a bus
    /// the region does not cover.
    fn ecam_addr(&self, bdf: Bdf, off: u16) -> Option<u64> {
        match self.access {
            Access::Ecam {
                base,
                start_bus,
                end_bus,
            } if (start_bus..=end_bus).contains(&bdf.bus) => Some(
                base + (u64::from(bdf.bus - start_bus) << 20
                    | u64::from(bdf.dev & 31) << 15
                    | u64::from(bdf.func & 7) << 12
                    | u64::from(off & 0xfff)),
            ),
            _ => None,
        }
    }

    fn cf8_select(bdf: Bdf, off: u16) -> u16 {
        let addr = 0x8000_0000u32
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.dev & 31) << 11
            | u32::from(bdf.func & 7) << 8
            | u32::from(off & 0xfc);
        outl(0xcf8, addr);
        0xcfc + (off & 3)
    }

    pub fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        match self.ecam_addr(bdf, off & !3) {
            // SAFETY: ECAM is a device region named by the firmware tables.
            Some(a) => unsafe { mmio_read32(a) },
            None if matches!(self.access, Access::Cf8) => inl(Self::cf8_select(bdf, off & !3)),
            None => u32::MAX,
        }
    }

    pub fn read16(&self, bdf: Bdf, off: u16) -> u16 {
        match self.ecam_addr(bdf, off & !1) {
            // SAFETY: as in read32.
            Some(a) => unsafe { mmio_read16(a) },
            None if matches!(self.access, Access::Cf8) => inw(Self::cf8_select(bdf, off & !1)),
            None => u16::MAX,
        }
    }

    pub fn read8(&self, bdf: Bdf, off: u16) -> u8 {
        match self.ecam_addr(bdf, off) {
            // SAFETY: as in read32.
            Some(a) => unsafe { mmio_read8(a) },
            None if matches!(self.access, Access::Cf8) => inb(Self::cf8_select(bdf, off)),
            None => u8::MAX,
        }
    }

    pub fn write32(&self, bdf: Bdf, off: u16, v: u32) {
        match self.ecam_addr(bdf, off & !3) {
            // SAFETY: as in read32.
            Some(a) => unsafe { mmio_write32(a, v) },
            None if matches!(self.access, Access::Cf8) => outl(Self::cf8_select(bdf, off & !3), v),
            None => {}
        }
    }

    pub fn write16(&self, bdf: Bdf, off: u16, v: u16) {
        match self.ecam_addr(bdf, off & !1) {
            // SAFETY: as in read32.
            Some(a) => unsafe { mmio_write16(a, v) },
            None if matches!(self.access, Access::Cf8) => outw(Self::cf8_select(bdf, off & !1), v),
            None => {}
        }
    }

    pub fn write8(&self, bdf: Bdf, off: u16, v: u8) {
        match self.ecam_addr(bdf, off) {
            // SAFETY: as in read32.
            Some(a) => unsafe { mmio_write8(a, v) },
            None if matches!(self.access, Access::Cf8) => outb(Self::cf8_select(bdf, off), v),
            None => {}
        }
    }

    /// The function at `bdf`, if present (vendor ID not 0xffff or 0).
    pub fn function(&self, bdf: Bdf) -> Option<Function> {
        let id = self.read32(bdf, VENDOR_ID);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class_rev = self.read32(bdf, REVISION);
        Some(Function {
            bdf,
            vendor,
            device: (id >> 16) as u16,
            revision: class_rev as u8,
            class: [
                (class_rev >> 24) as u8,
                (class_rev >> 16) as u8,
                (class_rev >> 8) as u8,
            ],
            header_type: self.read8(bdf, HEADER_TYPE) & !HEADER_MULTIFUNCTION,
        })
    }

    /// The functions present on `bus`: function 0 of each device, and
    /// functions 1..7 of multi-function devices.
    pub fn functions(&self, bus: u8) -> Functions {
        Functions {
            pci: *self,
            bus,
            dev: 0,
            func: 0,
            multi: false,
        }
    }

    /// The capability list: (offset, capability ID) pairs. Empty when the
    /// status register says there is none; at most 48 entries (a looping
    /// list ends there).
    pub fn capabilities(&self, bdf: Bdf) -> Capabilities {
        let next = if self.read16(bdf, STATUS) & STATUS_CAP_LIST != 0 {
            self.read8(bdf, CAP_PTR) & 0xfc
        } else {
            0
        };
        Capabilities {
            pci: *self,
            bdf,
            next,
            left: 48,
        }
    }

    /// Reads and sizes BAR `index` (0..5) of a type-0 header; `None` if it
    /// is not implemented. The upper half of a 64-bit BAR reads as a BAR
    /// of its own: see [`bars`](Self::bars).
    pub fn bar(&self, bdf: Bdf, index: u8) -> Option<Bar> {
        if index > 5 {
            return None;
        }
        let off = BAR0 + 4 * u16::from(index);
        let cmd = self.read16(bdf, COMMAND);
        // No decoding while the BAR holds all ones.
        self.write16(bdf, COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
        let lo = self.read32(bdf, off);
        self.write32(bdf, off, u32::MAX);
        let lo_mask = self.read32(bdf, off);
        self.write32(bdf, off, lo);
        let mut bar = None;
        if lo & 1 == 1 {
            let mask = lo_mask & !3;
            if mask != 0 {
                bar = Some(Bar {
                    index,
                    kind: BarKind::Io,
                    prefetchable: false,
                    addr: u64::from(lo & !3),
                    size: u64::from((!(mask | 0xffff_0000)).wrapping_add(1) & 0xffff),
                });
            }
        } else {
            let kind = match (lo >> 1) & 3 {
                2 if index < 5 => BarKind::Mem64,
                _ => BarKind::Mem32,
            };
            let (hi, hi_mask) = if kind == BarKind::Mem64 {
                let hi = self.read32(bdf, off + 4);
                self.write32(bdf, off + 4, u32::MAX);
                let hi_mask = self.read32(bdf, off + 4);
                self.write32(bdf, off + 4, hi);
                (hi, hi_mask)
            } else {
                (0, u32::MAX)
            };
            let mask = u64::from(hi_mask) << 32 | u64::from(lo_mask & !0xf);
            if lo_mask & !0xf != 0 || (kind == BarKind::Mem64 && hi_mask != 0) {
                bar = Some(Bar {
                    index,
                    kind,
                    prefetchable: lo & 8 != 0,
                    addr: u64::from(hi) << 32 | u64::from(lo & !0xf),
                    size: (!mask).wrapping_add(1),
                });
            }
        }
        self.write16(bdf, COMMAND, cmd);
        bar
    }

    /// All BARs of a type-0 header, sized: a 64-bit BAR at index i, and
    /// `None` at i + 1 (its upper half).
    pub fn bars(&self, bdf: Bdf) -> [Option<Bar>; 6] {
        let mut bars = [None; 6];
        let mut i = 0;
        while i < 6 {
            bars[i] = self.bar(bdf, i as u8);
            i += if bars[i].is_some_and(|b| b.kind == BarKind::Mem64) {
                2
            } else {
                1
            };
        }
        bars
    }

    /// Moves memory BAR `bar` to `addr` (aligned to its size, below 4 GiB
    /// for it to be reachable), with memory decoding off meanwhile.
    pub fn set_bar(&self, bdf: Bdf, bar: &Bar, addr: u64) {
        let off = BAR0 + 4 * u16::from(bar.index);
        let cmd = self.read16(bdf, COMMAND);
        self.write16(bdf, COMMAND, cmd & !CMD_MEMORY);
        let flags = self.read32(bdf, off) & 0xf;
        self.write32(bdf, off, addr as u32 & !0xf | flags);
        if bar.kind == BarKind::Mem64 {
            self.write32(bdf, off + 4, (addr >> 32) as u32);
        }
        self.write16(bdf, COMMAND, cmd);
    }

    /// Makes memory BAR `bar` usable: leaves it where it is when it is
    /// already (see [`Bar::usable`]), else assigns it from `window`.
    /// Returns the BAR as it now is.
    pub fn assign_bar(
        &self,
        bdf: Bdf,
        bar: Bar,
        window: Option<&mut MemWindow>,
    ) -> Result<Bar, BarError> {
        if bar.kind == BarKind::Io {
            return Err(BarError::Io(bar));
        }
        if bar.usable() {
            return Ok(bar);
        }
        let window = window.ok_or(BarError::NoWindow(bar))?;
        let addr = window.alloc(bar.size).ok_or(BarError::WindowFull(bar))?;
        self.set_bar(bdf, &bar, addr);
        let now = self.bar(bdf, bar.index).ok_or(BarError::Vanished(bar))?;
        if now.addr != addr {
            return Err(BarError::Stuck(bar, addr));
        }
        Ok(now)
    }

    /// Turns on the command register bits `bits` (e.g. [`CMD_MEMORY`] |
    /// [`CMD_BUS_MASTER`]).
    pub fn enable(&self, bdf: Bdf, bits: u16) {
        let cmd = self.read16(bdf, COMMAND);
        if cmd & bits != bits {
            self.write16(bdf, COMMAND, cmd | bits);
        }
    }
}

/// Why a BAR could not be made usable.
#[derive(Clone, Copy, Debug)]
pub enum BarError {
    /// An I/O BAR where memory was wanted.
    Io(Bar),
    /// Unassigned (or out of reach) and no `pcimem=` window.
    NoWindow(Bar),
    /// The window has no room left below 4 GiB.
    WindowFull(Bar),
    /// Reading the BAR back after moving it failed.
    Vanished(Bar),
    /// The BAR did not take the address written to it.
    Stuck(Bar, u64),
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            BarError::Io(b) => write!(f, "BAR{} is an I/O BAR, a memory BAR was expected", b.index),
            BarError::NoWindow(b) => write!(
                f,
                "BAR{} is unassigned (address {:#x}, size {:#x}) and no pcimem=0xADDR window was given",
                b.index, b.addr, b.size
            ),
            BarError::WindowFull(b) => write!(
                f,
                "BAR{} (size {:#x}) does not fit in the pcimem= window below 4 GiB",
                b.index, b.size
            ),
            BarError::Vanished(b) => write!(f, "BAR{} reads as unimplemented after assignment", b.index),
            BarError::Stuck(b, a) => write!(f, "BAR{} did not take address {a:#x}", b.index),
        }
    }
}

/// Guest-physical addresses free for BARs: a bump allocator, each BAR
/// aligned to its size.
#[derive(Clone, Copy, Debug)]
pub struct MemWindow {
    next: u64,
    end: u64,
}

impl MemWindow {
    /// The window `base..end`.
    pub fn new(base: u64, end: u64) -> MemWindow {
        MemWindow { next: base, end }
    }

    /// `pcimem=0xADDR` from the command line: the window from ADDR up to
    /// 4 GiB. `None` without it (or with a value that is not a number, or
    /// not below 4 GiB).
    pub fn from_cmdline() -> Option<MemWindow> {
        let base = crate::cmdline::parse_u64(crate::cmdline::get("pcimem")?)?;
        (base < MAPPED_END).then(|| MemWindow::new(base, MAPPED_END))
    }

    /// `size` bytes (a power of two) aligned to `size`.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let size = size.max(16);
        let at = self.next.checked_next_multiple_of(size)?;
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at)
    }
}

/// Iterator of [`Pci::functions`].
pub struct Functions {
    pci: Pci,
    bus: u8,
    dev: u8,
    func: u8,
    multi: bool,
}

impl Iterator for Functions {
    type Item = Function;

    fn next(&mut self) -> Option<Function> {
        while self.dev < 32 {
            let bdf = Bdf {
                bus: self.bus,
                dev: self.dev,
                func: self.func,
            };
            let found = self.pci.function(bdf);
            if self.func == 0 {
                self.multi =
                    found.is_some() && self.pci.read8(bdf, HEADER_TYPE) & HEADER_MULTIFUNCTION != 0;
            }
            if self.multi && self.func < 7 {
                self.func += 1;
            } else {
                self.func = 0;
                self.dev += 1;
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Iterator of [`Pci::capabilities`]: (offset, ID).
pub struct Capabilities {
    pci: Pci,
    bdf: Bdf,
    next: u8,
    left: u8,
}

impl Iterator for Capabilities {
    type Item = (u16, u8);

    fn next(&mut self) -> Option<(u16, u8)> {
        if self.next < 0x40 || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let at = u16::from(self.next);
        let id = self.pci.read8(self.bdf, at);
        self.next = self.pci.read8(self.bdf, at + 1) & 0xfc;
        Some((at, id))
    }
}

/// The MCFG entry for segment 0 that covers bus 0, if reachable.
fn mcfg_bus0() -> Option<Access> {
    let t = crate::acpi::find_table(b"MCFG")?;
    // SAFETY: an ACPI table found through the RSDP; reads stay inside its
    // length (capped at 64 KiB).
    unsafe {
        let len = u64::from(peek32(t + 4)).min(1 << 16);
        // Header (36), reserved (8), then 16-byte entries.
        let mut at = t + 44;
        while at + 16 <= t + len {
            let base = peek64(at);
            let segment = peek16(at + 8);
            let (start_bus, end_bus) = (peek8(at + 10), peek8(at + 11));
            if segment == 0 && start_bus == 0 && end_bus >= start_bus && base != 0 {
                let size = (u64::from(end_bus - start_bus) + 1) << 20;
                if base + size <= MAPPED_END {
                    return Some(Access::Ecam {
                        base,
                        start_bus,
                        end_bus,
                    });
                }
            }
            at += 16;
        }
    }
    None
}

/// ECAM for bus 0 from the DSDT when there is no MCFG: the first `_CBA`
/// object (a host bridge's configuration base address, ACPI 6 §6.5.7),
/// either `Name (_CBA, n)` or `Method (_CBA) { Return (n) }` with a
/// constant integer. QEMU's microvm with `pcie=on` describes its one PCIe
/// host bridge this way and has no MCFG. The bus range is not read (it is
/// in the bridge's `_CRS`): this covers bus 0 only.
fn dsdt_cba() -> Option<Access> {
    let dsdt = crate::acpi::fadt()?.dsdt;
    // SAFETY: the DSDT named by the FADT; reads stay inside its length
    // (capped at 1 MiB), a few bytes past each match at most.
    unsafe {
        if dsdt == 0 || peek32(dsdt) != u32::from_le_bytes(*b"DSDT") {
            return None;
        }
        let end = dsdt + u64::from(peek32(dsdt + 4)).min(1 << 20);
        let cba = u32::from_le_bytes(*b"_CBA");
        let name = (dsdt + 36..end.saturating_sub(16)).find(|&a| peek32(a) == cba)?;
        // Name form: the integer follows the name. Method form: a flags
        // byte, ReturnOp (0xa4), then the integer.
        let at = if peek8(name + 5) == 0xa4 {
            name + 6
        } else {
            name + 4
        };
        let base = match peek8(at) {
            0x0a => u64::from(peek8(at + 1)),  // BytePrefix
            0x0b => u64::from(peek16(at + 1)), // WordPrefix
            0x0c => u64::from(peek32(at + 1)), // DWordPrefix
            0x0e => peek64(at + 1),            // QWordPrefix
            _ => return None,
        };
        (base != 0 && base + (1 << 20) <= MAPPED_END).then_some(Access::Ecam {
            base,
            start_bus: 0,
            end_bus: 0,
        })
    }
}

// Register accesses of one width each (configuration and device registers
// want the access their size says).

/// # Safety
/// `addr` must be a device register or RAM.
pub unsafe fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// # Safety
/// `addr` must be a 2-byte aligned device register or RAM.
pub unsafe fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// # Safety
/// `addr` must be a 4-byte aligned device register or RAM.
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// # Safety
/// `addr` must be a device register or RAM we may change.
pub unsafe fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// # Safety
/// `addr` must be a 2-byte aligned device register or RAM we may change.
pub unsafe fn mmio_write16(addr: u64, v: u16) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

/// # Safety
/// `addr` must be a 4-byte aligned device register or RAM we may change.
pub unsafe fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
