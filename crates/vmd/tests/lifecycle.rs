//! VMs through their lives: start, status, pause, stop (graceful, forced,
//! timed out), wait, ids and names, a VM process killed under the daemon,
//! and VMs started ad hoc. Real guests on /dev/kvm.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A vm block for the tools guest, `memory 32M` unless `extra` says.
fn tools_vm(name: &str, cmdline: &str, extra: &str) -> String {
    let mem = if extra.contains("memory") {
        ""
    } else {
        "\tmemory 32M\n"
    };
    format!(
        "vm \"{name}\" {{\n\tkernel \"{}\"\n\tcmdline \"{cmdline}\"\n{mem}{extra}}}\n",
        guest("tools")
    )
}

/// A vm block for the ticker guest (no guest tools, ignores ACPI).
fn ticker_vm(name: &str, extra: &str) -> String {
    format!(
        "vm \"{name}\" {{\n\tkernel \"{}\"\n\tmemory 32M\n{extra}}}\n",
        guest("ticker")
    )
}

const WEB1_CMDLINE: &str = "hostname=web1 ip=10.0.0.5/24 poll_ms=200";

/// The row of VM `name` in the `vmctl status` table, split in columns:
/// ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME HOSTNAME IP.
fn table_row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.get(8).map(String::as_str) == Some(name))
}

