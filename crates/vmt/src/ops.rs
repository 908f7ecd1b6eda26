//! What the command line does, over any [`Backdoor`]: one RPCI channel per
//! request (opened, used and closed, as `vmware-rpctool` does), the
//! GETVERSION probe of `vmware-checkvm`.

use std::fmt;

use guestrpc::backdoor::{vmx_type, VERSION_MAGIC};
use guestrpc::client::{self, Backdoor};
use guestrpc::proto::{split_rpci_reply, MAX_MESSAGE};

/// The prefix of the keys `info get` / `info set` reach (§4: the host
/// accepts only `guestinfo.` keys).
pub const GUESTINFO_PREFIX: &str = "guestinfo.";

/// Why an RPCI request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcError {
    /// The channel itself failed (no free channel, the host dropped it, ...).
    Transport(client::Error),
    /// The host answered `0 <text>` (or something without the `1 ` prefix,
    /// which open-vm-tools calls "Invalid format"): the text, lossily UTF-8.
    Refused(String),
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Transport(e) => e.fmt(f),
            RpcError::Refused(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for RpcError {}

/// One RPCI request on a fresh channel; the payload of a `1 ...` reply
/// (without the prefix, up to the first NUL).
pub fn rpc(bd: &mut impl Backdoor, request: &[u8]) -> Result<Vec<u8>, RpcError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let reply = client::rpci(bd, request, &mut buf).map_err(RpcError::Transport)?;
    match split_rpci_reply(reply) {
        Ok(payload) => Ok(payload.to_vec()),
        Err(text) => Err(RpcError::Refused(
            String::from_utf8_lossy(text).into_owned(),
        )),
    }
}

/// A key as `info get` / `info set` take it: `foo` or `guestinfo.foo`, both
/// meaning `guestinfo.foo`; the full key. Empty names and names with
/// white space or control characters (which would split the request) are
/// refused.
pub fn guestinfo_key(key: &str) -> Result<String, String> {
    let name = key.strip_prefix(GUESTINFO_PREFIX).unwrap_or(key);
    if name.is_empty() {
        return Err(format!("bad key '{key}': empty"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "bad key '{key}': white space or control characters"
        ));
    }
    Ok(format!("{GUESTINFO_PREFIX}{name}"))
}

/// `info-get guestinfo.KEY`: the value. A key the host does not have is
/// `Refused("No value found")` (real VMware's and our host's wording).
pub fn info_get(bd: &mut impl Backdoor, key: &str) -> Result<Vec<u8>, RpcError> {
    let key = guestinfo_key(key).map_err(RpcError::Refused)?;
    rpc(bd, format!("info-get {key}").as_bytes())
}

/// `info-set guestinfo.KEY VALUE` (the value may hold spaces; it is
/// everything after the key's space, §4).
pub fn info_set(bd: &mut impl Backdoor, key: &str, value: &[u8]) -> Result<(), RpcError> {
    let key = guestinfo_key(key).map_err(RpcError::Refused)?;
    let mut request = format!("info-set {key} ").into_bytes();
    request.extend_from_slice(value);
    rpc(bd, &request).map(drop)
}

/// What GETVERSION told: the backdoor's version and the VMX type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// EAX: 6 on every VMware product and on our host.
    pub version: u32,
    /// ECX: the product (see [`Version::product`]).
    pub vmx_type: u32,
}

impl Version {
    /// Whether open-vm-tools would accept it (`VmCheck_GetVersion` requires
    /// version 6).
    pub fn good(&self) -> bool {
        self.version == VERSION_MAGIC
    }

    /// `vmware-checkvm -p`'s product names.
    pub fn product(&self) -> &'static str {
        match self.vmx_type {
            vmx_type::EXPRESS => "Express",
            vmx_type::ESX => "ESX Server",
            vmx_type::WGS => "GSX Server",
            vmx_type::WORKSTATION => "Workstation",
            vmx_type::WORKSTATION_ENTERPRISE => "Workstation Enterprise",
            _ => "Unknown",
        }
    }
}

impl fmt::Display for Version {
    /// `vmware-checkvm`'s line: `VMware software version 6 (good)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.good() { "good" } else { "bad" };
        write!(f, "VMware software version {} ({verdict})", self.version)
    }
}

/// GETVERSION (EBX = ~magic, `ECX[31:16]` = 0xFFFF); `None` when no
/// backdoor answered.
pub fn checkvm(bd: &mut impl Backdoor) -> Option<Version> {
    client::checkvm(bd).map(|(version, vmx_type)| Version { version, vmx_type })
}
