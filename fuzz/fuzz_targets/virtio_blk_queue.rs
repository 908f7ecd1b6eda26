//! virtio-blk's whole queue path against a hostile driver.
//!
//! Guest memory has three regions (a hole after the first; the last two
//! adjacent, so a buffer may straddle them). The input places the split
//! virtqueue's rings (default: apart; else anywhere, over each other or
//! the buffers), writes its descriptor table (loops, indices out of range,
//! indirect tables, addresses outside RAM or over the rings, lengths that
//! lie), the avail ring (heads out of range, an index up to far ahead),
//! request headers (every type, sectors in range, at and past the end),
//! discard ranges, and raw bytes anywhere; a short input ends in plain
//! header/4 KiB/status chains. The disk is an in-memory `DiskImage` (64
//! KiB, 64 KiB + 100 bytes, empty or 1 MiB; read-only or not; discard or
//! not; failing every n-th operation or not). The device's I/O-thread pass
//! (`devices::virtio::block::fuzz_process`, the worker's `process`) runs
//! either once over all the input made available plus once more ("batch"),
//! or once per chain with the avail index moved one at a time (up to 32
//! chains; "stepped").
//!
//! Checked, besides no panic (ASan build) and termination (libFuzzer's
//! `-timeout`):
//! - guest memory, compared with a shadow copy after every pass, changed
//!   only in the used ring and in device-writable buffers: exactly those
//!   of the chain taken, for a stepped pass whose rings lie apart (the
//!   common case); otherwise those of any descriptor reachable from the
//!   table before or after the pass (not checked at all where a
//!   descriptor lies inside the used ring, which the device itself
//!   rewrites mid-pass);
//! - used entries name a head below the queue size; stepped and exact:
//!   the head published, a length no larger than the chain's writable
//!   bytes, and the used index in memory is the device's;
//! - a stepped pass with rings apart completes one chain (or more, only
//!   if its own buffer writes moved the avail index); a second kick with
//!   nothing new completes nothing;
//! - the disk is accessed only within its size, never written when
//!   read-only, at most 2^20 times per input;
//! - a pass returns false exactly when it asked for a reset.

#![no_main]

mod common;

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::virtio::block::fuzz_process;
use devices::virtio::{GuestMemory, Interrupt};
use disk::DiskImage;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

use common::{overlaps, with_mem, In, Layout, Mem, F_INDIRECT, F_NEXT, F_WRITE, INDIRECT, REGIONS};

/// Default ring placement (fits a 256-entry queue each).
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Request header slots and discard-range slots the inputs point into.
const HEADERS: u64 = 0x10000;
const HEADER_SLOTS: u64 = 8;
const DISCARDS: u64 = 0x11000;
/// Data buffers of the first region start here.
const DATA: u64 = 0x20000;
/// The queue sizes a driver may pick are powers of two up to the device's
/// maximum.
const MAX_QUEUE: u16 = devices::virtio::block::QUEUE_SIZE;
/// Chains published one at a time, at most (each costs a memory compare).
const MAX_STEPS: u16 = 32;
/// More disk operations than this in one input is a runaway device.
const MAX_DISK_OPS: u64 = 1 << 20;

/// The disk's initial contents, made once.
fn disk_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| (0..1usize << 20).map(|i| (i * 31 ^ i >> 9) as u8).collect())
}

/// An in-memory disk that checks how the device uses it.
struct TestDisk {
    data: Vec<u8>,
    read_only: bool,
    discard: bool,
    /// Fail every operation whose number has this bit pattern (0: never).
    fail_mask: u64,
    ops: Arc<AtomicU64>,
}

impl TestDisk {
    fn op(&self, offset: u64, len: u64, write: bool) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(n <= MAX_DISK_OPS, "runaway device: {n} disk operations");
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|e| e <= self.data.len() as u64),
            "disk access {offset:#x}+{len:#x} past the end ({:#x})",
            self.data.len()
        );
        assert!(!(write && self.read_only), "write to a read-only disk");
        if self.fail_mask != 0 && n & self.fail_mask == self.fail_mask {
            return Err(io::Error::other("injected I/O error"));
        }
        Ok(())
    }
}

