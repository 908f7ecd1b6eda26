//! PCI host: configuration mechanism #1 (ports 0xcf8/0xcfc), the reset
//! control register at 0xcf9, bus 0 with its devices, and the host bridge
//! at 00:00.0.
//!
//! A guest reaches configuration space by writing an address to
//! CONFIG_ADDRESS (dword at 0xcf8) and then accessing CONFIG_DATA
//! (0xcfc..=0xcff) with byte, word or dword accesses. Bus 0 is the only
//! bus; each slot holds a single-function device. [`PciConfig`] gives a
//! device a type-0 header with read-only fields enforced and BAR sizing
//! handled, so the virtio-pci devices to come only describe themselves.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::{BusDevice, SharedEvents, VmEvent};

/// Ports the VM maps to the host: 0xcf8..=0xcff.
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// Device numbers on a bus: 0..32.
pub const PCI_NUM_DEVICES: usize = 32;
/// Dwords of conventional (non-extended) configuration space: 256 bytes.
pub const PCI_CONFIG_REGS: usize = 64;
/// BARs in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;

// Type-0 header registers (dword numbers).
const REG_ID: usize = 0;
const REG_COMMAND: usize = 1;
const REG_CLASS: usize = 2;
const REG_BAR0: usize = 4;
const REG_SUBSYSTEM: usize = 11;
const REG_CAP_PTR: usize = 13;
const REG_INTERRUPT: usize = 15;

/// Status register bit 4 (in dword 1, bit 20): the capability list exists.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Capabilities live after the 64-byte standard header.
const CAP_START: usize = 0x40;
/// Bytes of conventional configuration space.
pub const PCI_CONFIG_SIZE: usize = PCI_CONFIG_REGS * 4;

// Command register bits a device lets the guest change: I/O space,
// memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
/// Interrupt Line (byte 0 of register 15): scratch for the OS's IRQ
/// routing, read/write by specification.
const INTERRUPT_LINE_WRITABLE: u32 = 0xff;

// Memory BAR type bits (bits 2:1 of the low dword).
const BAR_MEM_TYPE_64: u32 = 0b100;
const BAR_MEM_ADDR_MASK: u32 = !0xf;

// CONFIG_ADDRESS fields.
const ADDR_ENABLE: u32 = 1 << 31;
/// Bits the register keeps: enable, bus, device, function, register.
/// Reserved bits 30:24 and 1:0 read as 0.
const ADDR_WRITABLE: u32 = ADDR_ENABLE | 0x00ff_fffc;

// Reset control register (0xcf9) bits, as on PIIX/ICH chipsets.
/// RST_CPU: setting it resets the machine (SYS_RST, bit 1, only chooses
/// hard vs soft reset, which is the same thing for a VM).
const RCR_RST_CPU: u8 = 1 << 2;

/// Intel 82441FX (i440FX) host bridge, the one Linux, the BSDs and
/// SeaBIOS all know from QEMU's "pc" machine.
const HOST_BRIDGE_VENDOR: u16 = 0x8086;
const HOST_BRIDGE_DEVICE: u16 = 0x1237;
const HOST_BRIDGE_REVISION: u8 = 0x02;
/// Base class 06 (bridge), subclass 00 (host bridge), interface 00.
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

#[derive(Debug, PartialEq, Eq)]
pub enum PciError {
    /// Device numbers on a bus are 0..32.
    InvalidDeviceNumber(u8),
    /// Another device already sits at that device number.
    DeviceNumberInUse(u8),
    /// A BAR index past the header's six, a 64-bit BAR in the last slot,
    /// or a slot already used.
    InvalidBarIndex(usize),
    /// The capability does not fit in the 256 bytes of configuration space.
    NoCapabilitySpace,
    /// BAR size not a power of two of at least 16 bytes, address not
    /// aligned to it, or a 32-bit BAR above 4 GiB.
    InvalidBarRange { size: u64, addr: u64 },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::InvalidDeviceNumber(d) => write!(f, "PCI device number {d} out of range"),
            PciError::DeviceNumberInUse(d) => write!(f, "PCI device number {d} already in use"),
            PciError::InvalidBarIndex(i) => write!(f, "PCI BAR {i} is out of range or taken"),
            PciError::NoCapabilitySpace => f.write_str("PCI capability list is full"),
            PciError::InvalidBarRange { size, addr } => {
                write!(f, "invalid PCI BAR of {size:#x} bytes at {addr:#x}")
            }
        }
    }
}

