//! A fake vCPU for vmt's tests: the client's port instructions handed
//! straight to the host's real state machine (`guestrpc::host`), split
//! into exits the way KVM splits them (guest-channel.md §3 "Under KVM"),
//! so the same register values move as with real port I/O.

#![allow(dead_code)] // each test binary uses a different part

use guestrpc::backdoor::{vmx_type, Platform, Regs};
use guestrpc::client::Backdoor;
use guestrpc::host::{self, Channels, Tools};

/// The host's answers to the commands that are not messages.
#[derive(Clone, Debug)]
pub struct FakePlatform {
    pub vmx_type: u32,
    /// The host's clock (µs since the epoch); `None`: it has none.
    pub time_us: Option<u64>,
}

/// The host's clock in [`FakeVm::new`].
pub const HOST_TIME_US: u64 = 1_700_000_000_123_456;

impl Platform for FakePlatform {
    fn unix_time_us(&self) -> Option<u64> {
        self.time_us
    }
    fn tsc_hz(&self) -> u64 {
        2_999_999_000
    }
    fn apic_bus_hz(&self) -> u64 {
        1_000_000_000
    }
    fn cpu_mhz(&self) -> u32 {
        3000
    }
    fn uuid(&self) -> [u8; 16] {
        *b"0123456789abcdef"
    }
    fn mem_size_mb(&self) -> u32 {
        256
    }
    fn vmx_type(&self) -> u32 {
        self.vmx_type
    }
    fn hw_version(&self) -> u32 {
        19
    }
}

/// KVM's largest `rep insb` chunk per exit.
const KVM_INS_CHUNK: usize = 1024;

/// One VM's backdoor: the host's channel table and tools service.
pub struct FakeVm {
    pub channels: Channels,
    pub tools: Tools,
    pub platform: FakePlatform,
    /// Send payloads over the low-bandwidth port (as under KVM it is
    /// cheaper) even when the host offers the high-bandwidth one.
    pub lb_send: bool,
    /// Exits seen, all kinds.
    pub exits: usize,
}

impl FakeVm {
    pub fn new() -> Self {
        FakeVm {
            channels: Channels::new(0x5eed),
            tools: Tools::new(3000),
            platform: FakePlatform {
                vmx_type: vmx_type::ESX,
                time_us: Some(HOST_TIME_US),
            },
            lb_send: false,
            exits: 0,
        }
    }
}

impl Backdoor for FakeVm {
    fn lb(&mut self, regs: &mut Regs) {
        self.exits += 1;
        self.tools.set_now(1000);
        host::handle_lb(regs, &self.platform, &mut self.channels, &mut self.tools);
    }

    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        // One exit per byte; at each exit ECX/ESI already account for it.
        let mut exit = *regs;
        let mut ok = true;
        for (i, b) in data.iter().enumerate() {
            self.exits += 1;
            exit.ecx = (data.len() - i - 1) as u32;
            exit.esi = exit.esi.wrapping_add(1);
            ok &= self.channels.hb_out(&exit, &[*b], &mut self.tools);
        }
        regs.ecx = 0;
        if !ok {
            regs.ebx = 0;
        }
    }

    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        // Chunks of at most 1024 bytes; the registers at each exit are
        // those before the chunk.
        let mut exit = *regs;
        let mut ok = true;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(KVM_INS_CHUNK);
            self.exits += 1;
            exit.ecx = (buf.len() - done) as u32;
            ok &= self.channels.hb_in(&exit, &mut buf[done..done + n]);
            done += n;
        }
        regs.ecx = 0;
        if !ok {
            regs.ebx = 0;
        }
    }

    fn prefer_lb_send(&self) -> bool {
        self.lb_send
    }
}

/// No backdoor at all: the port reads as all ones and nothing else
/// changes (bare metal, or a hypervisor without one).
pub struct NoBackdoor;

impl Backdoor for NoBackdoor {
    fn lb(&mut self, regs: &mut Regs) {
        regs.eax = u32::MAX;
    }
    fn hb_out(&mut self, regs: &mut Regs, _data: &[u8]) {
        regs.ebx = 0;
    }
    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        buf.fill(0xff);
        regs.ebx = 0;
    }
}
