//! The modern virtio-pci transport (virtio 1.2 §4.1) with split virtqueues
//! (§2.7), polled: no interrupts, no MSI-X. Written from the specification,
//! for any device that follows it.
//!
//! # Finding the registers
//! [`Device::probe`] walks the function's capability list for the
//! vendor-specific (ID 0x09) `virtio_pci_cap`s and takes the first of each
//! `cfg_type` that sits in a memory BAR: common configuration (1), notify
//! (2, with its `notify_off_multiplier`), ISR (3) and device-specific
//! configuration (4). Common and notify are required. Each BAR they use is
//! made reachable ([`crate::pci::Pci::assign_bar`]: left where the firmware
//! put it, or assigned from the `pcimem=` window), then memory decoding and
//! bus mastering are turned on. The PCI configuration access capability
//! (5) and legacy I/O registers are never used.
//!
//! # Initialisation (§3.1.1)
//! [`Device::negotiate`]: reset (write 0, wait until `device_status` reads
//! 0), ACKNOWLEDGE, DRIVER, read the 64 device feature bits, write the
//! offered subset of what the driver wants (VIRTIO_F_VERSION_1 is always
//! required), FEATURES_OK, and read the status back: a device that
//! cleared FEATURES_OK refused the subset ([`Error::FeaturesRefused`]; the
//! driver then sets FAILED). Then [`Device::setup_queue`] per queue and
//! [`Device::driver_ok`]. Common configuration fields are accessed with
//! their own width; 64-bit fields as two 32-bit halves, low first (§4.1.3.1
//! allows it). Device configuration is read under `config_generation`
//! ([`Device::config`]); its 64-bit fields as two 32-bit reads.
//!
//! # Virtqueues (§2.7)
//! A [`Queue`] has at most [`MAX_QUEUE_SIZE`] entries (a power of two, at
//! most what the device offers). Its descriptor table, driver (avail) and
//! device (used) areas come from the DMA arena. The avail ring's flags say
//! VIRTQ_AVAIL_F_NO_INTERRUPT and VIRTIO_F_EVENT_IDX is never negotiated, so
//! the device has no reason to interrupt. [`Queue::push`] adds a chain and
//! publishes it (avail idx); [`Queue::kick`] notifies the device (a 16-bit
//! write of the queue index to its notify address, unless the used ring's
//! flags say VIRTQ_USED_F_NO_NOTIFY) and counts it ([`Queue::notifications`]:
//! each is one MMIO exit); [`Queue::pop`] takes the next used element and
//! frees its chain. Free descriptors are chained through their `next`
//! fields, as the device never reads a descriptor that is not in a chain
//! it was given.
//!
//! # DMA memory
//! Everything a device reads or writes (rings, request headers, data
//! buffers) comes from [`dma_alloc`], a bump allocator over a static
//! [`DMA_ARENA_BYTES`] arena in the image's .bss (identity mapped, so its
//! addresses are guest-physical; zeroed when allocated). Nothing is ever
//! freed: a guest sets up its device once.

use core::cell::UnsafeCell;
use core::sync::atomic::{fence, AtomicUsize, Ordering};

use crate::io::{pause, rdtsc, tsc_hz};
use crate::pci::{
    mmio_read16, mmio_read32, mmio_read8, mmio_write16, mmio_write32, mmio_write8, Bar, BarError,
    Function, MemWindow, Pci, CMD_BUS_MASTER, CMD_MEMORY,
};

/// PCI vendor ID of virtio devices.
pub const VENDOR: u16 = 0x1af4;
/// A modern (virtio 1.0+) device's PCI device ID is this plus its virtio
/// device ID.
pub const MODERN_DEVICE_BASE: u16 = 0x1040;

/// Device status bits (§2.1).
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

/// Reserved feature bits (§6).
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const F_RING_PACKED: u64 = 1 << 34;
pub const F_IN_ORDER: u64 = 1 << 35;
pub const F_ORDER_PLATFORM: u64 = 1 << 36;
pub const F_NOTIFICATION_DATA: u64 = 1 << 38;

