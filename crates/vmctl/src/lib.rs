//! vmctl's parts, for its binary and its tests: the command line, a small
//! HTTP/1.1 client for vmd's Unix socket, the status table, the guestinfo
//! listing, the console relay, and disk image creation.

pub mod cli;
pub mod console;
pub mod create;
pub mod guestinfo;
pub mod http;
pub mod size;
pub mod table;

use std::io;

/// An OS error as strerror(3) says it, without Rust's "(os error N)".
pub fn os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