impl std::error::Error for PciError {}

/// A function's configuration space as the host sees it.
pub trait PciDevice: Send {
    /// Dword `reg` of configuration space: 0..[`PCI_CONFIG_REGS`] is the
    /// conventional space, up to 1024 the extended space an ECAM access
    /// can reach. Takes `&mut self` because a window into a BAR (virtio's
    /// PCI configuration access capability) reads device registers.
    fn read_config(&mut self, reg: usize) -> u32;

    /// Write `data` (1, 2 or 4 bytes) at byte `offset` within dword `reg`;
    /// `offset + data.len() <= 4`. Returns the BAR the write moved, if any,
    /// so the VMM can move the device's range on the MMIO bus.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR, one header slot.
    Memory32,
    /// 64-bit memory BAR, two header slots (low dword first).
    Memory64,
}

/// A guest write gave a memory BAR a new address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index (its low slot for a 64-bit BAR).
    pub bar: usize,
    pub old_addr: u64,
    pub new_addr: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// Address last reported (or assigned), to tell a move from a rewrite.
    addr: u64,
    /// Address the VMM assigned, restored at reset.
    initial: u64,
}

/// A type-0 configuration header with per-bit write masks.
///
/// Read-only fields are enforced by the mask alone, and BAR sizing falls
/// out of it too: a BAR's writable bits are exactly its address bits above
/// the size, so writing all ones reads back the size mask the guest is
/// probing for.
#[derive(Clone, Debug)]
pub struct PciConfig {
    regs: [u32; PCI_CONFIG_REGS],
    writable: [u32; PCI_CONFIG_REGS],
    bars: [Option<Bar>; PCI_NUM_BARS],
    /// Offset of the last capability (its "next" byte links the new one),
    /// 0 while there is none.
    last_cap: usize,
    /// Where the next capability goes (dword aligned).
    next_cap: usize,
}

impl PciConfig {
    /// A header for a single-function device. `class_code` is the 24-bit
    /// base class / subclass / programming interface.
    pub fn new(vendor_id: u16, device_id: u16, class_code: u32, revision: u8) -> Self {
        let mut regs = [0u32; PCI_CONFIG_REGS];
        let mut writable = [0u32; PCI_CONFIG_REGS];
        regs[REG_ID] = u32::from(device_id) << 16 | u32::from(vendor_id);
        regs[REG_CLASS] = (class_code & 0xff_ffff) << 8 | u32::from(revision);
        writable[REG_COMMAND] = COMMAND_WRITABLE;
        writable[REG_INTERRUPT] = INTERRUPT_LINE_WRITABLE;
        PciConfig {
            regs,
            writable,
            bars: [None; PCI_NUM_BARS],
            last_cap: 0,
            next_cap: CAP_START,
        }
    }

