//! The control API's request bodies and the checks on them that live
//! outside vmd's binary (the `api`, `vmconf` and `cpumodel` crates), on
//! any bytes.
//!
//! The input is read as each of these:
//! - every request body vmd parses (`StartRequest` with its `CpuRequest`,
//!   `StopRequest`, `LoadRequest`, `ResetRequest`, `LogRequest`, and
//!   `GuestinfoValue`), as vmd's `body()` parses them: serde_json, an
//!   all-whitespace body meaning `{}` (but for `GuestinfoValue`, where it
//!   is an error);
//! - each line, as one message of the vmd <-> VM process channel
//!   (`vmproc::Reply`, which vmd reads from a VM process it does not
//!   trust, and `vmproc::Request`);
//! - the answers vmctl parses (`VmStatus`, `[VmStatus]`, `ConfigResult`,
//!   `Message`, `Error`, `Guestinfo`);
//! - as text (when it is UTF-8): a path's `{id}` or `{key}`, and the values
//!   vmctl and vmd check by the crates' rules: a VM name, a guestinfo key
//!   and value, a memory size, a MAC address, an owner, prefixes.
//!
//! Checked, besides no panic (and serde_json's own recursion limit
//! holding, ASan build):
//! - whatever parses serializes and parses back to the same value (the
//!   answer vmd builds from a request, vmctl's JSON, the JSON lines);
//! - a start request: a name `check_vm_name` takes matches the pattern,
//!   lengths and no-digits-only rule the OpenAPI document states; any
//!   name, id or path quoted in a message (`quote_vm_name`,
//!   `text::shorten`) is one line of visible characters and bounded; a CPU
//!   model the cpumodel checks accept is read back by a guest of that
//!   vendor as asked (CPUID leaf 1 encoded, then decoded);
//! - text: `text::escape` leaves nothing unprintable and can be undone
//!   (two names never show the same); `printable` and `shorten` leave
//!   nothing unprintable; a guestinfo key `guestinfo_key` takes is one a
//!   guest could name (not empty, no space, `/` or control character,
//!   within the size limit, one prefix at most) and the key given less one
//!   `guestinfo.`; a size `parse_size` takes is a whole number of MiB, at
//!   least 2M, and `format_size` gives it back; a MAC, an owner and
//!   prefixes print to what parses to them again.

#![no_main]

use std::fmt::Debug;

use api::text;
use api::v1::{
    check_guestinfo_value, guestinfo_key, ConfigResult, CpuRequest, Error, Guestinfo,
    GuestinfoValue, LoadRequest, LogRequest, Message, ResetRequest, StartRequest, StopRequest,
    VmStatus, GUESTINFO_MAX_KEY_VALUE, GUESTINFO_PREFIX,
};
use api::vmproc::{Reply, Request};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vmconf::{MAX_VM_NAME_LEN, MIB, MIN_MEMORY};

/// What may not reach a terminal raw (`api::text`'s set).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// `bytes` as `T`; if it parses, serialized and parsed again it is the
/// same value.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(bytes).ok()?;
    let json = serde_json::to_vec(&v).expect("what parsed serializes");
    let again: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!("{v:?} serialized as {} does not parse: {e}", String::from_utf8_lossy(&json))
    });
    assert_eq!(again, v, "JSON round trip");
    Some(v)
}

/// `s` quoted for a message, as vmd quotes what a client sent.
fn check_quoted(s: &str) {
    let q = vmconf::quote_vm_name(s);
    assert!(!q.chars().any(unprintable), "quote_vm_name: {q:?}");
    let short = text::shorten(s, MAX_VM_NAME_LEN);
    assert!(!short.chars().any(unprintable), "shorten: {short:?}");
    // At most 63 characters, each escaped to at most 10 (`\u{10ffff}`),
    // and the count.
    assert!(short.len() <= MAX_VM_NAME_LEN * 10 + 40, "shorten: {short:?}");
}

/// vmconf's VM name rule against what the OpenAPI document says of
/// `StartRequest.name`: 1 to 63 characters, `^[A-Za-z0-9][A-Za-z0-9._-]*$`
/// (and not digits only, in words).
fn check_name(name: &str) {
    let pattern = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let documented = pattern
        && (1..=MAX_VM_NAME_LEN).contains(&name.chars().count())
        && !name.bytes().all(|b| b.is_ascii_digit());
    assert_eq!(
        vmconf::check_vm_name(name).is_ok(),
        documented,
        "check_vm_name({name:?}) against the documented rule"
    );
    check_quoted(name);
}

/// A CPU model the checks accept is what a guest of that vendor reads.
fn check_cpu(cpu: &CpuRequest) {
    let vendor = cpu.vendor.as_deref().map(cpumodel::parse_vendor);
    if let Some(Ok(v)) = &vendor {
        let s = cpumodel::vendor_str(v);
        assert_eq!(cpumodel::parse_vendor(&s).as_ref(), Ok(v), "vendor {s:?}");
    }
    for name in cpu.hide.iter().flatten() {
        if let Some(f) = cpumodel::feature(name) {
            assert_eq!(f.name, name);
        }
        check_quoted(name);
    }
    let family = cpu.family.map(cpumodel::check_family);
    let model = cpu.model.map(cpumodel::check_model);
    let stepping = cpu.stepping.map(cpumodel::check_stepping);
    if let (Some(Ok(v)), Some(Ok(family)), Some(Ok(model))) = (&vendor, &family, &model) {
        if cpumodel::check_signature(Some(v), *family, *model).is_ok() {
            let sig = cpumodel::Signature {
                family: *family,
                model: *model,
                stepping: stepping.and_then(Result::ok).unwrap_or(0),
            };
            let eax = sig.encode(0);
            assert_eq!(
                cpumodel::Signature::decode(eax, v),
                sig,
                "vendor {:?}: encoded as {eax:#x}",
                cpumodel::vendor_str(v)
            );
        }
    }
}

