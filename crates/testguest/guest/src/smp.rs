//! Starting the application processors (APs).
//!
//! The BSP copies the real-mode trampoline (see the entry assembly) to
//! `AP_TRAMPOLINE` and sends each AP listed in the MADT an INIT IPI, then two
//! STARTUP IPIs with vector `AP_TRAMPOLINE >> 12`, through the local APIC's
//! ICR (xAPIC MMIO, reachable from CPL3 since every page is USER). Each AP
//! goes real -> protected -> long mode on the BSP's page tables, takes a
//! slot (its own kernel and user stack and TSS) and arrives at CPL3 in
//! `ap_main`.

use crate::entry::{ap_trampoline, AP_TRAMPOLINE, MAX_CPUS};
use crate::io::{delay_us, mmio_read32, mmio_write32, pause, rdtsc, sleep_us, tsc_hz};
use crate::println;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LO: u64 = 0x300;
const LAPIC_ICR_HI: u64 = 0x310;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR: INIT, level assert.
const ICR_INIT: u32 = 0x0000_4500;
/// ICR: STARTUP, level assert; OR the vector in.
const ICR_STARTUP: u32 = 0x0000_4600;

/// How long the BSP waits for the APs.
const AP_TIMEOUT_US: u64 = 5_000_000;
/// How often it looks.
const AP_POLL_US: u64 = 1000;

/// APIC IDs from the MADT, in MADT order: a CPU's index is its position.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// CPUs that printed their line (the BSP included).
static ONLINE: AtomicUsize = AtomicUsize::new(0);

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the xAPIC register page is mapped (USER) and 4-byte registers
    // are read with one aligned access.
    unsafe { mmio_read32(LAPIC + reg) }
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: as in lapic_read.
    unsafe { mmio_write32(LAPIC + reg, v) }
}

/// This CPU's local APIC ID.
pub fn apic_id() -> u32 {
    lapic_read(LAPIC_ID) >> 24
}

/// Position of `apic_id` in the MADT list, if there.
fn cpu_index(apic_id: u32) -> Option<usize> {
    APIC_IDS
        .iter()
        .position(|id| id.load(Ordering::Acquire) == apic_id)
}

fn announce() {
    let id = apic_id();
    match cpu_index(id) {
        Some(i) => println!("smp: cpu {i} apic {id} online"),
        None => println!("smp: cpu ? apic {id} online (not in the MADT)"),
    }
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

fn send_ipi(apic_id: u32, icr: u32) {
    lapic_write(LAPIC_ICR_HI, apic_id << 24);
    lapic_write(LAPIC_ICR_LO, icr);
    for _ in 0..1_000_000 {
        if lapic_read(LAPIC_ICR_LO) & ICR_PENDING == 0 {
            break;
        }
        pause();
    }
}

/// Starts every enabled CPU of the MADT, waits (at most 5 s) until each has
/// announced itself, and returns (online, total).
///
/// Prints `smp: cpu <index> apic <id> online` per CPU (from that CPU).
pub fn start_aps() -> (usize, usize) {
    let mut ids = [0u32; MAX_CPUS];
    let listed = crate::acpi::madt_lapic_ids(&mut ids);
    let bsp = apic_id();
    let n = if listed == 0 {
        println!("smp: no processors in an ACPI MADT, counting only this one");
        ids[0] = bsp;
        1
    } else if listed > MAX_CPUS {
        println!("smp: {listed} cpus in the MADT, starting the first {MAX_CPUS}");
        MAX_CPUS
    } else {
        listed
    };
    for (slot, &id) in APIC_IDS.iter().zip(&ids[..n]) {
        slot.store(id, Ordering::Release);
    }
    announce();

    let tramp = ap_trampoline();
    // SAFETY: AP_TRAMPOLINE..+len is free low memory (the command line was
    // copied away at start-up) and identity mapped.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), AP_TRAMPOLINE as *mut u8, tramp.len());
    }
    // Software-enable the local APIC (spurious vector 0xff). Interrupts are
    // off (IF=0) but in a sleep's halt (crate::io::sleep_us), where only the
    // LAPIC timer interrupts.
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x1ff);

    // INIT, 10 ms (asleep), STARTUP, 200 us (spinning), STARTUP: the MP
    // spec's sequence. KVM needs no delays, so they are short rather than
    // exact.
    let aps = || ids[..n].iter().copied().filter(move |&id| id != bsp);
    aps().for_each(|id| send_ipi(id, ICR_INIT));
    delay_us(10_000);
    let vector = (AP_TRAMPOLINE >> 12) as u32;
    for _ in 0..2 {
        aps().for_each(|id| send_ipi(id, ICR_STARTUP | vector));
        delay_us(200);
    }

    // Asleep between looks, so that the APs (emulated real mode and CPL0
    // code on PVM hosts) have the host's CPUs to themselves.
    let deadline = rdtsc() + tsc_hz() / 1_000_000 * AP_TIMEOUT_US;
    while ONLINE.load(Ordering::Acquire) < n && rdtsc() < deadline {
        sleep_us(AP_POLL_US);
    }
    (ONLINE.load(Ordering::Acquire), n)
}

/// Where each AP arrives at CPL3: announce, then halt for good.
pub(crate) fn ap_main(_slot: usize) -> ! {
    announce();
    crate::halt()
}
