//! A fake vCPU: the guest client's port instructions delivered straight to
//! the host side, split into exits the way KVM splits them (§3 "Under KVM").

#![allow(dead_code)] // each test binary uses a different part

use guestrpc::backdoor::{vmx_type, Platform, Regs};
use guestrpc::client::Backdoor;
use guestrpc::host::{self, Channels, Tools};

pub const UNIX_TIME_US: u64 = 1_700_000_000_123_456;
pub const TSC_HZ: u64 = 2_999_999_000;

#[derive(Clone, Debug)]
pub struct FakePlatform {
    pub time_us: Option<u64>,
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
        vmx_type::ESX
    }
    fn hw_version(&self) -> u32 {
        19
    }
}

/// KVM's largest `rep insb` chunk per exit.
pub const KVM_INS_CHUNK: usize = 1024;
/// Where the fake guest's receive buffers "live", chosen so the first chunk
/// ends at a page boundary after 100 bytes, as KVM also splits there.
const FAKE_BUF_ADDR: u32 = 0x7000 - 100;

pub struct FakeVcpu {
    pub channels: Channels,
    pub tools: Tools,
    pub platform: FakePlatform,
    pub now_ms: u64,
    /// Exits seen, by kind.
    pub lb_exits: usize,
    pub hb_out_exits: usize,
    pub hb_in_exits: usize,
}

impl FakeVcpu {
    pub fn new() -> Self {
        FakeVcpu {
            channels: Channels::new(0x5eed),
            tools: Tools::new(3000),
            platform: FakePlatform {
                time_us: Some(UNIX_TIME_US),
            },
            now_ms: 1_000,
            lb_exits: 0,
            hb_out_exits: 0,
            hb_in_exits: 0,
        }
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
}
