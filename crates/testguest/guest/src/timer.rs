//! Idle sleep on the local APIC timer.
//!
//! A guest that waits should not spin: on a small host its vCPU thread
//! would take a core from guests that have work. [`sleep_until`] starts this
//! CPU's LAPIC timer one-shot for the time left, halts (the idle request of
//! the entry assembly: `sti; hlt` at CPL0) until an interrupt, acknowledges
//! it, and looks at the TSC: woken early, it goes round again. Each CPU has
//! its own LAPIC, so each sleeps on its own; the LAPIC is set up the first
//! time a CPU sleeps (its timer LVT is not ours yet).
//!
//! The LAPIC registers are written from CPL3 (xAPIC MMIO, mapped USER): on
//! a PVM host an MMIO exit from CPL3 costs ~3-5 µs, about what the same
//! access costs as emulated CPL0 code (~1.3 µs an instruction), and it
//! keeps the CPL0 part to nine instructions. A sleep costs three MMIO
//! accesses, those nine instructions and a halt: ~45 µs of wall time,
//! ~75 µs of host CPU. It wakes some tens of µs after the timer fires.
//!
//! The timer counts bus cycles, the deadline is a TSC value: the ratio of
//! the two is measured once, against the TSC, on the first sleep (about
//! 1 ms of spinning), unless the guest learnt both rates from the platform
//! first ([`crate::io::set_clock_rates`]). KVM's LAPIC timer runs at 1 GHz, so the same
//! measurement also gives the TSC rate where CPUID does not ([`tsc_hz`]).
//! The 8259 is never initialised and could deliver on vector 0 (an
//! exception vector): LINT0, where it is wired, is masked before the first
//! `sti`. The IOAPIC's pins are masked from reset and nothing unmasks them;
//! any vector that does arrive (32..255, `tg_irq`) just ends the halt.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::entry;
use crate::io::{mmio_read32, mmio_write32, pause, rdtsc};

const LAPIC_BASE: u32 = 0xfee0_0000;
const LAPIC_EOI: u32 = 0xb0;
const LAPIC_SVR: u32 = 0xf0;
const LAPIC_LVTT: u32 = 0x320;
const LAPIC_LVT0: u32 = 0x350;
const LAPIC_TMICT: u32 = 0x380;
const LAPIC_TMCCT: u32 = 0x390;
const LAPIC_TDCR: u32 = 0x3e0;
/// SVR: software enabled, spurious vector 0xff.
const SVR_ON: u32 = 0x1ff;
/// LVT0 masked (ExtINT, as the VMM wires it).
const LVT0_OFF: u32 = 1 << 16 | 0x700;
/// Timer divide configuration: divide by 1.
const TDCR_DIV1: u32 = 0xb;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// The timer's vector (Linux's LOCAL_TIMER_VECTOR). Its LVT value is the
/// vector alone: one-shot, not masked.
const TIMER_VECTOR: u32 = 0xec;

/// The LAPIC timer's rate under KVM (its APIC bus: one cycle per ns).
const KVM_LAPIC_HZ: u64 = 1_000_000_000;

/// `SETUP` states.
const NEW: u32 = 0;
const BUSY: u32 = 1;
const DONE: u32 = 2;
/// Whether the calibration and the IDT gates are done.
static SETUP: AtomicU32 = AtomicU32::new(NEW);
/// LAPIC timer counts (divide by 1) per TSC tick, 32.32 fixed point; 0 when
/// the timer did not count (then sleeps spin).
static COUNTS_PER_TSC: AtomicU64 = AtomicU64::new(0);

fn lapic_read(reg: u32) -> u32 {
    // SAFETY: the xAPIC register page is identity mapped (USER); its 4-byte
    // registers are read with one aligned access.
    unsafe { mmio_read32(u64::from(LAPIC_BASE + reg)) }
}

fn lapic_write(reg: u32, v: u32) {
    // SAFETY: as in lapic_read.
    unsafe { mmio_write32(u64::from(LAPIC_BASE + reg), v) }
}

/// The timer's current count and the TSC at the moment it was read: the
/// middle of the TSC readings around the read (a VM exit, ~3 µs), from the
/// tightest of a few tries, so that a vCPU preempted during one (100 guests
/// booting on 2 host CPUs) does not spoil the measurement. Stops trying
/// once the readings are less than `good` TSC ticks apart.
fn sample(good: u64) -> (u64, u32) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..16 {
        let before = rdtsc();
        let count = lapic_read(LAPIC_TMCCT);
        let width = rdtsc() - before;
        if width < best.0 {
            best = (width, before + width / 2, count);
        }
        if width < good {
            break;
        }
    }
    (best.1, best.2)
}

