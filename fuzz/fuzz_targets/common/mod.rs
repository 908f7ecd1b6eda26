//! What the virtqueue targets (`virtio_blk_queue`, `virtio_net_queue`)
//! share: the input read as a stream of numbers, guest memory of three
//! regions with a shadow copy that catches the device's stray writes, and
//! where a split virtqueue's rings lie.

// Each target uses a different part.
#![allow(dead_code)]

use std::cell::RefCell;

use devices::virtio::GuestMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Guest RAM: (start, length). A hole at 1-2 MiB; the last two regions
/// touch, so a buffer may straddle them.
pub const REGIONS: [(u64, u64); 3] = [(0, 1 << 20), (2 << 20, 512 << 10), (0x28_0000, 64 << 10)];
/// Indirect tables: four in the first region, one in the second.
pub const INDIRECT: [u64; 5] = [0x8000, 0x9000, 0xa000, 0xb000, (2 << 20) + 0x8000];

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// The input, read as a stream of numbers; zeroes once it runs out.
pub struct In<'a>(pub &'a [u8]);

impl In<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Guest memory and a shadow copy of it (what the harness knows it wrote).
pub struct Mem {
    pub gm: GuestMemory,
    /// Host address and length of each region, in `REGIONS` order.
    host: Vec<(*mut u8, usize)>,
    shadow: Vec<Vec<u8>>,
}

impl Mem {
    pub fn new() -> Mem {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l as usize))
            .collect();
        let gm = GuestMemory::from_ranges(&ranges).expect("guest memory");
        let host = REGIONS
            .iter()
            .map(|&(s, l)| {
                let r = gm.find_region(GuestAddress(s)).expect("region");
                let p = r
                    .get_host_address(MemoryRegionAddress(0))
                    .expect("host address");
                (p, l as usize)
            })
            .collect();
        let shadow = REGIONS.iter().map(|&(_, l)| vec![0; l as usize]).collect();
        Mem { gm, host, shadow }
    }

    #[allow(clippy::mut_from_ref)]
    fn guest(&self, i: usize) -> &mut [u8] {
        let (p, l) = self.host[i];
        // SAFETY: the region's mapping lives as long as `self.gm`; the
        // device runs on this thread, never while this slice is used.
        unsafe { std::slice::from_raw_parts_mut(p, l) }
    }

    pub fn clear(&mut self) {
        for i in 0..REGIONS.len() {
            self.guest(i).fill(0);
            self.shadow[i].fill(0);
        }
    }

    /// Writes `bytes` at guest address `addr` (and in the shadow); what
    /// falls outside RAM is dropped.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        for (i, &(start, len)) in REGIONS.iter().enumerate() {
            let lo = addr.max(start);
            let hi = addr.saturating_add(bytes.len() as u64).min(start + len);
            if lo >= hi {
                continue;
            }
            let src = &bytes[(lo - addr) as usize..(hi - addr) as usize];
            let off = (lo - start) as usize;
            self.guest(i)[off..off + src.len()].copy_from_slice(src);
            self.shadow[i][off..off + src.len()].copy_from_slice(src);
        }
    }

    pub fn read_u8(&self, addr: u64) -> Option<u8> {
        REGIONS
            .iter()
            .position(|&(s, l)| addr >= s && addr < s + l)
            .map(|i| self.guest(i)[(addr - REGIONS[i].0) as usize])
    }

    pub fn read_u16(&self, addr: u64) -> Option<u16> {
        Some(u16::from_le_bytes([
            self.read_u8(addr)?,
            self.read_u8(addr.checked_add(1)?)?,
        ]))
    }

    pub fn read_u32(&self, addr: u64) -> Option<u32> {
        Some(
            u32::from(self.read_u16(addr)?) | u32::from(self.read_u16(addr.checked_add(2)?)?) << 16,
        )
    }

    /// Every guest byte that differs from the shadow must lie in one of
    /// `allowed` (start, length): the used rings and the device-writable
    /// buffers of the chains, as the caller worked them out. The shadow
    /// then takes the new contents. (Whole slices compared at a time: the
    /// harness's own per-byte loops would be instrumented and dominate
    /// the run.)
    pub fn check_writes(&mut self, allowed: &[(u64, u64)], what: &str) {
        for (i, &(start, len)) in REGIONS.iter().enumerate() {
            let (p, l) = self.host[i];
            // SAFETY: as in `guest`.
            let g = unsafe { std::slice::from_raw_parts(p, l) };
            let s = &mut self.shadow[i];
            let end = start + len;
            let mut iv: Vec<(usize, usize)> = allowed
                .iter()
                .filter_map(|&(a, n)| {
                    let (lo, hi) = (a.max(start), a.saturating_add(n).min(end));
                    (lo < hi).then(|| ((lo - start) as usize, (hi - start) as usize))
                })
                .collect();
            iv.sort_unstable();
            iv.push((l, l));
            let mut pos = 0;
            for &(a, b) in &iv {
                if pos < a && g[pos..a] != s[pos..a] {
                    let k = pos + (pos..a).position(|k| g[k] != s[k]).unwrap();
                    panic!(
                        "{what}: device wrote guest byte {:#x} ({:#04x} -> {:#04x}) outside \
                         the used rings and the chains' writable buffers {allowed:x?}",
                        start + k as u64,
                        s[k],
                        g[k]
                    );
                }
                if pos < b {
                    let a = a.max(pos);
                    s[a..b].copy_from_slice(&g[a..b]);
                    pos = b;
                }
            }
        }
    }
}

thread_local! {
    static MEM: RefCell<Option<Mem>> = const { RefCell::new(None) };
}

/// Runs `run` on this thread's guest memory (made once: mapping it for
/// every input would dominate the run), cleared first.
pub fn with_mem(run: impl FnOnce(&mut Mem)) {
    MEM.with(|m| {
        let mut m = m.borrow_mut();
        let mem = m.get_or_insert_with(Mem::new);
        mem.clear();
        run(mem);
    });
}

/// Where one queue's rings are.
#[derive(Clone, Copy)]
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Layout {
    /// The used ring with its trailing avail_event: all the device may
    /// write outside the buffers.
    pub fn used_range(&self) -> (u64, u64) {
        (self.used, 4 + 8 * u64::from(self.size) + 2)
    }
    /// The avail ring with its trailing used_event.
    pub fn avail_range(&self) -> (u64, u64) {
        (self.avail, 6 + 2 * u64::from(self.size))
    }
    pub fn desc_range(&self) -> (u64, u64) {
        (self.desc, 16 * u64::from(self.size))
    }
}

/// Whether (address, length) ranges share a byte.
pub fn overlaps((a, n): (u64, u64), (b, m): (u64, u64)) -> bool {
    a < b.saturating_add(m) && b < a.saturating_add(n)
}
