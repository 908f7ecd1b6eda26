//! Helpers for tests that run VMs through the library.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm::boot::BootConfig;
use vm::{Vm, VmConfig};

pub use testguest::kvm_or_skip;

/// The guest's serial output, shared with the VM.
#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Waits until `n` lines start with `prefix`.
    pub fn wait_count(&self, prefix: &str, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.count(prefix) < n {
            assert!(
                start.elapsed() < timeout,
                "no {n}x {prefix:?} within {timeout:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_line(&self, prefix: &str, timeout: Duration) {
        self.wait_count(prefix, 1, timeout)
    }
}

/// Waits until `f` returns Some, polling.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A VM booting test guest `name` with `cmdline`, console captured.
pub fn guest_vm(name: &str, cmdline: &str, vcpus: u32) -> (Vm, Console) {
    let console = Console::default();
    let cfg = VmConfig {
        mem_size: 32 << 20,
        vcpus,
        boot: BootConfig {
            kernel: testguest::path(name).unwrap_or_else(|| panic!("no test guest {name}")),
            cmdline: cmdline.into(),
            ..Default::default()
        },
        cpuid: Default::default(),
        reboot: true,
        guest_tools: true,
        uuid: vm::random_uuid(),
        disks: Vec::new(),
        firmware: None,
        cdrom: None,
        nets: Vec::new(),
        rng: false,
    };
    (Vm::new(cfg, Box::new(console.clone())).unwrap(), console)
}