    /// Append a capability with ID `id` whose bytes after the ID and the
    /// next pointer are `body`; returns its offset in configuration space.
    /// Its bytes are read-only until [`PciConfig::set_writable`] says
    /// otherwise.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciError> {
        let at = self.next_cap;
        let end = at + 2 + body.len();
        if end > PCI_CONFIG_SIZE {
            return Err(PciError::NoCapabilitySpace);
        }
        self.set_bytes(at, &[id, 0]);
        self.set_bytes(at + 2, body);
        if self.last_cap == 0 {
            self.set_bytes(REG_CAP_PTR * 4, &[at as u8]);
            self.regs[REG_COMMAND] |= STATUS_CAP_LIST;
        } else {
            self.set_bytes(self.last_cap + 1, &[at as u8]);
        }
        self.last_cap = at;
        self.next_cap = end.next_multiple_of(4);
        Ok(at)
    }

    /// Let the guest change the bits of `mask` in the bytes at `offset`.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            let (reg, shift) = ((offset + i) / 4, 8 * ((offset + i) % 4));
            if let Some(w) = self.writable.get_mut(reg) {
                *w = (*w & !(0xff << shift)) | u32::from(m) << shift;
            }
        }
    }

    /// Store `bytes` at byte `offset` regardless of write masks: the
    /// device's own updates (a register's value, a window's data).
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let (reg, shift) = ((offset + i) / 4, 8 * ((offset + i) % 4));
            if let Some(r) = self.regs.get_mut(reg) {
                *r = (*r & !(0xff << shift)) | u32::from(b) << shift;
            }
        }
    }

    /// `N` bytes at byte `offset` (all ones past the end).
    pub fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        std::array::from_fn(|i| {
            let (reg, shift) = ((offset + i) / 4, 8 * ((offset + i) % 4));
            (self.read(reg) >> shift) as u8
        })
    }

    /// Back to the state the VMM built: command register clear, BARs at
    /// their assigned addresses (no firmware runs to assign them again).
    /// Returns the BARs that move.
    pub fn reset(&mut self) -> Vec<BarMove> {
        self.regs[REG_COMMAND] &= 0xffff_0000;
        let mut moves = Vec::new();
        for index in 0..PCI_NUM_BARS {
            let Some(bar) = self.bars[index] else {
                continue;
            };
            let reg = REG_BAR0 + index;
            let low_type = self.regs[reg] & !BAR_MEM_ADDR_MASK;
            self.regs[reg] = bar.initial as u32 & BAR_MEM_ADDR_MASK | low_type;
            if bar.kind == BarKind::Memory64 {
                self.regs[reg + 1] = (bar.initial >> 32) as u32;
            }
            if bar.addr != bar.initial {
                moves.push(BarMove {
                    bar: index,
                    old_addr: bar.addr,
                    new_addr: bar.initial,
                    len: bar.size,
                });
                if let Some(b) = self.bars[index].as_mut() {
                    b.addr = b.initial;
                }
            }
        }
        moves
    }

    /// Whether the guest enabled memory decoding and bus mastering
    /// (command register bits 1 and 2).
    pub fn memory_and_master_enabled(&self) -> bool {
        self.regs[REG_COMMAND] & 0b110 == 0b110
    }

    /// The INTx Disable bit (command register bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.regs[REG_COMMAND] & (1 << 10) != 0
    }

    /// Declare that the device raises INTA# (Interrupt Pin 1), with the
    /// Interrupt Line the firmware would have written.
    pub fn set_interrupt_pin_a(&mut self, line: u8) {
        self.regs[REG_INTERRUPT] = (self.regs[REG_INTERRUPT] & !0xffff) | 1 << 8 | u32::from(line);
    }

    /// Set the subsystem vendor and subsystem IDs (read-only to the guest).
    pub fn set_subsystem(&mut self, vendor_id: u16, id: u16) {
        self.regs[REG_SUBSYSTEM] = u32::from(id) << 16 | u32::from(vendor_id);
    }

    /// Declare memory BAR `index` of `size` bytes (a power of two, at least
    /// 16) at `addr`. The VMM assigns BAR addresses itself: no firmware
    /// runs before the guest kernel to do it.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
    ) -> Result<(), PciError> {
        let slots = match kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        if index + slots > PCI_NUM_BARS || (index..index + slots).any(|i| self.slot_taken(i)) {
            return Err(PciError::InvalidBarIndex(index));
        }
        let bad_range = PciError::InvalidBarRange { size, addr };
        if !size.is_power_of_two() || size < 16 || addr & (size - 1) != 0 {
            return Err(bad_range);
        }
        let reg = REG_BAR0 + index;
        let mask = !(size - 1);
        match kind {
            BarKind::Memory32 => {
                if addr.checked_add(size).is_none_or(|end| end > 1 << 32) {
                    return Err(bad_range);
                }
                self.regs[reg] = addr as u32;
                self.writable[reg] = mask as u32 & BAR_MEM_ADDR_MASK;
            }
            BarKind::Memory64 => {
                if addr.checked_add(size).is_none() {
                    return Err(bad_range);
                }
                self.regs[reg] = addr as u32 | BAR_MEM_TYPE_64;
                self.regs[reg + 1] = (addr >> 32) as u32;
                self.writable[reg] = mask as u32 & BAR_MEM_ADDR_MASK;
                self.writable[reg + 1] = (mask >> 32) as u32;
            }
        }
        self.bars[index] = Some(Bar {
            kind,
            size,
            addr,
            initial: addr,
        });
        Ok(())
    }

    /// Current guest-programmed address of memory BAR `index`.
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index)?.as_ref()?;
        let reg = REG_BAR0 + index;
        let low = u64::from(self.regs[reg] & BAR_MEM_ADDR_MASK);
        Some(match bar.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => u64::from(self.regs[reg + 1]) << 32 | low,
        })
    }

    /// Whether header slot `i` belongs to a BAR (either half of a 64-bit one).
    fn slot_taken(&self, i: usize) -> bool {
        self.bars[i].is_some()
            || (i > 0 && matches!(self.bars[i - 1], Some(b) if b.kind == BarKind::Memory64))
    }

    /// Dword `reg`; all ones past the end, as for a missing register.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// Write `data` at byte `offset` of dword `reg`, changing only the
    /// writable bits. Returns the BAR the write moved, if any.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        if reg >= PCI_CONFIG_REGS || data.is_empty() || offset + data.len() > 4 {
            return None;
        }
        let (mut value, mut bytes) = (0u32, 0u32);
        for (i, &b) in data.iter().enumerate() {
            let shift = 8 * (offset + i);
            value |= u32::from(b) << shift;
            bytes |= 0xff << shift;
        }
        let mask = bytes & self.writable[reg];
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        // BAR sizing: all ones written to a BAR dword. What reads back is
        // the size mask, not an address, and the guest restores the
        // address right after; not a move.
        if value & bytes == bytes {
            return None;
        }
        self.bar_moved(reg)
    }

    fn bar_moved(&mut self, reg: usize) -> Option<BarMove> {
        let slot = reg.checked_sub(REG_BAR0).filter(|&s| s < PCI_NUM_BARS)?;
        let index = match self.bars[slot] {
            Some(_) => slot,
            None if slot > 0 && self.slot_taken(slot) => slot - 1,
            None => return None,
        };
        let new_addr = self.bar_addr(index)?;
        let bar = self.bars[index].as_mut()?;
        // A 64-bit BAR is rewritten one dword at a time, so a relocation
        // shows up as two moves, through a mixed address. Reporting both
        // keeps the rule simple and never misses a move that touches only
        // one half.
        if new_addr == bar.addr {
            return None;
        }
        let old_addr = std::mem::replace(&mut bar.addr, new_addr);
        Some(BarMove {
            bar: index,
            old_addr,
            new_addr,
            len: bar.size,
        })
    }
}

