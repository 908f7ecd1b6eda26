//! What the daemon last did, for `vmt status`: a small state file that the
//! daemon rewrites (write and rename, so a reader never sees half of it)
//! whenever something in it changes, and removes when it exits.
//!
//! One `key value` line each, in this order, absent keys left out:
//!
//! | key | value |
//! |---|---|
//! | `pid` | the daemon's process id |
//! | `started` | when it started (UTC, ISO 8601) |
//! | `channel` | `starting`, `open`, or `failing: <problem>` (the TCLO channel) |
//! | `channel_since` | since when |
//! | `hostname`, `ip` | the host name and IPv4 address last sent (and acknowledged) |
//! | `os` | the OS's full name last sent |
//! | `nic` | one line per NIC last sent: `eth0 52:54:00:12:34:56 10.0.0.2/24 fe80::1/64` |
//! | `reported` | when one of them was last sent (the uptime, sent every 30 s, is not counted) |
//! | `clock` | the last sync: `stepped by +3600.000000 s`, `slewing by -0.005000 s`, `left alone: off by +0.000120 s` |
//! | `clock_source` | `GETTIMEFULL` or `GETTIME` |
//! | `clock_at` | when |
//! | `clock_note` | why the clock is not synced (an NTP daemon keeps it, a problem) |
//! | `request`, `request_at` | the host's last request and when it came |
//! | `power`, `power_at` | the halt or reboot under way, and how |
//!
//! Times are the guest's wall clock when the line was written (a clock
//! step later moves them all).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::clock::{self, Correction, Source};

/// Where the daemon writes its status.
pub const STATUS_FILE: &str = "/run/vmt.status";
/// Where the daemon's pid goes (locked while it runs: see `detach`).
pub const PID_FILE: &str = "/run/vmt.pid";

/// The TCLO channel's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ChannelState {
    /// Not opened yet.
    #[default]
    Starting,
    /// Open and answering.
    Open,
    /// Failing; the problem (the daemon retries).
    Failing(String),
}

/// The last clock sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSync {
    /// Host minus guest, µs.
    pub offset_us: i64,
    /// What was done about it.
    pub correction: Correction,
    /// Where the host's time came from.
    pub source: Source,
    /// When (guest wall clock, µs since the epoch).
    pub at_us: i64,
}

/// What the status file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The daemon's pid.
    pub pid: u32,
    /// When it started, µs since the epoch.
    pub started_us: i64,
    /// The TCLO channel.
    pub channel: ChannelState,
    /// Since when it is in that state.
    pub channel_since_us: i64,
    /// The host name last sent.
    pub hostname: Option<String>,
    /// The address last sent (`guestinfo.ip`).
    pub ip: Option<Ipv4Addr>,
    /// The OS's full name last sent.
    pub os: Option<String>,
    /// The NICs last sent, one summary each (`crate::report::Nic::summary`).
    pub nics: Vec<String>,
    /// When the guest was last reported.
    pub reported_us: Option<i64>,
    /// The last clock sync.
    pub clock: Option<ClockSync>,
    /// Why the clock is left alone, or what went wrong syncing it.
    pub clock_note: Option<String>,
    /// The host's last request, and when.
    pub request: Option<(String, i64)>,
    /// The power action under way, and when it started.
    pub power: Option<(String, i64)>,
}

impl Status {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |key: &str, value: &str| {
            let _ = writeln!(s, "{key} {}", one_line(value));
        };
        line("pid", &self.pid.to_string());
        line("started", &format_time(self.started_us));
        let channel = match &self.channel {
            ChannelState::Starting => "starting".to_owned(),
            ChannelState::Open => "open".to_owned(),
            ChannelState::Failing(why) => format!("failing: {why}"),
        };
        line("channel", &channel);
        line("channel_since", &format_time(self.channel_since_us));
        if let Some(h) = &self.hostname {
            line("hostname", h);
        }
        if let Some(ip) = self.ip {
            line("ip", &ip.to_string());
        }
        if let Some(os) = &self.os {
            line("os", os);
        }
        for n in &self.nics {
            line("nic", n);
        }
        if let Some(t) = self.reported_us {
            line("reported", &format_time(t));
        }
        if let Some(c) = &self.clock {
            let size = clock::format_offset(c.offset_us);
            let what = match c.correction {
                Correction::Step(_) => format!("stepped by {size}"),
                Correction::Slew(_) => format!("slewing by {size}"),
                Correction::None => format!("left alone: off by {size}"),
            };
            line("clock", &what);
            let source = match c.source {
                Source::GetTimeFull => "GETTIMEFULL",
                Source::GetTime => "GETTIME",
            };
            line("clock_source", source);
            line("clock_at", &format_time(c.at_us));
        }
        if let Some(n) = &self.clock_note {
            line("clock_note", n);
        }
        if let Some((r, t)) = &self.request {
            line("request", r);
            line("request_at", &format_time(*t));
        }
        if let Some((p, t)) = &self.power {
            line("power", p);
            line("power_at", &format_time(*t));
        }
        s
    }
}

