//! RPCI requests: parsing and replies (§4).
//!
//! Parsing rules, from what real guests send:
//! - the command name ends at the first space;
//! - text requests are cut at the first NUL (vmtoolsd sends its NUL, OpenBSD
//!   hostctl a whole NUL-padded 4 KiB buffer);
//! - `SetGuestInfo  9|10|11` keep their raw bytes: their value is binary
//!   (XDR; key 11 vmtoolsd's detailed OS header).
//!
//! Replies are `"1 "` + payload or `"0 "` + reason. `SetGuestInfo` must get
//! exactly `"1 "`: vmtoolsd counts the call as failed if anything follows.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};

use super::state::{StateChange, Uptime};
use super::Tools;
use crate::guestinfo::nicinfo::{decode_v3, Nic};
use crate::guestinfo::osinfo::decode_os_detailed;
use crate::guestinfo::{GuestInfoKey, SET_GUEST_INFO};
use crate::proto::{RPCI_ERR, RPCI_OK, RPCI_UNKNOWN_COMMAND};
use crate::text::{parse_u32, parse_u64, skip_spaces, split_word, trim, until_nul};

/// `info-set` without a value (the text real VMware and QEMU's patch use).
const ERR_TWO_ARGS: &[u8] = b"Two and exactly two arguments expected";
/// `info-get` of a key that is not set (observed on real VMware).
const ERR_NO_VALUE: &[u8] = b"No value found";
/// `info-set` of a key outside `guestinfo.` (our wording).
const ERR_INVALID_KEY: &[u8] = b"Invalid key";
/// `info-set` beyond the store's bounds (our wording).
const ERR_STORE_FULL: &[u8] = b"Guestinfo store full";
/// A request whose arguments do not parse (our wording).
const ERR_INVALID_ARGS: &[u8] = b"Invalid arguments";

fn ok(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RPCI_OK.len() + payload.len());
    v.extend_from_slice(RPCI_OK);
    v.extend_from_slice(payload);
    v
}

fn err(reason: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RPCI_ERR.len() + reason.len());
    v.extend_from_slice(RPCI_ERR);
    v.extend_from_slice(reason);
    v
}

/// Guest text as an owned string (invalid UTF-8 replaced).
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Non-empty trimmed text, as a string.
fn text_field(b: &[u8]) -> Option<String> {
    let t = trim(b);
    (!t.is_empty()).then(|| lossy(t))
}

fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    core::str::from_utf8(trim(b)).ok()?.parse().ok()
}

/// The first IPv4 address worth reporting: not loopback, not unspecified.
fn first_ipv4(nics: &[Nic]) -> Option<Ipv4Addr> {
    nics.iter()
        .flat_map(|n| n.addrs.iter())
        .find_map(|e| match e.addr {
            IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
            _ => None,
        })
}

impl Tools {
    pub(super) fn handle_rpci(&mut self, request: &[u8]) -> Vec<u8> {
        self.state.tools_present = true;

        // SetGuestInfo first, before the NUL cut would destroy binary values.
        if let (name, Some(rest)) = split_word(request) {
            if name == SET_GUEST_INFO.as_bytes() {
                return self.set_guest_info(rest);
            }
        }

        let text = until_nul(request);
        let (name, args) = split_word(text);
        let args = args.unwrap_or_default();
        match name {
            b"info-set" => self.info_set(args),
            b"info-get" => self.info_get(args),
            b"tools.set.version" => {
                if let Some(v) = parse_u32(split_word(skip_spaces(args)).0) {
                    self.state.tools_version = Some(v);
                }
                ok(b"")
            }
            b"tools.set.versiontype" => {
                let (version, kind) = split_word(skip_spaces(args));
                if let Some(v) = parse_u32(version) {
                    self.state.tools_version = Some(v);
                }
                self.state.tools_version_type = kind.and_then(parse_u32);
                ok(b"")
            }
            b"tools.os.statechange.status" => {
                let (ok_flag, state) = split_word(skip_spaces(args));
                match (parse_u32(ok_flag), state.and_then(parse_u32)) {
                    (Some(ok_flag), Some(state)) => {
                        self.state.last_state_change = Some(StateChange {
                            ok: ok_flag != 0,
                            state,
                            at_ms: self.now_ms,
                        });
                        ok(b"")
                    }
                    _ => err(ERR_INVALID_ARGS),
                }
            }
            // Only reached without arguments: refused by its own parser.
            b"SetGuestInfo" => self.set_guest_info(args),
            b"log" | b"vmx.capability.unified_loop" | b"SetGuestDiskInfo" => ok(b""),
            n if n.starts_with(b"tools.capability.") || n.starts_with(b"vmbackup.") => ok(b""),
            _ => RPCI_UNKNOWN_COMMAND.to_vec(),
        }
    }