/// The host bridge at 00:00.0. It only identifies itself: guests look for
/// it to recognise the chipset and do not program it.
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(
                HOST_BRIDGE_VENDOR,
                HOST_BRIDGE_DEVICE,
                CLASS_HOST_BRIDGE,
                HOST_BRIDGE_REVISION,
            ),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.config.write(reg, offset, data)
    }
}

/// Bus 0: its devices by device number, each a single function.
pub struct PciRoot {
    devices: [Option<Arc<Mutex<dyn PciDevice>>>; PCI_NUM_DEVICES],
}

impl PciRoot {
    /// Bus 0 with the host bridge at device 0.
    pub fn new() -> Self {
        let mut devices: [Option<Arc<Mutex<dyn PciDevice>>>; PCI_NUM_DEVICES] =
            std::array::from_fn(|_| None);
        devices[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        PciRoot { devices }
    }

    /// Put `dev` at device number `device` (function 0). The device is
    /// shared because a virtio-pci device is also on the MMIO bus, behind
    /// its BARs.
    pub fn add_device(
        &mut self,
        device: u8,
        dev: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        let slot = self
            .devices
            .get_mut(usize::from(device))
            .ok_or(PciError::InvalidDeviceNumber(device))?;
        if slot.is_some() {
            return Err(PciError::DeviceNumberInUse(device));
        }
        *slot = Some(dev);
        Ok(())
    }

    /// The lowest free device number, if any.
    pub fn free_device_number(&self) -> Option<u8> {
        let free = self.devices.iter().position(Option::is_none)?;
        u8::try_from(free).ok()
    }

    fn function(&self, device: u8, function: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        // Only single-function devices: function 1..7 are absent, which a
        // guest learns from header type bit 7 being clear anyway.
        if function != 0 {
            return None;
        }
        self.devices.get(usize::from(device))?.as_ref()
    }

    /// Dword `reg` of `device`.`function`; all ones where nothing answers,
    /// which is how a guest's bus scan recognises an empty slot.
    pub fn read_config(&self, device: u8, function: u8, reg: usize) -> u32 {
        match self.function(device, function) {
            Some(dev) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_config(reg),
            None => u32::MAX,
        }
    }

    /// Write to `device`.`function`'s configuration space; see
    /// [`PciDevice::write_config`]. Writes to absent functions are dropped.
    pub fn write_config(
        &self,
        device: u8,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) -> Option<BarMove> {
        self.function(device, function)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(reg, offset, data)
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Called with the device number and the move when a guest relocates a
/// BAR.
pub type BarMoveHandler = Box<dyn FnMut(u8, BarMove) + Send>;

/// The port I/O face of the PCI host: CONFIG_ADDRESS at offset 0 (0xcf8),
/// the reset control register at offset 1 (0xcf9), CONFIG_DATA at offsets
/// 4..=7 (0xcfc..=0xcff). Insert it at 0xcf8 with length
/// [`PCI_CONFIG_IO_LEN`].
pub struct PciHost {
    /// CONFIG_ADDRESS as last written (reserved bits cleared).
    address: u32,
    /// Reset control register as last written.
    reset_control: u8,
    root: PciRoot,
    events: SharedEvents,
    on_bar_move: Option<BarMoveHandler>,
}

impl PciHost {
    /// A host serving configuration space for `root` and sending reset
    /// requests from the reset control register to `events`.
    pub fn new(root: PciRoot, events: SharedEvents) -> Self {
        PciHost {
            address: 0,
            reset_control: 0,
            root,
            events,
            on_bar_move: None,
        }
    }

    pub fn root(&self) -> &PciRoot {
        &self.root
    }

    pub fn root_mut(&mut self) -> &mut PciRoot {
        &mut self.root
    }

    /// Be told when a guest moves a BAR. Without a handler moves are
    /// ignored, which is fine while the guest keeps the VMM's assignment
    /// (Linux does unless booted with `pci=realloc`).
    pub fn set_bar_move_handler(&mut self, handler: BarMoveHandler) {
        self.on_bar_move = Some(handler);
    }

    /// The function and register CONFIG_ADDRESS selects, if the enable bit
    /// is set and it names bus 0 — the only bus.
    fn selected(&self) -> Option<(u8, u8, usize)> {
        if self.address & ADDR_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = (self.address >> 11) as u8 & 0x1f;
        let function = (self.address >> 8) as u8 & 0x7;
        let reg = (self.address as usize & 0xfc) >> 2;
        (bus == 0).then_some((device, function, reg))
    }

    fn config_read(&self, byte: usize, data: &mut [u8]) {
        let value = match self.selected() {
            Some((device, function, reg)) => self.root.read_config(device, function, reg),
            None => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[byte..byte + data.len()]);
    }

    fn config_write(&mut self, byte: usize, data: &[u8]) {
        let Some((device, function, reg)) = self.selected() else {
            return;
        };
        if let Some(moved) = self.root.write_config(device, function, reg, byte, data) {
            if let Some(handler) = self.on_bar_move.as_mut() {
                handler(device, moved);
            }
        }
    }

    fn write_reset_control(&mut self, value: u8) {
        self.reset_control = value;
        if value & RCR_RST_CPU != 0 {
            self.events.request(VmEvent::Reset);
        }
    }
}

impl PciHost {
    /// An ECAM (memory-mapped configuration) read at `offset` from the
    /// window's base: bus in bits 27:20, device 19:15, function 14:12,
    /// register 11:0. Only bus 0 exists. An access must be naturally
    /// aligned and stay inside one dword, as a chipset requires.
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_decode(offset, data.len()) {
            Some((device, function, reg, byte)) => {
                let value = self.root.read_config(device, function, reg);
                let bytes = value.to_le_bytes();
                data.copy_from_slice(&bytes[byte..byte + data.len()]);
            }
            None => data.fill(0xff),
        }
    }

    /// An ECAM write; see [`PciHost::ecam_read`].
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        let Some((device, function, reg, byte)) = ecam_decode(offset, data.len()) else {
            return;
        };
        if let Some(moved) = self.root.write_config(device, function, reg, byte, data) {
            if let Some(handler) = self.on_bar_move.as_mut() {
                handler(device, moved);
            }
        }
    }
}

/// (device, function, dword, byte in dword) an ECAM access names on bus 0.
fn ecam_decode(offset: u64, len: usize) -> Option<(u8, u8, usize, usize)> {
    let bus = offset >> 20;
    let byte = (offset & 3) as usize;
    if bus != 0 || !matches!(len, 1 | 2 | 4) || !byte.is_multiple_of(len) {
        return None;
    }
    let device = ((offset >> 15) & 0x1f) as u8;
    let function = ((offset >> 12) & 0x7) as u8;
    let reg = ((offset & 0xfff) >> 2) as usize;
    Some((device, function, reg, byte))
}

/// The memory face of the PCI host: the ECAM window (PCI Express
/// enhanced configuration access), which the ACPI MCFG table announces.
/// Guests that find it use it instead of ports 0xcf8/0xcfc: one MMIO
/// access per configuration access instead of two port accesses.
pub struct PciEcam(pub Arc<Mutex<PciHost>>);

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ecam_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ecam_write(offset, data);
    }
}