/// `virtio_pci_cap.cfg_type` values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI capability ID of vendor-specific capabilities.
const PCI_CAP_VENDOR: u8 = 0x09;

/// `virtio_pci_common_cfg` offsets (§4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The structure's size up to `queue_device` (virtio 1.0).
    pub const MIN_LEN: u32 = 0x38;
}

/// Split virtqueue flags (§2.7.5, §2.7.6, §2.7.8).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue this driver sets up.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// How long the device may take to finish a reset.
const RESET_TIMEOUT_US: u64 = 1_000_000;

/// What went wrong; its `Display` is one line for a `FAIL` report.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    /// A required capability is missing (or only in an I/O BAR).
    MissingCap(&'static str),
    /// A capability's region does not fit its BAR (or is too short).
    BadCap(&'static str, u8),
    /// A BAR could not be made usable.
    Bar(BarError),
    /// `device_status` did not read 0 after a reset.
    ResetTimeout(u8),
    /// The device does not offer features the driver requires.
    MissingFeatures { offered: u64, required: u64 },
    /// FEATURES_OK did not stick.
    FeaturesRefused { status: u8, features: u64 },
    /// The device set DEVICE_NEEDS_RESET (or FAILED is set).
    NeedsReset(u8),
    /// No such queue, or its size is 0.
    NoQueue(u16),
    /// The queue's notify address is outside the notify region.
    BadNotify(u16),
    /// The DMA arena is used up.
    NoDmaMemory(usize),
    /// The device returned an id that is not an outstanding chain's head.
    BadUsedId(u32),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            Error::MissingCap(what) => {
                write!(f, "no virtio {what} capability in a memory BAR")
            }
            Error::BadCap(what, bar) => {
                write!(f, "virtio {what} capability does not fit BAR{bar}")
            }
            Error::Bar(e) => write!(f, "{e}"),
            Error::ResetTimeout(s) => {
                write!(f, "device status {s:#x} did not read 0 after reset")
            }
            Error::MissingFeatures { offered, required } => write!(
                f,
                "device features {offered:#x} lack required {:#x}",
                required & !offered
            ),
            Error::FeaturesRefused { status, features } => write!(
                f,
                "device refused FEATURES_OK for features {features:#x} (status {status:#x})"
            ),
            Error::NeedsReset(s) => write!(f, "device needs reset (status {s:#x})"),
            Error::NoQueue(q) => write!(f, "device has no queue {q}"),
            Error::BadNotify(q) => {
                write!(
                    f,
                    "notify address of queue {q} is outside the notify region"
                )
            }
            Error::NoDmaMemory(n) => write!(f, "DMA arena cannot supply {n} bytes"),
            Error::BadUsedId(id) => write!(f, "device returned unknown used id {id}"),
        }
    }
}

impl From<BarError> for Error {
    fn from(e: BarError) -> Error {
        Error::Bar(e)
    }
}

// ---------------------------------------------------------------------------
// DMA arena.

/// Size of the static arena [`dma_alloc`] hands out.
pub const DMA_ARENA_BYTES: usize = 1280 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; DMA_ARENA_BYTES]>);

// SAFETY: [`dma_alloc`] hands out disjoint ranges; the arena itself is
// never referenced as a whole.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; DMA_ARENA_BYTES]));
static ARENA_USED: AtomicUsize = AtomicUsize::new(0);

/// `bytes` zeroed bytes of DMA memory aligned to `align` (a power of two,
/// at most 4096): their guest-physical address.
pub fn dma_alloc(bytes: usize, align: usize) -> Result<u64, Error> {
    let base = ARENA.0.get() as usize;
    let mut used = ARENA_USED.load(Ordering::Relaxed);
    loop {
        let start = (base + used).next_multiple_of(align.max(1)) - base;
        let end = start + bytes;
        if end > DMA_ARENA_BYTES {
            return Err(Error::NoDmaMemory(bytes));
        }
        match ARENA_USED.compare_exchange(used, end, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                let p = (base + start) as *mut u8;
                // SAFETY: the range is inside the arena and now ours alone.
                unsafe { core::ptr::write_bytes(p, 0, bytes) };
                return Ok(p as u64);
            }
            Err(now) => used = now,
        }
    }
}

