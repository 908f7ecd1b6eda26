//! The low-bandwidth backdoor port (0x5658): constants, the register file,
//! and the host's answers to the commands that are not GuestRPC messages
//! (guest-channel.md §1, §2).
//!
//! A call is an `inl (%dx), %eax` with EAX = [`MAGIC`], the command in
//! `ECX[15:0]` and arguments in the other registers; the host answers in the
//! same registers. [`handle_lb`] computes the answer from [`Regs`] alone plus
//! a few host facts from [`Platform`], so the device model only moves
//! registers in and out of KVM.

/// EAX of every backdoor call ("VMXh").
pub const MAGIC: u32 = 0x564D_5868;
/// The low-bandwidth port: one 32-bit `in` per call.
pub const PORT_LB: u16 = 0x5658;
/// The high-bandwidth port: `rep outsb` / `rep insb` of a whole message.
pub const PORT_HB: u16 = 0x5659;
/// What GETVERSION returns in EAX. open-vm-tools' `VmCheck_GetVersion`
/// rejects any other value.
pub const VERSION_MAGIC: u32 = 6;
/// The "unsupported / failed" answer in EAX.
pub const FAILURE: u32 = 0xFFFF_FFFF;
/// The maximum clock lag reported by GETTIME/GETTIMEFULL, in µs: the value
/// of the QEMU patch series. Guests use it to decide whether to step or slew.
pub const MAX_TIME_LAG_US: u32 = 1_000_000;
/// EBX of GETMEMSIZE, as QEMU answers it.
pub const MEMSIZE_EBX: u32 = 0x1177;

/// Backdoor command numbers (`ECX[15:0]`).
pub mod cmd {
    /// CPU speed in MHz.
    pub const GETMHZ: u16 = 1;
    /// Presence probe: version and VMX type.
    pub const GETVERSION: u16 = 10;
    /// Screen size (only the oldest `checkvm -r` uses it).
    pub const GETSCREENSIZE: u16 = 15;
    /// Virtual hardware version.
    pub const GETHWVERSION: u16 = 17;
    /// The BIOS UUID.
    pub const GETUUID: u16 = 19;
    /// Memory size in MB.
    pub const GETMEMSIZE: u16 = 20;
    /// Host time, 32-bit seconds (deprecated).
    pub const GETTIME: u16 = 23;
    /// A GuestRPC message step (see `proto`).
    pub const MESSAGE: u16 = 30;
    /// vmmouse: read pointer data.
    pub const ABSPOINTER_DATA: u16 = 39;
    /// vmmouse: pointer status.
    pub const ABSPOINTER_STATUS: u16 = 40;
    /// vmmouse: pointer command.
    pub const ABSPOINTER_COMMAND: u16 = 41;
    /// TSC and APIC bus frequencies.
    pub const GETHZ: u16 = 45;
    /// Host time, 64-bit seconds.
    pub const GETTIMEFULL: u16 = 46;
    /// As GETTIMEFULL, plus interrupt lag in EDI.
    pub const GETTIMEFULL_WITH_LAG: u16 = 55;
    /// vCPU capability bits.
    pub const GET_VCPU_INFO: u16 = 68;
    /// Steal-clock setup.
    pub const STEALCLOCK: u16 = 91;
}

/// The product type GETVERSION reports in ECX (`checkvm -p` prints its name).
pub mod vmx_type {
    /// Unknown.
    pub const UNSET: u32 = 0;
    /// VMware Express.
    pub const EXPRESS: u32 = 1;
    /// ESX Server.
    pub const ESX: u32 = 2;
    /// GSX / VMware Server.
    pub const WGS: u32 = 3;
    /// Workstation.
    pub const WORKSTATION: u32 = 4;
    /// Workstation Enterprise.
    pub const WORKSTATION_ENTERPRISE: u32 = 5;
}

/// GET_VCPU_INFO bit: x2APIC works without interrupt remapping.
pub const VCPU_INFO_LEGACY_X2APIC: u32 = 1 << 3;
/// GET_VCPU_INFO bit: the answer is not valid.
pub const VCPU_INFO_RESERVED: u32 = 1 << 31;

/// The general-purpose registers a backdoor call reads and writes, as 32-bit
/// values. On x86-64 the device zero-extends them when writing back (§1).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Regs {
    /// Magic in, main result out.
    pub eax: u32,
    /// Argument / result.
    pub ebx: u32,
    /// Command (15:0) and sub-command (31:16) in, status out.
    pub ecx: u32,
    /// Port (15:0) and channel id (31:16) in, result out.
    pub edx: u32,
    /// Cookie 1 or argument in; result out.
    pub esi: u32,
    /// Cookie 2 or argument in; result out.
    pub edi: u32,
    /// Only the high-bandwidth port uses it (a cookie).
    pub ebp: u32,
}

impl Regs {
    /// The command: `ECX[15:0]` (all 16 bits; QEMU's 8-bit decode is wrong).
    pub fn command(&self) -> u16 {
        self.ecx as u16
    }