/// Byte offset within CONFIG_DATA, if `offset`/`len` is an access that
/// stays inside it. An access that would straddle the dword is not one a
/// PC chipset turns into a single configuration cycle.
fn data_window(offset: u64, len: usize) -> Option<usize> {
    let byte = usize::try_from(offset.checked_sub(4)?).ok()?;
    (matches!(len, 1 | 2 | 4) && byte + len <= 4).then_some(byte)
}

impl BusDevice for PciHost {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // CONFIG_ADDRESS only answers dword accesses; narrower ones go
            // to whatever else decodes 0xcf8..0xcfb.
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.reset_control,
            _ => match data_window(offset, data.len()) {
                Some(byte) => self.config_read(byte, data),
                None => data.fill(0xff),
            },
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.address = u32::from_le_bytes([a, b, c, d]) & ADDR_WRITABLE,
            (1, &[value]) => self.write_reset_control(value),
            _ => {
                if let Some(byte) = data_window(offset, data.len()) {
                    self.config_write(byte, data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestEvents;

    const DATA: u64 = 4;

    fn host() -> (PciHost, Arc<TestEvents>) {
        let events = TestEvents::new();
        (PciHost::new(PciRoot::new(), events.clone()), events)
    }

    fn address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
        ADDR_ENABLE
            | u32::from(bus) << 16
            | u32::from(device) << 11
            | u32::from(function) << 8
            | u32::from(offset & 0xfc)
    }

    fn select(h: &mut PciHost, device: u8, offset: u8) {
        h.write(0, &address(0, device, 0, offset).to_le_bytes());
    }

    fn read32(h: &mut PciHost, device: u8, offset: u8) -> u32 {
        select(h, device, offset);
        let mut d = [0u8; 4];
        h.read(DATA, &mut d);
        u32::from_le_bytes(d)
    }

    fn write32(h: &mut PciHost, device: u8, offset: u8, v: u32) {
        select(h, device, offset);
        h.write(DATA, &v.to_le_bytes());
    }

    #[test]
    fn host_bridge_identifies_itself() {
        let (mut h, _) = host();
        assert_eq!(read32(&mut h, 0, 0x00), 0x1237_8086);
        // Class 06/00/00, revision 2.
        assert_eq!(read32(&mut h, 0, 0x08), 0x0600_0002);
        // Header type 0, single function.
        assert_eq!(read32(&mut h, 0, 0x0c), 0);
        assert_eq!(read32(&mut h, 0, 0x10), 0);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let (mut h, _) = host();
        assert_eq!(read32(&mut h, 1, 0x00), u32::MAX);
        assert_eq!(read32(&mut h, 31, 0x00), u32::MAX);
        let mut d = [0u8; 4];
        for addr in [
            address(0, 0, 1, 0), // function 1 of the host bridge
            address(1, 0, 0, 0), // bus 1
            address(0, 0, 0, 0) & !ADDR_ENABLE,
        ] {
            h.write(0, &addr.to_le_bytes());
            h.read(DATA, &mut d);
            assert_eq!(d, [0xff; 4], "address {addr:#x}");
        }
        // And writes there go nowhere.
        h.write(0, &address(0, 1, 0, 0x3c).to_le_bytes());
        h.write(DATA, &[0x0b]);
        assert_eq!(read32(&mut h, 1, 0x3c), u32::MAX);
    }

    #[test]
    fn narrow_reads_within_the_data_dword() {
        let (mut h, _) = host();
        select(&mut h, 0, 0x00);
        let mut w = [0u8; 2];
        h.read(DATA, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x8086);
        h.read(DATA + 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
        let mut b = [0u8];
        h.read(DATA + 1, &mut b);
        assert_eq!(b, [0x80]);
        h.read(DATA + 3, &mut b);
        assert_eq!(b, [0x12]);

        select(&mut h, 0, 0x08);
        h.read(DATA + 3, &mut b);
        assert_eq!(b, [0x06]); // base class: bridge
        h.read(DATA + 2, &mut b);
        assert_eq!(b, [0x00]); // subclass: host bridge

        // Straddling the end of the window is not a configuration cycle.
        let mut d = [0u8; 4];
        h.read(DATA + 2, &mut d);
        assert_eq!(d, [0xff; 4]);
        h.read(DATA + 3, &mut w);
        assert_eq!(w, [0xff; 2]);
    }

    #[test]
    fn config_address_register() {
        let (mut h, _) = host();
        // Reserved bits (30:24, 1:0) read as 0.
        h.write(0, &0xff00_00ffu32.to_le_bytes());
        let mut d = [0u8; 4];
        h.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_00fc);
        // Narrow accesses to 0xcf8..0xcfb do not touch it.
        h.write(0, &[0x00]);
        h.write(2, &[0x00, 0x00]);
        h.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_00fc);
        let mut w = [0u8; 2];
        h.read(2, &mut w);
        assert_eq!(w, [0xff; 2]);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let (mut h, _) = host();
        write32(&mut h, 0, 0x00, 0);
        assert_eq!(read32(&mut h, 0, 0x00), 0x1237_8086);
        write32(&mut h, 0, 0x08, 0);
        assert_eq!(read32(&mut h, 0, 0x08), 0x0600_0002);
        // Command: only the defined control bits stick; status is
        // read-only.
        write32(&mut h, 0, 0x04, u32::MAX);
        assert_eq!(read32(&mut h, 0, 0x04), 0x0000_0407);
        // Interrupt line is the OS's scratch byte; interrupt pin is not.
        select(&mut h, 0, 0x3c);
        h.write(DATA, &[0x0b, 0x01]);
        assert_eq!(read32(&mut h, 0, 0x3c), 0x0b);
    }

    #[test]
    fn reset_control_register() {
        let (mut h, events) = host();
        let mut b = [0u8];
        h.read(1, &mut b);
        assert_eq!(b, [0]);
        // Linux's reboot=pci: SYS_RST first, then SYS_RST | RST_CPU.
        h.write(1, &[0x02]);
        assert!(events.events().is_empty());
        h.read(1, &mut b);
        assert_eq!(b, [0x02]);
        h.write(1, &[0x06]);
        assert_eq!(events.events(), vec![VmEvent::Reset]);
        h.read(1, &mut b);
        assert_eq!(b, [0x06]);
        // Full reset (0x0e) too.
        h.write(1, &[0x0e]);
        assert_eq!(events.events(), vec![VmEvent::Reset, VmEvent::Reset]);
        // Only a byte write reaches it.
        h.write(0, &[0x06, 0x06]);
        assert_eq!(events.events().len(), 2);
    }

    /// A device with a 32-bit BAR 0 and a 64-bit BAR 2.
    struct TestDev(PciConfig);

    impl PciDevice for TestDev {
        fn read_config(&mut self, reg: usize) -> u32 {
            self.0.read(reg)
        }
        fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
            self.0.write(reg, offset, data)
        }
    }