/// Measures the LAPIC timer against the TSC on this CPU (the timer runs at
/// the same rate on every CPU): `COUNTS_PER_TSC`. The error is at most
/// half the two readings' spans over the ~1 ms window: under 1%, and
/// measured 0.02-0.08% here.
fn calibrate() -> u64 {
    // The window, in TSC ticks: about 1 ms at any TSC rate from 1 to 4 GHz.
    let window = crate::io::cpuid_tsc_hz().unwrap_or(2_000_000_000) / 1000;
    let good = window / 100;
    lapic_write(LAPIC_SVR, SVR_ON);
    lapic_write(LAPIC_TDCR, TDCR_DIV1);
    // Masked: the timer counts down but delivers nothing.
    lapic_write(LAPIC_LVTT, LVT_MASKED | TIMER_VECTOR);
    lapic_write(LAPIC_TMICT, u32::MAX);
    let (t0, c0) = sample(good);
    while rdtsc() < t0 + window {
        pause();
    }
    let (t1, c1) = sample(good);
    lapic_write(LAPIC_TMICT, 0);
    match (c0.checked_sub(c1), t1.checked_sub(t0)) {
        (Some(counts), Some(ticks)) if counts > 0 && ticks > 0 => {
            let fixed = (u128::from(counts) << 32) / u128::from(ticks);
            u64::try_from(fixed).unwrap_or(u64::MAX).max(1)
        }
        _ => 0,
    }
}

/// `COUNTS_PER_TSC`, measuring it (and installing the IDT gates for the
/// timer's interrupt) the first time on any CPU.
fn counts_per_tsc() -> u64 {
    loop {
        match SETUP.compare_exchange(NEW, BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                entry::install_irq_gates();
                COUNTS_PER_TSC.store(calibrate(), Ordering::Relaxed);
                SETUP.store(DONE, Ordering::Release);
            }
            Err(DONE) => return COUNTS_PER_TSC.load(Ordering::Relaxed),
            // Another CPU is measuring.
            Err(_) => pause(),
        }
    }
}

/// Takes the timer's rate relative to the TSC from rates the platform
/// reports instead of measuring it: no ~1 ms spin on the first sleep.
/// Linux does the same on VMware with GETHZ's bus rate. A no-op once the
/// timer is set up, or if a rate is 0.
pub(crate) fn set_rates(tsc_hz: u64, lapic_hz: u64) {
    if tsc_hz == 0 || lapic_hz == 0 {
        return;
    }
    let fixed = (u128::from(lapic_hz) << 32) / u128::from(tsc_hz);
    let fixed = u64::try_from(fixed).unwrap_or(u64::MAX).max(1);
    if SETUP
        .compare_exchange(NEW, BUSY, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        entry::install_irq_gates();
        COUNTS_PER_TSC.store(fixed, Ordering::Relaxed);
        SETUP.store(DONE, Ordering::Release);
    }
}

/// The TSC rate, assuming KVM's 1 GHz LAPIC timer; `None` if the timer did
/// not count. Measures on first use.
pub(crate) fn tsc_hz() -> Option<u64> {
    match counts_per_tsc() {
        0 => None,
        fixed => u64::try_from((u128::from(KVM_LAPIC_HZ) << 32) / u128::from(fixed)).ok(),
    }
}

/// Sleeps until the TSC reaches `deadline`: halts between LAPIC timer
/// interrupts, and spins only for what is left when that is too short to
/// be worth a halt (see `crate::io::sleep_until`).
pub(crate) fn sleep_until(deadline: u64, spin_below: u64) {
    let per_tsc = counts_per_tsc();
    loop {
        let now = rdtsc();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if per_tsc == 0 || left < spin_below {
            while rdtsc() < deadline {
                pause();
            }
            return;
        }
        let count = (u128::from(left) * u128::from(per_tsc)) >> 32;
        // An early wake (another interrupt, or a count cut to 32 bits)
        // just goes round again.
        idle_for(u32::try_from(count).unwrap_or(u32::MAX).max(1));
    }
}

/// Starts this CPU's timer for `count` bus cycles and halts until an
/// interrupt (this one or another).
fn idle_for(count: u32) {
    if lapic_read(LAPIC_LVTT) != TIMER_VECTOR {
        // This CPU's first sleep. Enabled first: a disabled LAPIC keeps
        // every LVT masked.
        lapic_write(LAPIC_SVR, SVR_ON);
        lapic_write(LAPIC_LVT0, LVT0_OFF);
        lapic_write(LAPIC_TDCR, TDCR_DIV1);
        lapic_write(LAPIC_LVTT, TIMER_VECTOR);
    }
    lapic_write(LAPIC_TMICT, count);
    entry::idle();
    // Harmless when nothing is in service (a spurious vector).
    lapic_write(LAPIC_EOI, 0);
}
