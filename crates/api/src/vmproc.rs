//! vmd <-> VM process. vmd starts `vmm --control-fd N ...`; on that socket
//! each side writes one JSON object per line. vmd sends [`Request`]s and
//! reads one [`Reply`] per request, in order; the VM process also sends
//! [`Reply::Event`]s whenever something vmd should know happens. The VM
//! process's exit status and its last `Exited` event tell how it ended.

use serde::{Deserialize, Serialize};

use crate::v1::Guestinfo;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Report state and what the guest tools said.
    Status,
    /// Tell the guest (OS_Suspend, if it has tools), then stop the vCPUs.
    Pause,
    /// Restart the vCPUs, then tell the guest (OS_Resume) so it resyncs.
    Resume,
    /// Graceful stop: OS_Halt through the tools (3 s to acknowledge, then
    /// `grace_secs` to power off), or the ACPI power button without tools
    /// (`grace_secs` to power off). `force`: power off at once.
    Stop { force: bool, grace_secs: u64 },
    /// All guestinfo variables: [`Reply::Guestinfo`].
    GuestinfoList,
    /// One guestinfo variable: [`Reply::GuestinfoValue`]. `key` as the
    /// API takes it (see `v1::guestinfo_key`).
    GuestinfoGet { key: String },
    /// Sets a guestinfo variable for the guest to read (`Reply::Ok`). The
    /// VM process checks key and value again (`v1::guestinfo_key`,
    /// `v1::check_guestinfo_value`) and refuses a set beyond its store's
    /// bounds.
    GuestinfoSet { key: String, value: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

/// What the guest tools reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    pub tools: bool,
    pub tools_version: Option<u32>,
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub addresses: Vec<String>,
    pub os_name: Option<String>,
    pub uptime_secs: Option<u64>,
    /// Each NIC with its addresses (`addresses` has them all, flattened).
    #[serde(default)]
    pub nics: Vec<crate::v1::GuestNic>,
    /// Milliseconds since the tools last polled.
    pub last_poll_ago_ms: Option<u64>,
    /// The last power state change the tools reported ("halt", "resume", ...).
    pub last_state_change: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Status {
        state: RunState,
        guest: Guest,
    },
    Error {
        message: String,
    },
    /// The answer to `GuestinfoList`: keys without `guestinfo.`.
    Guestinfo {
        vars: Guestinfo,
    },
    /// The answer to `GuestinfoGet`: None when the variable is not set.
    GuestinfoValue {
        value: Option<String>,
    },
    /// Not an answer: something happened.
    Event(Event),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The console pty's path, once, at start.
    Tty { path: String },
    /// The run state changed.
    State { state: RunState },
    /// The guest's tools reported something new (hostname, address, ...).
    Guest { guest: Guest },
    /// The VM ended; the process exits right after.
    Exited { reason: String },
}

/// With `--confine`, the process vmd starts puts the VM process into a
/// PID namespace of its own: it forks (the child is PID 1 there, the VM
/// process), writes this as the channel's first line, the child's pid as
/// vmd sees it, and exits. The child waits for that line to be written
/// before it goes on, so nothing comes before it. A process that fails
/// before forking writes nothing and exits with its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forked {
    pub forked: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Stop {
            force: false,
            grace_secs: 120,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"stop","force":false,"grace_secs":120}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let e = Reply::Event(Event::Tty {
            path: "/dev/pts/3".into(),
        });
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&s).unwrap(), e);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        let f = Forked { forked: 4242 };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(s, r#"{"forked":4242}"#);
        assert_eq!(serde_json::from_str::<Forked>(&s).unwrap(), f);
        // Not a reply, and no reply is one.
        assert!(serde_json::from_str::<Reply>(&s).is_err());
        assert!(serde_json::from_str::<Forked>(r#"{"kind":"ok"}"#).is_err());
    }

    #[test]
    fn guestinfo_wire_format() {
        let cases = [
            (Request::GuestinfoList, r#"{"op":"guestinfo_list"}"#),
            (
                Request::GuestinfoGet { key: "ip".into() },
                r#"{"op":"guestinfo_get","key":"ip"}"#,
            ),
            (
                Request::GuestinfoSet {
                    key: "role".into(),
                    value: "db".into(),
                },
                r#"{"op":"guestinfo_set","key":"role","value":"db"}"#,
            ),
        ];
        for (r, want) in cases {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(s, want);
            assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        }
        let vars: Guestinfo = [("ip".to_owned(), "10.0.0.5".to_owned())].into();
        let cases = [
            (
                Reply::Guestinfo { vars },
                r#"{"kind":"guestinfo","vars":{"ip":"10.0.0.5"}}"#,
            ),
            (
                Reply::GuestinfoValue {
                    value: Some(String::new()),
                },
                r#"{"kind":"guestinfo_value","value":""}"#,
            ),
            (
                Reply::GuestinfoValue { value: None },
                r#"{"kind":"guestinfo_value","value":null}"#,
            ),
        ];
        for (r, want) in cases {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(s, want);
            assert_eq!(serde_json::from_str::<Reply>(&s).unwrap(), r);
        }
        // A set needs its value (an empty one is a value).
        assert!(serde_json::from_str::<Request>(r#"{"op":"guestinfo_set","key":"k"}"#).is_err());
    }
}