    fn test_dev() -> PciConfig {
        let mut c = PciConfig::new(0x1af4, 0x1041, 0x02_00_00, 1);
        c.set_subsystem(0x1af4, 0x0001);
        c.add_bar(0, BarKind::Memory32, 0x1000, 0xc000_0000)
            .unwrap();
        c.add_bar(2, BarKind::Memory64, 0x4000, 0x1_0000_0000)
            .unwrap();
        c
    }

    #[test]
    fn devices_are_placed_by_number() {
        let (mut h, _) = host();
        let root = h.root_mut();
        assert_eq!(root.free_device_number(), Some(1));
        root.add_device(3, Arc::new(Mutex::new(TestDev(test_dev()))))
            .unwrap();
        assert_eq!(
            root.add_device(3, Arc::new(Mutex::new(TestDev(test_dev())))),
            Err(PciError::DeviceNumberInUse(3))
        );
        assert_eq!(
            root.add_device(0, Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::DeviceNumberInUse(0))
        );
        assert_eq!(
            root.add_device(32, Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::InvalidDeviceNumber(32))
        );
        assert_eq!(read32(&mut h, 3, 0x00), 0x1041_1af4);
        assert_eq!(read32(&mut h, 3, 0x2c), 0x0001_1af4);
        assert_eq!(read32(&mut h, 3, 0x10), 0xc000_0000);
        assert_eq!(read32(&mut h, 3, 0x18), 0x0000_0004);
        assert_eq!(read32(&mut h, 3, 0x1c), 0x0000_0001);
    }

