//! Test doubles for both ends' tests (feature `testing`): a fake vCPU that
//! hands a guest client's port instructions straight to the host's real
//! state machine ([`crate::host`]), split into exits the way KVM splits
//! them (guest-channel.md §3 "Under KVM"), so the same register values
//! move as with real port I/O; and a machine with no backdoor at all.
//!
//! guestrpc's own tests and vmt's use these (as a dev-dependency with the
//! feature on); nothing else should.

use crate::backdoor::{vmx_type, Platform, Regs};
use crate::client::Backdoor;
use crate::host::{self, Channels, Tools};

/// The host's clock (µs since the epoch) in [`FakeVcpu::new`].
pub const HOST_TIME_US: u64 = 1_700_000_000_123_456;
/// The TSC frequency the fake host reports.
pub const TSC_HZ: u64 = 2_999_999_000;
/// KVM's largest `rep insb` chunk per exit.
pub const KVM_INS_CHUNK: usize = 1024;
/// Where the fake guest's receive buffers "live", chosen so the first chunk
/// ends at a page boundary after 100 bytes, as KVM also splits there.
const FAKE_BUF_ADDR: u32 = 0x7000 - 100;

/// The host's answers to the commands that are not messages.
#[derive(Clone, Debug)]
pub struct FakePlatform {
    /// What GETVERSION reports as the product (`vmx_type::ESX` by default).
    pub vmx_type: u32,
    /// The host's clock (µs since the epoch); `None`: it has none.
    pub time_us: Option<u64>,
}

impl Default for FakePlatform {
    /// ESX, with the clock at [`HOST_TIME_US`].
    fn default() -> Self {
        FakePlatform {
            vmx_type: vmx_type::ESX,
            time_us: Some(HOST_TIME_US),
        }
    }
}

impl Platform for FakePlatform {
    fn unix_time_us(&self) -> Option<u64> {
        self.time_us
    }
    fn tsc_hz(&self) -> u64 {
        TSC_HZ
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

/// One VM's backdoor as its guest sees it: the host's channel table and
/// tools service behind a vCPU that exits as KVM's does.
pub struct FakeVcpu {
    /// The host's channel table.
    pub channels: Channels,
    /// The host's tools service (TCLO commands, guestinfo).
    pub tools: Tools,
    /// The host's answers to the non-message commands.
    pub platform: FakePlatform,
    /// The host's monotonic clock (ms), given to the tools service at
    /// every exit.
    pub now_ms: u64,
    /// Send payloads over the low-bandwidth port (as under KVM it is
    /// cheaper) even when the host offers the high-bandwidth one.
    pub lb_send: bool,
    /// Low-bandwidth exits seen.
    pub lb_exits: usize,
    /// High-bandwidth `rep outsb` exits seen (one per byte).
    pub hb_out_exits: usize,
    /// High-bandwidth `rep insb` exits seen (one per chunk).
    pub hb_in_exits: usize,
}

impl Default for FakeVcpu {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeVcpu {
    /// A fresh host: no channel open, ESX, its clock at [`HOST_TIME_US`],
    /// monotonic time 1 s.
    pub fn new() -> Self {
        FakeVcpu {
            channels: Channels::new(0x5eed),
            tools: Tools::new(3000),
            platform: FakePlatform::default(),
            now_ms: 1_000,
            lb_send: false,
            lb_exits: 0,
            hb_out_exits: 0,
            hb_in_exits: 0,
        }
    }

    /// Exits seen, all kinds.
    pub fn exits(&self) -> usize {
        self.lb_exits + self.hb_out_exits + self.hb_in_exits
    }
}

impl Backdoor for FakeVcpu {
    fn lb(&mut self, regs: &mut Regs) {
        self.lb_exits += 1;
        self.tools.set_now(self.now_ms);
        host::handle_lb(regs, &self.platform, &mut self.channels, &mut self.tools);
    }

    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        // One exit per byte; at each exit ECX/ESI already account for it.
        self.tools.set_now(self.now_ms);
        let mut exit = *regs;
        let mut ok = true;
        for (i, b) in data.iter().enumerate() {
            self.hb_out_exits += 1;
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
        // Chunks of at most 1024 bytes, never crossing a page; the registers
        // at each exit are those before the chunk.
        let mut exit = *regs;
        exit.edi = FAKE_BUF_ADDR;
        let mut ok = true;
        let mut done = 0;
        while done < buf.len() {
            let to_page = 4096 - (exit.edi as usize % 4096);
            let n = (buf.len() - done).min(KVM_INS_CHUNK).min(to_page);
            self.hb_in_exits += 1;
            exit.ecx = (buf.len() - done) as u32;
            ok &= self.channels.hb_in(&exit, &mut buf[done..done + n]);
            done += n;
            exit.edi = exit.edi.wrapping_add(n as u32);
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
