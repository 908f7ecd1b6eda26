//! `/etc/vmt.conf` (vmt.conf(5)): one `keyword value` a line, `#` to the
//! end of a line a comment, blank lines ignored.
//!
//! | keyword | value | default |
//! |---|---|---|
//! | `clock_sync_period` | seconds, 0 = no periodic syncs | 60 |
//! | `clock_step_threshold` | seconds (decimals allowed) | 1 |
//! | `poll_interval` | seconds (decimals allowed), 0.01 to 60 | 1 |
//! | `halt_command` | a command, words split at blanks | none: the init's way |
//! | `reboot_command` | a command, words split at blanks | none: the init's way |
//! | `power_timeout` | seconds, 0 = never forced | 60 |
//! | `log_level` | `error`, `info` or `debug` | `info` |
//! | `exclude_nics` | shell patterns (`*`, `?`) of interfaces left out of the NIC report, or `none` | `docker* veth*` (vmtoolsd's) |
//!
//! A keyword given twice, an unknown keyword, a missing or malformed value
//! are errors, each reported as `file:line: message`; the daemon refuses a
//! file with errors.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::clock;
use crate::daemon::{Settings, POLL_INTERVAL, POWER_TIMEOUT};

/// Where the daemon reads its configuration unless `-f` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/vmt.conf";
/// The shortest poll interval accepted: a busy loop is not an option.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest: the host waits for answers to its requests.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// How much the daemon logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only problems.
    Error,
    /// Problems and events: power requests, suspend and resume, clock
    /// corrections (the default).
    Info,
    /// Also every request from the host.
    Debug,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(format!("log level '{s}' is not one of error, info, debug")),
        }
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The daemon's timing and thresholds.
    pub settings: Settings,
    /// Run on `OS_Halt`; `None`: the way the guest's init expects
    /// ([`crate::power`]).
    pub halt_command: Option<Vec<String>>,
    /// Run on `OS_Reboot`; `None`: the init's way.
    pub reboot_command: Option<Vec<String>>,
    /// How much it logs.
    pub log_level: LogLevel,
    /// Interfaces left out of the NIC report (shell patterns).
    pub exclude_nics: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            halt_command: None,
            reboot_command: None,
            log_level: LogLevel::Info,
            exclude_nics: crate::report::DEFAULT_EXCLUDE_NICS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// One error in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Errors with the file's name, one `file:line: message` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileErrors {
    /// The file.
    pub path: String,
    /// Its errors, in line order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.line == 0 {
                write!(f, "{}: {}", self.path, e.message)?;
            } else {
                write!(f, "{}:{}: {}", self.path, e.line, e.message)?;
            }
        }
        Ok(())
    }
}

/// Seconds, whole or with up to six decimals (`60`, `0.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a number of seconds");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || s.ends_with('.')
    {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!("'{s}': at most six decimals (microseconds)"));
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| format!("'{s}' is too large"))?
    };
    // Also keeps clock::decide's µs arithmetic far from overflow.
    if secs > 1_000_000_000 {
        return Err(format!("'{s}' is too large"));
    }
    let micros: u32 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    Ok(Duration::new(secs, micros * 1000))
}

/// A poll interval, in range.
pub fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&d) {
        return Err(format!(
            "poll interval {s} is out of range (0.01 to 60 seconds)"
        ));
    }
    Ok(d)
}

const KEYWORDS: [&str; 8] = [
    "clock_sync_period",
    "clock_step_threshold",
    "poll_interval",
    "halt_command",
    "reboot_command",
    "power_timeout",
    "log_level",
    "exclude_nics",
];