    #[test]
    fn bar_sizing_and_moves() {
        let (mut h, _) = host();
        let moves = Arc::new(Mutex::new(Vec::new()));
        let m = moves.clone();
        h.set_bar_move_handler(Box::new(move |dev, mv| m.lock().unwrap().push((dev, mv))));
        h.root_mut()
            .add_device(3, Arc::new(Mutex::new(TestDev(test_dev()))))
            .unwrap();

        // Sizing the 32-bit BAR: all ones reads back the size mask, then
        // the guest restores the address. No move.
        write32(&mut h, 3, 0x10, u32::MAX);
        assert_eq!(read32(&mut h, 3, 0x10), 0xffff_f000);
        write32(&mut h, 3, 0x10, 0xc000_0000);
        // Sizing the 64-bit BAR: low then high dword.
        write32(&mut h, 3, 0x18, u32::MAX);
        assert_eq!(read32(&mut h, 3, 0x18), 0xffff_c004);
        write32(&mut h, 3, 0x18, 0x0000_0004);
        write32(&mut h, 3, 0x1c, u32::MAX);
        assert_eq!(read32(&mut h, 3, 0x1c), u32::MAX);
        write32(&mut h, 3, 0x1c, 1);
        assert!(moves.lock().unwrap().is_empty());

        // Relocating: one move per BAR dword that changed.
        write32(&mut h, 3, 0x10, 0xd000_0000);
        write32(&mut h, 3, 0x1c, 2);
        let mv = |bar, old_addr, new_addr, len| BarMove {
            bar,
            old_addr,
            new_addr,
            len,
        };
        assert_eq!(
            *moves.lock().unwrap(),
            vec![
                (3, mv(0, 0xc000_0000, 0xd000_0000, 0x1000)),
                (3, mv(2, 0x1_0000_0000, 0x2_0000_0000, 0x4000)),
            ]
        );
        // Low bits below the BAR size and the type bits are read-only.
        write32(&mut h, 3, 0x10, 0xd000_0fff);
        assert_eq!(read32(&mut h, 3, 0x10), 0xd000_0000);
        assert_eq!(moves.lock().unwrap().len(), 2);
    }

