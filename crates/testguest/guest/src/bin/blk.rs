//! `blk`: a polling virtio-blk driver at CPL3 (modern virtio-pci, split
//! virtqueue; `rt::pci`, `rt::virtio`), with checks and benchmarks. Written
//! from the virtio 1.2 specification: the same guest runs on QEMU's
//! `virtio-blk-pci` and on our VMM's device.
//!
//! # Command line (`key=value` words; numbers decimal or `0x` hex)
//! | key | default | meaning |
//! |---|---|---|
//! | `pcicfg=cf8` | auto | use configuration mechanism #1 (ports 0xcf8/0xcfc) even where ECAM is described (default: ECAM from the MCFG table, else from the DSDT's `_CBA`, else ports; see `rt::pci`) |
//! | `pcimem=0xADDR` | none | where to put memory BARs the firmware left unassigned (from ADDR up to 4 GiB); without it such a BAR is a FAIL |
//! | `check[=N]` | off (`check` alone: 64) | write N sectors of the pattern at `at=`, FLUSH (if negotiated), read them back and compare |
//! | `at=S` | 0 | first sector of `check` |
//! | `seed=X` | 0 | pattern seed (`check`, `readonly`, `randwrite`) |
//! | `readonly=1` | 0 | write one pattern sector at sector 0 and print the status (a read-only device answers IOERR) |
//! | `sectorpast=1` | 0 | read one sector at sector `capacity` (past the end) and print the status |
//! | `unknown=1` | 0 | send a request of type 0xff (header and status only) and print the status |
//! | `randwrite=N` | 0 | N 4 KiB pattern writes at pseudo-random 4 KiB blocks, `depth=` in flight, a FLUSH (if negotiated) after every 64 |
//! | `read=1` | 0 | read the whole disk sequentially, `req=` KiB per request, `depth=` in flight |
//! | `req=KiB` | 128 | request size of `read=1` (lowered to what seg_max/size_max and the buffers allow) |
//! | `depth=D` | 4 | requests in flight for `read=1` and `randwrite=` (lowered to what the queue and buffers allow) |
//! | `malformed=1` | 0 | last: put a chain of only a request header (no status byte) on the queue, and report what the device does (a robustness test of the device; QEMU sets DEVICE_NEEDS_RESET) |
//! | `timeout_ms=T` | 10000 | longest wait for one completion |
//!
//! The steps run in this order: device set-up, GET_ID, `readonly`,
//! `check`, `sectorpast`, `unknown`, `randwrite`, `read`, `malformed`.
//!
//! # Serial output
//! After rt's `testguest blk: boot via ...` line:
//! * `blk: pci ecam 0x<base> buses <first>-<last>` (ECAM from the ACPI
//!   MCFG table, or `buses 0-0` from the DSDT's `_CBA`, as on QEMU's
//!   microvm) or `blk: pci cf8` (ports 0xcf8/0xcfc);
//! * `blk: bar<i> 0x<addr> size 0x<size> <firmware|assigned|unassigned>`
//!   for each memory BAR of the device after set-up (`assigned`: moved
//!   into the `pcimem=` window by this guest; `unassigned`: at 0, and not
//!   needed by the driver, e.g. an MSI-X table);
//! * `blk: device 00:<dd>.<f> capacity <sectors> sectors blk_size <n>
//!   seg_max <n> ro <0|1> features 0x<hex>`: `dd`, `f` in hex; `blk_size`
//!   and `seg_max` are the configuration fields, 0 when their feature
//!   (VIRTIO_BLK_F_BLK_SIZE, _SEG_MAX) was not negotiated; `ro` is
//!   VIRTIO_BLK_F_RO; `features` the negotiated feature bits;
//! * `blk: serial '<id>'`: the VIRTIO_BLK_T_GET_ID string (20 bytes, up to
//!   the first NUL; bytes outside 0x20..0x7e and `\` written `\xNN`), or
//!   `blk: serial status <n>` if the request failed;
//! * `readonly=1`: `blk: write status <n>`;
//! * `check`: `blk: check wrote <N> sectors at <S> flush <ok|unsupported>
//!   read back ok`;
//! * `sectorpast=1`: `blk: past-end status <n>`;
//! * `unknown=1`: `blk: unknown-type status <n>`;
//! * `randwrite=N`: `blk: randwrite <N> writes cycles=<C> flushes=<F>
//!   exits=<E>`;
//! * `read=1`: `blk: read-plan req <bytes> bytes depth <D>`, then
//!   `blk: read <bytes> bytes in <requests> requests cycles=<C> exits=<E>`;
//! * `malformed=1`, after 1 s at most: `blk: malformed needs-reset status
//!   0x<status>` (the device set DEVICE_NEEDS_RESET), `blk: malformed
//!   completed len <n>` (it returned the chain) or `blk: malformed no
//!   answer status 0x<status>`;
//! * `blk: done`, then power-off.
//!
//! Statuses are the request's status byte: 0 OK, 1 IOERR, 2 UNSUPP. `C` is
//! TSC cycles from the first request to the last completion; `E` counts
//! queue notifications (MMIO writes, one VM exit each; the device can turn
//! them off with VIRTQ_USED_F_NO_NOTIFY). Any failure prints
//! `blk: FAIL <why>` and powers off; failed requests of `check`, `read`,
//! `randwrite` are failures, the printed statuses above are not.
//!
//! # The pattern
//! Sector `s` (absolute, 512 bytes) holds 64 little-endian 64-bit words;
//! word `w` (0..63, at byte `512 s + 8 w` of the disk) is
//! `splitmix64(seed ^ (s * 64 + w))`, where, in wrapping 64-bit
//! arithmetic:
//! ```text
//! splitmix64(x): z = x + 0x9e3779b97f4a7c15
//!                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//!                z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//!                return z ^ (z >> 31)
//! ```
//! `check`, `readonly` (sector 0) and `randwrite` all write this pattern
//! (with the same `seed`), so after any run every sector they wrote holds
//! its pattern. `randwrite`'s write `i` (0..N-1) covers 4 KiB block
//! `b = splitmix64(seed ^ 0xffffffff00000000 ^ i) % (capacity / 8)`, i.e.
//! sectors `8b..8b+7`.
//!
//! # Driver
//! The device is the first function on bus 0 with vendor 0x1af4 and
//! device 0x1042 (modern virtio-blk), or 0x1001 (transitional) with the
//! modern capabilities; its legacy I/O BAR is never used. Features wanted: SIZE_MAX, SEG_MAX, RO, BLK_SIZE, FLUSH, and
//! VIRTIO_F_ACCESS_PLATFORM and VIRTIO_F_ORDER_PLATFORM when offered
//! (there is no IOMMU; the driver's fences are strong enough either way);
//! VIRTIO_F_VERSION_1 is required. One request queue (queue 0), at most 256
//! entries. A request is a chain: the 16-byte header (device-readable),
//! its data in descriptors of at most size_max bytes (when negotiated),
//! the status byte (device-writable). Headers and data buffers (1 MiB)
//! come from rt::virtio's DMA arena.
#![no_std]
#![no_main]

