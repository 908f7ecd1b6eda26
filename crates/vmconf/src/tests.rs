//! Parser tests: every statement and option, macros, includes, instances, and every error
//! message with its file:line.

use std::path::PathBuf;

use crate::*;

const M: u64 = MIB;

fn parse_with(text: &str, opts: &Options, fs: &MemFiles) -> Result<Config, Vec<Diagnostic>> {
    parse_str("vm.conf", text, opts, fs)
}

fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse_with(text, &Options::default(), &MemFiles::new())
}

#[track_caller]
fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors: {:#?}", strings(&e)),
    }
}

fn strings(d: &[Diagnostic]) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

#[track_caller]
fn errs(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => strings(&e),
    }
}

#[track_caller]
fn err1(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

fn vm(text: &str) -> VmDef {
    let c = ok(text);
    assert_eq!(c.vms.len(), 1);
    c.vms.into_iter().next().unwrap()
}

fn macros(d: &[(&str, &str)]) -> Options {
    Options {
        macros: d
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn p(s: &str) -> Option<PathBuf> {
    Some(PathBuf::from(s))
}

// ---------------------------------------------------------------- basics

#[test]
fn empty_file_gives_defaults() {
    for text in ["", "\n\n", "# only a comment", "  \t\n# x\n  "] {
        let c = ok(text);
        assert_eq!(c, Config::default());
    }
    let g = Globals::default();
    assert_eq!(g.local_prefix.to_string(), "100.64.0.0/10");
    assert_eq!(g.local_prefix6.to_string(), "fd00::/8");
    assert!(!g.local_inet6);
    assert_eq!(g.socket_owner, None);
    assert_eq!(
        g.staggered,
        Staggered {
            parallel: None,
            delay_secs: 30
        }
    );
    assert_eq!(g.grace_secs, 120);
}

#[test]
fn vm_defaults() {
    let v = vm("vm \"web1\" {\n}\n");
    let mut want = VmDef::new("web1");
    want.line = Location {
        file: "vm.conf".into(),
        line: 1,
    };
    assert_eq!(v, want);
    assert!(v.enabled);
    assert_eq!(v.memory, 512 * M);
    assert_eq!(v.cpus, 1);
    assert_eq!(v.grace_secs, 120);
    // A VM with nothing to boot is fine here; vmd complains when it starts it.
    assert_eq!(vm("vm web1 {}").name, "web1");
    assert_eq!(vm("vm web1 { }").name, "web1");
}

#[test]
fn comments_continuations_crlf() {
    let c = ok(
        "# header\r\nvm \"a\" { # trailing comment\r\n  memory \\\r\n 1G\r\n}\r\n\
                vm b { memory 2G } # c\nvm c {\n# memory 9G \\\n   memory 8G\n}",
    );
    assert_eq!(c.vm("a").unwrap().memory, 1024 * M);
    assert_eq!(c.vm("b").unwrap().memory, 2048 * M);
    // The continued comment swallowed `memory 8G`, as in OpenBSD.
    assert_eq!(c.vm("c").unwrap().memory, 512 * M);
    assert_eq!(c.vm("c").unwrap().line.line, 7);
}

#[test]
fn last_line_without_newline() {
    assert_eq!(ok("vm a {\n}").vms.len(), 1);
    assert_eq!(
        ok("staggered start parallel 1 delay 1")
            .globals
            .staggered
            .parallel,
        Some(1)
    );
}

// ---------------------------------------------------------------- globals

#[test]
fn globals() {
    let c = ok("local prefix 10.0.0.0/8\n\
                local inet6 prefix fd00:1:2::/48\n\
                socket owner vmd:vmusers\n\
                staggered start parallel 4 delay 10\n\
                grace 45\n");
    let g = c.globals;
    assert_eq!(g.local_prefix.to_string(), "10.0.0.0/8");
    assert!(g.local_inet6);
    assert_eq!(g.local_prefix6.to_string(), "fd00:1:2::/48");
    assert_eq!(
        g.socket_owner,
        Some(Owner {
            user: Some("vmd".into()),
            group: Some("vmusers".into())
        })
    );
    assert_eq!(
        g.staggered,
        Staggered {
            parallel: Some(4),
            delay_secs: 10
        }
    );
    assert_eq!(g.grace_secs, 45);

    let g = ok("local inet6\nsocket owner :wheel\n").globals;
    assert!(g.local_inet6);
    assert_eq!(g.local_prefix6.to_string(), "fd00::/8");
    assert_eq!(
        g.socket_owner,
        Some(Owner {
            user: None,
            group: Some("wheel".into())
        })
    );
    let g = ok("socket owner alice\n").globals;
    assert_eq!(g.socket_owner.unwrap().to_string(), "alice");
    let g = ok("socket owner 1000\n").globals;
    assert_eq!(g.socket_owner.unwrap().user.as_deref(), Some("1000"));
    let g = ok("staggered start parallel 1 delay 0\n").globals;
    assert_eq!(g.staggered.delay_secs, 0);
}

#[test]
fn global_errors() {
    assert_eq!(
        err1("local prefix 10.0.0.0\n"),
        "vm.conf:1: invalid local prefix: 10.0.0.0"
    );
    assert_eq!(
        err1("\nlocal prefix 10.0.0.0/33\n"),
        "vm.conf:2: invalid local prefix: 10.0.0.0/33"
    );
    assert_eq!(
        err1("local prefix fd00::/8\n"),
        "vm.conf:1: invalid local prefix: fd00::/8"
    );
    assert_eq!(
        err1("local inet6 prefix fd00::/65\n"),
        "vm.conf:1: invalid local inet6 prefix: fd00::/65"
    );
    assert_eq!(
        err1("local inet6 prefix 10.0.0.0/8\n"),
        "vm.conf:1: invalid local inet6 prefix: 10.0.0.0/8"
    );
    assert_eq!(err1("local foo\n"), "vm.conf:1: syntax error near \"foo\"");
    assert_eq!(err1("socket owner :\n"), "vm.conf:1: invalid owner: :");
    assert_eq!(
        err1("socket owner a:b:c\n"),
        "vm.conf:1: invalid owner: a:b:c"
    );
    assert_eq!(
        err1("socket alice\n"),
        "vm.conf:1: syntax error near \"alice\""
    );
    assert_eq!(
        err1("staggered start parallel 0 delay 5\n"),
        "vm.conf:1: invalid parallelism: 0"
    );
    assert_eq!(
        err1("staggered start parallel 2 delay -1\n"),
        "vm.conf:1: invalid delay: -1"
    );
    assert_eq!(
        err1("staggered start parallel 2\n"),
        "vm.conf:1: syntax error near end of line"
    );
    assert_eq!(
        err1("staggered start delay 2\n"),
        "vm.conf:1: syntax error near \"delay\""
    );
    assert_eq!(err1("grace -5\n"), "vm.conf:1: invalid grace period: -5");
    assert_eq!(
        err1("grace soon\n"),
        "vm.conf:1: invalid grace period: soon"
    );
}

#[test]
fn global_grace_is_the_default_wherever_it_is() {
    let c = ok("vm a {}\nvm b { grace 7 }\ngrace 30\nvm c {}\n");
    assert_eq!(c.vm("a").unwrap().grace_secs, 30);
    assert_eq!(c.vm("b").unwrap().grace_secs, 7);
    assert_eq!(c.vm("c").unwrap().grace_secs, 30);
}

// ---------------------------------------------------------------- switches

#[test]
fn switch_options() {
    let c = ok("switch \"uplink\" {\n\
                \tinterface br0\n\
                \tgroup vmnet\n\
                \tlocked lladdr\n\
                \trdomain 3\n\
                \tdown\n\
                \tdisable\n\
                }\n\
                switch lab { interface bridge1 }\n");
    assert_eq!(
        c.switches[0],
        Switch {
            name: "uplink".into(),
            line: Location {
                file: "vm.conf".into(),
                line: 1
            },
            enabled: false,
            interface: "br0".into(),
            group: Some("vmnet".into()),
            locked: true,
            rdomain: Some(3),
            up: false,
        }
    );
    let lab = c.switch("lab").unwrap();
    assert!(lab.enabled && lab.up && !lab.locked);
    assert_eq!(lab.interface, "bridge1");
    assert_eq!(lab.group, None);
    assert_eq!(lab.rdomain, None);
    let s = &ok("switch s {\ninterface br0\nenable\nup\n}").switches[0];
    assert!(s.enabled && s.up);
}

#[test]
fn switch_errors() {
    assert_eq!(
        err1("switch \"uplink\" {\n  group x\n}\n"),
        "vm.conf:1: switch \"uplink\" is missing interface name"
    );
    assert_eq!(
        errs("switch a { interface br0 }\n\nswitch a { interface br1 }\n"),
        ["vm.conf:3: switch \"a\" defined twice (first defined at vm.conf:1)"]
    );
    assert_eq!(
        err1("switch a {\n interface br/0\n}\n"),
        "vm.conf:2: invalid switch interface: br/0"
    );
    assert_eq!(
        err1("switch a {\n interface averyveryverylongname\n}\n"),
        "vm.conf:2: invalid switch interface: averyveryverylongname"
    );
    assert_eq!(
        err1("switch a {\n interface br0\n group net0\n}\n"),
        "vm.conf:3: invalid group name: net0"
    );
    assert_eq!(
        err1("switch a {\n interface br0\n group abcdefghijklmnop\n}\n"),
        "vm.conf:3: invalid group name: abcdefghijklmnop"
    );
    assert_eq!(
        err1("switch a {\n interface br0\n rdomain 256\n}\n"),
        "vm.conf:3: invalid rdomain: 256 (must be 0 to 255)"
    );
    assert_eq!(
        err1("switch a {\n interface br0\n locked\n}\n"),
        "vm.conf:3: syntax error near end of line"
    );
    assert_eq!(
        err1("switch a {\n interface br0\n memory 1G\n}\n"),
        "vm.conf:3: syntax error near \"memory\""
    );
    assert_eq!(
        err1("switch \"\" { interface br0 }\n"),
        "vm.conf:1: invalid switch name \"\""
    );
    // The "{" may be on the next line.
    assert_eq!(
        ok("switch a\n{ interface br0 }\n").switches[0].interface,
        "br0"
    );
    assert_eq!(ok("vm a\n\n{\n}\n").vms[0].line.line, 1);
    assert_eq!(
        err1("switch a\ninterface br0\n"),
        "vm.conf:2: syntax error near \"interface\""
    );
}

// ---------------------------------------------------------------- vm options

#[test]
fn vm_all_options() {
    let v = vm(r#"
vm "web1" {
    disable
    kernel "/vm/vmlinuz"
    initrd "/vm/initrd.img"
    cmdline "console=ttyS0 root=/dev/vda"
    boot device disk
    cpus 4
    memory 1G
    cdrom "/vm/install.iso"
    disk "/vm/a.img"
    disk "/vm/b.qcow2" format qcow2
    disk /vm/c.img format raw
    disk "/vm/d" format QCOW2
    interface
    owner alice:staff
    grace 10
    allow instance memory
}
"#);
    assert_eq!(v.name, "web1");
    assert_eq!(v.line.line, 2);
    assert!(!v.enabled);
    assert_eq!(v.kernel, p("/vm/vmlinuz"));
    assert_eq!(v.initrd, p("/vm/initrd.img"));
    assert_eq!(v.cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda"));
    assert_eq!(v.boot_device, Some(BootDevice::Disk));
    assert_eq!(v.cpus, 4);
    assert_eq!(v.memory, 1024 * M);
    assert_eq!(v.cdrom, p("/vm/install.iso"));
    assert_eq!(
        v.disks,
        vec![
            Disk {
                path: "/vm/a.img".into(),
                format: None
            },
            Disk {
                path: "/vm/b.qcow2".into(),
                format: Some(DiskFormat::Qcow2)
            },
            Disk {
                path: "/vm/c.img".into(),
                format: Some(DiskFormat::Raw)
            },
            Disk {
                path: "/vm/d".into(),
                format: Some(DiskFormat::Qcow2)
            },
        ]
    );
    assert_eq!(v.interfaces, vec![Interface::default()]);
    assert_eq!(v.owner.as_ref().unwrap().to_string(), "alice:staff");
    assert_eq!(v.grace_secs, 10);
    assert_eq!(v.allow_instance, vec![InstanceOption::Memory]);
    assert_eq!(v.instance_of, None);
}

#[test]
fn boot_forms() {
    assert_eq!(vm("vm a { boot \"/bsd.rd\" }").kernel, p("/bsd.rd"));
    assert_eq!(vm("vm a { boot /bsd }").kernel, p("/bsd"));
    assert_eq!(
        vm("vm a { boot device cdrom }").boot_device,
        Some(BootDevice::Cdrom)
    );
    assert_eq!(
        vm("vm a { boot device net }").boot_device,
        Some(BootDevice::Net)
    );
    let v = vm("vm a {\n boot device net\n boot \"/bsd.rd\"\n}");
    assert_eq!(v.boot_device, Some(BootDevice::Net));
    assert_eq!(v.kernel, p("/bsd.rd"));
    // A quoted "device" is a path.
    assert_eq!(vm("vm a { boot \"device\" }").kernel, p("device"));
    assert_eq!(
        err1("vm a {\n boot device floppy\n}"),
        "vm.conf:2: syntax error near \"floppy\""
    );
}

#[test]
fn enable_disable_last_wins() {
    assert!(vm("vm a {\n disable\n enable\n}").enabled);
    assert!(vm("vm a {\n enable\n}").enabled);
    assert!(!vm("vm a {\n disable\n}").enabled);
}

#[test]
fn cmdline_joins_strings_with_spaces() {
    let v = vm("vm a {\n kernel /k\n cmdline \"console=ttyS0\" \"root=/dev/vda\" quiet\n}");
    assert_eq!(
        v.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda quiet")
    );
    let v = vm("vm a {\n kernel /k\n cmdline 'init=/bin/sh \"x y\"'\n}");
    assert_eq!(v.cmdline.as_deref(), Some("init=/bin/sh \"x y\""));
}

#[test]
fn paths_concatenate_like_openbsd() {
    let v = vm("vm a {\n disk \"/var/vm/\" \"disk.img\"\n cdrom /iso/ x.iso\n}");
    assert_eq!(v.disks[0].path, PathBuf::from("/var/vm/disk.img"));
    assert_eq!(v.cdrom, p("/iso/x.iso"));
    // A keyword ends the path.
    let v = vm("vm a { disk \"/a\" format raw }");
    assert_eq!(v.disks[0].path, PathBuf::from("/a"));
}

#[test]
fn memory_sizes() {
    let mem = |s: &str| parse(&format!("vm a {{\n memory {s}\n}}\n"));
    assert_eq!(mem("512M").unwrap().vms[0].memory, 512 * M);
    assert_eq!(mem("1g").unwrap().vms[0].memory, 1024 * M);
    assert_eq!(mem("2048K").unwrap().vms[0].memory, 2 * M);
    assert_eq!(mem("1073741824").unwrap().vms[0].memory, 1024 * M);
    assert_eq!(mem("1.5G").unwrap().vms[0].memory, 1536 * M);
    assert_eq!(mem("\"3000000\"").unwrap().vms[0].memory, 3 * M);
    let e = |s: &str| strings(&mem(s).unwrap_err());
    assert_eq!(
        e("0"),
        ["vm.conf:2: invalid size \"0\": must be at least 2M"]
    );
    assert_eq!(
        e("1M"),
        ["vm.conf:2: invalid size \"1M\": must be at least 2M"]
    );
    assert_eq!(
        e("12Q"),
        ["vm.conf:2: invalid size \"12Q\": unknown unit \"Q\" (use B, K, M, G or T)"]
    );
    assert_eq!(
        e("-1"),
        ["vm.conf:2: invalid size \"-1\": expected a number with an optional unit B, K, M, G or T"]
    );
}

#[test]
fn cpus() {
    assert_eq!(vm("vm a { cpus 1 }").cpus, 1);
    assert_eq!(vm("vm a { cpus 254 }").cpus, 254);
    for bad in ["0", "255", "-1", "two", "99999999999999999999"] {
        assert_eq!(
            err1(&format!("vm a {{\n cpus {bad}\n}}")),
            format!("vm.conf:2: invalid cpus: {bad} (must be 1 to 254)")
        );
    }
}

fn intel_6_44(hide: &[&str]) -> CpuModel {
    CpuModel {
        vendor: Some("GenuineIntel".into()),
        family: Some(6),
        model: Some(44),
        stepping: None,
        hide: hide.iter().map(|h| h.to_string()).collect(),
    }
}

#[test]
fn cpu_model() {
    assert!(vm("vm a {}").cpu.is_host());
    let v = vm(
        "vm a {\n cpus 2\n cpu vendor intel family 6 model 44\n cpu stepping 2\n \
                cpu hide { cx16, xsave\n  popcnt cx16 }\n}",
    );
    assert_eq!(v.cpus, 2);
    assert_eq!(
        v.cpu,
        CpuModel {
            stepping: Some(2),
            ..intel_6_44(&["cx16", "xsave", "popcnt"])
        }
    );
    // Any order, hex numbers, `amd`, one name without braces, on the line of other options.
    let v = vm("vm a { cpu hide cx16 model 0x1 family 0x19 vendor AMD memory 1G }");
    assert_eq!(v.memory, 1024 * M);
    assert_eq!(
        v.cpu,
        CpuModel {
            vendor: Some("AuthenticAMD".into()),
            family: Some(25),
            model: Some(1),
            stepping: None,
            hide: vec!["cx16".into()],
        }
    );
    // Any 12 printable characters; the limits of each number.
    let v = vm("vm a { cpu vendor \"  Shanghai  \" family 270 model 255 stepping 15 }");
    assert_eq!(v.cpu.vendor.as_deref(), Some("  Shanghai  "));
    assert_eq!(
        (v.cpu.family, v.cpu.model, v.cpu.stepping),
        (Some(270), Some(255), Some(15))
    );
    let v = vm("vm a { cpu family 1 model 0 stepping 0 }");
    assert_eq!(
        (v.cpu.family, v.cpu.model, v.cpu.stepping),
        (Some(1), Some(0), Some(0))
    );
    // An empty list hides nothing (and overrides a parent's list).
    assert!(vm("vm a { cpu hide { } }").cpu.is_host());
    // Macros: a value, or the whole statement's text.
    let c = ok("fam = 6\nintel = \"vendor intel family 6 model 44\"\n\
                vm a { cpu family $fam }\nvm b {\n cpu $intel\n}\n");
    assert_eq!(c.vm("a").unwrap().cpu.family, Some(6));
    assert_eq!(c.vm("b").unwrap().cpu, intel_6_44(&[]));
    // The attribute words are not reserved.
    let v = vm("model = 44\nvm vendor { cpu family 6 model $model vendor intel }");
    assert_eq!((v.name.as_str(), v.cpu.model), ("vendor", Some(44)));
}

#[test]
fn cpu_and_cpus_are_different_statements() {
    assert_eq!(vm("vm a { cpus 4 }").cpu, CpuModel::default());
    assert_eq!(vm("vm a {\n cpu family 6\n cpus 3\n}").cpus, 3);
    assert_eq!(
        err1("vm a {\n cpu 2\n}"),
        "vm.conf:2: syntax error near \"2\""
    );
    assert_eq!(
        err1("vm a {\n cpus vendor\n}"),
        "vm.conf:2: invalid cpus: vendor (must be 1 to 254)"
    );
    assert_eq!(
        err1("vm a {\n cpu cpus 2\n}"),
        "vm.conf:2: syntax error near \"cpus\""
    );
    // `cpu` is a keyword: it ends a path, and is no name.
    assert_eq!(vm("vm a { kernel /k cpu family 6 }").kernel, p("/k"));
    assert_eq!(err1("vm cpu {\n}"), "vm.conf:1: syntax error near \"cpu\"");
}

#[test]
fn cpu_errors() {
    for (text, want) in [
        ("cpu", "syntax error near end of line"),
        ("cpu speed 3", "syntax error near \"speed\""),
        ("cpu vendor", "syntax error near end of line"),
        ("cpu family", "syntax error near end of line"),
        ("cpu family 0", "invalid cpu family: 0 (must be 1 to 270)"),
        (
            "cpu family 271",
            "invalid cpu family: 271 (must be 1 to 270)",
        ),
        (
            "cpu family 0x10f",
            "invalid cpu family: 0x10f (must be 1 to 270)",
        ),
        (
            "cpu family six",
            "invalid cpu family: six (must be 1 to 270)",
        ),
        ("cpu family -6", "invalid cpu family: -6 (must be 1 to 270)"),
        ("cpu model 256", "invalid cpu model: 256 (must be 0 to 255)"),
        ("cpu model 4G", "invalid cpu model: 4G (must be 0 to 255)"),
        (
            "cpu stepping 16",
            "invalid cpu stepping: 16 (must be 0 to 15)",
        ),
        (
            "cpu vendor via",
            "invalid cpu vendor: \"via\" (must be intel, amd or 12 printable ASCII characters)",
        ),
        (
            "cpu vendor \"GenuineIntel \"",
            "invalid cpu vendor: \"GenuineIntel \" (must be intel, amd or 12 printable ASCII \
             characters)",
        ),
        ("cpu hide warp-drive", "unknown cpu feature: warp-drive"),
        ("cpu hide { cx16, AVX }", "unknown cpu feature: AVX"),
        ("cpu hide { cx16 vm }", "syntax error near \"vm\""),
        ("cpu hide", "syntax error near end of line"),
        (
            "cpu family 6 family 7",
            "cpu family specified more than once",
        ),
        (
            "cpu family 5 model 16",
            "vm a: cpu family 5 cannot have model 16: \
             the extended model field counts only in family 6 and from family 15 on",
        ),
        (
            "cpu vendor amd family 6 model 44",
            "vm a: cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
             AMD CPUs read the extended model field only from family 15 on",
        ),
    ] {
        assert_eq!(
            err1(&format!("vm a {{\n {text}\n}}")),
            format!("vm.conf:2: {want}"),
            "{text}"
        );
    }
    // Each error at its own line; an unknown name does not drop the others.
    assert_eq!(
        errs("vm a {\n cpu hide {\n  cx16\n  nope\n }\n cpu model 300\n}"),
        [
            "vm.conf:4: unknown cpu feature: nope",
            "vm.conf:6: invalid cpu model: 300 (must be 0 to 255)"
        ]
    );
    // A family and model from different statements: reported at the last `cpu`.
    assert_eq!(
        err1("vm a {\n cpu model 44\n memory 1G\n cpu family 7\n}"),
        "vm.conf:4: vm a: cpu family 7 cannot have model 44: \
         the extended model field counts only in family 6 and from family 15 on"
    );
    // Without a vendor, family 6 with a model above 15 is fine here (Intel reads it);
    // vmm refuses it on an AMD host.
    assert_eq!(vm("vm a { cpu family 6 model 44 }").cpu.model, Some(44));
    assert_eq!(
        errs("vm a {\n cpu hide {\n  cx16\n"),
        [
            "vm.conf:4: unexpected end of file: missing \"}\" for cpu hide at line 2",
            "vm.conf:4: unexpected end of file: missing \"}\" for vm \"a\" at line 1"
        ]
    );
}

#[test]
fn cpu_in_instances() {
    let parent = "vm p {\n kernel /k\n cpu vendor intel family 6 model 44 hide cx16\n \
                  allow instance { boot }\n}\n";
    // Inherited whole...
    let c = ok(&format!("{parent}vm p instance q {{}}\n"));
    assert_eq!(c.vm("q").unwrap().cpu, intel_6_44(&["cx16"]));
    // ... or attribute by attribute, with `allow instance boot`.
    let c = ok(&format!(
        "{parent}vm p instance q {{\n cpu stepping 3 hide {{ xsave }}\n}}\n"
    ));
    assert_eq!(
        c.vm("q").unwrap().cpu,
        CpuModel {
            stepping: Some(3),
            ..intel_6_44(&["xsave"])
        }
    );
    assert_eq!(c.vm("p").unwrap().cpu, intel_6_44(&["cx16"]));
    // A change that does not fit what is inherited is the instance's error.
    assert_eq!(
        err1(&format!(
            "{parent}vm p instance q {{\n cpu vendor amd\n}}\n"
        )),
        "vm.conf:7: vm q: cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
         AMD CPUs read the extended model field only from family 15 on"
    );
    // Without `allow instance boot`, no change.
    assert_eq!(
        err1("vm p { allow instance memory }\nvm p instance q {\n cpu family 6\n}\n"),
        "vm.conf:3: vm q: instance may not change boot"
    );
}

#[test]
fn owners() {
    let o = |s: &str| vm(&format!("vm a {{ owner {s} }}")).owner.unwrap();
    assert_eq!(
        o("joe"),
        Owner {
            user: Some("joe".into()),
            group: None
        }
    );
    assert_eq!(
        o("joe:staff"),
        Owner {
            user: Some("joe".into()),
            group: Some("staff".into())
        }
    );
    assert_eq!(
        o(":staff"),
        Owner {
            user: None,
            group: Some("staff".into())
        }
    );
    assert_eq!(o("1000:100").to_string(), "1000:100");
    assert_eq!(o("\"joe\"").to_string(), "joe");
    assert_eq!(err1("vm a {\n owner :\n}"), "vm.conf:2: invalid owner: :");
    assert_eq!(
        err1("vm a {\n owner\n}"),
        "vm.conf:2: syntax error near end of line"
    );
}

#[test]
fn interfaces_all_forms() {
    let c = ok(r#"
switch uplink { interface br0 }
switch lab { interface br1 }
vm a {
    interface tap3 {
        switch "uplink"
        lladdr 00:11:22:33:44:55
        group web
        rdomain 2
        down
    }
    local interface
    interface { locked lladdr fe:e1:ba:d0:0:A }
    interface tap switch lab, locked lladdr, up
}
"#);
    let v = &c.vms[0];
    assert_eq!(
        v.interfaces,
        vec![
            Interface {
                name: Some("tap3".into()),
                local: false,
                switch: Some("uplink".into()),
                lladdr: Some([0, 0x11, 0x22, 0x33, 0x44, 0x55]),
                locked: false,
                group: Some("web".into()),
                rdomain: Some(2),
                up: false,
            },
            Interface {
                local: true,
                ..Interface::default()
            },
            Interface {
                lladdr: Some([0xfe, 0xe1, 0xba, 0xd0, 0, 0x0a]),
                locked: true,
                ..Interface::default()
            },
            Interface {
                name: None, // "tap": the next free one
                switch: Some("lab".into()),
                locked: true,
                ..Interface::default()
            },
        ]
    );
}

#[test]
fn interface_one_liners() {
    let c = ok("switch s { interface br0 }\n\
                vm a { interface { switch s } }\n\
                vm b { interface switch s }\n\
                vm c { local interface tap7 { up } }\n\
                vm d { interface \"vnet0\" lladdr 2:0:0:0:0:1 }\n\
                vm e { interface { switch s, group g } }\n\
                vm f { memory 1G }\n");
    assert_eq!(
        c.vm("a").unwrap().interfaces[0].switch.as_deref(),
        Some("s")
    );
    assert_eq!(
        c.vm("b").unwrap().interfaces[0].switch.as_deref(),
        Some("s")
    );
    let i = &c.vm("c").unwrap().interfaces[0];
    assert!(i.local && i.up);
    assert_eq!(i.name.as_deref(), Some("tap7"));
    let i = &c.vm("d").unwrap().interfaces[0];
    assert_eq!(i.name.as_deref(), Some("vnet0"));
    assert_eq!(i.lladdr, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(c.vm("e").unwrap().interfaces[0].group.as_deref(), Some("g"));
    assert_eq!(format_lladdr(&[2, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
}

#[test]
fn interfaces_count_adds_defaults() {
    let v = vm("vm a {\n interfaces 3\n local interface\n}");
    assert_eq!(v.interfaces.len(), 3);
    assert!(v.interfaces[0].local);
    assert_eq!(v.interfaces[1], Interface::default());
    let v = vm("vm a {\n interface\n interface\n interfaces 1\n}");
    assert_eq!(v.interfaces.len(), 2);
    assert_eq!(vm("vm a { interfaces 0 }").interfaces.len(), 0);
}

#[test]
fn allow_instance_forms() {
    use InstanceOption::*;
    let v = vm("vm a {\n allow instance {\n  boot\n  cdrom, disable\n  disk, instance, interface\n  memory owner cpus\n }\n}");
    assert_eq!(
        v.allow_instance,
        vec![Boot, Cdrom, Cpus, Disable, Disk, Instance, Interface, Memory, Owner]
    );
    assert_eq!(v.instance_owner, None);
    let v = vm("vm a {\n allow instance { owner bob:lab, memory }\n allow instance disk\n}");
    assert_eq!(v.allow_instance, vec![Disk, Memory, Owner]);
    assert_eq!(v.instance_owner.unwrap().to_string(), "bob:lab");
    let v = vm("vm a {\n allow instance owner :lab\n}");
    assert_eq!(v.allow_instance, vec![Owner]);
    assert_eq!(v.instance_owner.unwrap().to_string(), ":lab");
    assert!(vm("vm a { allow instance { } }").allow_instance.is_empty());
    assert_eq!(
        err1("vm a {\n allow instance { memory, grace }\n}"),
        "vm.conf:2: syntax error near \"grace\""
    );
    assert_eq!(
        err1("vm a {\n allow memory\n}"),
        "vm.conf:2: syntax error near \"memory\""
    );
}

// ---------------------------------------------------------------- vm errors

#[test]
fn duplicate_vm() {
    assert_eq!(
        errs("vm \"web1\" {\n}\n\nvm \"web1\" {\n memory 1G\n}\n"),
        ["vm.conf:4: vm \"web1\" defined twice (first defined at vm.conf:1)"]
    );
}

#[test]
fn vm_names() {
    let long = "a".repeat(64);
    assert_eq!(vm(&format!("vm {} {{}}", "b".repeat(63))).name.len(), 63);
    assert_eq!(vm("vm web-1.example.com_2 {}").name, "web-1.example.com_2");
    assert_eq!(vm("vm 1web {}").name, "1web");
    for (name, why) in [
        ("\"\"", "\"\": empty"),
        (
            long.as_str(),
            &*format!("\"{long}\": longer than 63 characters"),
        ),
        ("42", "\"42\": all digits"),
        ("\"web 1\"", "\"web 1\": contains whitespace"),
        ("\"a\tb\"", "\"a\\tb\": contains whitespace"),
        (
            "\"a\u{7}b\"",
            "\"a\\u{7}b\": contains a non-printable character",
        ),
        ("a/b", "\"a/b\": contains \"/\""),
        ("\"-x\"", "\"-x\": starts with \".\", \"-\" or \"_\""),
        ("\"_x\"", "\"_x\": starts with \".\", \"-\" or \"_\""),
        (
            "\"a:b\"",
            "\"a:b\": contains a character other than letters, digits, \".\", \"-\" and \"_\"",
        ),
    ] {
        assert_eq!(
            err1(&format!("\nvm {name} {{\n}}")),
            format!("vm.conf:2: invalid vm name {why}")
        );
    }
}

#[test]
fn too_many_disks_and_interfaces() {
    let disks: String = (0..5).map(|i| format!(" disk /d{i}\n")).collect();
    assert_eq!(
        err1(&format!("vm a {{\n{disks}}}")),
        "vm.conf:6: too many disks: 5 (max 4)"
    );
    let ifs = " interface\n".repeat(5);
    assert_eq!(
        err1(&format!("vm a {{\n{ifs}}}")),
        "vm.conf:6: too many interfaces: 5 (max 4)"
    );
    assert_eq!(
        err1("vm a {\n interfaces 5\n}"),
        "vm.conf:2: too many interfaces: 5 (max 4)"
    );
    assert_eq!(
        err1("vm a {\n interfaces -1\n}"),
        "vm.conf:2: invalid interfaces: -1"
    );
}

#[test]
fn specified_more_than_once() {
    for (opt, a, b) in [
        ("kernel", "kernel /a", "kernel /b"),
        ("kernel", "boot /a", "kernel /b"),
        ("initrd", "initrd /a", "initrd /b"),
        ("cmdline", "cmdline a", "cmdline b"),
        ("boot device", "boot device net", "boot device disk"),
        ("cdrom", "cdrom /a", "cdrom /b"),
        ("memory", "memory 1G", "memory 2G"),
        ("cpus", "cpus 1", "cpus 2"),
        ("cpu vendor", "cpu vendor intel", "cpu vendor amd"),
        ("cpu family", "cpu family 6", "cpu family 6"),
        ("cpu model", "cpu model 1", "cpu family 6 model 2"),
        ("cpu stepping", "cpu stepping 1 hide cx16", "cpu stepping 1"),
        ("cpu hide", "cpu hide cx16", "cpu hide { xsave }"),
        ("grace", "grace 1", "grace 2"),
        ("interfaces", "interfaces 1", "interfaces 2"),
    ] {
        let e: Vec<String> = errs(&format!("vm a {{\n {a}\n {b}\n}}"))
            .into_iter()
            .filter(|e| !e.ends_with("without kernel"))
            .collect();
        assert_eq!(e, [format!("vm.conf:3: {opt} specified more than once")]);
    }
}

#[test]
fn bad_values() {
    assert_eq!(
        err1("vm a {\n disk /a format vmdk\n}"),
        "vm.conf:2: unrecognized disk format vmdk"
    );
    assert_eq!(err1("vm a {\n disk \"\"\n}"), "vm.conf:2: empty path");
    assert_eq!(
        err1("vm a {\n interface { lladdr 00:11:22:33:44 }\n}"),
        "vm.conf:2: invalid address: 00:11:22:33:44"
    );
    assert_eq!(
        err1("vm a {\n interface { lladdr 00:11:22:33:44:5g }\n}"),
        "vm.conf:2: invalid address: 00:11:22:33:44:5g"
    );
    assert_eq!(
        err1("vm a {\n interface { lladdr 01:00:5e:00:00:01 }\n}"),
        "vm.conf:2: invalid address: 01:00:5e:00:00:01 (multicast)"
    );
    assert_eq!(
        err1("vm a {\n interface tap/0\n}"),
        "vm.conf:2: invalid interface name: tap/0"
    );
    assert_eq!(
        err1("vm a {\n interface tap0123456789abcd\n}"),
        "vm.conf:2: invalid interface name: tap0123456789abcd"
    );
    assert_eq!(
        err1("vm a {\n interface { rdomain 300 }\n}"),
        "vm.conf:2: invalid rdomain: 300 (must be 0 to 255)"
    );
    assert_eq!(
        err1("vm a {\n interface { group g1 }\n}"),
        "vm.conf:2: invalid group name: g1"
    );
    assert_eq!(
        err1("vm a {\n grace -1\n}"),
        "vm.conf:2: invalid grace period: -1"
    );
}

#[test]
fn unknown_switch_checked_at_the_end() {
    let text = "vm \"web1\" {\n\
                memory 1G\n\
                interface { switch \"uplink\" }\n\
                interface\n\
                interface { switch \"lab\" }\n\
                }\n\
                switch \"lab\" { interface br1 }\n";
    assert_eq!(
        errs(text),
        ["vm.conf:3: vm web1: interface 0: unknown switch \"uplink\""]
    );
    // Comes after the errors found in order, even ones further down.
    assert_eq!(
        errs("vm a { interface switch nope }\nvm b { cpus 0 }\n"),
        [
            "vm.conf:2: invalid cpus: 0 (must be 1 to 254)",
            "vm.conf:1: vm a: interface 0: unknown switch \"nope\"",
        ]
    );
    // A disabled switch is still a known one.
    ok("switch s {\n interface br0\n disable\n}\nvm a { interface switch s }\n");
}

#[test]
fn sev_refused() {
    assert_eq!(
        errs("vm a {\n sev\n seves\n memory 1G\n}"),
        [
            "vm.conf:2: sev is not supported on Linux",
            "vm.conf:3: seves is not supported on Linux",
        ]
    );
}

#[test]
fn initrd_and_cmdline_need_a_kernel() {
    assert_eq!(
        errs("vm a {\n initrd /i\n cmdline quiet\n}"),
        [
            "vm.conf:1: vm a: initrd without kernel",
            "vm.conf:1: vm a: cmdline without kernel",
        ]
    );
    assert_eq!(vm("vm a {\n initrd /i\n boot /k\n}").kernel, p("/k"));
}

// ---------------------------------------------------------------- syntax errors and recovery

#[test]
fn unknown_keyword() {
    let text = "switch s { interface br0 }\n\
                \n\
                vm \"web1\" {\n\
                \tdisable\n\
                \tdisk \"/var/vm/web1.img\"\n\
                \tcpus 2\n\
                \tmemroy 1G\n\
                }\n";
    assert_eq!(err1(text), "vm.conf:7: syntax error near \"memroy\"");
    assert_eq!(err1("vmm a {\n}\n"), "vm.conf:1: syntax error near \"vmm\"");
    // The rest of the line is skipped; the block still ends at its "}".
    let c = parse("vm a { memroy 1G }\nvm b {}\n").unwrap_err();
    assert_eq!(strings(&c), ["vm.conf:1: syntax error near \"memroy\""]);
}

#[test]
fn all_errors_in_one_pass() {
    let text = "\
vm a {
    memroy 1G
    cpus 0
    disk /x format zip
}
bogus
vm a {
    memory 1Q
}
switch s {
}
vm c { interface { switch t } }
";
    assert_eq!(
        errs(text),
        [
            "vm.conf:2: syntax error near \"memroy\"",
            "vm.conf:3: invalid cpus: 0 (must be 1 to 254)",
            "vm.conf:4: unrecognized disk format zip",
            "vm.conf:6: syntax error near \"bogus\"",
            "vm.conf:7: vm \"a\" defined twice (first defined at vm.conf:1)",
            "vm.conf:8: invalid size \"1Q\": unknown unit \"Q\" (use B, K, M, G or T)",
            "vm.conf:10: switch \"s\" is missing interface name",
            "vm.conf:12: vm c: interface 0: unknown switch \"t\"",
        ]
    );
}

/// What a file says is quoted in messages, and those go to `vmd -n`'s terminal and
/// vmd's log: a control character in them is written as an escape, so a message stays
/// one line of visible characters (found by the `vmconf_parse` fuzz target: a raw
/// U+0003 came back in `syntax error near "..."`).
#[test]
fn messages_escape_control_characters() {
    assert_eq!(
        err1("vm a {\n \u{3} \n}"),
        "vm.conf:2: syntax error near \"\\x03\""
    );
    assert_eq!(
        err1("switch s {\n interface br0\n group \"g\u{1b}[31m\r\u{202e}\"\n}\n"),
        "vm.conf:3: invalid group name: g\\x1b[31m\\r\\u{202e}"
    );
    // Names shown with {:?} keep their own escapes; backslashes are left alone.
    assert_eq!(
        err1("switch \"\u{1b}\\\\\" {\n interface br0\n}\n"),
        "vm.conf:1: invalid switch name \"\\u{1b}\\\\\""
    );
    let d = Diagnostic {
        file: "a\nb".into(),
        line: 0,
        message: "x\u{85}".into(),
    };
    assert_eq!(d.to_string(), "a\\nb: x\\u{85}");
}

#[test]
fn syntax_error_forms() {
    assert_eq!(
        err1("vm a {\n memory 1G 2G\n}"),
        "vm.conf:2: syntax error near \"2G\""
    );
    assert_eq!(err1("vm a {\n ( \n}"), "vm.conf:2: syntax error near \"(\"");
    assert_eq!(err1("vm a {\n = \n}"), "vm.conf:2: syntax error near \"=\"");
    assert_eq!(err1("}\n"), "vm.conf:1: syntax error near \"}\"");
    assert_eq!(err1("{\n}\n"), "vm.conf:1: syntax error near \"{\"");
    assert_eq!(
        err1("vm a { } vm b { }\n"),
        "vm.conf:1: syntax error near \"vm\""
    );
    assert_eq!(err1("vm {\n}\n"), "vm.conf:1: syntax error near \"{\"");
    // Strings in a row make one, as in OpenBSD.
    assert_eq!(ok("vm a b {\n}\n").vms[0].name, "ab");
    assert_eq!(
        err1("vm a {\n memory 1G\n"),
        "vm.conf:3: unexpected end of file: missing \"}\" for vm \"a\" at line 1"
    );
    assert_eq!(
        err1("vm a {\n interface {\n group g\n}\n"),
        "vm.conf:5: unexpected end of file: missing \"}\" for vm \"a\" at line 1"
    );
    assert_eq!(
        err1("vm a {\n cdrom \"/x\n}\n"),
        "vm.conf:2: unterminated quoted string"
    );
    // A syntax error in a nested block skips that block's line only.
    assert_eq!(
        errs("vm a {\n interface {\n  switch\n  bad\n }\n memory 0\n}\n"),
        [
            "vm.conf:3: syntax error near end of line",
            "vm.conf:4: syntax error near \"bad\"",
            "vm.conf:6: invalid size \"0\": must be at least 2M",
        ]
    );
    // A syntax error before a block's "{" skips the whole block.
    assert_eq!(
        errs("vm a ( {\n memroy 1\n}\nvm b { cpus 0 }\n"),
        [
            "vm.conf:1: syntax error near \"(\"",
            "vm.conf:4: invalid cpus: 0 (must be 1 to 254)",
        ]
    );
}

// ---------------------------------------------------------------- macros

#[test]
fn macros_basic() {
    let c = ok("dir = \"/var/vm\"\n\
                mem=1G\n\
                n = 2\n\
                vm a {\n\
                 disk $dir \"/a.img\"\n\
                 memory $mem\n\
                 cpus $n\n\
                 cdrom $dir/x.iso\n\
                }\n");
    let v = &c.vms[0];
    assert_eq!(v.disks[0].path, PathBuf::from("/var/vm/a.img"));
    assert_eq!(v.memory, 1024 * M);
    assert_eq!(v.cpus, 2);
    // `$dir/x.iso`: the macro name ends at "/", and the rest joins it.
    assert_eq!(v.cdrom, p("/var/vm/x.iso"));
}

#[test]
fn macro_not_expanded_in_quotes() {
    let v = vm("x = 1\nvm a {\n kernel /k\n cmdline \"$x\"\n}");
    assert_eq!(v.cmdline.as_deref(), Some("$x"));
}

#[test]
fn macro_command_line_overrides_file() {
    let text = "mem = 1G\nvm a {\n memory $mem\n}\n";
    let fs = MemFiles::new();
    let c = parse_with(text, &macros(&[("mem", "4G")]), &fs).unwrap();
    assert_eq!(c.vms[0].memory, 4096 * M);
    let c = parse_with(text, &Options::default(), &fs).unwrap();
    assert_eq!(c.vms[0].memory, 1024 * M);
    // -D alone defines it.
    let c = parse_with("vm $name {}\n", &macros(&[("name", "db1")]), &fs).unwrap();
    assert_eq!(c.vms[0].name, "db1");
}

#[test]
fn macro_command_line_bad_name() {
    let e = parse_with("", &macros(&[("a b", "1"), ("", "2")]), &MemFiles::new()).unwrap_err();
    assert_eq!(
        strings(&e),
        [
            "-D: invalid macro name \"a b\"",
            "-D: invalid macro name \"\""
        ]
    );
}

#[test]
fn macro_undefined() {
    assert_eq!(
        err1("vm a {\n memory $mem\n}\n"),
        "vm.conf:2: macro 'mem' not defined"
    );
    assert_eq!(
        errs("vm a {\n $opts\n cpus 0\n}\n"),
        [
            "vm.conf:2: macro 'opts' not defined",
            "vm.conf:3: invalid cpus: 0 (must be 1 to 254)",
        ]
    );
    assert_eq!(err1("$x\n"), "vm.conf:1: macro 'x' not defined");
    assert_eq!(err1("a = $b\n"), "vm.conf:1: macro 'b' not defined");
    // Only definitions above count.
    assert_eq!(
        err1("vm a { cpus $n }\nn = 2\n"),
        "vm.conf:1: macro 'n' not defined"
    );
    assert_eq!(err1("vm a { cpus $ }\n"), "vm.conf:1: macro '' not defined");
}

#[test]
fn macro_inside_vm_block_expands_to_options() {
    let v = vm("opts = \"memory 2G\"\n\
                vm a {\n $opts\n cpus 3\n}\n");
    assert_eq!(v.memory, 2048 * M);
    assert_eq!(v.cpus, 3);
    // After an option that takes an optional name, a macro starting with a keyword is
    // read as options.
    let c = ok("sw = \"switch s\"\nswitch s { interface br0 }\nvm b { interface $sw }\n");
    assert_eq!(c.vms[0].interfaces[0].switch.as_deref(), Some("s"));
    // Whole statements too.
    let c = ok("s = \"switch x { interface br9 }\"\n$s\n");
    assert_eq!(c.switches[0].interface, "br9");
}

#[test]
fn macro_with_spaces_is_one_argument() {
    let v = vm("args = \"console=ttyS0 root=/dev/vda quiet\"\n\
                img = \"/var/vm/my disk.img\"\n\
                vm a {\n kernel /k\n cmdline $args\n disk $img\n}\n");
    assert_eq!(
        v.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda quiet")
    );
    assert_eq!(v.disks[0].path, PathBuf::from("/var/vm/my disk.img"));
    // A -D value with quotes in it: a single quoted string counts as its text.
    let c = parse_with(
        "vm a {\n kernel /k\n cmdline $args \"panic=1\"\n}\n",
        &macros(&[("args", "\"console=ttyS0 quiet\"")]),
        &MemFiles::new(),
    )
    .unwrap();
    assert_eq!(
        c.vms[0].cmdline.as_deref(),
        Some("console=ttyS0 quiet panic=1")
    );
    // A name with spaces is still refused.
    assert_eq!(
        err1("n = \"my vm\"\nvm $n {}\n"),
        "vm.conf:2: invalid vm name \"my vm\": contains whitespace"
    );
}

#[test]
fn macro_definitions() {
    // Redefinition in the file replaces; a macro may be defined from another.
    let v = vm("m = 1G\nm = 2G\nn = $m\nm = 3G\nvm a { memory $n }\n");
    assert_eq!(v.memory, 2048 * M);
    assert_eq!(
        err1("vm = 1\n"),
        "vm.conf:1: macro name \"vm\" is a reserved word"
    );
    assert_eq!(err1("a.b = 1\n"), "vm.conf:1: invalid macro name \"a.b\"");
    assert_eq!(err1("a = \n"), "vm.conf:1: syntax error near end of line");
    assert_eq!(err1("a = b c\n"), "vm.conf:1: syntax error near \"c\"");
    // In a macro's value, "$" is literal: macros do not nest.
    let v = vm("a = x\nb = \"kernel /k$a\"\nvm v { $b }\n");
    assert_eq!(v.kernel, p("/k$a"));
}

#[test]
fn unused_macro_warnings() {
    let (r, w) = parse_str_with_warnings(
        "vm.conf",
        "a = 1\nb = 2\nvm v { cpus $b }\n",
        &macros(&[("c", "x")]),
        &MemFiles::new(),
    );
    assert!(r.is_ok());
    assert_eq!(
        strings(&w),
        ["-D: macro 'c' not used", "vm.conf:1: macro 'a' not used"]
    );
}

// ---------------------------------------------------------------- include

#[test]
fn include_relative_to_includer() {
    let fs = MemFiles::new()
        .with(
            "/etc/vm.d/switches.conf",
            "switch s { interface br0 }\ninclude \"more/vms.conf\"\n",
        )
        .with(
            "/etc/vm.d/more/vms.conf",
            "mem = 2G\nvm b { interface switch s }\n",
        );
    let (r, _) = parse_file_with_warnings(
        std::path::Path::new("/etc/vm.conf"),
        &Options::default(),
        &fs.clone().with(
            "/etc/vm.conf",
            "vm a { cpus 2 }\ninclude \"vm.d/switches.conf\"\nvm c { memory $mem }\n",
        ),
    );
    let c = r.unwrap();
    assert_eq!(c.switches[0].line.file, "/etc/vm.d/switches.conf");
    let names: Vec<_> = c.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(c.vm("b").unwrap().line.file, "/etc/vm.d/more/vms.conf");
    assert_eq!(c.vm("b").unwrap().line.line, 2);
    // A macro defined in an included file is defined after the include.
    assert_eq!(c.vm("c").unwrap().memory, 2048 * M);
    // Absolute paths are used as they are.
    let fs = MemFiles::new().with("/abs.conf", "vm x {}\n");
    let c = parse_with("include \"/abs.conf\"\n", &Options::default(), &fs).unwrap();
    assert_eq!(c.vms[0].line.file, "/abs.conf");
    // A macro can name the file.
    let c = parse_with("f = \"/abs.conf\"\ninclude $f\n", &Options::default(), &fs).unwrap();
    assert_eq!(c.vms[0].name, "x");
}

#[test]
fn include_missing_file() {
    let fs = MemFiles::new().with("conf/a.conf", "\n\ninclude \"nope.conf\"\n");
    let e = parse_with(
        "vm x {}\ninclude \"conf/a.conf\"\n",
        &Options::default(),
        &fs,
    )
    .unwrap_err();
    assert_eq!(
        strings(&e),
        ["conf/a.conf:3: failed to include file \"conf/nope.conf\": No such file or directory"]
    );
    assert_eq!(err1("include \"\"\n"), "vm.conf:1: include: empty path");
    assert_eq!(
        err1("include \"x.conf\" {\n"),
        "vm.conf:1: syntax error near \"{\""
    );
}

/// `include "a.conf/"` asks for a directory: an error, in memory as on disk, naming
/// the path as written (found by the vmconf_parse fuzz target: `MemFiles` read the
/// file, while the real include failed with a message that named the file without
/// its slash).
#[test]
fn include_of_a_file_as_a_directory() {
    let fs = MemFiles::new().with("conf/a.conf", "vm a {}\n");
    for (asked, shown) in [("a.conf/", "a.conf/"), ("a.conf/.", "a.conf/")] {
        let e = parse_with(
            &format!("include \"conf/{asked}\"\n"),
            &Options::default(),
            &fs,
        )
        .unwrap_err();
        assert_eq!(
            strings(&e),
            [format!(
                "vm.conf:1: failed to include file \"conf/{shown}\": Not a directory"
            )]
        );
    }
}

#[test]
fn include_loops() {
    let fs = MemFiles::new()
        .with("a.conf", "vm a {}\ninclude \"b.conf\"\n")
        .with("b.conf", "\ninclude \"./a.conf\"\nvm b {}\n");
    let e = parse_with("include \"a.conf\"\n", &Options::default(), &fs).unwrap_err();
    assert_eq!(
        strings(&e),
        ["b.conf:2: include loop: a.conf -> b.conf -> a.conf"]
    );
    let fs = MemFiles::new().with("vm.conf", "include \"vm.conf\"\n");
    let e = parse_with("include \"vm.conf\"\n", &Options::default(), &fs).unwrap_err();
    assert_eq!(strings(&e), ["vm.conf:1: include loop: vm.conf -> vm.conf"]);
    // Including one file twice (not nested) is fine... except for what it defines twice.
    let fs = MemFiles::new().with("m.conf", "m = 1G\n");
    ok_with(
        "include \"m.conf\"\ninclude \"m.conf\"\nvm a { memory $m }\n",
        &fs,
    );
}

fn ok_with(text: &str, fs: &MemFiles) -> Config {
    parse_with(text, &Options::default(), fs).unwrap()
}

#[test]
fn errors_in_included_files() {
    let fs = MemFiles::new().with("inc.conf", "# included\nvm b {\n  memroy 1G\n}\n");
    let e = parse_with(
        "vm a { cpus 0 }\ninclude \"inc.conf\"\nvm c { cpus 0 }\n",
        &Options::default(),
        &fs,
    )
    .unwrap_err();
    assert_eq!(
        strings(&e),
        [
            "vm.conf:1: invalid cpus: 0 (must be 1 to 254)",
            "inc.conf:3: syntax error near \"memroy\"",
            "vm.conf:3: invalid cpus: 0 (must be 1 to 254)",
        ]
    );
    // An unterminated block in an included file ends with that file.
    let fs = MemFiles::new().with("inc.conf", "vm b {\n");
    let e = parse_with("include \"inc.conf\"\nvm c {}\n", &Options::default(), &fs).unwrap_err();
    assert_eq!(
        strings(&e),
        ["inc.conf:2: unexpected end of file: missing \"}\" for vm \"b\" at line 1"]
    );
}

// ---------------------------------------------------------------- instances

const PARENT: &str = "\
switch s { interface br0 }
vm \"base\" {
    disable
    kernel /k
    initrd /i
    cmdline \"quiet\"
    boot device disk
    cdrom /cd.iso
    memory 1G
    cpus 2
    disk /base.img
    interface tap5 { switch s\n lladdr fe:00:00:00:00:01\n locked lladdr\n group g }
    owner alice
    grace 9
    allow instance { memory, disk, interface, owner :lab }
}
";

#[test]
fn instance_inherits() {
    let c = ok(&format!("{PARENT}vm base instance copy {{\n}}\n"));
    let base = c.vm("base").unwrap();
    let copy = c.vm("copy").unwrap();
    assert_eq!(copy.instance_of.as_deref(), Some("base"));
    assert_eq!(copy.line.line, 20);
    assert!(!copy.enabled);
    assert_eq!(copy.kernel, base.kernel);
    assert_eq!(copy.initrd, base.initrd);
    assert_eq!(copy.cmdline, base.cmdline);
    assert_eq!(copy.boot_device, Some(BootDevice::Disk));
    assert_eq!(copy.cdrom, base.cdrom);
    assert_eq!(copy.memory, 1024 * M);
    assert_eq!(copy.cpus, 2);
    assert_eq!(copy.owner, base.owner);
    assert_eq!(copy.grace_secs, 9);
    assert_eq!(copy.allow_instance, base.allow_instance);
    assert_eq!(copy.instance_owner, base.instance_owner);
    // Not the parent's disks, nor its tap names or MAC addresses.
    assert!(copy.disks.is_empty());
    assert_eq!(
        copy.interfaces,
        vec![Interface {
            switch: Some("s".into()),
            locked: true,
            group: Some("g".into()),
            ..Interface::default()
        }]
    );
}

#[test]
fn instance_allowed_overrides() {
    let c = ok(&format!(
        "{PARENT}vm \"base\" instance \"copy\" {{\n\
         memory 2G\n\
         disk /copy.img\n\
         interface {{ switch s }}\n\
         local interface\n\
         owner bob\n\
         grace 1\n\
         }}\n"
    ));
    let copy = c.vm("copy").unwrap();
    assert_eq!(copy.memory, 2048 * M);
    assert_eq!(copy.disks[0].path, PathBuf::from("/copy.img"));
    assert_eq!(copy.interfaces.len(), 2);
    assert!(copy.interfaces[1].local);
    assert_eq!(copy.owner.as_ref().unwrap().to_string(), "bob");
    assert_eq!(copy.grace_secs, 1);
    // The parent is untouched.
    assert_eq!(c.vm("base").unwrap().memory, 1024 * M);
}

#[test]
fn instance_refused_overrides() {
    for (opt, line) in [
        ("boot", "boot /other"),
        ("boot", "kernel /other"),
        ("boot", "initrd /other"),
        ("boot", "cmdline \"x\""),
        ("boot", "boot device net"),
        ("cdrom", "cdrom /other.iso"),
        ("cpus", "cpus 1"),
        ("boot", "cpu family 6"),
        ("disable", "enable"),
        ("disable", "disable"),
        ("instance", "allow instance memory"),
    ] {
        let text = format!("{PARENT}vm base instance copy {{\n memory 2G\n {line}\n}}\n");
        let e = errs(&text);
        let want = format!("vm.conf:22: vm copy: instance may not change {opt}");
        assert!(e.contains(&want), "{line}: {e:#?}");
    }
    // A parent without `allow instance` allows nothing; each option is reported once.
    let text = "vm p {}\nvm p instance q {\n memory 1G\n memory 2G\n owner x\n disk /a\n interface\n interfaces 2\n}\n";
    assert_eq!(
        errs(text),
        [
            "vm.conf:3: vm q: instance may not change memory",
            "vm.conf:4: memory specified more than once",
            "vm.conf:5: vm q: instance may not change owner",
            "vm.conf:6: vm q: instance may not change disk",
            "vm.conf:7: vm q: instance may not change interface",
        ]
    );
    // An instance's disks are its own.
    assert_eq!(
        err1(&format!(
            "{PARENT}vm base instance copy {{\n disk /c.img\n disk \"/base.img\"\n}}\n"
        )),
        "vm.conf:22: vm copy: instance may not reuse disk \"/base.img\" of vm base"
    );
    // Changing nothing is always fine.
    ok("vm p {}\nvm p instance q {}\n");
}

#[test]
fn instance_errors() {
    assert_eq!(
        err1("vm nope instance q {\n}\n"),
        "vm.conf:1: vm q: parent vm \"nope\" not defined"
    );
    // The parent must come first.
    assert_eq!(
        err1("vm p instance q {}\nvm p {}\n"),
        "vm.conf:1: vm q: parent vm \"p\" not defined"
    );
    assert_eq!(
        err1("vm p {}\nvm p instance p {}\n"),
        "vm.conf:2: vm \"p\" defined twice (first defined at vm.conf:1)"
    );
    assert_eq!(
        err1("vm p {}\nvm p instance 7 {}\n"),
        "vm.conf:2: invalid vm name \"7\": all digits"
    );
    assert_eq!(
        err1("vm p {}\nvm p instance {}\n"),
        "vm.conf:2: syntax error near \"{\""
    );
}

#[test]
fn instances_of_instances() {
    let c = ok("vm p { allow instance { instance, memory } }\n\
                vm p instance q {}\n\
                vm q instance r { memory 1G }\n");
    let r = c.vm("r").unwrap();
    assert_eq!(r.instance_of.as_deref(), Some("q"));
    assert_eq!(r.memory, 1024 * M);
    assert_eq!(
        err1("vm p { allow instance memory }\nvm p instance q {}\nvm q instance r {}\n"),
        "vm.conf:3: vm r: parent \"q\" is an instance and does not allow instance"
    );
    // An instance may set its own `allow instance` only if allowed to.
    let c = ok("vm p { allow instance instance }\nvm p instance q { allow instance memory }\n");
    assert_eq!(c.vm("q").unwrap().allow_instance, [InstanceOption::Memory]);
}

// ---------------------------------------------------------------- misc

#[test]
fn diagnostic_display() {
    let d = Diagnostic {
        file: "/etc/vm.conf".into(),
        line: 7,
        message: "syntax error near \"memroy\"".into(),
    };
    assert_eq!(
        d.to_string(),
        "/etc/vm.conf:7: syntax error near \"memroy\""
    );
    let d = Diagnostic {
        line: 0,
        message: "No such file or directory".into(),
        ..d
    };
    assert_eq!(d.to_string(), "/etc/vm.conf: No such file or directory");
}

#[test]
fn missing_top_file() {
    let e = parse_file_with_warnings(
        std::path::Path::new("/etc/vm.conf"),
        &Options::default(),
        &MemFiles::new(),
    )
    .0
    .unwrap_err();
    assert_eq!(strings(&e), ["/etc/vm.conf: No such file or directory"]);
    let e = parse_file(
        std::path::Path::new("/nonexistent/vm.conf"),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e[0].line, 0);
    assert_eq!(e[0].file, "/nonexistent/vm.conf");
}

#[test]
fn serde_round_trip() {
    let c = ok(&format!(
        "local inet6 prefix fd12::/64\nsocket owner :vm\n{PARENT}vm base instance copy {{}}\n"
    ));
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains("\"local_prefix6\":\"fd12::/64\""), "{json}");
    assert!(
        json.contains("\"cpu\":{\"vendor\":null,\"family\":null,"),
        "{json}"
    );
    assert!(json.contains("\"allow_instance\":[\"disk\",\"interface\",\"memory\",\"owner\"]"));
    assert!(json.contains("\"boot_device\":\"disk\""));
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    let bad = json.replace("fd12::/64", "fd12::");
    assert!(serde_json::from_str::<Config>(&bad).is_err());
}

#[test]
fn cpu_model_json() {
    let v = vm("vm a { cpu vendor intel family 6 model 44 hide { cx16 xsave } }");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(
        json["cpu"],
        serde_json::json!({
            "vendor": "GenuineIntel", "family": 6, "model": 44, "stepping": null,
            "hide": ["cx16", "xsave"]
        })
    );
    assert_eq!(serde_json::from_value::<VmDef>(json.clone()).unwrap(), v);
    // A VmDef from before `cpu` existed still reads, as the host's CPU.
    let mut old = json;
    old.as_object_mut().unwrap().remove("cpu");
    assert!(serde_json::from_value::<VmDef>(old).unwrap().cpu.is_host());
    // So does a partial one.
    let c: CpuModel = serde_json::from_str(r#"{"family": 6}"#).unwrap();
    assert_eq!(c.family, Some(6));
}

#[test]
fn example_file() {
    let text = include_str!("../examples/vm.conf");
    let (r, warnings) =
        parse_str_with_warnings("vm.conf", text, &Options::default(), &MemFiles::new());
    let c = r.unwrap_or_else(|e| panic!("{:#?}", strings(&e)));
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(c.switches.len(), 2);
    assert_eq!(c.vms.len(), 3);
    assert_eq!(c.globals.staggered.parallel, Some(2));
    assert!(c.globals.socket_owner.is_some());
    let linux = c.vm("linux").unwrap();
    assert!(linux.kernel.is_some() && linux.initrd.is_some() && linux.cmdline.is_some());
    assert_eq!(linux.cpus, 2);
    assert_eq!(linux.cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!(linux.cpu.hide, ["cx16", "xsave"]);
    let lab1 = c.vm("lab1").unwrap();
    assert_eq!(lab1.instance_of.as_deref(), Some("openbsd"));
    assert!(!lab1.enabled);
    // -D overrides the file's macros.
    let c = parse_str(
        "vm.conf",
        text,
        &macros(&[("vmdir", "/srv/vm")]),
        &MemFiles::new(),
    )
    .unwrap();
    assert_eq!(
        c.vm("linux").unwrap().disks[0].path,
        PathBuf::from("/srv/vm/linux.img")
    );
}

/// Token soup: whatever the input, the parser ends, without panicking, and either succeeds
/// or reports at least one error, each at a line of the input.
#[test]
fn never_panics_or_hangs() {
    const PIECES: &[&str] = &[
        "vm",
        "switch",
        "instance",
        "interface",
        "local",
        "{",
        "}",
        "\n",
        "\n",
        " ",
        ",",
        "=",
        "\"",
        "'",
        "\\\n",
        "\\",
        "#",
        "$m",
        "$",
        "m",
        "=",
        "1G",
        "0",
        "-1",
        "disk",
        "memory",
        "allow",
        "owner",
        ":g",
        "lladdr",
        "locked",
        "boot",
        "device",
        "net",
        "include",
        "\"x.conf\"",
        "cpus",
        "grace",
        "prefix",
        "inet6",
        "staggered",
        "start",
        "parallel",
        "delay",
        "a",
        "tap0",
        "(",
        "é",
        "\0",
        "format",
        "qcow2",
        "switch s",
        "interfaces",
        "kernel",
        "cmdline",
        "\"a b\"",
        "sev",
        "socket",
        "up",
        "down",
        "enable",
        "disable",
    ];
    let fs = MemFiles::new().with("x.conf", "vm inc { memory $m }\ninclude \"x.conf\"\n");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let n = rnd() % 40;
        let mut text = String::new();
        for _ in 0..n {
            text.push_str(PIECES[(rnd() % PIECES.len() as u64) as usize]);
            if rnd() % 2 == 0 {
                text.push(' ');
            }
        }
        let lines = text.matches('\n').count() as u32 + 1;
        let opts = macros(&[("m", "2G")]);
        match parse_with(&text, &opts, &fs) {
            Ok(_) => {}
            Err(e) => {
                assert!(!e.is_empty());
                for d in &e {
                    if d.file == "vm.conf" {
                        assert!(d.line >= 1 && d.line <= lines, "{d} in {text:?}");
                    }
                }
            }
        }
    }
}

/// A chain of files, each including the next: `d/0.conf` includes `d/1.conf`, ... up to
/// `d/{n}.conf`, which defines a vm.
fn include_chain(n: usize) -> MemFiles {
    let mut fs = MemFiles::new();
    for i in 0..n {
        fs.insert(
            format!("d/{i}.conf"),
            format!("include \"{}.conf\"\n", i + 1),
        );
    }
    fs.with(format!("d/{n}.conf"), "vm deep {}\n")
}

#[test]
fn include_depth_is_bounded() {
    const DEPTH: usize = 16;
    // The top file includes d/0.conf: d/{n}.conf is nested n + 1 deep.
    let fs = include_chain(DEPTH - 1);
    let c = parse_with("include \"d/0.conf\"\n", &Options::default(), &fs).unwrap();
    assert_eq!(c.vms[0].line.file, "d/15.conf");
    let fs = include_chain(DEPTH);
    let e = parse_with("include \"d/0.conf\"\n", &Options::default(), &fs).unwrap_err();
    assert_eq!(
        strings(&e),
        ["d/15.conf:1: includes nested too deeply (more than 16 levels)"]
    );
    // A chain far deeper than the stack would take is just as quickly refused.
    let fs = include_chain(100_000);
    let e = parse_with("include \"d/0.conf\"\n", &Options::default(), &fs).unwrap_err();
    assert_eq!(
        strings(&e),
        ["d/15.conf:1: includes nested too deeply (more than 16 levels)"]
    );
}

#[test]
fn includes_are_bounded_in_all() {
    // Each of 8 levels includes the next 8 times: 8^8 files, were it not for the bound.
    let mut fs = MemFiles::new();
    for i in 0..8 {
        fs.insert(
            format!("f{i}.conf"),
            format!("include \"f{}.conf\"\n", i + 1).repeat(8),
        );
    }
    fs.insert("f8.conf", "# nothing\n");
    let e = parse_with("include \"f0.conf\"\n", &Options::default(), &fs).unwrap_err();
    assert!(!e.is_empty());
    assert!(
        e.iter()
            .all(|d| d.message == "more than 1024 files included in all"),
        "{:#?}",
        strings(&e)
    );
    // Bytes: 17 files of almost 1 MiB each.
    let big = format!("#{}\n", "x".repeat((1 << 20) - 2));
    let mut fs = MemFiles::new();
    let mut top = String::new();
    for i in 0..17 {
        fs.insert(format!("big{i}.conf"), big.clone());
        top.push_str(&format!("include \"big{i}.conf\"\n"));
    }
    let e = parse_with(&top, &Options::default(), &fs).unwrap_err();
    assert_eq!(
        strings(&e),
        ["vm.conf:17: failed to include file \"big16.conf\": more than 16 MiB included in all"]
    );
}

/// A fresh directory for tests that read real files.
fn real_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmconf-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(path: &std::path::Path) {
    let s = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(s.success());
}

/// Parses `path` in a thread, failing the test if that takes more than 10 s (a reader that
/// waits on a FIFO for a writer would wait for ever).
fn parse_file_bounded(path: &std::path::Path) -> Result<Config, Vec<Diagnostic>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(parse_file(&p, &Options::default()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("parsing {} did not finish in 10 s", path.display()))
}

#[test]
fn only_regular_files_are_read() {
    let d = real_dir("special");
    let fifo = d.join("fifo.conf");
    mkfifo(&fifo);
    let top = d.join("vm.conf");
    let cases = [
        (fifo.clone(), "a FIFO"),
        ("/dev/zero".into(), "a character device"),
        (d.clone(), "a directory"),
    ];
    for (target, what) in &cases {
        std::fs::write(
            &top,
            format!("vm a {{}}\ninclude \"{}\"\n", target.display()),
        )
        .unwrap();
        let e = parse_file_bounded(&top).unwrap_err();
        assert_eq!(
            strings(&e),
            [format!(
                "{}:2: failed to include file \"{}\": not a regular file (it is {what})",
                top.display(),
                target.display()
            )]
        );
        // The top file too, and through a symbolic link.
        let e = parse_file_bounded(target).unwrap_err();
        assert_eq!(
            strings(&e),
            [format!(
                "{}: not a regular file (it is {what})",
                target.display()
            )]
        );
        let link = d.join("link.conf");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let e = parse_file_bounded(&link).unwrap_err();
        assert_eq!(
            strings(&e),
            [format!(
                "{}: not a regular file (it is {what})",
                link.display()
            )]
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn file_size_is_capped() {
    let d = real_dir("size");
    let top = d.join("vm.conf");
    let inc = d.join("big.conf");
    // Exactly 1 MiB is read; a byte more is not.
    let text = format!("vm a {{}}\n#{}\n", "x".repeat((1 << 20) - 10));
    assert_eq!(text.len(), 1 << 20);
    std::fs::write(&inc, &text).unwrap();
    std::fs::write(&top, "include \"big.conf\"\n").unwrap();
    assert_eq!(parse_file_bounded(&top).unwrap().vms[0].name, "a");
    std::fs::write(&inc, format!("{text}\n")).unwrap();
    let e = parse_file_bounded(&top).unwrap_err();
    assert_eq!(
        strings(&e),
        [format!(
            "{}:1: failed to include file \"{}\": file too large (more than 1 MiB)",
            top.display(),
            inc.display()
        )]
    );
    // A sparse file of a terabyte is refused as quickly.
    let f = std::fs::File::create(&inc).unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    let e = parse_file_bounded(&inc).unwrap_err();
    assert_eq!(
        strings(&e),
        [format!(
            "{}: file too large (more than 1 MiB)",
            inc.display()
        )]
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn invalid_utf8_is_reported_at_its_line() {
    let d = real_dir("utf8");
    let top = d.join("vm.conf");
    let inc = d.join("inc.conf");
    std::fs::write(&inc, b"# fine: \xc3\xa9\nvm a {}\n# not: \xff\xfe\n").unwrap();
    std::fs::write(&top, "\ninclude \"inc.conf\"\n").unwrap();
    let e = parse_file_bounded(&top).unwrap_err();
    assert_eq!(strings(&e), [format!("{}:3: invalid UTF-8", inc.display())]);
    // The top file: the same, at its line.
    let e = parse_file_bounded(&inc).unwrap_err();
    assert_eq!(strings(&e), [format!("{}:3: invalid UTF-8", inc.display())]);
    std::fs::remove_dir_all(&d).unwrap();
}