/// Parses a configuration file's text: the configuration, or every error.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split_once('#').map_or(raw, |(c, _)| c);
        let mut words = content.split_whitespace();
        let Some(key) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        let mut err = |message: String| errors.push(ConfigError { line, message });
        if !KEYWORDS.contains(&key) {
            err(format!("unknown keyword '{key}'"));
            continue;
        }
        if let Some(&(_, first)) = seen.iter().find(|(k, _)| *k == key) {
            err(format!("{key} given again (first on line {first})"));
            continue;
        }
        seen.push((key, line));
        let one = match (key, args.as_slice()) {
            ("halt_command" | "reboot_command", []) => {
                err(format!("{key} needs a command"));
                continue;
            }
            ("exclude_nics", []) => {
                err(format!("{key} needs patterns, or none"));
                continue;
            }
            ("exclude_nics", ["none"]) => {
                config.exclude_nics = Vec::new();
                continue;
            }
            ("exclude_nics", a) => {
                config.exclude_nics = a.iter().map(|s| s.to_string()).collect();
                continue;
            }
            ("halt_command", a) => {
                config.halt_command = Some(a.iter().map(|s| s.to_string()).collect());
                continue;
            }
            ("reboot_command", a) => {
                config.reboot_command = Some(a.iter().map(|s| s.to_string()).collect());
                continue;
            }
            (_, [one]) => *one,
            (_, []) => {
                err(format!("{key} needs a value"));
                continue;
            }
            (_, [_, extra, ..]) => {
                err(format!("{key} takes one value; '{extra}' is one too many"));
                continue;
            }
        };
        let s = &mut config.settings;
        let result = match key {
            "clock_sync_period" => parse_seconds(one).map(|d| s.clock_sync_period = d),
            "clock_step_threshold" => parse_seconds(one).map(|d| s.clock_step_threshold = d),
            "poll_interval" => parse_poll_interval(one).map(|d| s.poll_interval = d),
            "power_timeout" => parse_seconds(one).map(|d| s.power_timeout = d),
            "log_level" => one.parse().map(|l| config.log_level = l),
            _ => unreachable!("every keyword is handled"),
        };
        if let Err(m) = result {
            err(format!("{key}: {m}"));
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Reads and parses `path`. A missing file is the defaults when
/// `must_exist` is false (the default path), an error otherwise.
pub fn load(path: &Path, must_exist: bool) -> Result<Config, FileErrors> {
    let file_error = |message: String| FileErrors {
        path: path.display().to_string(),
        errors: vec![ConfigError { line: 0, message }],
    };
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
            file_error(format!(
                "not UTF-8 text (at byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok(Config::default())
        }
        Err(e) => return Err(file_error(e.to_string())),
    };
    parse(&text).map_err(|errors| FileErrors {
        path: path.display().to_string(),
        errors,
    })
}

// The defaults here and in the daemon are the same numbers.
const _: () = assert!(POLL_INTERVAL.as_secs() == 1);
const _: () = assert!(clock::DEFAULT_PERIOD.as_secs() == 60);
const _: () = assert!(POWER_TIMEOUT.as_secs() == 60);

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(usize, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.line, e.message))
            .collect()
    }

    #[test]
    fn empty_and_comments_are_the_defaults() {
        assert_eq!(parse(""), Ok(Config::default()));
        assert_eq!(
            parse("# vmt.conf\n\n   \t\n  # indented comment\n"),
            Ok(Config::default())
        );
    }

    #[test]
    fn every_keyword() {
        let c = parse(
            "clock_sync_period 300   # five minutes\n\
             clock_step_threshold 0.25\n\
             \tpoll_interval\t0.5\n\
             halt_command /usr/local/sbin/halt-hook -p now\n\
             reboot_command /sbin/reboot\n\
             power_timeout 120\n\
             log_level debug\n\
             exclude_nics veth* cni? tap0\n",
        )
        .unwrap();
        assert_eq!(c.exclude_nics, ["veth*", "cni?", "tap0"]);
        assert_eq!(
            parse("exclude_nics none\n").unwrap().exclude_nics,
            Vec::<String>::new()
        );
        assert_eq!(Config::default().exclude_nics, ["docker*", "veth*"]);
        assert_eq!(
            errors("exclude_nics\n"),
            [(1, "exclude_nics needs patterns, or none".into())]
        );
        assert_eq!(c.settings.clock_sync_period, Duration::from_secs(300));
        assert_eq!(c.settings.clock_step_threshold, Duration::from_millis(250));
        assert_eq!(c.settings.poll_interval, Duration::from_millis(500));
        assert_eq!(
            c.halt_command.unwrap(),
            ["/usr/local/sbin/halt-hook", "-p", "now"]
        );
        assert_eq!(c.reboot_command.unwrap(), ["/sbin/reboot"]);
        assert_eq!(c.settings.power_timeout, Duration::from_secs(120));
        assert_eq!(c.log_level, LogLevel::Debug);
        let c = parse("clock_sync_period 0\r\nlog_level error\r\n").unwrap();
        assert_eq!(c.settings.clock_sync_period, Duration::ZERO);
        assert_eq!(c.log_level, LogLevel::Error);
    }

    #[test]
    fn bad_lines_are_all_reported_with_their_numbers() {
        let text = "\
clock_sync_period 60\n\
clock_sync_period 30\n\
clock_sync_perod 30\n\
poll_interval\n\
poll_interval 0\n\
clock_step_threshold 1 2\n\
clock_step_threshold -1\n\
halt_command   # nothing\n\
log_level loud\n\
ClOcK_sync_period 5\n";
        assert_eq!(
            errors(text),
            [
                (2, "clock_sync_period given again (first on line 1)".into()),
                (3, "unknown keyword 'clock_sync_perod'".into()),
                (4, "poll_interval needs a value".into()),
                (5, "poll_interval given again (first on line 4)".into()),
                (
                    6,
                    "clock_step_threshold takes one value; '2' is one too many".into()
                ),
                (
                    7,
                    "clock_step_threshold given again (first on line 6)".into()
                ),
                (8, "halt_command needs a command".into()),
                (
                    9,
                    "log_level: log level 'loud' is not one of error, info, debug".into()
                ),
                (10, "unknown keyword 'ClOcK_sync_period'".into()),
            ]
        );
        assert_eq!(
            errors("poll_interval 0\nclock_step_threshold -1\n"),
            [
                (
                    1,
                    "poll_interval: poll interval 0 is out of range (0.01 to 60 seconds)".into()
                ),
                (
                    2,
                    "clock_step_threshold: '-1' is not a number of seconds".into()
                ),
            ]
        );
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1.000001"), Ok(Duration::new(1, 1000)));
        for bad in ["", ".", "1.", "1e3", "-1", "+1", "1.2.3", "0x10", "１"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_seconds("1.0000001")
            .unwrap_err()
            .contains("six decimals"));
        assert!(parse_seconds("99999999999999999999").is_err());
        assert!(parse_seconds("1000000001").is_err());
        assert!(parse_poll_interval("0.009").is_err());
        assert!(parse_poll_interval("61").is_err());
        assert_eq!(parse_poll_interval("60"), Ok(MAX_POLL_INTERVAL));
    }

    #[test]
    fn files() {
        let dir = std::env::temp_dir().join(format!("vmt-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.conf");
        assert_eq!(load(&missing, false), Ok(Config::default()));
        let e = load(&missing, true).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", missing.display())), "{e}");
        let bad = dir.join("bad.conf");
        std::fs::write(&bad, "log_level info\npoll_interval fast\nbogus\n").unwrap();
        assert_eq!(
            load(&bad, true).unwrap_err().to_string(),
            format!(
                "{p}:2: poll_interval: 'fast' is not a number of seconds\n\
                 {p}:3: unknown keyword 'bogus'",
                p = bad.display()
            )
        );
        std::fs::write(&bad, b"log_level \xff\n").unwrap();
        assert_eq!(
            load(&bad, true).unwrap_err().to_string(),
            format!("{}: not UTF-8 text (at byte 10)", bad.display())
        );
        let good = dir.join("good.conf");
        std::fs::write(&good, "clock_sync_period 0\n").unwrap();
        assert_eq!(
            load(&good, true).unwrap().settings.clock_sync_period,
            Duration::ZERO
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