use core::fmt;

use rt::pci::{Access, BarKind, MemWindow, Pci};
use rt::println;
use rt::virtio::{self, Buf, Device, Queue};

rt::guest!("blk", main);

/// virtio device ID of a block device.
const VIRTIO_ID_BLOCK: u16 = 2;
/// The transitional block device's PCI device ID.
const TRANSITIONAL_BLOCK: u16 = 0x1001;

/// Block feature bits (virtio 1.2 §5.2.3).
const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

/// Device configuration offsets (§5.2.4).
const CFG_CAPACITY: u32 = 0;
const CFG_SIZE_MAX: u32 = 8;
const CFG_SEG_MAX: u32 = 12;
const CFG_BLK_SIZE: u32 = 20;

/// Request types and statuses (§5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_UNKNOWN: u32 = 0xff;
const S_OK: u8 = 0;
const GET_ID_BYTES: u32 = 20;

const SECTOR: u64 = 512;
/// Data buffers: `depth` slots of one request each.
const DATA_BYTES: u64 = 1 << 20;
/// Most requests in flight.
const MAX_SLOTS: usize = 32;
/// Header (16 bytes) and status byte of one slot, padded.
const SLOT_HDR: u64 = 64;
/// Most data descriptors in one request.
const MAX_SEGS: usize = 64;
/// Largest chunk of `check`.
const CHECK_CHUNK_SECTORS: u64 = 256;
/// `randwrite`: a FLUSH after this many writes.
const FLUSH_EVERY: u64 = 64;
/// `randwrite`'s block stream, kept apart from the pattern's words.
const RANDWRITE_STREAM: u64 = 0xffff_ffff_0000_0000;
/// How long `malformed=1` waits for the device to react.
const MALFORMED_WAIT_US: u64 = 1_000_000;

