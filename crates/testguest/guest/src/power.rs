//! Power-off and reset, the way a small OS does it.

use crate::io::{outb, outw, sleep_us};
use crate::{acpi, println};

/// How long to wait (asleep) for a power-off or reset request to take
/// effect before trying the next method. Our VMM acts before the next
/// instruction, but qemu handles such requests asynchronously while the
/// vCPU runs on.
const GRACE_US: u64 = 1_000_000;

/// Powers the machine off through ACPI (S5):
/// * PM1a_CNT_BLK: write `SLP_TYP << 10 | SLP_EN` (as u16) to the port;
/// * hardware-reduced ACPI (no PM1a, as qemu microvm): write
///   `SLP_TYP << 2 | SLP_EN` to SLEEP_CONTROL_REG;
/// * otherwise, or if the machine is still running: isa-debug-exit (port
///   0xf4), then halt.
///
/// Prints the method just before using it.
pub fn power_off() -> ! {
    match acpi::fadt() {
        None => println!("poweroff: no ACPI FADT"),
        Some(fadt) => match acpi::s5_slp_typ(fadt.dsdt) {
            None => println!("poweroff: no \\_S5 package in the DSDT"),
            Some(typ) => {
                if fadt.pm1a_cnt != 0 && fadt.pm1a_cnt <= 0xffff {
                    println!(
                        "poweroff: ACPI PM1a_CNT port {:#x} SLP_TYP {typ}",
                        fadt.pm1a_cnt
                    );
                    outw(fadt.pm1a_cnt as u16, u16::from(typ & 7) << 10 | 1 << 13);
                    sleep_us(GRACE_US);
                } else if let Some(reg) = fadt.sleep_control {
                    println!(
                        "poweroff: ACPI SLEEP_CONTROL_REG {} {:#x} SLP_TYP {typ}",
                        reg.space_name(),
                        reg.addr
                    );
                    if reg.write8((typ & 7) << 2 | 1 << 5) {
                        sleep_us(GRACE_US);
                    }
                } else {
                    println!("poweroff: FADT has neither PM1a_CNT_BLK nor SLEEP_CONTROL_REG");
                }
            }
        },
    }
    println!("poweroff: no ACPI power-off, trying isa-debug-exit port 0xf4");
    outb(0xf4, 0);
    crate::halt()
}

/// Resets the machine: 0xFE (pulse reset line) to the i8042 command port.
/// If that does nothing (qemu microvm has no i8042), the FADT RESET_REG,
/// then a triple fault.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    sleep_us(GRACE_US);
    if let Some((reg, value)) = acpi::fadt().and_then(|f| f.reset) {
        println!(
            "reset: i8042 reset did nothing, trying ACPI RESET_REG {} {:#x}",
            reg.space_name(),
            reg.addr
        );
        if reg.write8(value) {
            sleep_us(GRACE_US);
        }
    }
    println!("reset: no reset happened, triple faulting");
    crate::triple_fault()
}