/// The numbers of the `tick N` lines in console output, in order.
fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// user + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn lifecycle_start_status_pause_stop_wait() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "{}{}",
        tools_vm("web1", WEB1_CMDLINE, "\tmemory 64M\n"),
        ticker_vm("tick", "\tdisable\n")
    );
    let d = TestDaemon::start(&conf);

    // The table shows web1 running with what its tools report.
    let mut table = String::new();
    let seen = poll(Duration::from_secs(20), || {
        table = d.vmctl_ok(&["status"]).stdout;
        table_row(&table, "web1").is_some_and(|r| {
            r.len() == 11 && r[7] == "running" && r[9] == "web1" && r[10] == "10.0.0.5"
        })
    });
    assert!(
        seen,
        "web1 never showed running/web1/10.0.0.5:\n{table}\n{}",
        d.log()
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME", "HOSTNAME",
            "IP"
        ]
    );
    let web = table_row(&table, "web1").unwrap();
    assert_eq!(web[0], "1");
    assert!(web[1].parse::<u32>().is_ok(), "pid column: {web:?}");
    assert_eq!(web[3], "64.0M");
    assert!(web[5].starts_with("pts/"), "tty column: {web:?}");
    assert_eq!(web[6], "root");
    let tick = table_row(&table, "tick").expect("tick listed");
    assert_eq!(tick[7], "disabled", "{table}");
    assert_eq!(
        (tick[1].as_str(), tick[9].as_str(), tick[10].as_str()),
        ("-", "-", "-")
    );

    // --json: an array of objects with every field, null when unknown.
    let o = d.vmctl_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("status --json is JSON");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), 2, "{v:#}");
    for obj in arr {
        let obj = obj.as_object().expect("objects");
        for key in [
            "id", "pid", "vcpus", "maxmem", "curmem", "tty", "owner", "state", "name", "hostname",
            "ip",
        ] {
            assert!(obj.contains_key(key), "{key} missing from {obj:?}");
        }
    }
    let web = arr.iter().find(|o| o["name"] == "web1").unwrap();
    assert_eq!(web["id"], 1);
    assert_eq!(web["state"], "running");
    assert_eq!(web["vcpus"], 1);
    assert_eq!(web["maxmem"], 64 << 20);
    assert!(web["curmem"].as_u64().unwrap() > 0, "{web}");
    assert!(
        web["tty"].as_str().unwrap().starts_with("/dev/pts/"),
        "{web}"
    );
    assert_eq!(web["owner"], "root");
    assert_eq!(web["hostname"], "web1");
    assert_eq!(web["ip"], "10.0.0.5");
    let pid = web["pid"].as_u64().expect("pid while running") as u32;
    assert!(alive(pid));
    let tick = arr.iter().find(|o| o["name"] == "tick").unwrap();
    assert_eq!(tick["state"], "disabled");
    for key in ["pid", "tty", "hostname", "ip"] {
        assert!(tick[key].is_null(), "tick {key} should be null: {tick}");
    }
    assert_eq!(tick["curmem"], 0);

    // pause and unpause: the state follows, and a paused VM uses no CPU.
    d.vmctl_ok(&["pause", "web1"]);
    assert_eq!(d.vm("web1").state, VmState::Paused);
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(600));
    let used = cpu_ticks(pid) - t0;
    assert!(
        used <= 6,
        "a paused VM used {used} clock ticks of CPU in 0.6 s"
    );
    let o = d.vmctl_ok(&["status"]);
    assert_eq!(table_row(&o.stdout, "web1").unwrap()[7], "paused");
    d.vmctl_ok(&["unpause", "web1"]);
    assert_eq!(d.vm("web1").state, VmState::Running);

    // stop -w returns once the VM is gone.
    d.vmctl_ok(&["stop", "-w", "web1"]);
    assert!(!process_exists(pid), "vmm {pid} still exists after stop -w");
    let web = d.vm("web1");
    assert_eq!(web.state, VmState::Stopped, "{web:?}");
    assert_eq!(web.last_exit.as_deref(), Some("halted by guest tools"));
    assert_eq!((web.pid, web.tty.as_deref(), web.curmem), (None, None, 0));
    assert_eq!((web.hostname.as_deref(), web.ip.as_deref()), (None, None));
    let o = d.vmctl_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[0]["last_exit"], "halted by guest tools", "{v:#}");

    // A disabled VM starts by name.
    let o = d.vmctl_ok(&["start", "tick"]);
    assert!(o.stderr.contains("started vm 2 successfully"), "{o:?}");
    let tick = d.wait_running("tick");
    let tick_pid = tick.pid.unwrap();

    // A paused guest makes no progress; unpaused, it goes on.
    let console = open_noctty(tick.tty.as_deref().unwrap()).expect("open tick's console");
    let mut seen = String::new();
    assert!(
        read_until(&console, &mut seen, Duration::from_secs(10), |s| ticks(s)
            .len()
            >= 2),
        "tick does not tick:\n{seen}"
    );
    d.vmctl_ok(&["pause", "tick"]);
    assert_eq!(d.vm("tick").state, VmState::Paused);
    // What it printed before the pause may still be on its way.
    read_until(&console, &mut seen, Duration::from_millis(300), |_| false);
    let before = ticks(&seen).last().copied().unwrap_or(0);
    read_until(&console, &mut seen, Duration::from_millis(700), |_| false);
    let during = ticks(&seen).last().copied().unwrap_or(0);
    assert_eq!(before, during, "ticks while paused:\n{seen}");
    d.vmctl_ok(&["unpause", "tick"]);
    assert_eq!(d.vm("tick").state, VmState::Running);
    assert!(
        read_until(&console, &mut seen, Duration::from_secs(10), |s| ticks(s)
            .last()
            .is_some_and(|&n| n > during)),
        "no ticks after unpause:\n{seen}"
    );
    drop(console);

    // stop -f powers it off at once.
    let t = Instant::now();
    d.vmctl_ok(&["stop", "-f", "tick"]);
    let tick = d.wait_vm("tick", "stopped", Duration::from_secs(3), |v| {
        v.pid.is_none()
    });
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop -f took {:?}",
        t.elapsed()
    );
    assert_eq!(tick.last_exit.as_deref(), Some("powered off by the host"));
    assert_eq!(
        tick.state,
        VmState::Disabled,
        "a disabled VM goes back to disabled"
    );
    assert!(!process_exists(tick_pid));

    // wait on a stopped VM returns at once.
    let t = Instant::now();
    let o = d.vmctl_ok(&["--json", "wait", "web1"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "wait took {:?}",
        t.elapsed()
    );
    let w: VmStatus = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(w.last_exit.as_deref(), Some("halted by guest tools"));

    // wait on a running one returns when it stops.
    d.vmctl_ok(&["start", "web1"]);
    d.wait_tools("web1");
    let mut waiter = d.vmctl_cmd();
    waiter
        .args(["--json", "wait", "web1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let handle = std::thread::spawn(move || run_bounded(waiter, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(700));
    assert!(!handle.is_finished(), "wait returned while web1 runs");
    d.vmctl_ok(&["stop", "web1"]);
    let o = handle.join().expect("waiter thread");
    assert!(o.ok(), "{o:?}");
    let w: VmStatus = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(w.state, VmState::Stopped);
    assert_eq!(w.last_exit.as_deref(), Some("halted by guest tools"));
}

#[test]
fn ids_names_and_command_prefixes() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "{}{}",
        tools_vm("web1", WEB1_CMDLINE, ""),
        ticker_vm("tick", "\tdisable\n")
    );
    let d = TestDaemon::start(&conf);
    d.wait_running("web1");

    // By number and by name.
    d.vmctl_ok(&["pause", "1"]);
    assert_eq!(d.vm("web1").state, VmState::Paused);
    d.vmctl_ok(&["unpause", "web1"]);
    assert_eq!(d.vm("web1").state, VmState::Running);
    let by_id: Vec<VmStatus> =
        serde_json::from_str(&d.vmctl_ok(&["--json", "status", "2"]).stdout).unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].name, "tick");

    // Unknown VMs: exit 1, the VM named.
    for args in [
        &["pause", "nosuch"][..],
        &["stop", "nosuch"],
        &["status", "nosuch"],
        &["wait", "nosuch"],
        &["stop", "99"],
    ] {
        let o = d.vmctl(args);
        let what = args[1];
        assert_eq!(o.code, Some(1), "vmctl {args:?}: {o:?}");
        assert!(
            o.stderr.starts_with("vmctl: ") && o.stderr.contains(&format!("vm {what} not found")),
            "vmctl {args:?}: {o:?}"
        );
    }

    // Unambiguous prefixes work; ambiguous ones are refused.
    let o = d.vmctl_ok(&["stat"]);
    assert!(o.stdout.starts_with("   ID   PID"), "{o:?}");
    assert!(table_row(&o.stdout, "web1").is_some(), "{o:?}");
    let o = d.vmctl(&["st", "web1"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("ambiguous command: st"), "{o:?}");

    // Starting a running VM is a conflict.
    let o = d.vmctl(&["start", "web1"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("already running"), "{o:?}");
    assert_eq!(d.vm("web1").state, VmState::Running);

    let pid = d.vm("web1").pid.unwrap();
    d.vmctl_ok(&["sto", "-w", "web1"]);
    let web = d.vm("web1");
    assert_eq!(web.state, VmState::Stopped);
    assert!(!process_exists(pid));

    // Stopping a stopped VM says so.
    let o = d.vmctl(&["stop", "1"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("web1 is not running"), "{o:?}");
}

#[test]
/// The guest's tools take OS_Halt and never answer: powered off once the
/// 10 s reply timeout has passed.
fn stop_of_a_guest_that_ignores_halt_is_forced_after_the_reply_timeout() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&tools_vm("deaf", "ignore=OS_Halt poll_ms=200", ""));
    // The tools must be there, or the stop takes the ACPI path.
    let vm = d.wait_vm("deaf", "tools present", Duration::from_secs(20), |v| {
        v.state == VmState::Running && v.tools
    });
    let t = Instant::now();
    d.vmctl_ok(&["stop", "-w", "deaf"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(25),
        "stop -w took {took:?}"
    );
    let deaf = d.vm("deaf");
    assert_eq!(deaf.state, VmState::Stopped);
    assert_eq!(deaf.last_exit.as_deref(), Some("powered off by the host"));
    assert!(!process_exists(vm.pid.unwrap()));
}

#[test]
fn stop_of_a_guest_without_tools_ends_after_the_grace_period() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&ticker_vm("quiet", "\tgrace 2\n"));
    let vm = d.wait_running("quiet");
    assert!(!vm.tools);
    let t = Instant::now();
    d.vmctl_ok(&["stop", "-w", "quiet"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "stop -w took {took:?}"
    );
    let quiet = d.vm("quiet");
    assert_eq!(quiet.state, VmState::Stopped);
    assert_eq!(quiet.last_exit.as_deref(), Some("powered off by the host"));
    assert!(!process_exists(vm.pid.unwrap()));
}