/// Why the guest gives up; printed as `blk: FAIL <why>`.
enum Fail {
    Virtio(virtio::Error),
    NoDevice(Access),
    Timeout(&'static str, u8),
    QueueFull,
    Status {
        what: &'static str,
        sector: u64,
        status: u8,
    },
    Mismatch {
        sector: u64,
        word: u64,
        got: u64,
        want: u64,
    },
    Range {
        what: &'static str,
        start: u64,
        count: u64,
        capacity: u64,
    },
    Small(&'static str),
}

impl From<virtio::Error> for Fail {
    fn from(e: virtio::Error) -> Fail {
        Fail::Virtio(e)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Fail::Virtio(e) => write!(f, "{e}"),
            Fail::NoDevice(a) => {
                write!(f, "no virtio block device on bus 0 (config access ")?;
                write_access(f, a)?;
                write!(f, ")")
            }
            Fail::Timeout(what, s) => {
                write!(f, "timeout waiting for {what} (device status {s:#x})")
            }
            Fail::QueueFull => write!(f, "no free descriptors in the queue"),
            Fail::Status {
                what,
                sector,
                status,
            } => write!(f, "{what} at sector {sector} status {status}"),
            Fail::Mismatch {
                sector,
                word,
                got,
                want,
            } => write!(
                f,
                "check mismatch at sector {sector} word {word} got {got:#x} want {want:#x}"
            ),
            Fail::Range {
                what,
                start,
                count,
                capacity,
            } => write!(
                f,
                "{what} of {count} sectors at {start} is past capacity {capacity}"
            ),
            Fail::Small(what) => write!(f, "{what}"),
        }
    }
}

fn write_access(f: &mut fmt::Formatter, a: Access) -> fmt::Result {
    match a {
        Access::Ecam {
            base,
            start_bus,
            end_bus,
        } => write!(f, "ecam {base:#x} buses {start_bus}-{end_bus}"),
        Access::Cf8 => write!(f, "cf8"),
    }
}

struct AccessLine(Access);

impl fmt::Display for AccessLine {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write_access(f, self.0)
    }
}

/// The pattern's mixing function (see the module comment).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pattern_word(seed: u64, sector: u64, word: u64) -> u64 {
    splitmix64(seed ^ sector.wrapping_mul(64).wrapping_add(word))
}

/// Fills `n` sectors at `buf` with the pattern of sectors `first..`.
fn fill_pattern(buf: u64, first: u64, n: u64, seed: u64) {
    for s in 0..n {
        for w in 0..64 {
            let at = buf + s * SECTOR + 8 * w;
            // SAFETY: `buf` is a DMA buffer of at least `n` sectors.
            unsafe { core::ptr::write_volatile(at as *mut u64, pattern_word(seed, first + s, w)) };
        }
    }
}