impl DiskImage for TestDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.op(offset, len as u64, false)?;
        let mut at = offset as usize;
        for b in bufs {
            let n = b.len();
            b.copy_from_slice(&self.data[at..at + n]);
            at += n;
        }
        Ok(())
    }

    fn write_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.op(offset, len as u64, true)?;
        let mut at = offset as usize;
        for b in bufs {
            self.data[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.op(0, 0, false)
    }

    fn supports_discard(&self) -> bool {
        self.discard
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.op(offset, len, true)?;
        self.data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.op(offset, len, true)?;
        self.data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

#[derive(Default)]
struct TestInterrupt {
    used: AtomicU64,
    needs_reset: AtomicU64,
}

impl Interrupt for TestInterrupt {
    fn signal_used(&self, queue: u16) {
        assert_eq!(queue, 0);
        self.used.fetch_add(1, Ordering::Relaxed);
    }
    fn signal_config(&self) {
        panic!("virtio-blk never changes its configuration");
    }
    fn needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::Relaxed);
    }
}

/// A guest address: mostly places that matter, sometimes anything.
fn addr(inp: &mut In, l: &Layout) -> u64 {
    let k = inp.u8();
    let small = u64::from(inp.u8());
    match k % 16 {
        0..=3 => HEADERS + (small % HEADER_SLOTS) * 0x100 + u64::from(k >> 4),
        4 => DISCARDS + (small % 8) * 16,
        5 => DATA + (u64::from(inp.u16()) << 4) % (REGIONS[0].1 - DATA),
        6 => REGIONS[1].0 + (u64::from(inp.u16()) << 5) % REGIONS[1].1,
        7 => REGIONS[0].1 - small,
        8 => REGIONS[2].0 - small,
        9 => REGIONS[2].0 + REGIONS[2].1 - small,
        10 => REGIONS[0].1 + (u64::from(inp.u16()) << 4),
        11 => match small % 4 {
            0 => 4 << 30,
            1 => u64::MAX - u64::from(k >> 4),
            2 => 1 << 63,
            _ => (u64::MAX - (1 << 20)) + u64::from(inp.u16()),
        },
        12 => INDIRECT[(small % INDIRECT.len() as u64) as usize],
        13 => l.desc.wrapping_add(small * 4),
        14 => l.avail.wrapping_add(small),
        15 => match small % 2 {
            0 => l.used.wrapping_add(small),
            _ => inp.u64(),
        },
        _ => unreachable!(),
    }
}

/// A descriptor length: sector multiples, the header, a byte, anything.
fn len(inp: &mut In) -> u32 {
    match inp.u8() % 12 {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 512,
        4 => 4096,
        5 => 16 + 512,
        6 => 513,
        7 => 16 * (1 + u32::from(inp.u8() % 8)),
        8 => u32::from(inp.u16()),
        9 => inp.u32(),
        10 => 0x10000,
        _ => 0x1000 * (1 + u32::from(inp.u8() % 16)),
    }
}