#[test]
fn a_killed_vm_process_takes_nothing_else_with_it() {
    if !kvm_or_skip() {
        return;
    }
    let conf = format!(
        "{}{}",
        tools_vm("web1", WEB1_CMDLINE, ""),
        ticker_vm("tick", "")
    );
    let d = TestDaemon::start(&conf);
    let web = d.wait_running("web1");
    let tick = d.wait_running("tick");
    let (web_pid, tick_pid) = (web.pid.unwrap(), tick.pid.unwrap());

    send_signal(web_pid, libc::SIGKILL);
    let t = Instant::now();
    let web = d.wait_vm("web1", "stopped", Duration::from_secs(2), |v| {
        v.state == VmState::Stopped
    });
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        web.last_exit.as_deref(),
        Some("killed by signal 9"),
        "{web:?}"
    );
    assert_eq!(web.pid, None);

    // The other VM runs on, the same process, still ticking.
    std::thread::sleep(Duration::from_secs(1));
    let tick = d.vm("tick");
    assert_eq!(tick.state, VmState::Running);
    assert_eq!(tick.pid, Some(tick_pid));
    let console = open_noctty(tick.tty.as_deref().unwrap()).expect("open tick's console");
    let mut seen = String::new();
    let ticking = read_until(&console, &mut seen, Duration::from_secs(10), |s| {
        ticks(s).windows(2).any(|w| w[1] > w[0])
    });
    assert!(ticking, "tick's console shows no progress:\n{seen}");

    // And the daemon still takes orders for the dead one.
    d.vmctl_ok(&["start", "web1"]);
    d.wait_tools("web1");
}