/// The first word of `n` sectors at `buf` that differs from the pattern.
fn compare_pattern(buf: u64, first: u64, n: u64, seed: u64) -> Result<(), Fail> {
    for s in 0..n {
        for w in 0..64 {
            let at = buf + s * SECTOR + 8 * w;
            // SAFETY: as in fill_pattern.
            let got = unsafe { core::ptr::read_volatile(at as *const u64) };
            let want = pattern_word(seed, first + s, w);
            if got != want {
                return Err(Fail::Mismatch {
                    sector: first + s,
                    word: w,
                    got,
                    want,
                });
            }
        }
    }
    Ok(())
}

fn zero(buf: u64, bytes: u64) {
    // SAFETY: a DMA buffer of at least `bytes`.
    unsafe { core::ptr::write_bytes(buf as *mut u8, 0, bytes as usize) };
}

/// The driver: device, queue 0, slots.
struct Blk {
    dev: Device,
    q: Queue,
    /// `MAX_SLOTS` headers with status bytes.
    hdrs: u64,
    /// `DATA_BYTES` of data buffers.
    data: u64,
    capacity: u64,
    features: u64,
    /// Most bytes in one data descriptor.
    seg_bytes: u64,
    /// Most data descriptors in one request.
    max_segs: u64,
    /// Slot of each outstanding chain, by head.
    slot_of: [u8; virtio::MAX_QUEUE_SIZE as usize],
    /// Sector of each slot's request (for failure reports).
    slot_sector: [u64; MAX_SLOTS],
    timeout_us: u64,
}

impl Blk {
    fn hdr(&self, slot: usize) -> u64 {
        self.hdrs + SLOT_HDR * slot as u64
    }

    fn status_of(&self, slot: usize) -> u8 {
        // SAFETY: the slot's status byte, in DMA memory.
        unsafe { core::ptr::read_volatile((self.hdr(slot) + 16) as *const u8) }
    }