/// One descriptor (16 bytes), index `i` of a table of `n`.
fn descriptor(inp: &mut In, l: &Layout, i: u16, n: u16) -> [u8; 16] {
    let a = addr(inp, l);
    let ln = len(inp);
    let f = inp.u8();
    let flags = match f >> 5 {
        7 => inp.u16(),
        _ => u16::from(f) & (F_NEXT | F_WRITE | F_INDIRECT),
    };
    let nb = inp.u8();
    let next = match nb % 8 {
        0 => inp.u16(),
        1 => u16::from(nb >> 3) % n.max(1),
        2 => i,
        _ => i.wrapping_add(1) % n.max(1),
    };
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&a.to_le_bytes());
    d[8..12].copy_from_slice(&ln.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// A request header: a type (known or not) and a sector (in range, at
/// the end, past it, huge).
fn header(inp: &mut In, capacity: u64) -> [u8; 16] {
    let t = inp.u8();
    let ty: u32 = match t % 8 {
        0 | 1 => 0, // IN
        2 | 3 => 1, // OUT
        4 => 4,     // FLUSH
        5 => 8,     // GET_ID
        6 => [11, 13][usize::from(t >> 7)],
        _ => inp.u32(),
    };
    let s = inp.u8();
    let sector = match s % 8 {
        0..=3 => u64::from(s >> 3) % capacity.max(1),
        4 => capacity.saturating_sub(1 + u64::from(s >> 3)),
        5 => capacity + u64::from(s >> 3),
        6 => u64::MAX - u64::from(s >> 3),
        _ => inp.u64(),
    };
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[4..8].copy_from_slice(&inp.u8().to_le_bytes().repeat(4));
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A discard / write-zeroes range.
fn discard_range(inp: &mut In, capacity: u64) -> [u8; 16] {
    let s = inp.u8();
    let sector = match s % 4 {
        0 | 1 => u64::from(s >> 2) % capacity.max(1),
        2 => capacity.saturating_sub(u64::from(s >> 2)),
        _ => inp.u64(),
    };
    let n = inp.u8();
    let num: u32 = match n % 4 {
        0 | 1 => u32::from(n >> 2),
        2 => u32::MAX >> 9,
        _ => inp.u32(),
    };
    let flags: u32 = match inp.u8() {
        0..=127 => 0,
        128..=250 => 1,
        f => u32::from(f),
    };
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&num.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    r
}

/// One chain as the device reads it: its device-writable (address,
/// length) pieces and the indirect table it went through, if any. Follows
/// virtio-queue 0.18's `DescriptorChain` step for step (a loop or a bad
/// index ends the chain; one level of indirection; at most `ttl`
/// descriptors; at most 4 GiB in all).
struct Chain {
    writable: Vec<(u64, u64)>,
    indirect: Option<(u64, u64)>,
}

fn walk(mem: &GuestMemory, l: &Layout, head: u16) -> Chain {
    let mut c = Chain {
        writable: Vec::new(),
        indirect: None,
    };
    let (mut table, mut n, mut next, mut ttl) = (l.desc, l.size, head, l.size);
    let mut bytes = 0u32;
    while ttl > 0 && next < n {
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        let Ok(d) = mem.read_obj::<Descriptor>(GuestAddress(at)) else {
            break;
        };
        if d.refers_to_indirect_table() {
            if c.indirect.is_some() || d.len() % 16 != 0 || d.len() / 16 > u32::from(u16::MAX) {
                break;
            }
            c.indirect = Some((d.addr().0, u64::from(d.len())));
            table = d.addr().0;
            n = (d.len() / 16) as u16;
            next = 0;
            ttl = n;
            continue;
        }
        let Some(b) = bytes.checked_add(d.len()) else {
            break;
        };
        bytes = b;
        if d.is_write_only() {
            c.writable.push((d.addr().0, u64::from(d.len())));
        }
        if d.has_next() {
            next = d.next();
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    c
}

/// The device-writable pieces of every descriptor any chain could reach
/// (those of the table, and of the indirect tables it names): a superset
/// of what any pass may write besides the used ring, whatever the avail
/// ring says. `None` where it cannot be told: a descriptor inside the used
/// ring (the device's own ring writes may change it mid-pass), or too many
/// indirect descriptors to list.
fn reachable_writable(mem: &GuestMemory, l: &Layout) -> Option<Vec<(u64, u64)>> {
    let used = l.used_range();
    let mut out = Vec::new();
    let mut tables = Vec::new();
    let mut budget = 1u32 << 18;
    for i in 0..u64::from(l.size) {
        let at = l.desc + i * 16;
        if overlaps((at, 16), used) {
            return None;
        }
        let d: Descriptor = mem.read_obj(GuestAddress(at)).ok()?;
        if !d.refers_to_indirect_table() {
            if d.is_write_only() {
                out.push((d.addr().0, u64::from(d.len())));
            }
            continue;
        }
        if d.len() % 16 != 0 || tables.contains(&(d.addr().0, d.len())) {
            continue;
        }
        tables.push((d.addr().0, d.len()));
        for j in 0..u64::from(d.len() / 16) {
            budget = budget.checked_sub(1)?;
            let Some(at) = d.addr().0.checked_add(j * 16) else {
                break;
            };
            if overlaps((at, 16), used) {
                return None;
            }
            let Ok(e) = mem.read_obj::<Descriptor>(GuestAddress(at)) else {
                break;
            };
            if e.is_write_only() && !e.refers_to_indirect_table() {
                out.push((e.addr().0, u64::from(e.len())));
            }
        }
    }
    Some(out)
}

/// What a pass may write: the used ring, and the writable pieces
/// reachable before or after it; `None` if that cannot be told.
fn allowed_loose(
    l: &Layout,
    pre: Option<Vec<(u64, u64)>>,
    post: Option<Vec<(u64, u64)>>,
) -> Option<Vec<(u64, u64)>> {
    let mut a = vec![l.used_range()];
    a.extend(pre?);
    a.extend(post?);
    Some(a)
}

fn run(data: &[u8], mem: &mut Mem) {
    let mut inp = In(data);
    let cfg = inp.u8();
    let event_idx = cfg & 1 != 0;
    let stepped = cfg & 2 != 0;
    let read_only = cfg & 4 != 0;
    let discard = cfg & 8 != 0;
    let custom_rings = cfg & 16 != 0;
    let fail_mask = if cfg & 32 != 0 {
        u64::from(inp.u8() % 8) + 1
    } else {
        0
    };
    let disk_size: usize = match cfg >> 6 {
        0 => 64 << 10,
        1 => (64 << 10) + 100, // not a whole number of sectors
        2 => 0,
        _ => 1 << 20,
    };
    let capacity = disk_size as u64 / 512;
    let size = 1u16 << ((u16::from(inp.u8()) + 4) % 9);
    assert!(size <= MAX_QUEUE);
    let next_avail = match inp.u8() {
        0..=127 => 0,
        128..=200 => 0u16.wrapping_sub(u16::from(inp.u8() % 8)),
        _ => inp.u16(),
    };
    // How many chains the driver makes available: mostly up to the queue
    // size, sometimes past it.
    let nb = inp.u8();
    let avail_n: u16 = match nb {
        0..=239 => (u16::from(nb) + 3) % (size + 1),
        240..=247 => size + 1 + u16::from(nb - 240),
        _ => inp.u16(),
    };
    // The device completes every chain it takes (or breaks the queue), so
    // between passes its used index always equals its avail index.
    let next_used = next_avail;
    let mut l = Layout {
        size,
        desc: DESC,
        avail: AVAIL,
        used: USED,
    };
    if custom_rings {
        // Anywhere, overlapping each other or the buffers; the transport
        // refuses what is misaligned or outside RAM, and so do we below.
        l.desc = addr(&mut inp, &l) & !15;
        l.avail = addr(&mut inp, &l) & !1;
        l.used = addr(&mut inp, &l) & !3;
    }
    let state = QueueState {
        max_size: MAX_QUEUE,
        next_avail,
        next_used,
        event_idx_enabled: event_idx,
        size,
        ready: true,
        desc_table: l.desc,
        avail_ring: l.avail,
        used_ring: l.used,
    };
    let Ok(mut queue) = Queue::try_from(state) else {
        return;
    };
    if !queue.is_valid(&mem.gm) {
        return;
    }

    // The descriptor table: the input's descriptors, then plain
    // three-piece chains (header, 4 KiB, status) once it runs out, so
    // that short inputs still make requests.
    let table: Vec<[u8; 16]> = (0..size)
        .map(|i| {
            if !inp.done() {
                return descriptor(&mut inp, &l, i, size);
            }
            let mut d = [0u8; 16];
            let (a, ln, fl) = match i % 3 {
                0 => (HEADERS + u64::from(i / 3 % 8) * 0x100, 16u32, F_NEXT),
                1 => (DATA + u64::from(i) * 0x1000, 4096, F_NEXT | F_WRITE),
                _ => (DATA + u64::from(i) * 0x1000 - 1, 1, F_WRITE),
            };
            d[0..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&ln.to_le_bytes());
            d[12..14].copy_from_slice(&fl.to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) % size).to_le_bytes());
            d
        })
        .collect();
    // The heads made available (by default those three-piece chains).
    let heads: Vec<u16> = (0..avail_n.min(size))
        .map(|k| {
            let hb = inp.u8();
            match hb % 8 {
                0..=5 => (k * 3 + u16::from(hb >> 3)) % size,
                6 => size + u16::from(hb >> 3),
                _ => inp.u16(),
            }
        })
        .collect();
    let avail_flags = inp.u16() & 1;
    let used_event = next_used.wrapping_add(u16::from(inp.u8() % 4));
    let headers: Vec<[u8; 16]> = (0..HEADER_SLOTS)
        .map(|_| header(&mut inp, capacity))
        .collect();
    let discards: Vec<[u8; 16]> = (0..8).map(|_| discard_range(&mut inp, capacity)).collect();

    // Buffers first, rings over them (rings may overlap buffers).
    for (k, h) in headers.iter().enumerate() {
        mem.write(HEADERS + k as u64 * 0x100, h);
    }
    for (k, r) in discards.iter().enumerate() {
        mem.write(DISCARDS + k as u64 * 16, r);
    }
    for &at in &INDIRECT {
        let n = u16::from(inp.u8() % 17);
        for i in 0..n {
            let d = descriptor(&mut inp, &l, i, n);
            mem.write(at + u64::from(i) * 16, &d);
        }
    }
    for (i, d) in table.iter().enumerate() {
        mem.write(l.desc + i as u64 * 16, d);
    }
    let avail_idx = next_avail.wrapping_add(avail_n);
    mem.write(l.avail, &avail_flags.to_le_bytes());
    mem.write(l.avail + 2, &avail_idx.to_le_bytes());
    for (k, h) in heads.iter().enumerate() {
        let slot = next_avail.wrapping_add(k as u16) % size;
        mem.write(l.avail + 4 + u64::from(slot) * 2, &h.to_le_bytes());
    }
    // used_event, and the used ring as the driver left it.
    mem.write(l.avail + 4 + u64::from(size) * 2, &used_event.to_le_bytes());
    mem.write(l.used + 2, &next_used.to_le_bytes());
    // Raw patches anywhere, for what the generator above cannot say.
    while !inp.done() {
        let a = addr(&mut inp, &l);
        let n = usize::from(inp.u8() % 32);
        let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
        mem.write(a, &bytes);
    }

    let ops = Arc::new(AtomicU64::new(0));
    let mut disk: Box<dyn DiskImage> = Box::new(TestDisk {
        data: disk_bytes()[..disk_size].to_vec(),
        read_only,
        discard,
        fail_mask,
        ops: ops.clone(),
    });
    let irq = Arc::new(TestInterrupt::default());
    let (used_at, used_len) = l.used_range();
    let rings_overlap = overlaps(l.used_range(), (l.desc, 16 * u64::from(size)))
        || overlaps(l.used_range(), (l.avail, 6 + 2 * u64::from(size)));

    if !stepped {
        let before = queue.state();
        let pre = reachable_writable(&mem.gm, &l);
        let (ok, d) = fuzz_process(&mem.gm, &mut queue, disk, read_only, irq.clone());
        disk = d;
        let post = reachable_writable(&mem.gm, &l);
        let allowed = allowed_loose(&l, pre, post);
        if let Some(allowed) = &allowed {
            mem.check_writes(allowed, "batch");
        } else {
            mem.check_writes(&[(0, u64::MAX)], "batch");
        }
        assert_eq!(
            !ok,
            irq.needs_reset.load(Ordering::Relaxed) > 0,
            "a pass fails exactly when it asks for a reset"
        );
        // Used entries (unless a buffer over the used ring may have
        // changed them since).
        let overlapped = allowed
            .as_ref()
            .is_none_or(|a| a[1..].iter().any(|&p| overlaps(p, (used_at, used_len))));
        let done = queue.next_used().wrapping_sub(before.next_used);
        if !overlapped {
            for k in 0..done.min(size) {
                let slot = before.next_used.wrapping_add(k) % size;
                let id = mem.read_u32(used_at + 4 + u64::from(slot) * 8).unwrap();
                assert!(id < u32::from(size), "used id {id} >= queue size {size}");
            }
        }
        // Another kick with nothing new does nothing new.
        if ok {
            let again = queue.state();
            let avail = mem.read_u16(l.avail + 2).unwrap();
            let pre = reachable_writable(&mem.gm, &l);
            let (ok2, _d) = fuzz_process(&mem.gm, &mut queue, disk, read_only, irq.clone());
            let post = reachable_writable(&mem.gm, &l);
            match allowed_loose(&l, pre, post) {
                Some(a) => mem.check_writes(&a, "second kick"),
                None => mem.check_writes(&[(0, u64::MAX)], "second kick"),
            }
            if ok2 && !rings_overlap && avail == again.next_avail && !overlapped {
                assert_eq!(
                    queue.next_used(),
                    again.next_used,
                    "completed nothing twice"
                );
            }
        }
        return;
    }

    // Stepped: the driver publishes one chain at a time (a well-behaved
    // avail index; the chains and everything else still hostile).
    let steps = avail_n.min(size).min(MAX_STEPS);
    for k in 0..steps {
        let idx = next_avail.wrapping_add(k + 1);
        mem.write(l.avail + 2, &idx.to_le_bytes());
        let before = queue.state();
        let resets = irq.needs_reset.load(Ordering::Relaxed);
        let slot = before.next_avail % size;
        let head = mem.read_u16(l.avail + 4 + u64::from(slot) * 2).unwrap();
        let chain = walk(&mem.gm, &l, head);
        // The chain is all the device may write to if its ring writes
        // cannot change what it reads (checked below); else all it could.
        let may_be_exact = !rings_overlap
            && chain
                .indirect
                .is_none_or(|t| !overlaps(t, (used_at, used_len)));
        let pre = if may_be_exact {
            Some(Vec::new())
        } else {
            reachable_writable(&mem.gm, &l)
        };
        let (ok, d) = fuzz_process(&mem.gm, &mut queue, disk, read_only, irq.clone());
        disk = d;
        let done = queue.next_used().wrapping_sub(before.next_used);
        assert_eq!(
            !ok,
            irq.needs_reset.load(Ordering::Relaxed) > resets,
            "a pass fails exactly when it asks for a reset"
        );
        // Exact when the device's ring writes cannot have changed what it
        // read, and it took the one chain published.
        let exact = may_be_exact && done == 1;
        if exact {
            let mut allowed = vec![(used_at, used_len)];
            allowed.extend(chain.writable.iter().copied());
            mem.check_writes(&allowed, "step");
        } else {
            // More than the chain published taken (its own writes moved
            // the avail index): what it wrote, and what is reachable now.
            let post = reachable_writable(&mem.gm, &l);
            let pre = pre.map(|mut p| {
                p.extend(chain.writable.iter().copied());
                p
            });
            match allowed_loose(&l, pre, post) {
                Some(a) => mem.check_writes(&a, "step"),
                None => mem.check_writes(&[(0, u64::MAX)], "step"),
            }
        }
        if !ok {
            return; // the real device ignores the queue until a reset
        }
        if !rings_overlap {
            // No ring writes moved the avail index: the device took the
            // chain published, plus any its own buffer writes published.
            let avail_now = mem.read_u16(l.avail + 2).unwrap();
            let most = avail_now.wrapping_sub(before.next_avail).clamp(1, size);
            assert!(
                (1..=most).contains(&done),
                "{done} completions, 1 to {most} chains available"
            );
        }
        let buffer_over_used = chain
            .writable
            .iter()
            .any(|&p| overlaps(p, (used_at, used_len)));
        if exact && !buffer_over_used {
            let slot = before.next_used % size;
            let id = mem.read_u32(used_at + 4 + u64::from(slot) * 8).unwrap();
            let ln = mem.read_u32(used_at + 8 + u64::from(slot) * 8).unwrap();
            assert_eq!(id, u32::from(head), "used id is the head made available");
            let most = chain.writable.iter().map(|p| p.1).sum::<u64>();
            assert!(
                u64::from(ln) <= most,
                "used len {ln} > the chain's {most} writable bytes"
            );
            assert_eq!(
                mem.read_u16(used_at + 2),
                Some(queue.next_used()),
                "used idx in memory"
            );
        }
    }
    let _ = disk;
}

fuzz_target!(|data: &[u8]| with_mem(|mem| run(data, mem)));
