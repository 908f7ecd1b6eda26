//! What the host knows about the guest, from the tools' reports.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use crate::guestinfo::nicinfo::Nic;
use crate::tclo::PowerState;

/// The guest's last `tools.os.statechange.status` report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Whether the guest says the operation succeeded.
    pub ok: bool,
    /// The state number as sent (see [`StateChange::power_state`]).
    pub state: u32,
    /// Host time of the report (the `now_ms` given to `Tools::set_now`).
    pub at_ms: u64,
}

impl StateChange {
    /// The state as a [`PowerState`], when it is one of the five known.
    pub fn power_state(&self) -> Option<PowerState> {
        PowerState::from_u32(self.state)
    }
}

/// The guest's last uptime report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uptime {
    /// Uptime in 1/100 s, as sent (`SetGuestInfo  7`).
    pub centis: u64,
    /// Host time of the report.
    pub at_ms: u64,
}

impl Uptime {
    /// Whole seconds.
    pub fn secs(&self) -> u64 {
        self.centis / 100
    }
}

/// The guest as its tools describe it; what the VM process exposes to vmd.
///
/// Each field keeps the latest report; strings are the guest's bytes made
/// valid UTF-8 (invalid sequences replaced).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestState {
    /// Tools are running: a TCLO channel answered, or an RPCI arrived.
    pub tools_present: bool,
    /// From `tools.set.version` / `tools.set.versiontype` (vmt reports
    /// 2147483647, "unmanaged").
    pub tools_version: Option<u32>,
    /// The type from `tools.set.versiontype`.
    pub tools_version_type: Option<u32>,
    /// Host time of the last TCLO SEND (the guest's poll).
    pub last_poll_ms: Option<u64>,
    /// `SetGuestInfo  1`.
    pub hostname: Option<String>,
    /// The first IPv4 address: from `info-set guestinfo.ip`, `SetGuestInfo  2`
    /// or the first non-loopback IPv4 of a NicInfo report, whichever came last.
    pub ipv4: Option<Ipv4Addr>,
    /// All NICs from the last NicInfo report that decoded.
    pub nics: Vec<Nic>,
    /// The last NicInfo report when it did not decode (kept for debugging;
    /// cleared by one that does).
    pub nicinfo_raw: Option<Vec<u8>>,
    /// `SetGuestInfo  6`, or the short name of `SetGuestInfo  11`.
    pub os_name: Option<String>,
    /// `SetGuestInfo  5`, or the full name of `SetGuestInfo  11`.
    pub os_full_name: Option<String>,
    /// The detailed data (`name='value'` pairs) of `SetGuestInfo  11`.
    pub os_detailed: Option<String>,
    /// `SetGuestInfo  7`.
    pub uptime: Option<Uptime>,
    /// The last `tools.os.statechange.status`.
    pub last_state_change: Option<StateChange>,
}
