//! Runtime shared by the bare-metal x86-64 test guests (`src/bin/*.rs`).
//!
//! A guest binary is a `#![no_std] #![no_main]` file that names itself and
//! its main function with [`guest!`]. The runtime supplies everything else:
//!
//! * both boot entries (64-bit ELF entry and PVH) and the page tables, GDT,
//!   TSS and IDT they load (prebuilt data: the CPL0 code is a few dozen
//!   instructions per CPU), in assembly (the private `entry` module), after
//!   which **all Rust code runs at CPL3** with port I/O allowed (IOPL=3
//!   and, for PVM, which ignores IOPL, an all-zero TSS I/O bitmap) and
//!   every page (RAM and MMIO) mapped USER;
//! * the 8250 console ([`println!`]), the kernel command line ([`cmdline`]),
//!   ACPI table parsing ([`acpi`]), PCI configuration access ([`pci`]), a
//!   polled modern virtio-pci transport ([`virtio`]), a virtio-net driver
//!   with a small IPv4 stack ([`net`]), power-off and reset
//!   ([`power`]), AP start-up ([`smp`]), port/MMIO/CMOS access and
//!   waiting ([`io`]: `sleep_us` halts the CPU until its LAPIC timer fires,
//!   the only time interrupts are enabled) and the RTC date ([`rtc`]);
//! * exceptions print `testguest: exception <vector> at rip <hex>` and power
//!   off; a panic prints `testguest: panic: ...` and powers off.
//!
//! Before `main` the runtime prints
//! `testguest <name>: boot via <pvh|elf64> cmdline '<cmdline>'` (with
//! `quiet=1`, just `testguest <name>`).
#![no_std]

pub mod acpi;
pub mod cmdline;
mod entry;
pub mod io;
mod mem;
pub mod net;
pub mod pci;
pub mod power;
pub mod rtc;
pub mod serial;
pub mod smp;
mod timer;
pub mod virtio;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use entry::{halt, triple_fault, MAX_CPUS};

/// How the guest was entered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootPath {
    /// 32-bit PVH entry (Xen PHYS32_ENTRY note), `hvm_start_info` in EBX.
    Pvh,
    /// 64-bit ELF entry point, Linux `boot_params` in RSI.
    Elf64,
}

impl BootPath {
    pub fn as_str(self) -> &'static str {
        match self {
            BootPath::Pvh => "pvh",
            BootPath::Elf64 => "elf64",
        }
    }
}

/// Which entry ran.
pub fn boot_path() -> BootPath {
    if entry::BOOT_KIND.load(Ordering::Relaxed) == entry::BOOT_PVH {
        BootPath::Pvh
    } else {
        BootPath::Elf64
    }
}

/// Physical address of the boot information (`boot_params` or
/// `hvm_start_info`, see [`boot_path`]).
pub fn boot_info_addr() -> u64 {
    entry::BOOT_INFO.load(Ordering::Relaxed)
}

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;

/// RSDP address from the boot information, read at start-up.
static BOOT_RSDP: AtomicU64 = AtomicU64::new(0);

/// ACPI RSDP address from the boot information, 0 if none was given.
pub fn boot_rsdp() -> u64 {
    BOOT_RSDP.load(Ordering::Relaxed)
}

fn read_boot_rsdp() -> u64 {
    let info = boot_info_addr();
    if info == 0 {
        return 0;
    }
    // SAFETY: the loader gave us this address; all low memory is mapped.
    unsafe {
        match boot_path() {
            // hvm_start_info.rsdp_paddr
            BootPath::Pvh if io::peek32(info) == PVH_MAGIC => io::peek64(info + 32),
            BootPath::Pvh => 0,
            // boot_params.acpi_rsdp_addr
            BootPath::Elf64 => io::peek64(info + 0x70),
        }
    }
}

/// Physical address of the NUL-terminated kernel command line, 0 if none.
fn boot_cmdline_addr() -> u64 {
    let info = boot_info_addr();
    if info == 0 {
        return 0;
    }
    // SAFETY: as in boot_rsdp.
    unsafe {
        match boot_path() {
            // hvm_start_info.cmdline_paddr
            BootPath::Pvh if io::peek32(info) == PVH_MAGIC => io::peek64(info + 24),
            BootPath::Pvh => 0,
            // boot_params.hdr.cmd_line_ptr | ext_cmd_line_ptr << 32
            BootPath::Elf64 => {
                u64::from(io::peek32(info + 0x228)) | u64::from(io::peek32(info + 0xc8)) << 32
            }
        }
    }
}

/// The entry asm `iretq`s here, at CPL3, once per CPU.
extern "C" fn user_start(slot: usize) -> ! {
    if slot != 0 {
        smp::ap_main(slot);
    }
    // Take what we need from the boot information before anything (an AP
    // trampoline, say) could overwrite the low memory it lives in.
    cmdline::init(boot_cmdline_addr());
    BOOT_RSDP.store(read_boot_rsdp(), Ordering::Relaxed);
    extern "Rust" {
        // Defined by the guest binary through `guest!`.
        fn testguest_main() -> !;
    }
    // SAFETY: every guest binary defines it with `guest!`.
    unsafe { testguest_main() }
}

/// Called by the code `guest!` generates: prints the boot line, runs `main`.
/// With `quiet=1` the line is just `testguest <name>`: every console byte
/// is a VM exit, and a hundred guests booting at once feel each one.
#[doc(hidden)]
pub fn run(name: &str, main: fn() -> !) -> ! {
    if cmdline::get_u64("quiet", 0) != 0 {
        println!("testguest {name}");
    } else {
        println!(
            "testguest {name}: boot via {} cmdline '{}'",
            boot_path().as_str(),
            cmdline::get_all()
        );
    }
    main()
}

/// Declares a guest: `rt::guest!("hello", main);` with `fn main() -> !`.
#[macro_export]
macro_rules! guest {
    ($name:literal, $main:path) => {
        $crate::guest!($name, $main, 0);
    };
    // `early_mark`: a byte the entry code writes to COM1 before anything
    // else (0: none), so a host can time the guest's first port I/O.
    ($name:literal, $main:path, $early_mark:expr) => {
        #[unsafe(no_mangle)]
        fn testguest_main() -> ! {
            $crate::run($name, $main)
        }
        #[unsafe(no_mangle)]
        #[used]
        #[allow(non_upper_case_globals)]
        static tg_early_mark: u8 = $early_mark;
    };
}

/// CPL0 stubs `iretq` here (on a dedicated CPL3 stack) after an exception.
extern "C" fn exception_report() -> ! {
    let f = |i: usize| entry::EXC_FRAME[i].load(Ordering::Relaxed);
    let (vector, err, rip, cs, rflags, rsp, cr2) = (f(0), f(1), f(2), f(3), f(4), f(5), f(7));
    serial::print_forced(format_args!(
        "testguest: exception {vector} at rip {rip:#x}\n\
         testguest: error code {err:#x} cs {cs:#x} rflags {rflags:#x} rsp {rsp:#x} cr2 {cr2:#x}\n"
    ));
    power::power_off()
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        // Panicked while reporting a panic: stop the machine the hard way.
        triple_fault();
    }
    serial::print_forced(format_args!("testguest: panic: {info}\n"));
    power::power_off()
}