    /// Data descriptors a request of `bytes` needs.
    fn segs(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.seg_bytes).max(1)
    }

    /// Largest request, in bytes (a multiple of 512).
    fn max_req_bytes(&self) -> u64 {
        let by_segs = self.seg_bytes.saturating_mul(self.max_segs);
        let by_queue = self
            .seg_bytes
            .saturating_mul(u64::from(self.q.size()).saturating_sub(2));
        by_segs.min(by_queue).min(DATA_BYTES) / SECTOR * SECTOR
    }

    /// Puts a request in slot `slot` on the queue (not notified).
    fn submit(
        &mut self,
        slot: usize,
        typ: u32,
        sector: u64,
        data: u64,
        len: u64,
    ) -> Result<(), Fail> {
        let h = self.hdr(slot);
        // SAFETY: the slot's header and status, in DMA memory, not in use.
        unsafe {
            core::ptr::write_volatile(h as *mut u32, typ);
            core::ptr::write_volatile((h + 4) as *mut u32, 0);
            core::ptr::write_volatile((h + 8) as *mut u64, sector);
            core::ptr::write_volatile((h + 16) as *mut u8, 0xff);
        }
        let writes = matches!(typ, T_IN | T_GET_ID);
        let mut bufs = [Buf {
            addr: 0,
            len: 0,
            write: false,
        }; MAX_SEGS + 2];
        bufs[0] = Buf {
            addr: h,
            len: 16,
            write: false,
        };
        let mut n = 1;
        let mut off = 0;
        while off < len {
            if n > MAX_SEGS {
                return Err(Fail::Small("request needs too many segments"));
            }
            let l = (len - off).min(self.seg_bytes);
            bufs[n] = Buf {
                addr: data + off,
                len: l as u32,
                write: writes,
            };
            n += 1;
            off += l;
        }
        bufs[n] = Buf {
            addr: h + 16,
            len: 1,
            write: true,
        };
        n += 1;
        let head = self.q.push(&bufs[..n]).ok_or(Fail::QueueFull)?;
        self.slot_of[usize::from(head)] = slot as u8;
        self.slot_sector[slot] = sector;
        Ok(())
    }

    /// A finished request's slot, if one is there.
    fn try_complete(&mut self) -> Result<Option<usize>, Fail> {
        Ok(self
            .q
            .pop()?
            .map(|used| usize::from(self.slot_of[usize::from(used.head)])))
    }

    /// Waits for a request to finish: its slot.
    fn complete(&mut self, what: &'static str) -> Result<usize, Fail> {
        let deadline = virtio::deadline_us(self.timeout_us);
        let mut spins = 0u32;
        loop {
            if let Some(slot) = self.try_complete()? {
                return Ok(slot);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                self.dev.check()?;
                if rt::io::rdtsc() > deadline {
                    return Err(Fail::Timeout(what, self.dev.status()));
                }
            }
            rt::io::pause();
        }
    }

    /// One request, waited for: its status.
    fn sync(
        &mut self,
        what: &'static str,
        typ: u32,
        sector: u64,
        data: u64,
        len: u64,
    ) -> Result<u8, Fail> {
        self.submit(0, typ, sector, data, len)?;
        self.q.kick();
        let slot = self.complete(what)?;
        Ok(self.status_of(slot))
    }

    /// Like `sync`, but anything other than OK is a failure.
    fn sync_ok(
        &mut self,
        what: &'static str,
        typ: u32,
        sector: u64,
        data: u64,
        len: u64,
    ) -> Result<(), Fail> {
        match self.sync(what, typ, sector, data, len)? {
            S_OK => Ok(()),
            status => Err(Fail::Status {
                what,
                sector,
                status,
            }),
        }
    }

    /// FLUSH if negotiated: whether it was.
    fn flush(&mut self) -> Result<bool, Fail> {
        if self.features & F_FLUSH == 0 {
            return Ok(false);
        }
        self.sync_ok("flush", T_FLUSH, 0, 0, 0)?;
        Ok(true)
    }

    /// Requests `first..end` with `depth` in flight; `next(i, buf)` fills
    /// request i's buffer (`slot_bytes` at `buf`) and says what it is:
    /// (type, sector, bytes). Any status but OK is a failure.
    fn stream(
        &mut self,
        what: &'static str,
        first: u64,
        end: u64,
        depth: usize,
        slot_bytes: u64,
        next: &mut impl FnMut(u64, u64) -> (u32, u64, u64),
    ) -> Result<(), Fail> {
        let mut free: u64 = (1u64 << depth) - 1;
        let (mut issued, mut done) = (first, first);
        while done < end {
            let mut added = false;
            while issued < end && free != 0 {
                let slot = free.trailing_zeros() as usize;
                free &= !(1 << slot);
                let buf = self.data + slot as u64 * slot_bytes;
                let (typ, sector, len) = next(issued, buf);
                self.submit(slot, typ, sector, buf, len)?;
                issued += 1;
                added = true;
            }
            if added {
                self.q.kick();
            }
            let mut slot = Some(self.complete(what)?);
            while let Some(s) = slot {
                let status = self.status_of(s);
                if status != S_OK {
                    return Err(Fail::Status {
                        what,
                        sector: self.slot_sector[s],
                        status,
                    });
                }
                free |= 1 << s;
                done += 1;
                slot = self.try_complete()?;
            }
        }
        Ok(())
    }

    /// Lowers `depth` to what the slots, the buffers and the queue allow
    /// for requests of `bytes`.
    fn fit_depth(&self, depth: u64, bytes: u64) -> usize {
        let per_req = 2 + self.segs(bytes);
        let by_queue = u64::from(self.q.size()) / per_req;
        depth
            .min(MAX_SLOTS as u64)
            .min(DATA_BYTES / bytes.max(1))
            .min(by_queue)
            .max(1) as usize
    }
}