/// Bytes left in the DMA arena (before alignment).
pub fn dma_left() -> usize {
    DMA_ARENA_BYTES - ARENA_USED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// The device.

/// A capability's region inside a BAR.
#[derive(Clone, Copy)]
struct CapRegion {
    bar: u8,
    offset: u32,
    length: u32,
    /// `notify_off_multiplier` (notify capability only).
    mult: u32,
}

/// A virtio-pci device's registers, found and mapped.
pub struct Device {
    pub function: Function,
    common: u64,
    notify: u64,
    notify_len: u32,
    notify_mult: u32,
    isr: Option<u64>,
    device_cfg: u64,
    device_cfg_len: u32,
    features: u64,
}

impl Device {
    /// Finds the virtio capabilities of `function`, makes their BARs
    /// reachable (see the module comment) and enables memory decoding and
    /// bus mastering.
    pub fn probe(
        pci: &Pci,
        function: Function,
        mut window: Option<&mut MemWindow>,
    ) -> Result<Device, Error> {
        let bdf = function.bdf;
        let mut bars: [Option<Bar>; 6] = pci.bars(bdf);
        let mut found: [Option<CapRegion>; 5] = [None; 5];
        for (at, id) in pci.capabilities(bdf) {
            if id != PCI_CAP_VENDOR {
                continue;
            }
            let cap_len = pci.read8(bdf, at + 2);
            let cfg_type = pci.read8(bdf, at + 3);
            let bar = pci.read8(bdf, at + 4);
            if cap_len < 16 || !(CAP_COMMON..=CAP_DEVICE).contains(&cfg_type) || bar > 5 {
                continue;
            }
            let is_mem = bars[usize::from(bar)].is_some_and(|b| b.kind != crate::pci::BarKind::Io);
            if !is_mem || found[usize::from(cfg_type)].is_some() {
                continue;
            }
            let mult = if cfg_type == CAP_NOTIFY && cap_len >= 20 {
                pci.read32(bdf, at + 16)
            } else {
                0
            };
            found[usize::from(cfg_type)] = Some(CapRegion {
                bar,
                offset: pci.read32(bdf, at + 8),
                length: pci.read32(bdf, at + 12),
                mult,
            });
        }
        let need = |t: u8, what: &'static str| found[usize::from(t)].ok_or(Error::MissingCap(what));
        let common_cap = need(CAP_COMMON, "common configuration")?;
        let notify_cap = need(CAP_NOTIFY, "notify")?;
        // Make every BAR a capability uses reachable, once each.
        let mut addr_of = |cap: CapRegion, what: &'static str| -> Result<u64, Error> {
            let i = usize::from(cap.bar);
            let bar = bars[i].ok_or(Error::BadCap(what, cap.bar))?;
            let bar = pci.assign_bar(bdf, bar, window.as_deref_mut())?;
            bars[i] = Some(bar);
            if u64::from(cap.offset) + u64::from(cap.length) > bar.size {
                return Err(Error::BadCap(what, cap.bar));
            }
            Ok(bar.addr + u64::from(cap.offset))
        };
        if common_cap.length < common::MIN_LEN {
            return Err(Error::BadCap("common configuration", common_cap.bar));
        }
        let common = addr_of(common_cap, "common configuration")?;
        let notify = addr_of(notify_cap, "notify")?;
        let isr = match found[usize::from(CAP_ISR)] {
            Some(cap) => Some(addr_of(cap, "ISR")?),
            None => None,
        };
        let (device_cfg, device_cfg_len) = match found[usize::from(CAP_DEVICE)] {
            Some(cap) => (addr_of(cap, "device configuration")?, cap.length),
            None => (0, 0),
        };
        pci.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER);
        Ok(Device {
            function,
            common,
            notify,
            notify_len: notify_cap.length,
            notify_mult: notify_cap.mult,
            isr,
            device_cfg,
            device_cfg_len,
            features: 0,
        })
    }

    fn c8(&self, off: u64) -> u8 {
        // SAFETY: inside the common configuration region (probe checked
        // its length covers every field used).
        unsafe { mmio_read8(self.common + off) }
    }

    fn c16(&self, off: u64) -> u16 {
        // SAFETY: as in c8.
        unsafe { mmio_read16(self.common + off) }
    }

    fn c32(&self, off: u64) -> u32 {
        // SAFETY: as in c8.
        unsafe { mmio_read32(self.common + off) }
    }

    fn w8(&self, off: u64, v: u8) {
        // SAFETY: as in c8.
        unsafe { mmio_write8(self.common + off, v) }
    }

    fn w16(&self, off: u64, v: u16) {
        // SAFETY: as in c8.
        unsafe { mmio_write16(self.common + off, v) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in c8.
        unsafe { mmio_write32(self.common + off, v) }
    }

    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    /// `device_status`.
    pub fn status(&self) -> u8 {
        self.c8(common::DEVICE_STATUS)
    }

    fn add_status(&self, bits: u8) {
        self.w8(common::DEVICE_STATUS, self.status() | bits);
    }

    /// Marks the device FAILED (the driver gave up on it).
    pub fn fail(&self) {
        self.add_status(S_FAILED);
    }

    /// `Err(NeedsReset)` if the device set DEVICE_NEEDS_RESET (or the
    /// driver set FAILED).
    pub fn check(&self) -> Result<(), Error> {
        let s = self.status();
        if s & (S_DEVICE_NEEDS_RESET | S_FAILED) != 0 {
            return Err(Error::NeedsReset(s));
        }
        Ok(())
    }

    /// Resets the device: writes 0 to `device_status` and waits for it to
    /// read 0.
    pub fn reset(&self) -> Result<(), Error> {
        self.w8(common::DEVICE_STATUS, 0);
        let deadline = deadline_us(RESET_TIMEOUT_US);
        loop {
            let s = self.status();
            if s == 0 {
                return Ok(());
            }
            if rdtsc() > deadline {
                return Err(Error::ResetTimeout(s));
            }
            pause();
        }
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        let mut f = 0;
        for half in 0..2u32 {
            self.w32(common::DEVICE_FEATURE_SELECT, half);
            f |= u64::from(self.c32(common::DEVICE_FEATURE)) << (32 * half);
        }
        f
    }

    /// Resets the device and negotiates features: accepts what the device
    /// offers of `wanted | required | VIRTIO_F_VERSION_1`; fails (and marks
    /// the device FAILED) if any of `required | VIRTIO_F_VERSION_1` is not
    /// offered, or if the device does not keep FEATURES_OK. Returns the
    /// negotiated features.
    pub fn negotiate(&mut self, wanted: u64, required: u64) -> Result<u64, Error> {
        let required = required | F_VERSION_1;
        self.reset()?;
        self.add_status(S_ACKNOWLEDGE);
        self.add_status(S_DRIVER);
        let offered = self.device_features();
        if offered & required != required {
            self.fail();
            return Err(Error::MissingFeatures { offered, required });
        }
        let features = offered & (wanted | required);
        for half in 0..2u32 {
            self.w32(common::DRIVER_FEATURE_SELECT, half);
            self.w32(common::DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
        self.add_status(S_FEATURES_OK);
        let status = self.status();
        if status & S_FEATURES_OK == 0 {
            self.fail();
            return Err(Error::FeaturesRefused { status, features });
        }
        self.features = features;
        Ok(features)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// `num_queues`.
    pub fn num_queues(&self) -> u16 {
        self.c16(common::NUM_QUEUES)
    }

    /// Sets up and enables queue `index` with at most `max_size` entries
    /// (rounded down to a power of two, at most [`MAX_QUEUE_SIZE`] and what
    /// the device offers). Call between [`negotiate`](Self::negotiate) and
    /// [`driver_ok`](Self::driver_ok).
    pub fn setup_queue(&self, index: u16, max_size: u16) -> Result<Queue, Error> {
        if index >= self.num_queues() {
            return Err(Error::NoQueue(index));
        }
        self.w16(common::QUEUE_SELECT, index);
        let offered = self.c16(common::QUEUE_SIZE);
        let size = offered.min(max_size).min(MAX_QUEUE_SIZE);
        if size == 0 {
            return Err(Error::NoQueue(index));
        }
        // A power of two: 1 << floor(log2(size)).
        let size = 1u16 << (15 - size.leading_zeros());
        let n = usize::from(size);
        let desc = dma_alloc(16 * n, 4096)?;
        let avail = dma_alloc(6 + 2 * n, 64)?;
        let used = dma_alloc(6 + 8 * n, 64)?;
        let notify_off = u64::from(self.c16(common::QUEUE_NOTIFY_OFF));
        let notify_at = notify_off * u64::from(self.notify_mult);
        if notify_at + 2 > u64::from(self.notify_len) {
            return Err(Error::BadNotify(index));
        }
        let q = Queue::new(index, size, desc, avail, used, self.notify + notify_at);
        self.w16(common::QUEUE_SIZE, size);
        self.w64(common::QUEUE_DESC, desc);
        self.w64(common::QUEUE_DRIVER, avail);
        self.w64(common::QUEUE_DEVICE, used);
        self.w16(common::QUEUE_ENABLE, 1);
        Ok(q)
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) -> Result<(), Error> {
        self.add_status(S_DRIVER_OK);
        self.check()
    }

    /// Reads the ISR status (and so clears it); 0 without an ISR
    /// capability.
    pub fn isr(&self) -> u8 {
        // SAFETY: inside the ISR region.
        self.isr.map_or(0, |a| unsafe { mmio_read8(a) })
    }

    /// Runs `read` on the device configuration until `config_generation`
    /// is the same before and after (§4.1.4.3.1).
    pub fn config<T>(&self, read: impl Fn(&Config) -> T) -> T {
        let cfg = Config {
            base: self.device_cfg,
            len: self.device_cfg_len,
        };
        loop {
            let before = self.c8(common::CONFIG_GENERATION);
            let v = read(&cfg);
            if self.c8(common::CONFIG_GENERATION) == before {
                return v;
            }
        }
    }
}

/// The device configuration region (see [`Device::config`]). A read
/// outside it returns 0.
pub struct Config {
    base: u64,
    len: u32,
}

impl Config {
    fn inside(&self, off: u32, width: u32) -> bool {
        off.checked_add(width).is_some_and(|end| end <= self.len)
    }

    pub fn read8(&self, off: u32) -> u8 {
        if !self.inside(off, 1) {
            return 0;
        }
        // SAFETY: inside the device configuration region.
        unsafe { mmio_read8(self.base + u64::from(off)) }
    }

    pub fn read16(&self, off: u32) -> u16 {
        if !self.inside(off, 2) {
            return 0;
        }
        // SAFETY: as in read8.
        unsafe { mmio_read16(self.base + u64::from(off)) }
    }

    pub fn read32(&self, off: u32) -> u32 {
        if !self.inside(off, 4) {
            return 0;
        }
        // SAFETY: as in read8.
        unsafe { mmio_read32(self.base + u64::from(off)) }
    }

    /// Two 32-bit reads, low half first.
    pub fn read64(&self, off: u32) -> u64 {
        if !self.inside(off, 8) {
            return 0;
        }
        u64::from(self.read32(off)) | u64::from(self.read32(off + 4)) << 32
    }
}

// ---------------------------------------------------------------------------
// Split virtqueues.

/// One buffer of a chain: device-readable, or device-writable (`write`).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A used element: the head of the chain and the bytes the device wrote.
#[derive(Clone, Copy, Debug)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// A split virtqueue (see the module comment).
pub struct Queue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    free_head: u16,
    num_free: u16,
    /// Our copy of `avail.idx`.
    avail_idx: u16,
    /// Used elements consumed so far (mod 2^16).
    last_used: u16,
    /// Heads of chains the device holds.
    outstanding: [u64; MAX_QUEUE_SIZE as usize / 64],
    notifications: u64,
}

fn r16(a: u64) -> u16 {
    // SAFETY: ring memory from the DMA arena.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}

fn r32(a: u64) -> u32 {
    // SAFETY: as in r16.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn w16(a: u64, v: u16) {
    // SAFETY: as in r16.
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}

fn w32(a: u64, v: u32) {
    // SAFETY: as in r16.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

fn w64(a: u64, v: u64) {
    // SAFETY: as in r16.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

impl Queue {
    fn new(index: u16, size: u16, desc: u64, avail: u64, used: u64, notify: u64) -> Queue {
        let q = Queue {
            index,
            size,
            desc,
            avail,
            used,
            notify,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
            outstanding: [0; MAX_QUEUE_SIZE as usize / 64],
            notifications: 0,
        };
        for i in 0..size {
            w16(q.d(i) + 14, i.wrapping_add(1));
        }
        w16(avail, AVAIL_F_NO_INTERRUPT);
        q
    }

    /// Address of descriptor `i`.
    fn d(&self, i: u16) -> u64 {
        self.desc + 16 * u64::from(i)
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Notifications sent so far (each an MMIO write, a VM exit).
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// Adds the chain `bufs` (device-readable buffers first, as §2.7.4.2
    /// requires) and makes it available; `None` if there are not enough
    /// free descriptors (or `bufs` is empty). Returns the chain's head.
    /// The device may start on it at once; [`kick`](Self::kick) makes sure
    /// it looks.
    pub fn push(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let d = self.d(i);
            // The free list's link: the next descriptor of this chain, or
            // after the last one, the new free head.
            let next = r16(d + 14);
            let more = k + 1 < bufs.len();
            w64(d, b.addr);
            w32(d + 8, b.len);
            w16(
                d + 12,
                if b.write { DESC_F_WRITE } else { 0 } | if more { DESC_F_NEXT } else { 0 },
            );
            if more {
                i = next;
            } else {
                self.free_head = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        self.outstanding[usize::from(head / 64)] |= 1 << (head % 64);
        let slot = u64::from(self.avail_idx % self.size);
        w16(self.avail + 4 + 2 * slot, head);
        // The descriptors and the ring entry before the index.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        Some(head)
    }

    /// Notifies the device of new buffers unless it asked not to be
    /// (VIRTQ_USED_F_NO_NOTIFY). Returns whether it notified.
    pub fn kick(&mut self) -> bool {
        // The avail index must be visible before the flags are read
        // (§2.7.10.1): a full fence.
        fence(Ordering::SeqCst);
        if r16(self.used) & USED_F_NO_NOTIFY != 0 {
            return false;
        }
        // SAFETY: the queue's notify address, inside the notify region.
        unsafe { mmio_write16(self.notify, self.index) };
        self.notifications += 1;
        true
    }

    /// The next used element, if the device returned one; its chain's
    /// descriptors are free again.
    pub fn pop(&mut self) -> Result<Option<Used>, Error> {
        let idx = r16(self.used + 2);
        if idx == self.last_used {
            return Ok(None);
        }
        // The element after the index (x86 keeps loads in order; this
        // keeps the compiler from reordering them).
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let elem = self.used + 4 + 8 * slot;
        let (id, len) = (r32(elem), r32(elem + 4));
        self.last_used = self.last_used.wrapping_add(1);
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size)
            .filter(|&h| self.outstanding[usize::from(h / 64)] & 1 << (h % 64) != 0)
            .ok_or(Error::BadUsedId(id))?;
        self.outstanding[usize::from(head / 64)] &= !(1 << (head % 64));
        // Free the chain: walk to its last descriptor, link it to the old
        // free list.
        let mut i = head;
        let mut n = 1;
        while r16(self.d(i) + 12) & DESC_F_NEXT != 0 && n < self.size {
            i = r16(self.d(i) + 14);
            n += 1;
        }
        w16(self.d(i) + 14, self.free_head);
        self.free_head = head;
        self.num_free += n;
        Ok(Some(Used { head, len }))
    }
}

/// The TSC value `us` microseconds from now.
pub fn deadline_us(us: u64) -> u64 {
    let ticks = u128::from(tsc_hz()) * u128::from(us) / 1_000_000;
    rdtsc().saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
}
