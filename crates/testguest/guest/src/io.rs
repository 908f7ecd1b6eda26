//! Port I/O, MMIO, physical memory, CMOS, TSC and CPUID. All of it works at
//! CPL3: IOPL is 3 and every page is mapped USER, identity mapped.

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects on this side of the VM exit.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for outb.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for outb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads physical memory (identity mapped).
///
/// # Safety
/// `addr` must be RAM or a device register that tolerates the read.
pub unsafe fn peek8(addr: u64) -> u8 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// # Safety
/// As for [`peek8`].
pub unsafe fn peek16(addr: u64) -> u16 {
    // SAFETY: the caller's contract; unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(addr as *const u16) }
}

/// # Safety
/// As for [`peek8`].
pub unsafe fn peek32(addr: u64) -> u32 {
    // SAFETY: as for peek16.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

/// # Safety
/// As for [`peek8`].
pub unsafe fn peek64(addr: u64) -> u64 {
    // SAFETY: as for peek16.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// 32-bit MMIO read (one aligned access, as device registers want).
///
/// # Safety
/// `addr` must be a 4-byte aligned device register or RAM.
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// # Safety
/// `addr` must be a 4-byte aligned device register or RAM we may change.
pub unsafe fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// # Safety
/// `addr` must be a device register or RAM we may change.
pub unsafe fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// Reads CMOS/RTC byte `index` (0..0x7f) through ports 0x70/0x71.
pub fn cmos_read(index: u8) -> u8 {
    outb(0x70, index & 0x7f);
    inb(0x71)
}

/// Writes CMOS/RTC byte `index`.
pub fn cmos_write(index: u8, v: u8) {
    outb(0x70, index & 0x7f);
    outb(0x71, v);
}

/// Time stamp counter, after earlier instructions finished (`lfence`).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.TSD is clear, so rdtsc works at CPL3.
    unsafe {
        asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// `cpuid` leaf/subleaf -> (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid has no side effects. LLVM reserves rbx, so save it.
    unsafe {
        asm!("mov {tmp:r}, rbx", "cpuid", "xchg {tmp:r}, rbx",
             tmp = out(reg) b, inout("eax") leaf => a, inout("ecx") subleaf => c, out("edx") d,
             options(nomem, nostack, preserves_flags));
    }
    (a, b, c, d)
}

pub fn pause() {
    core::hint::spin_loop();
}

/// TSC ticks per second: from CPUID (0x15 crystal ratio, 0x16 base MHz,
/// or the hypervisor's 0x40000010 TSC kHz leaf), else a guess of 2 GHz.
/// Used for timeouts only, never for reported figures.
pub fn tsc_hz() -> u64 {
    let max = cpuid(0, 0).0;
    if max >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return u64::from(crystal) * u64::from(num) / u64::from(den);
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).0 & 0xffff;
        if mhz != 0 {
            return u64::from(mhz) * 1_000_000;
        }
    }
    // Hypervisor present (CPUID.1:ECX bit 31) with the timing leaf.
    if cpuid(1, 0).2 & (1 << 31) != 0 && cpuid(0x4000_0000, 0).0 >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010, 0).0;
        if khz != 0 {
            return u64::from(khz) * 1000;
        }
    }
    2_000_000_000
}

/// Busy-waits about `us` microseconds (see [`tsc_hz`] for how rough).
pub fn delay_us(us: u64) {
    let end = rdtsc() + tsc_hz() / 1_000_000 * us;
    while rdtsc() < end {
        pause();
    }
}
