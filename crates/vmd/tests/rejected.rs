//! A start request that is refused, or whose VM process fails, changes
//! nothing: a configured VM keeps its own settings (issue 12, item 8).

mod common;

use common::*;

#[test]
fn a_failed_start_with_overrides_leaves_the_configured_vm_as_it_was() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&format!(
        "vm \"a\" {{\n\tdisable\n\tkernel \"{}\"\n\tcmdline \"hostname=a poll_ms=200\"\n\tmemory 64M\n}}\n",
        guest("tools")
    ));
    let before = d.vm("a");
    let post = |body: &str| http(&d.sock, "POST", "/v1/vms", Some(body)).unwrap();

    // Refused while the overrides are checked: memory after a kernel.
    let (code, text) = post(r#"{"name":"a","kernel":"/nonexistent/k","memory":1}"#);
    assert_eq!(code, Some(400), "{text}");
    // An empty path is refused, not passed on as an empty argument.
    let (code, text) = post(r#"{"name":"a","initrd":""}"#);
    assert_eq!(code, Some(400), "{text}");
    assert!(text.contains("empty path"), "{text}");
    // Accepted, but the VM process cannot boot the kernel it names.
    let (code, text) = post(r#"{"name":"a","kernel":"/nonexistent/k","memory":134217728}"#);
    assert!(code.is_some_and(|c| c >= 400), "{code:?} {text}");

    let after = d.vm("a");
    assert_eq!(after.maxmem, before.maxmem, "{after:#?}");
    // A plain start boots the configured kernel.
    d.vmctl_ok(&["start", "a"]);
    let vm = d.wait_tools("a");
    assert_eq!(vm.hostname.as_deref(), Some("a"));
    assert_eq!(vm.maxmem, 64 << 20);
    let o = d.vmctl(&["stop", "-f", "-w", "a"]);
    assert!(o.ok(), "{o:?}");
}