fn main() -> ! {
    match run() {
        Ok(()) => println!("blk: done"),
        Err(e) => println!("blk: FAIL {e}"),
    }
    rt::power::power_off()
}

/// Finds the first virtio block device on bus 0 and sets it up.
fn setup(pci: &Pci, mut window: Option<MemWindow>) -> Result<Blk, Fail> {
    let mut found = None;
    for f in pci.functions(0) {
        let block = f.device == virtio::MODERN_DEVICE_BASE + VIRTIO_ID_BLOCK
            || f.device == TRANSITIONAL_BLOCK;
        if f.vendor != virtio::VENDOR || !block || f.header_type != 0 {
            continue;
        }
        let before = pci.bars(f.bdf);
        match Device::probe(pci, f, window.as_mut()) {
            // A transitional device without modern capabilities: not ours.
            Err(virtio::Error::MissingCap(_)) if f.device == TRANSITIONAL_BLOCK => continue,
            Err(e) => return Err(e.into()),
            Ok(dev) => {
                for (i, bar) in pci.bars(f.bdf).iter().enumerate() {
                    let Some(bar) = bar.filter(|b| b.kind != BarKind::Io) else {
                        continue;
                    };
                    let how = if before[i].is_some_and(|b| b.addr != bar.addr) {
                        "assigned"
                    } else if bar.addr == 0 {
                        "unassigned"
                    } else {
                        "firmware"
                    };
                    println!("blk: bar{i} {:#x} size {:#x} {how}", bar.addr, bar.size);
                }
                found = Some(dev);
                break;
            }
        }
    }
    let mut dev = found.ok_or(Fail::NoDevice(pci.access()))?;
    let wanted = F_SIZE_MAX
        | F_SEG_MAX
        | F_RO
        | F_BLK_SIZE
        | F_FLUSH
        | virtio::F_ACCESS_PLATFORM
        | virtio::F_ORDER_PLATFORM;
    let features = dev.negotiate(wanted, 0)?;
    let q = dev.setup_queue(0, virtio::MAX_QUEUE_SIZE)?;
    let (capacity, size_max, seg_max) = dev.config(|c| {
        (
            c.read64(CFG_CAPACITY),
            c.read32(CFG_SIZE_MAX),
            c.read32(CFG_SEG_MAX),
        )
    });
    let hdrs = virtio::dma_alloc(SLOT_HDR as usize * MAX_SLOTS, 64)?;
    let data = virtio::dma_alloc(DATA_BYTES as usize, 4096)?;
    dev.driver_ok()?;
    let seg_bytes = if features & F_SIZE_MAX != 0 && size_max >= SECTOR as u32 {
        u64::from(size_max) / SECTOR * SECTOR
    } else {
        DATA_BYTES
    };
    let max_segs = if features & F_SEG_MAX != 0 && seg_max > 0 {
        u64::from(seg_max).min(MAX_SEGS as u64)
    } else {
        MAX_SEGS as u64
    };
    Ok(Blk {
        dev,
        q,
        hdrs,
        data,
        capacity,
        features,
        seg_bytes,
        max_segs,
        slot_of: [0; virtio::MAX_QUEUE_SIZE as usize],
        slot_sector: [0; MAX_SLOTS],
        timeout_us: rt::cmdline::get_u64("timeout_ms", 10_000).saturating_mul(1000),
    })
}

/// `'...'` with non-printable bytes escaped.
struct Printable<'a>(&'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