/// A request in flight to a VM process that dies ends at once (not
/// after the 10 s a live process gets to answer): an error, or for a
/// stop, success.
#[test]
fn requests_in_flight_when_a_vm_process_dies() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&tools_vm("web1", WEB1_CMDLINE, ""));
    let pid = d.wait_running("web1").pid.unwrap();
    // A stopped process reads nothing: the request stays unanswered.
    send_signal(pid, libc::SIGSTOP);
    let mut c = d.vmctl_cmd();
    c.args(["pause", "web1"]);
    let pause = std::thread::spawn(move || {
        let t = Instant::now();
        (run_bounded(c, Duration::from_secs(30)), t.elapsed())
    });
    // In flight: waiting, unread, on the stopped process's control
    // socket (on a loaded machine vmctl can take a while to get there).
    let queued = poll(Duration::from_secs(20), || unread_on_unix_socket(pid));
    assert!(queued, "the pause request never reached the VM process");
    assert!(!pause.is_finished(), "a stopped VM process answered");
    send_signal(pid, libc::SIGKILL);
    let (o, took) = pause.join().unwrap();
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("exited"), "{o:?}");
    assert!(took < Duration::from_secs(5), "the request took {took:?}");
    let web = d.wait_vm("web1", "stopped", Duration::from_secs(5), |v| {
        v.state == VmState::Stopped
    });
    assert_eq!(web.last_exit.as_deref(), Some("killed by signal 9"));
    // Requests after the exit fail at once too, and say why.
    let o = d.vmctl(&["pause", "web1"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("not running"), "{o:?}");

    // A stop whose VM ends before answering did what it was asked: it
    // succeeds (as `stop -f` does when the power-off beats the answer).
    d.vmctl_ok(&["start", "web1"]);
    let pid = d.wait_running("web1").pid.unwrap();
    send_signal(pid, libc::SIGSTOP);
    let mut c = d.vmctl_cmd();
    c.args(["stop", "-w", "web1"]);
    let stop = std::thread::spawn(move || run_bounded(c, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!stop.is_finished(), "a stopped VM process answered");
    send_signal(pid, libc::SIGKILL);
    let o = stop.join().unwrap();
    assert!(o.ok(), "{o:?}");
    assert_eq!(d.vm("web1").state, VmState::Stopped);
}

#[test]
fn ad_hoc_vms_and_missing_kernels() {
    if !kvm_or_skip() {
        return;
    }
    // web1's kernel is a copy that is gone by the time it is started.
    let dir = fresh_dir();
    let kernel = dir.join("web1-kernel");
    std::fs::copy(guest("tools"), &kernel).unwrap();
    std::fs::write(
        dir.join("vm.conf"),
        format!(
            "vm \"web1\" {{\n\tdisable\n\tkernel \"{}\"\n\tmemory 32M\n}}\n",
            kernel.display()
        ),
    )
    .unwrap();
    let d = TestDaemon::start_in(dir);

    // A VM the configuration does not know.
    let ticker = guest("ticker");
    let o = d.vmctl_ok(&["start", "-b", &ticker, "-m", "32M", "adhoc1"]);
    assert!(o.stderr.contains("started vm"), "{o:?}");
    let a = d.wait_running("adhoc1");
    assert_eq!(a.maxmem, 32 << 20);
    assert_eq!(a.owner, "root");
    d.vmctl_ok(&["stop", "-f", "-w", "adhoc1"]);
    let a = d.vm("adhoc1");
    assert_eq!(a.pid, None);
    assert_eq!(a.last_exit.as_deref(), Some("powered off by the host"));

    // A kernel that does not exist.
    let o = d.vmctl(&["start", "-b", "/nonexistent/kernel", "adhoc2"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("/nonexistent/kernel"), "{o:?}");
    assert!(o.stderr.contains("No such file"), "{o:?}");
    // Nothing was left running for it.
    let vms = d.status();
    assert!(
        vms.iter().all(|v| v.name != "adhoc2" || v.pid.is_none()),
        "{vms:#?}"
    );

    // An unconfigured VM with nothing to boot.
    let o = d.vmctl(&["start", "adhoc3"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("adhoc3") && o.stderr.contains("-b"),
        "{o:?}"
    );

    // A configured VM whose kernel vanished.
    std::fs::remove_file(&kernel).unwrap();
    let o = d.vmctl(&["start", "web1"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("web1") && o.stderr.contains(&kernel.display().to_string()),
        "{o:?}"
    );
    assert!(o.stderr.contains("No such file"), "{o:?}");
    let web = d.vm("web1");
    assert_eq!(web.pid, None);
    assert!(
        web.last_exit
            .as_deref()
            .is_some_and(|e| e.contains("No such file")),
        "{web:?}"
    );
}

/// Whether a Unix socket of process `pid` has bytes nobody has read yet
/// (`ss`'s Recv-Q).
fn unread_on_unix_socket(pid: u32) -> bool {
    let out = std::process::Command::new("ss")
        .args(["-x", "-p", "-H"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        l.contains(&format!("pid={pid},"))
            && l.split_whitespace()
                .nth(2)
                .and_then(|q| q.parse::<u64>().ok())
                .is_some_and(|q| q > 0)
    })
}
