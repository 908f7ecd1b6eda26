//! The guest's CPU model through the daemon: vm.conf's `cpu` statement
//! checked by `vmd -n`, handed to the VM process as `--cpu-*` options, and
//! `vmctl start --cpu-*` through the API.

mod common;

use std::time::Duration;

use common::*;

/// The VM process's arguments, from /proc.
fn vmm_args(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn vmd_n_reports_bad_cpu_statements() {
    let dir = fresh_dir();
    let conf = dir.join("vm.conf");
    let check = || {
        let mut c = std::process::Command::new(vmd_bin());
        c.arg("-n").arg("-f").arg(&conf).env_remove("RUST_LOG");
        run_bounded(c, Duration::from_secs(20))
    };
    std::fs::write(
        &conf,
        "vm \"a\" {\n\tkernel /k\n\tcpus 2\n\tcpu vendor intel family 6 model 44\n\
         \tcpu hide { cx16, xsave }\n}\n",
    )
    .unwrap();
    let o = check();
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "configuration OK\n", "{o:?}");

    std::fs::write(
        &conf,
        "vm \"a\" {\n\tkernel /k\n\tcpu hide { cx16 sse5 }\n\tcpu family 300\n\
         \tcpu vendor amd\n\tcpu family 6 model 44\n}\n",
    )
    .unwrap();
    let o = check();
    assert_ne!(o.code, Some(0), "{o:?}");
    let f = conf.display();
    assert_eq!(
        o.stderr,
        format!(
            "{f}:3: unknown cpu feature: sse5\n\
             {f}:4: invalid cpu family: 300 (must be 1 to 270)\n\
             {f}:6: vm a: cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
             AMD CPUs read the extended model field only from family 15 on\n"
        ),
        "{o:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cpu_model_reaches_the_vm_process() {
    if !kvm_or_skip() {
        return;
    }
    let ticker = guest("ticker");
    let d = TestDaemon::start(&format!(
        "vm \"intel\" {{\n\tdisable\n\tkernel \"{ticker}\"\n\tmemory 32M\n\
         \tcpu vendor intel family 6 model 44\n\tcpu hide {{ cx16 xsave }}\n}}\n\
         vm \"base\" {{\n\tdisable\n\tkernel \"{ticker}\"\n\tmemory 32M\n\
         \tallow instance memory\n}}\n"
    ));

    // From vm.conf.
    d.vmctl_ok(&["start", "intel"]);
    let vm = d.wait_running("intel");
    let args = vmm_args(vm.pid.expect("running"));
    for want in [
        "--cpu-vendor=GenuineIntel",
        "--cpu-family=6",
        "--cpu-model=44",
        "--cpu-hide=cx16,xsave",
    ] {
        assert!(args.iter().any(|a| a == want), "{want}: {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--cpu-stepping")),
        "{args:?}"
    );
    d.vmctl_ok(&["stop", "-f", "-w", "intel"]);

    // Ad hoc, from vmctl's flags.
    d.vmctl_ok(&[
        "start",
        "-b",
        &ticker,
        "-m",
        "32M",
        "--cpu-vendor",
        "amd",
        "--cpu-family",
        "0x19",
        "--cpu-model",
        "1",
        "--cpu-stepping",
        "2",
        "--cpu-hide",
        "cx16",
        "adhoc",
    ]);
    let vm = d.wait_running("adhoc");
    let args = vmm_args(vm.pid.expect("running"));
    for want in [
        "--cpu-vendor=AuthenticAMD",
        "--cpu-family=25",
        "--cpu-model=1",
        "--cpu-stepping=2",
        "--cpu-hide=cx16",
    ] {
        assert!(args.iter().any(|a| a == want), "{want}: {args:?}");
    }
    d.vmctl_ok(&["stop", "-f", "-w", "adhoc"]);

    // vmd checks what vmctl sends by vm.conf's rules, against what is
    // configured: here, AMD with the configured family 6 model 44.
    let o = d.vmctl(&["start", "--cpu-vendor", "amd", "intel"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.stderr,
        "vmctl: cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
         AMD CPUs read the extended model field only from family 15 on\n",
        "{o:?}"
    );
    // An instance changes the CPU model only with `allow instance boot`.
    let o = d.vmctl(&["start", "-t", "base", "--cpu-family", "6", "copy"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("vm base: instances may not change boot"),
        "{o:?}"
    );
}

#[test]
fn the_api_describes_the_cpu_model() {
    let d = TestDaemon::start("");
    let (code, body) = http(&d.sock, "GET", "/openapi.json", None).unwrap();
    assert_eq!(code, Some(200), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let schemas = &doc["components"]["schemas"];
    let cpu = schemas["StartRequest"]["properties"]["cpu"].to_string();
    assert!(cpu.contains("#/components/schemas/CpuRequest"), "{cpu}");
    let props = &schemas["CpuRequest"]["properties"];
    for field in ["vendor", "family", "model", "stepping", "hide"] {
        assert!(props.get(field).is_some(), "{field}: {props}");
    }
    assert_eq!(props["family"]["minimum"], 1, "{props}");
    assert_eq!(props["family"]["maximum"], 270, "{props}");
    assert_eq!(props["stepping"]["maximum"], 15, "{props}");
}