fn run() -> Result<(), Fail> {
    use rt::cmdline::{get, get_u64};
    let pci = match get("pcicfg") {
        Some("cf8") => Pci::with_access(Access::Cf8),
        _ => Pci::open(),
    };
    println!("blk: pci {}", AccessLine(pci.access()));
    let mut b = setup(&pci, MemWindow::from_cmdline())?;
    let cfg = b
        .dev
        .config(|c| (c.read32(CFG_BLK_SIZE), c.read32(CFG_SEG_MAX)));
    let blk_size = if b.features & F_BLK_SIZE != 0 {
        cfg.0
    } else {
        0
    };
    let seg_max = if b.features & F_SEG_MAX != 0 {
        cfg.1
    } else {
        0
    };
    println!(
        "blk: device {} capacity {} sectors blk_size {blk_size} seg_max {seg_max} ro {} features {:#x}",
        b.dev.function.bdf,
        b.capacity,
        u8::from(b.features & F_RO != 0),
        b.features
    );

    // GET_ID.
    let data = b.data;
    zero(data, u64::from(GET_ID_BYTES));
    match b.sync("get-id", T_GET_ID, 0, data, u64::from(GET_ID_BYTES))? {
        S_OK => {
            let mut id = [0u8; GET_ID_BYTES as usize];
            for (i, byte) in id.iter_mut().enumerate() {
                // SAFETY: the data buffer the device wrote.
                *byte = unsafe { core::ptr::read_volatile((data + i as u64) as *const u8) };
            }
            let n = id.iter().position(|&c| c == 0).unwrap_or(id.len());
            println!("blk: serial '{}'", Printable(&id[..n]));
        }
        status => println!("blk: serial status {status}"),
    }

    let seed = get_u64("seed", 0);

    if get_u64("readonly", 0) != 0 {
        fill_pattern(data, 0, 1, seed);
        let status = b.sync("read-only write", T_OUT, 0, data, SECTOR)?;
        println!("blk: write status {status}");
    }

    if let Some(v) = get("check") {
        let n = if v.is_empty() {
            64
        } else {
            get_u64("check", 64)
        };
        let at = get_u64("at", 0);
        check(&mut b, at, n, seed)?;
    }

    if get_u64("sectorpast", 0) != 0 {
        let status = b.sync("past-end read", T_IN, b.capacity, data, SECTOR)?;
        println!("blk: past-end status {status}");
    }

    if get_u64("unknown", 0) != 0 {
        let status = b.sync("unknown-type request", T_UNKNOWN, 0, 0, 0)?;
        println!("blk: unknown-type status {status}");
    }

    let depth = get_u64("depth", 4);
    let n = get_u64("randwrite", 0);
    if n > 0 {
        randwrite(&mut b, n, depth, seed)?;
    }

    if get_u64("read", 0) != 0 {
        read_all(&mut b, get_u64("req", 128), depth)?;
    }

    if get_u64("malformed", 0) != 0 {
        malformed(&mut b)?;
    }
    Ok(())
}

/// `malformed=1`: a chain of just a request header, with no status byte
/// for the device to write; see the module comment. The device is of no
/// further use after this.
fn malformed(b: &mut Blk) -> Result<(), Fail> {
    let h = b.hdr(0);
    // SAFETY: slot 0's header, in DMA memory, not in use.
    unsafe {
        core::ptr::write_volatile(h as *mut u32, T_IN);
        core::ptr::write_volatile((h + 4) as *mut u32, 0);
        core::ptr::write_volatile((h + 8) as *mut u64, 0);
    }
    let header = Buf {
        addr: h,
        len: 16,
        write: false,
    };
    b.q.push(&[header]).ok_or(Fail::QueueFull)?;
    b.q.kick();
    let deadline = virtio::deadline_us(MALFORMED_WAIT_US);
    loop {
        if let Some(used) = b.q.pop()? {
            println!("blk: malformed completed len {}", used.len);
            return Ok(());
        }
        let status = b.dev.status();
        if status & virtio::S_DEVICE_NEEDS_RESET != 0 {
            println!("blk: malformed needs-reset status {status:#x}");
            return Ok(());
        }
        if rt::io::rdtsc() > deadline {
            println!("blk: malformed no answer status {status:#x}");
            return Ok(());
        }
        rt::io::pause();
    }
}