    /// The GuestRPC sub-command: `ECX[31:16]`.
    pub fn subcommand(&self) -> u16 {
        (self.ecx >> 16) as u16
    }

    /// The GuestRPC channel id: `EDX[31:16]`.
    pub fn channel(&self) -> u16 {
        (self.edx >> 16) as u16
    }
}

/// Host facts the backdoor reports. Implemented by the VM process; every
/// method is a cheap read.
pub trait Platform {
    /// Host wall-clock time as µs since the Unix epoch (UTC), or `None` when
    /// it cannot be read: then the time commands report failure rather than
    /// a wrong time (NetBSD steps its clock to it).
    fn unix_time_us(&self) -> Option<u64>;
    /// Guest TSC frequency in Hz (`KVM_GET_TSC_KHZ` × 1000); 0 = unknown,
    /// and GETHZ then answers "unsupported".
    fn tsc_hz(&self) -> u64;
    /// Local APIC bus frequency in Hz (1 GHz under KVM by default).
    fn apic_bus_hz(&self) -> u64;
    /// CPU speed in MHz for GETMHZ.
    fn cpu_mhz(&self) -> u32;
    /// The VM's UUID, as stored in SMBIOS.
    fn uuid(&self) -> [u8; 16];
    /// Guest memory in MB.
    fn mem_size_mb(&self) -> u32;
    /// The product type for GETVERSION (see [`vmx_type`]).
    fn vmx_type(&self) -> u32;
    /// The virtual hardware version for GETHWVERSION.
    fn hw_version(&self) -> u32;
    /// Whether x2APIC works without interrupt remapping. `None` (the default)
    /// answers GET_VCPU_INFO with the "reserved" bit, i.e. "no valid
    /// information", which guests treat like "no": the safe answer when the
    /// VMM has not decided.
    fn legacy_x2apic(&self) -> Option<bool> {
        None
    }
}

/// What [`handle_lb`] did with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum LbAction {
    /// The registers hold the answer.
    Done,
    /// A GuestRPC MESSAGE (command 30): registers untouched, the caller hands
    /// them to the channel table (`host::Channels::message`).
    Message,
}

/// Answers one low-bandwidth backdoor call in place.
///
/// Rules every guest relies on (§1): a wrong magic gets EAX = 0xFFFFFFFF and
/// nothing else changes; an unknown command gets EAX = 0xFFFFFFFF with the
/// other registers unchanged (Linux reads "EBX still 0xFFFFFFFF" as "GETHZ
/// unsupported", open-vm-tools reads "EAX still magic" as GETTIMEFULL
/// success, so a failure must touch EAX and only EAX).
pub fn handle_lb(regs: &mut Regs, platform: &impl Platform) -> LbAction {
    if regs.eax != MAGIC {
        regs.eax = FAILURE;
        return LbAction::Done;
    }
    match regs.command() {
        cmd::MESSAGE => return LbAction::Message,
        cmd::GETMHZ => {
            // The BSD probe treats EAX == magic as "no hypervisor answered".
            let mhz = platform.cpu_mhz();
            regs.eax = if mhz == MAGIC {
                mhz.wrapping_sub(1)
            } else {
                mhz
            };
        }
        cmd::GETVERSION => {
            regs.eax = VERSION_MAGIC;
            regs.ebx = MAGIC;
            regs.ecx = platform.vmx_type();
        }
        cmd::GETHWVERSION => {
            regs.eax = platform.hw_version();
            regs.ebx = MAGIC;
        }
        cmd::GETUUID => {
            let u = platform.uuid();
            let word = |i: usize| u32::from_le_bytes([u[i], u[i + 1], u[i + 2], u[i + 3]]);
            regs.eax = word(0);
            regs.ebx = word(4);
            regs.ecx = word(8);
            regs.edx = word(12);
        }
        cmd::GETMEMSIZE => {
            regs.eax = platform.mem_size_mb();
            regs.ebx = MEMSIZE_EBX;
        }
        cmd::GETTIME => match split_time(platform.unix_time_us()) {
            // Seconds that do not fit (or equal the failure value) cannot be
            // told apart from an error by the guest: report the error.
            Some((secs, usecs)) if secs < u64::from(FAILURE) => {
                regs.eax = secs as u32;
                regs.ebx = usecs;
                regs.ecx = MAX_TIME_LAG_US;
            }
            _ => regs.eax = FAILURE,
        },
        cmd::GETHZ => {
            let hz = platform.tsc_hz();
            if hz == 0 {
                // Unsupported: EBX stays as the guest set it (0xFFFFFFFF).
                regs.eax = FAILURE;
            } else {
                regs.eax = hz as u32;
                regs.ebx = (hz >> 32) as u32;
                regs.ecx = u32::try_from(platform.apic_bus_hz()).unwrap_or(u32::MAX);
            }
        }
        c @ (cmd::GETTIMEFULL | cmd::GETTIMEFULL_WITH_LAG) => {
            match split_time(platform.unix_time_us()) {
                Some((secs, usecs)) => {
                    // Success leaves EAX = magic: that is how guests detect it.
                    regs.esi = (secs >> 32) as u32;
                    regs.edx = secs as u32;
                    regs.ebx = usecs;
                    regs.ecx = MAX_TIME_LAG_US;
                    if c == cmd::GETTIMEFULL_WITH_LAG {
                        // Interrupt lag: we deliver timer interrupts from KVM
                        // directly, so report none.
                        regs.edi = 0;
                    }
                }
                None => regs.eax = FAILURE,
            }
        }
        cmd::GET_VCPU_INFO => {
            regs.eax = match platform.legacy_x2apic() {
                Some(true) => VCPU_INFO_LEGACY_X2APIC,
                Some(false) => 0,
                None => VCPU_INFO_RESERVED,
            };
        }
        // STEALCLOCK: -1 = "not available", so Linux keeps its own steal
        // accounting. ABSPOINTER: all ones makes vmmouse fall back to PS/2.
        // GETSCREENSIZE: there is no screen. Everything else is unknown.
        _ => regs.eax = FAILURE,
    }
    LbAction::Done
}

