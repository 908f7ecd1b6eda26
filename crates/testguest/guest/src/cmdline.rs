//! The kernel command line: copied once at start-up into our own buffer
//! (the loader's copy lives in low memory we may reuse), then looked up as
//! whitespace-separated `key=value` words.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const MAX: usize = 4096;

struct Buf(UnsafeCell<[u8; MAX]>);
// SAFETY: written once by the BSP in `init` before any reader or AP exists.
unsafe impl Sync for Buf {}

static BUF: Buf = Buf(UnsafeCell::new([0; MAX]));
static LEN: AtomicUsize = AtomicUsize::new(0);

/// Copies the NUL-terminated command line at physical `addr` (0: none),
/// truncated to 4 KiB and to its longest valid UTF-8 prefix.
pub(crate) fn init(addr: u64) {
    if addr == 0 {
        return;
    }
    // SAFETY: called once, before anything reads BUF.
    let buf = unsafe { &mut *BUF.0.get() };
    let mut n = 0;
    while n < MAX {
        // SAFETY: the loader put the command line there; memory is mapped.
        let b = unsafe { crate::io::peek8(addr + n as u64) };
        if b == 0 {
            break;
        }
        buf[n] = b;
        n += 1;
    }
    let n = match core::str::from_utf8(&buf[..n]) {
        Ok(_) => n,
        Err(e) => e.valid_up_to(),
    };
    LEN.store(n, Ordering::Release);
}

/// The whole command line ("" if there is none).
pub fn get_all() -> &'static str {
    let n = LEN.load(Ordering::Acquire);
    // SAFETY: BUF[..n] was written before LEN and never changes again.
    let bytes = unsafe { &(&*BUF.0.get())[..n] };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// The value of the first `key=value` word, `Some("")` for a bare `key`.
pub fn get(key: &str) -> Option<&'static str> {
    get_all()
        .split_ascii_whitespace()
        .find_map(|word| match word.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if word == key => Some(""),
            _ => None,
        })
}

/// Parses decimal or `0x` hexadecimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `key=N` as a number, `default` when absent. A value that does not parse
/// is reported and replaced by the default (a test should see its typo).
pub fn get_u64(key: &str, default: u64) -> u64 {
    match get(key) {
        None => default,
        Some(v) => parse_u64(v).unwrap_or_else(|| {
            crate::println!("testguest: cmdline: bad number '{v}' for {key}, using {default}");
            default
        }),
    }
}