fn check_start(req: &StartRequest) {
    check_name(&req.name);
    if let Some(p) = &req.instance_of {
        check_quoted(p);
    }
    let paths = [&req.kernel, &req.initrd, &req.cdrom, &req.boot_device];
    for p in paths.into_iter().flatten().chain(&req.disks).chain(&req.switches) {
        check_quoted(p);
    }
    if let Some(cpu) = &req.cpu {
        check_cpu(cpu);
    }
}

/// Undoes `text::escape`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next().expect("an escape ends a string") {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'x' => {
                let h: String = it.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&h, 16).expect("\\xHH")));
            }
            'u' => {
                assert_eq!(it.next(), Some('{'));
                let h: String = it.by_ref().take_while(|&c| c != '}').collect();
                let n = u32::from_str_radix(&h, 16).expect("\\u{H}");
                out.push(char::from_u32(n).expect("a character"));
            }
            e => panic!("unknown escape \\{e} in {s:?}"),
        }
    }
    out
}

fn check_text(s: &str) {
    let e = text::escape(s);
    assert!(!e.chars().any(unprintable), "escape: {e:?}");
    assert_eq!(unescape(&e), s, "escape is undone");
    let p = text::printable(s);
    assert!(!p.chars().any(unprintable), "printable: {p:?}");
    for n in [0, 8, MAX_VM_NAME_LEN] {
        let short = text::shorten(s, n);
        assert!(!short.chars().any(unprintable));
        if s.chars().count() <= n {
            assert_eq!(short, e);
        }
    }
    check_name(s);

    // A path's {key}, and the rest as its value.
    let (key, value) = s.split_once('=').unwrap_or((s, ""));
    if let Ok(k) = guestinfo_key(key) {
        assert!(!k.is_empty() && k.len() <= GUESTINFO_MAX_KEY_VALUE, "{k:?}");
        assert!(!k.contains([' ', '/']) && !k.chars().any(char::is_control));
        assert!(!k.starts_with(GUESTINFO_PREFIX), "{k:?}");
        assert!(key == k || key.strip_prefix(GUESTINFO_PREFIX) == Some(k));
        if check_guestinfo_value(k, value).is_ok() {
            assert!(!value.contains('\0'));
            assert!(k.len() + value.len() <= GUESTINFO_MAX_KEY_VALUE);
        }
    }

    if let Ok(n) = vmconf::parse_size(s) {
        assert!(n % MIB == 0 && n >= MIN_MEMORY, "parse_size({s:?}) = {n}");
        assert_eq!(vmconf::parse_size(&vmconf::format_size(n)), Ok(n));
    }
    if let Ok(mac) = vmconf::parse_lladdr(s) {
        assert_eq!(mac[0] & 1, 0, "a multicast address taken: {s:?}");
        assert_eq!(vmconf::parse_lladdr(&vmconf::format_lladdr(&mac)), Ok(mac));
    }
    if let Ok(o) = s.parse::<vmconf::Owner>() {
        assert_eq!(o.to_string().parse::<vmconf::Owner>(), Ok(o));
    }
    if let Ok(p) = s.parse::<vmconf::Ipv4Prefix>() {
        assert!(p.len <= 32);
        assert_eq!(p.to_string().parse::<vmconf::Ipv4Prefix>(), Ok(p));
    }
    if let Ok(p) = s.parse::<vmconf::Ipv6Prefix>() {
        assert!(p.len <= 128);
        assert_eq!(p.to_string().parse::<vmconf::Ipv6Prefix>(), Ok(p));
    }
}

fuzz_target!(|data: &[u8]| {
    // vmd's body(): an empty body is the type's defaults.
    let body: &[u8] = if data.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        data
    };
    if let Some(req) = round_trip::<StartRequest>(body) {
        check_start(&req);
    }
    if let Some(cpu) = round_trip::<CpuRequest>(body) {
        check_cpu(&cpu);
    }
    round_trip::<StopRequest>(body);
    if let Some(req) = round_trip::<LoadRequest>(body) {
        check_quoted(&req.path);
    }
    round_trip::<ResetRequest>(body);
    round_trip::<LogRequest>(body);
    // No defaults for a guestinfo value: an empty body is not an empty value.
    if let Some(v) = round_trip::<GuestinfoValue>(data) {
        let _ = check_guestinfo_value("k", &v.value);
    }

    for line in data.split(|&b| b == b'\n') {
        round_trip::<Reply>(line);
        round_trip::<Request>(line);
    }

    round_trip::<VmStatus>(data);
    round_trip::<Vec<VmStatus>>(data);
    round_trip::<ConfigResult>(data);
    round_trip::<Message>(data);
    round_trip::<Error>(data);
    round_trip::<Guestinfo>(data);

    if let Ok(s) = std::str::from_utf8(data) {
        check_text(s);
    }
});