    /// `info-set guestinfo.<key> <value>`: the value is everything after the
    /// first space following the key, and may be empty.
    fn info_set(&mut self, args: &[u8]) -> Vec<u8> {
        let (key, value) = split_word(skip_spaces(args));
        let Some(value) = value else {
            return err(ERR_TWO_ARGS);
        };
        let Some(name) = key.strip_prefix(b"guestinfo.").filter(|n| !n.is_empty()) else {
            return err(ERR_INVALID_KEY);
        };
        if self.store.set(name, value).is_err() {
            return err(ERR_STORE_FULL);
        }
        // vmt answers "Set_Option broadcastIP 1" with this key.
        if name == b"ip" {
            if let Some(ip) = parse_ipv4(value) {
                self.state.ipv4 = Some(ip);
            }
        }
        ok(b"")
    }

    /// `info-get guestinfo.<key>`.
    fn info_get(&self, args: &[u8]) -> Vec<u8> {
        let key = trim(split_word(skip_spaces(args)).0);
        key.strip_prefix(b"guestinfo.")
            .and_then(|name| self.store.get(name))
            .map_or_else(|| err(ERR_NO_VALUE), ok)
    }

    /// `SetGuestInfo  <key> <value>` on the raw request (after the name and
    /// its space). Always `"1 "` for a numeric key: the tools treat anything
    /// else as a failure and retry, and an unknown key is simply not stored.
    fn set_guest_info(&mut self, raw: &[u8]) -> Vec<u8> {
        let (key, value) = split_word(skip_spaces(raw));
        let Some(key) = parse_u32(until_nul(key)) else {
            return err(ERR_INVALID_ARGS);
        };
        let raw_value = value.unwrap_or_default();
        let key = GuestInfoKey::from_u32(key);
        let value = match key {
            Some(k) if k.is_binary() => raw_value,
            _ => until_nul(raw_value),
        };
        match key {
            Some(GuestInfoKey::DnsName) => self.state.hostname = text_field(value),
            Some(GuestInfoKey::IpAddress) => {
                if let Some(ip) = parse_ipv4(value) {
                    self.state.ipv4 = Some(ip);
                }
            }
            Some(GuestInfoKey::OsNameFull) => self.state.os_full_name = text_field(value),
            Some(GuestInfoKey::OsName) => self.state.os_name = text_field(value),
            // Modern vmtoolsd's one OS report: the names of keys 6 and 5
            // in a header, then the detailed data. Not understood: ignored,
            // as before.
            Some(GuestInfoKey::OsDetailed) => {
                if let Some(d) = decode_os_detailed(value) {
                    let some = |s: String| (!s.trim().is_empty()).then_some(s);
                    if let Some(n) = some(d.short_name) {
                        self.state.os_name = Some(n);
                    }
                    if let Some(n) = some(d.full_name) {
                        self.state.os_full_name = Some(n);
                    }
                    self.state.os_detailed = some(d.detailed);
                }
            }
            Some(GuestInfoKey::Uptime) => {
                if let Some(centis) = parse_u64(value) {
                    self.state.uptime = Some(Uptime {
                        centis,
                        at_ms: self.now_ms,
                    });
                }
            }
            Some(GuestInfoKey::IpAddressV3) => match decode_v3(value) {
                Ok(nics) => {
                    if let Some(ip) = first_ipv4(&nics) {
                        self.state.ipv4 = Some(ip);
                    }
                    self.state.nics = nics;
                    self.state.nicinfo_raw = None;
                }
                Err(_) => self.state.nicinfo_raw = Some(value.to_vec()),
            },
            _ => {}
        }
        ok(b"")
    }
}
