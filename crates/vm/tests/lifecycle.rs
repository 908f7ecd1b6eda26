//! Pause, resume and host power-off of a running VM, through the library.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm::boot::BootConfig;
use vm::{RunState, Vm, VmConfig, VmExit};

fn kvm_or_skip() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("/dev/kvm is required under CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: /dev/kvm unavailable: {e}");
            false
        }
    }
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

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
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn ticks(&self) -> usize {
        self.text()
            .lines()
            .filter(|l| l.starts_with("tick "))
            .count()
    }
    fn wait_ticks(&self, n: usize) {
        let start = Instant::now();
        while self.ticks() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no tick {n}: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn ticker(vcpus: u32) -> (Vm, Console) {
    let console = Console::default();
    let cfg = VmConfig {
        mem_size: 32 << 20,
        vcpus,
        boot: BootConfig {
            kernel: testguest::path("ticker").unwrap(),
            cmdline: "interval_ms=10".into(),
            ..Default::default()
        },
        cpuid: Default::default(),
        reboot: true,
        guest_tools: true,
        uuid: vm::random_uuid(),
    };
    (Vm::new(cfg, Box::new(console.clone())).unwrap(), console)
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    if !kvm_or_skip() {
        return;
    }
    // 4 vCPUs: three sit in wait-for-SIPI inside KVM_RUN and must be kicked
    // out for the pause to complete.
    let (mut vm, console) = ticker(4);
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    console.wait_ticks(3);

    for _ in 0..3 {
        assert!(h.pause());
        assert_eq!(h.state(), RunState::Paused);
        let frozen = console.ticks();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(console.ticks(), frozen, "guest ran while paused");
        assert!(h.resume());
        assert_eq!(h.state(), RunState::Running);
        console.wait_ticks(frozen + 3);
    }
    assert!(!h.resume(), "resume of a running VM is refused");

    h.power_off();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
}

#[test]
fn power_off_while_paused() {
    if !kvm_or_skip() {
        return;
    }
    let (mut vm, console) = ticker(2);
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    console.wait_ticks(1);
    assert!(h.pause());
    h.power_off();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
    assert!(!h.pause(), "a stopped VM cannot be paused");
}
