//! The VMware backdoor: ports 0x5658 (low bandwidth: one `in` per call,
//! arguments and results in the registers) and 0x5659 (high bandwidth:
//! `rep outsb` / `rep insb` of a GuestRPC message).
//!
//! All protocol logic is in `guestrpc` (no I/O there); this device only
//! moves registers and bytes between the vCPU and it, supplies the host
//! facts (`Platform`) and the clock, and gives the VM process a handle on
//! the tools state: the TCLO queue, the guestinfo store, what the guest
//! reported.
//!
//! The guest is untrusted: every path here ends in `guestrpc`, which
//! answers malformed calls with error statuses and bounds what it buffers.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guestrpc::backdoor::{vmx_type, Platform, Regs, PORT_HB, PORT_LB};
use guestrpc::host::{self, Channels, Tools};

use crate::{GuestRegs, RegsDevice};

/// Host facts the backdoor reports.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// Guest TSC frequency (KVM_GET_TSC_KHZ × 1000); 0 if unknown.
    pub tsc_hz: u64,
    pub mem_size: u64,
    pub uuid: [u8; 16],
}

impl Platform for HostFacts {
    fn unix_time_us(&self) -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_micros() as u64)
    }
    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }
    fn apic_bus_hz(&self) -> u64 {
        // KVM's LAPIC timer counts one bus cycle per nanosecond.
        1_000_000_000
    }
    fn cpu_mhz(&self) -> u32 {
        (self.tsc_hz / 1_000_000) as u32
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn mem_size_mb(&self) -> u32 {
        (self.mem_size >> 20) as u32
    }
    fn vmx_type(&self) -> u32 {
        // "ESX Server": what QEMU's vmport reports too.
        vmx_type::ESX
    }
    fn hw_version(&self) -> u32 {
        // Virtual hardware version of a current ESXi VM; tools only print it.
        21
    }
}

pub struct Backdoor {
    facts: HostFacts,
    channels: Channels,
    tools: Tools,
    epoch: Instant,
    news: Arc<News>,
}

/// Wakes threads waiting for the guest tools to report something
/// ([`Tools::reports`] moved), so that nobody has to poll the tools state:
/// with a hundred VMs on a host, polling wakeups add up.
#[derive(Debug, Default)]
pub struct News {
    reports: Mutex<u64>,
    moved: Condvar,
}

impl News {
    fn publish(&self, reports: u64) {
        *self.reports.lock().unwrap_or_else(|e| e.into_inner()) = reports;
        self.moved.notify_all();
    }

    /// Waits until the report count differs from `seen`, at most `timeout`;
    /// returns the count then (`seen` itself on a timeout).
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let n = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = self
            .moved
            .wait_timeout_while(n, timeout, |n| *n == seen)
            .unwrap_or_else(|e| e.into_inner());
        *n
    }
}

fn regs_in(g: &GuestRegs) -> Regs {
    Regs {
        eax: g.rax as u32,
        ebx: g.rbx as u32,
        ecx: g.rcx as u32,
        edx: g.rdx as u32,
        esi: g.rsi as u32,
        edi: g.rdi as u32,
        ebp: g.rbp as u32,
    }
}

/// Writes back the registers a command changed, zero-extended as a 32-bit
/// register write is on x86-64; every other register keeps all 64 bits the
/// guest had. Real VMware (and QEMU's vmport) leave the registers a command
/// does not output untouched, and guests rely on it: open-vm-tools' 64-bit
/// `Backdoor_InOut` keeps a pointer in a register the low-bandwidth call
/// does not output, so writing back all seven, truncated, crashed it.
/// RBP is never written here: no low-bandwidth command outputs it.
fn regs_out(before: &Regs, after: &Regs, g: &mut GuestRegs) {
    let pairs = [
        (before.eax, after.eax, &mut g.rax),
        (before.ebx, after.ebx, &mut g.rbx),
        (before.ecx, after.ecx, &mut g.rcx),
        (before.edx, after.edx, &mut g.rdx),
        (before.esi, after.esi, &mut g.rsi),
        (before.edi, after.edi, &mut g.rdi),
    ];
    for (was, is, reg) in pairs {
        if was != is {
            *reg = u64::from(is);
        }
    }
}

impl Backdoor {
    /// `seed` makes the channel cookies unpredictable to the guest.
    pub fn new(facts: HostFacts, seed: u64, tclo_timeout_ms: u64) -> Self {
        Backdoor {
            facts,
            channels: Channels::new(seed),
            tools: Tools::new(tclo_timeout_ms),
            epoch: Instant::now(),
            news: Arc::default(),
        }
    }

