//! `vmctl console` on a real terminal: a pty pair the test opens, vmctl
//! on its slave side, the test typing and reading on the master, the VM's
//! serial line at the other end.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn console_relays_both_ways_and_detaches_with_tilde_dot() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "vm \"tick\" {{\n\tkernel \"{}\"\n\tcmdline \"interval_ms=100\"\n\tmemory 32M\n}}\n",
        guest("ticker")
    );
    let d = TestDaemon::start(&conf);
    let vm = d.wait_running("tick");
    let pid = vm.pid.unwrap();

    let pty = Pty::open();
    let mut cmd = d.vmctl_cmd();
    {
        let slave = pty.slave();
        cmd.args(["console", "tick"])
            .stdin(stdio_of(&slave))
            .stdout(stdio_of(&slave))
            .stderr(std::process::Stdio::piped());
    }
    // Whatever happens below, the console client does not outlive us.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn vmctl console"));
    // Only vmctl holds the slave now.
    drop(cmd);
    let mut stderr = child.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    let mut seen = String::new();
    let tty = vm.tty.as_deref().unwrap();
    assert!(
        read_until(&pty.master, &mut seen, Duration::from_secs(10), |s| s
            .contains(&format!("Connected to {tty}"))),
        "no `Connected to {tty}`:\n{seen}"
    );
    // Ticks come through (and by then vmctl has the terminal raw: typing
    // is not echoed by the line discipline).
    assert!(
        read_until(&pty.master, &mut seen, Duration::from_secs(10), |s| {
            s.lines().filter(|l| l.trim().starts_with("tick ")).count() >= 2
        }),
        "no ticks through the console:\n{seen}"
    );

    pty.write(b"hello\r");
    assert!(
        read_until(&pty.master, &mut seen, Duration::from_secs(10), |s| s
            .lines()
            .any(|l| l.trim_end() == "input: hello")),
        "the guest never echoed our line:\n{seen}"
    );
    let echoed_at = seen.len();

    // `~.` at the start of a line (we just sent a CR) disconnects.
    pty.write(b"~.");
    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert!(
        status.is_some(),
        "vmctl console did not exit on ~.:\n{seen}"
    );
    read_until(&pty.master, &mut seen, Duration::from_secs(2), |s| {
        s.contains("[EOT]")
    });
    let err = stderr.join().unwrap();
    assert_eq!(
        status.unwrap().code(),
        Some(0),
        "vmctl console failed: {err}\n{seen}"
    );
    assert!(seen[echoed_at..].contains("[EOT]"), "no [EOT]:\n{seen}");
    // The escape itself never reached the guest.
    assert!(!seen.contains("input: ~"), "{seen}");

    // The VM runs on without its console.
    std::thread::sleep(Duration::from_millis(500));
    let after = d.vm("tick");
    assert_eq!(after.state, VmState::Running);
    assert_eq!(after.pid, Some(pid));
    assert!(alive(pid));
    // And a second session works too: the guest is still there and ticking.
    let again = open_noctty(tty).expect("reopen the console");
    let mut more = String::new();
    assert!(
        read_until(&again, &mut more, Duration::from_secs(10), |s| s
            .contains("tick ")),
        "no ticks after detaching:\n{more}"
    );
}