/// `value` with control characters escaped, so that it stays on its line
/// whatever the guest's host name or the host's request hold.
fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// µs since the Unix epoch as UTC in ISO 8601, to the second:
/// `2026-12-07T14:00:01Z`.
pub fn format_time(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The `pid` line of a status file's text.
pub fn pid_of(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
}

/// Writes `text` to `path` through a temporary file beside it and a
/// rename, so readers see the old file or the new one, never a part.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(S - 1), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_time(951_782_400 * S), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_796_655_601 * S + 999), "2026-12-07T15:00:01Z");
        assert_eq!(format_time(4_102_444_799 * S), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn a_fresh_status_and_a_full_one() {
        let t = 1_796_655_601 * S;
        let mut st = Status {
            pid: 42,
            started_us: t,
            channel_since_us: t,
            ..Status::default()
        };
        assert_eq!(
            st.render(),
            "pid 42\nstarted 2026-12-07T15:00:01Z\nchannel starting\n\
             channel_since 2026-12-07T15:00:01Z\n"
        );
        st.channel = ChannelState::Failing("tclo: GuestRPC send failed".into());
        st.hostname = Some("web\n1".into());
        st.ip = Some(Ipv4Addr::new(192, 0, 2, 10));
        st.reported_us = Some(t + S);
        st.clock = Some(ClockSync {
            offset_us: 3600 * S,
            correction: Correction::Step(3600 * S),
            source: Source::GetTimeFull,
            at_us: t + 2 * S,
        });
        st.clock_note = Some("chronyd (pid 321) keeps the time".into());
        st.request = Some(("OS_Halt".into(), t + 3 * S));
        st.power = Some(("halt: systemctl poweroff".into(), t + 3 * S));
        let text = st.render();
        assert_eq!(
            text,
            "pid 42\n\
             started 2026-12-07T15:00:01Z\n\
             channel failing: tclo: GuestRPC send failed\n\
             channel_since 2026-12-07T15:00:01Z\n\
             hostname web\\n1\n\
             ip 192.0.2.10\n\
             reported 2026-12-07T15:00:02Z\n\
             clock stepped by +3600.000000 s\n\
             clock_source GETTIMEFULL\n\
             clock_at 2026-12-07T15:00:03Z\n\
             clock_note chronyd (pid 321) keeps the time\n\
             request OS_Halt\n\
             request_at 2026-12-07T15:00:04Z\n\
             power halt: systemctl poweroff\n\
             power_at 2026-12-07T15:00:04Z\n"
        );
        assert_eq!(pid_of(&text), Some(42));
        assert_eq!(pid_of("channel open\n"), None);
        for (c, line) in [
            (Correction::Slew(-5_000), "clock slewing by -0.005000 s"),
            (Correction::None, "clock left alone: off by -0.005000 s"),
        ] {
            st.clock = Some(ClockSync {
                offset_us: -5_000,
                correction: c,
                source: Source::GetTime,
                at_us: t,
            });
            let text = st.render();
            assert!(
                text.contains(&format!("\n{line}\nclock_source GETTIME\n")),
                "{text}"
            );
        }
    }

    #[test]
    fn written_whole() {
        let dir = std::env::temp_dir().join(format!("vmt-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmt.status");
        write_atomically(&path, "pid 1\n").unwrap();
        write_atomically(&path, "pid 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid 2\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(write_atomically(&dir.join("no/such/dir"), "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