/// Splits µs since the epoch into (seconds, µs within the second).
fn split_time(us: Option<u64>) -> Option<(u64, u32)> {
    let us = us?;
    Some((us / 1_000_000, (us % 1_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P(Option<u64>, u64);

    impl Platform for P {
        fn unix_time_us(&self) -> Option<u64> {
            self.0
        }
        fn tsc_hz(&self) -> u64 {
            self.1
        }
        fn apic_bus_hz(&self) -> u64 {
            1_000_000_000
        }
        fn cpu_mhz(&self) -> u32 {
            MAGIC
        }
        fn uuid(&self) -> [u8; 16] {
            core::array::from_fn(|i| i as u8)
        }
        fn mem_size_mb(&self) -> u32 {
            512
        }
        fn vmx_type(&self) -> u32 {
            vmx_type::ESX
        }
        fn hw_version(&self) -> u32 {
            19
        }
    }

    fn call(command: u16, p: &P) -> Regs {
        let mut r = Regs {
            eax: MAGIC,
            ebx: 0xFFFF_FFFF,
            ecx: 0xFFFF_0000 | u32::from(command),
            edx: u32::from(PORT_LB),
            esi: 0x11,
            edi: 0x22,
            ebp: 0x33,
        };
        assert_eq!(handle_lb(&mut r, p), LbAction::Done);
        r
    }

    #[test]
    fn getmhz_never_magic() {
        assert_ne!(call(cmd::GETMHZ, &P(None, 0)).eax, MAGIC);
    }

    #[test]
    fn uuid_little_endian_dwords() {
        let r = call(cmd::GETUUID, &P(None, 0));
        assert_eq!(
            (r.eax, r.ebx, r.ecx, r.edx),
            (0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c)
        );
    }

    #[test]
    fn gethz() {
        let r = call(cmd::GETHZ, &P(None, 0x1_2345_6789));
        assert_eq!((r.eax, r.ebx, r.ecx), (0x2345_6789, 1, 1_000_000_000));
        let r = call(cmd::GETHZ, &P(None, 0));
        assert_eq!((r.eax, r.ebx), (FAILURE, 0xFFFF_FFFF));
    }

    #[test]
    fn time_failure_changes_only_eax() {
        for c in [cmd::GETTIME, cmd::GETTIMEFULL, cmd::GETTIMEFULL_WITH_LAG] {
            let r = call(c, &P(None, 0));
            assert_eq!(r.eax, FAILURE);
            assert_eq!(
                (r.ebx, r.esi, r.edi, r.ebp),
                (0xFFFF_FFFF, 0x11, 0x22, 0x33)
            );
        }
        // GETTIME cannot express seconds past 2106.
        assert_eq!(call(cmd::GETTIME, &P(Some(u64::MAX), 0)).eax, FAILURE);
    }

    #[test]
    fn gettimefull_with_lag() {
        // Seconds above 2^32 (year 2106+) must use ESI.
        let us = 0x0100_0000_0200_0005_u64;
        let r = call(cmd::GETTIMEFULL_WITH_LAG, &P(Some(us), 0));
        let secs = us / 1_000_000;
        assert!(secs > u64::from(u32::MAX));
        assert_eq!(r.eax, MAGIC);
        assert_eq!((r.esi, r.edx), ((secs >> 32) as u32, secs as u32));
        assert_eq!(r.edi, 0);
    }

    #[test]
    fn vcpu_info_default_reserved() {
        assert_eq!(
            call(cmd::GET_VCPU_INFO, &P(None, 0)).eax,
            VCPU_INFO_RESERVED
        );
    }

    #[test]
    fn stealclock_and_abspointer_unsupported() {
        for c in [
            cmd::STEALCLOCK,
            cmd::ABSPOINTER_DATA,
            cmd::ABSPOINTER_STATUS,
            cmd::ABSPOINTER_COMMAND,
        ] {
            let r = call(c, &P(None, 0));
            assert_eq!(r.eax, FAILURE);
            assert_eq!((r.ebx, r.esi, r.edi), (0xFFFF_FFFF, 0x11, 0x22));
        }
    }
}