/// `check=N at=S`: see the module comment.
fn check(b: &mut Blk, at: u64, n: u64, seed: u64) -> Result<(), Fail> {
    if at.checked_add(n).is_none_or(|end| end > b.capacity) {
        return Err(Fail::Range {
            what: "check",
            start: at,
            count: n,
            capacity: b.capacity,
        });
    }
    let chunk = CHECK_CHUNK_SECTORS.min(b.max_req_bytes() / SECTOR);
    if chunk == 0 {
        return Err(Fail::Small(
            "the device's size_max/seg_max allow no request",
        ));
    }
    let data = b.data;
    let mut s = at;
    while s < at + n {
        let k = chunk.min(at + n - s);
        fill_pattern(data, s, k, seed);
        b.sync_ok("check write", T_OUT, s, data, k * SECTOR)?;
        s += k;
    }
    let flushed = b.flush()?;
    let mut s = at;
    while s < at + n {
        let k = chunk.min(at + n - s);
        zero(data, k * SECTOR);
        b.sync_ok("check read", T_IN, s, data, k * SECTOR)?;
        compare_pattern(data, s, k, seed)?;
        s += k;
    }
    println!(
        "blk: check wrote {n} sectors at {at} flush {} read back ok",
        if flushed { "ok" } else { "unsupported" }
    );
    Ok(())
}

/// `randwrite=N`: see the module comment.
fn randwrite(b: &mut Blk, n: u64, depth: u64, seed: u64) -> Result<(), Fail> {
    const BLOCK: u64 = 4096;
    let blocks = b.capacity / 8;
    if blocks == 0 || b.max_req_bytes() < BLOCK {
        return Err(Fail::Small(
            "randwrite needs a disk of 4 KiB and 4 KiB requests",
        ));
    }
    let depth = b.fit_depth(depth, BLOCK);
    let exits0 = b.q.notifications();
    let mut flushes = 0;
    let start = rt::io::rdtsc();
    let mut next = |i: u64, buf: u64| {
        let block = splitmix64(seed ^ RANDWRITE_STREAM ^ i) % blocks;
        fill_pattern(buf, 8 * block, 8, seed);
        (T_OUT, 8 * block, BLOCK)
    };
    let mut i = 0;
    while i < n {
        let end = (i + FLUSH_EVERY).min(n);
        b.stream("randwrite", i, end, depth, BLOCK, &mut next)?;
        if end - i == FLUSH_EVERY && b.flush()? {
            flushes += 1;
        }
        i = end;
    }
    let cycles = rt::io::rdtsc() - start;
    println!(
        "blk: randwrite {n} writes cycles={cycles} flushes={flushes} exits={}",
        b.q.notifications() - exits0
    );
    Ok(())
}

/// `read=1`: see the module comment.
fn read_all(b: &mut Blk, req_kib: u64, depth: u64) -> Result<(), Fail> {
    let req = (req_kib.saturating_mul(1024) / SECTOR * SECTOR)
        .min(b.max_req_bytes())
        .max(SECTOR);
    if b.max_req_bytes() < SECTOR {
        return Err(Fail::Small(
            "the device's size_max/seg_max allow no request",
        ));
    }
    let depth = b.fit_depth(depth, req);
    println!("blk: read-plan req {req} bytes depth {depth}");
    let req_sectors = req / SECTOR;
    let capacity = b.capacity;
    let requests = capacity.div_ceil(req_sectors);
    let exits0 = b.q.notifications();
    let start = rt::io::rdtsc();
    let mut next = |i: u64, _buf: u64| {
        let sector = i * req_sectors;
        let k = req_sectors.min(capacity - sector);
        (T_IN, sector, k * SECTOR)
    };
    b.stream("read", 0, requests, depth, req, &mut next)?;
    let cycles = rt::io::rdtsc() - start;
    println!(
        "blk: read {} bytes in {requests} requests cycles={cycles} exits={}",
        capacity * SECTOR,
        b.q.notifications() - exits0
    );
    Ok(())
}