    /// Where to wait for the guest tools' next report.
    pub fn news(&self) -> Arc<News> {
        self.news.clone()
    }

    /// Runs one exit's worth of protocol, then wakes news waiters if the
    /// guest reported something.
    fn exit<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.tools.set_now(self.now_ms());
        let before = self.tools.reports();
        let r = f(self);
        let after = self.tools.reports();
        if after != before {
            self.news.publish(after);
        }
        r
    }

    /// Milliseconds since the device was made: the time base of everything
    /// the tools state records (`GuestState::last_poll_ms`, ...).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The tools state, with command timeouts brought up to date.
    pub fn tools(&mut self) -> &mut Tools {
        let now = self.now_ms();
        self.tools.set_now(now);
        self.tools.tick(now);
        &mut self.tools
    }

    /// A VM reset: every channel closes (the guest's tools start over);
    /// the guestinfo store and what the guest last reported stay, as on
    /// VMware.
    pub fn reset(&mut self) {
        self.exit(|d| d.channels.reset(&mut d.tools));
    }

    /// Bytes the channels hold for the guest (bounded by `guestrpc`).
    pub fn buffered_bytes(&self) -> usize {
        self.channels.buffered_bytes()
    }
}

impl RegsDevice for Backdoor {
    fn io_in(&mut self, port: u16, data: &mut [u8], g: &mut GuestRegs) -> bool {
        self.exit(|d| d.port_in(port, data, g))
    }

    fn io_out(&mut self, port: u16, data: &[u8], g: &mut GuestRegs) -> bool {
        self.exit(|d| d.port_out(port, data, g))
    }
}

impl Backdoor {
    fn port_in(&mut self, port: u16, data: &mut [u8], g: &mut GuestRegs) -> bool {
        match port {
            PORT_LB if data.len() == 4 => {
                let before = regs_in(g);
                let mut r = before;
                host::handle_lb(&mut r, &self.facts, &mut self.channels, &mut self.tools);
                // EAX travels in the I/O data: KVM loads it into RAX when it
                // completes the `in` (and would overwrite a RAX set here).
                data.copy_from_slice(&r.eax.to_le_bytes());
                regs_out(&before, &r, g);
                true
            }
            PORT_HB => {
                let r = regs_in(g);
                if self.channels.hb_in(&r, data) {
                    false
                } else {
                    // EBX = 0 tells the guest the transfer failed.
                    data.fill(0);
                    g.rbx = 0;
                    true
                }
            }
            // Not a backdoor access (wrong size): what an absent port reads.
            _ => {
                data.fill(0xff);
                false
            }
        }
    }