    #[test]
    fn bar_declarations_are_checked() {
        let mut c = PciConfig::new(0x1af4, 0x1041, 0, 0);
        c.add_bar(4, BarKind::Memory64, 0x1000, 0).unwrap();
        assert_eq!(
            c.add_bar(5, BarKind::Memory32, 0x1000, 0),
            Err(PciError::InvalidBarIndex(5))
        );
        assert_eq!(
            c.add_bar(5, BarKind::Memory64, 0x1000, 0),
            Err(PciError::InvalidBarIndex(5))
        );
        assert_eq!(
            c.add_bar(6, BarKind::Memory32, 0x1000, 0),
            Err(PciError::InvalidBarIndex(6))
        );
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, 0x1800, 0),
            Err(PciError::InvalidBarRange {
                size: 0x1800,
                addr: 0
            })
        );
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, 0x1000, 0x800),
            Err(PciError::InvalidBarRange {
                size: 0x1000,
                addr: 0x800
            })
        );
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, 0x1000, 1 << 32),
            Err(PciError::InvalidBarRange {
                size: 0x1000,
                addr: 1 << 32
            })
        );
        assert_eq!(c.bar_addr(4), Some(0));
        assert_eq!(c.bar_addr(5), None);
        assert_eq!(c.bar_addr(0), None);
    }
}
