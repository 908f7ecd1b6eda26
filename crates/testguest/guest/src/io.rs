//! Port I/O, MMIO, physical memory, CMOS, TSC and CPUID, and waiting. All of
//! it works at CPL3: IOPL is 3 and every page is mapped USER, identity
//! mapped. Waiting: [`delay_us`] spins for short delays; [`sleep_us`] and
//! [`sleep_until`] halt the CPU until its LAPIC timer fires (through the
//! runtime's CPL0 idle request), so that idle guests leave the host's CPUs
//! alone.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

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

/// TSC ticks per second as CPUID gives it (0x15 crystal ratio, 0x16 base
/// MHz, or the hypervisor's 0x40000010 TSC kHz leaf), if it does.
///
/// On PVM hosts CPUID at CPL3 is not intercepted: these are the host's
/// leaves, not the ones our VMM sets.
pub fn cpuid_tsc_hz() -> Option<u64> {
    let max = cpuid(0, 0).0;
    if max >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some(u64::from(crystal) * u64::from(num) / u64::from(den));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).0 & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    // Hypervisor present (CPUID.1:ECX bit 31) with the timing leaf.
    if cpuid(1, 0).2 & (1 << 31) != 0 && cpuid(0x4000_0000, 0).0 >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010, 0).0;
        if khz != 0 {
            return Some(u64::from(khz) * 1000);
        }
    }
    None
}

/// What [`tsc_hz`] found, once it has.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// TSC ticks per second: from CPUID ([`cpuid_tsc_hz`]), else measured
/// against the LAPIC timer, which runs at 1 GHz under KVM (about 1 ms, the
/// first time), else a guess of 2 GHz. Used for timeouts and sleeps, never
/// for reported figures.
pub fn tsc_hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => {
            let hz = cpuid_tsc_hz()
                .or_else(crate::timer::tsc_hz)
                .unwrap_or(2_000_000_000);
            TSC_HZ.store(hz, Ordering::Relaxed);
            hz
        }
        hz => hz,
    }
}

/// Sets the TSC rate and the LAPIC timer's from what the platform reports
/// (e.g. the VMware backdoor's GETHZ), so that neither is measured: the
/// first sleep then does not spin ~1 ms calibrating the timer. Call it
/// before the first sleep; 0 leaves a rate to be found as usual.
pub fn set_clock_rates(tsc_hz: u64, lapic_hz: u64) {
    if tsc_hz != 0 {
        TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    }
    crate::timer::set_rates(tsc_hz, lapic_hz);
}

/// TSC ticks in `us` microseconds at [`tsc_hz`].
fn tsc_ticks_us(us: u64) -> u64 {
    let ticks = u128::from(tsc_hz()) * u128::from(us) / 1_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Waits shorter than this spin rather than halt: on a PVM host a sleep
/// costs ~50 µs of exits and emulated CPL0 code (~75 µs of host CPU), and
/// wakes some tens of µs late.
const SPIN_BELOW_US: u64 = 100;

/// Sleeps until the TSC reaches `deadline`: the CPU halts (it does not
/// spin) until its LAPIC timer says the time is up, so that an idle guest
/// leaves the host's CPUs to others. It wakes some 30-200 µs late; a wait
/// (or what is left of one) under 100 µs is a busy-wait instead. The first
/// sleep takes ~1 ms more (it measures the timer).
pub fn sleep_until(deadline: u64) {
    crate::timer::sleep_until(deadline, tsc_ticks_us(SPIN_BELOW_US));
}

/// Sleeps about `us` microseconds (see [`sleep_until`], and [`tsc_hz`] for
/// how rough the conversion can be).
pub fn sleep_us(us: u64) {
    sleep_until(rdtsc().saturating_add(tsc_ticks_us(us)));
}

/// Waits longer than this sleep ([`sleep_us`]) in [`delay_us`].
const DELAY_SLEEP_ABOVE_US: u64 = 200;

/// Waits about `us` microseconds: busy-waits for short delays, where the
/// time matters more than the CPU (exact to the TSC), sleeps
/// ([`sleep_us`]) for longer ones.
pub fn delay_us(us: u64) {
    if us > DELAY_SLEEP_ABOVE_US {
        return sleep_us(us);
    }
    let end = rdtsc().saturating_add(tsc_ticks_us(us));
    while rdtsc() < end {
        pause();
    }
}