    fn port_out(&mut self, port: u16, data: &[u8], g: &mut GuestRegs) -> bool {
        if port != PORT_HB {
            // An `out` to the low-bandwidth port is not a backdoor call.
            return false;
        }
        let r = regs_in(g);
        if self.channels.hb_out(&r, data, &mut self.tools) {
            false
        } else {
            g.rbx = 0;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guestrpc::backdoor::{cmd, MAGIC};

    fn dev() -> Backdoor {
        let facts = HostFacts {
            tsc_hz: 2_000_000_000,
            mem_size: 64 << 20,
            uuid: [7; 16],
        };
        Backdoor::new(facts, 42, 3000)
    }

    fn call(d: &mut Backdoor, g: &mut GuestRegs) -> u32 {
        let mut data = [0u8; 4];
        d.io_in(PORT_LB, &mut data, g);
        let eax = u32::from_le_bytes(data);
        g.rax = u64::from(eax);
        eax
    }

    #[test]
    fn getversion_through_the_port() {
        let mut d = dev();
        let mut g = GuestRegs {
            rax: u64::from(MAGIC),
            rbx: u64::from(!MAGIC) | 0xdead_0000_0000_0000,
            rcx: 0xffff_0000 | u64::from(cmd::GETVERSION),
            rdx: u64::from(PORT_LB),
            ..Default::default()
        };
        assert_eq!(call(&mut d, &mut g), 6);
        // Results zero-extend, as a 32-bit register write would.
        assert_eq!(g.rbx, u64::from(MAGIC));
        assert_eq!(g.rcx, u64::from(vmx_type::ESX));
    }

    #[test]
    fn wrong_magic_and_wrong_size() {
        let mut d = dev();
        let mut g = GuestRegs {
            rax: 1,
            rbx: 5,
            rcx: 10,
            ..Default::default()
        };
        assert_eq!(call(&mut d, &mut g), 0xffff_ffff);
        assert_eq!((g.rbx, g.rcx), (5, 10));
        let mut b = [0u8; 1];
        assert!(!d.io_in(PORT_LB, &mut b, &mut g));
        assert_eq!(b, [0xff]);
        assert!(!d.io_out(PORT_LB, &[1, 2, 3, 4], &mut g));
    }

    #[test]
    fn hb_on_a_closed_channel_fails_with_ebx_zero() {
        let mut d = dev();
        let mut g = GuestRegs {
            rax: u64::from(MAGIC),
            rbx: 0x1_0000,
            rdx: 0x0003_5659,
            ..Default::default()
        };
        assert!(d.io_out(PORT_HB, b"x", &mut g));
        assert_eq!(g.rbx, 0);
        let mut g = GuestRegs {
            rax: u64::from(MAGIC),
            rbx: 0x1_0000,
            rdx: 0x0003_5659,
            ..Default::default()
        };
        let mut buf = [0xaau8; 16];
        assert!(d.io_in(PORT_HB, &mut buf, &mut g));
        assert_eq!((g.rbx, buf), (0, [0; 16]));
    }

    /// The guest side of `guestrpc` driving the device as a vCPU would.
    struct Guest<'a>(&'a mut Backdoor);

    fn to_guest(r: &Regs) -> GuestRegs {
        GuestRegs {
            rax: r.eax.into(),
            rbx: r.ebx.into(),
            rcx: r.ecx.into(),
            rdx: r.edx.into(),
            rsi: r.esi.into(),
            rdi: r.edi.into(),
            rbp: r.ebp.into(),
        }
    }

    impl guestrpc::client::Backdoor for Guest<'_> {
        fn lb(&mut self, regs: &mut Regs) {
            let mut g = to_guest(regs);
            let eax = call(self.0, &mut g);
            *regs = regs_in(&g);
            regs.eax = eax;
        }
        fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
            let mut g = to_guest(regs);
            self.0.io_out(PORT_HB, data, &mut g);
            *regs = regs_in(&g);
        }
        fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
            let mut g = to_guest(regs);
            self.0.io_in(PORT_HB, buf, &mut g);
            *regs = regs_in(&g);
        }
    }

    #[test]
    fn news_wakes_waiters_on_reports_only() {
        let mut d = dev();
        let news = d.news();
        let quiet = Duration::from_millis(10);
        assert_eq!(news.wait(0, quiet), 0);
        let waiter = {
            let news = news.clone();
            std::thread::spawn(move || news.wait(0, Duration::from_secs(30)))
        };
        let mut reply = [0u8; 64];
        let r = guestrpc::client::rpci(&mut Guest(&mut d), b"SetGuestInfo  1 web1", &mut reply);
        assert_eq!(r.unwrap(), b"1 ");
        let seen = waiter.join().unwrap();
        assert_eq!(seen, d.tools().reports());
        assert_eq!(d.tools().guest_state().hostname.as_deref(), Some("web1"));
        // Plain backdoor calls are not reports.
        let mut g = GuestRegs {
            rax: u64::from(MAGIC),
            rcx: u64::from(cmd::GETVERSION),
            rdx: u64::from(PORT_LB),
            ..Default::default()
        };
        call(&mut d, &mut g);
        assert_eq!(news.wait(seen, quiet), seen);
    }

    /// What open-vm-tools' 64-bit `Backdoor_InOut` needs: a command writes
    /// only the registers it outputs; the others, RBP above all, keep
    /// their full 64-bit values.
    #[test]
    fn lb_leaves_registers_it_does_not_output_alone() {
        let mut d = dev();
        let high = 0xdead_beef_0000_0000;
        let mut g = GuestRegs {
            rax: u64::from(MAGIC),
            rbx: high | u64::from(!MAGIC),
            rcx: high | u64::from(cmd::GETVERSION),
            rdx: high | u64::from(PORT_LB),
            rsi: 0x7ffd_1234_5678_9abc,
            rdi: 0x7ffd_0000_1111_2222,
            rbp: 0x7ffd_aaaa_bbbb_cccc,
        };
        let eax = call(&mut d, &mut g);
        assert_eq!(eax, guestrpc::backdoor::VERSION_MAGIC);
        // GETVERSION outputs EBX (magic) and ECX (product type), zero-extended.
        assert_eq!(g.rbx, u64::from(MAGIC));
        assert_eq!(g.rcx >> 32, 0);
        // EDX, ESI, EDI and RBP are not outputs: all 64 bits survive.
        assert_eq!(g.rdx, high | u64::from(PORT_LB));
        assert_eq!(g.rsi, 0x7ffd_1234_5678_9abc);
        assert_eq!(g.rdi, 0x7ffd_0000_1111_2222);
        assert_eq!(g.rbp, 0x7ffd_aaaa_bbbb_cccc);
    }
}
