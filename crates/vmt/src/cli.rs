//! The command line, and running one command over a [`Backdoor`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use guestrpc::client::Backdoor;

use crate::config::{self, Config, FileErrors, LogLevel};
use crate::detect::Host;
use crate::ops;

/// Guest tools for VMware-compatible hosts (vmd, VMware).
#[derive(Debug, Parser)]
#[command(name = "vmt", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Run the daemon in the foreground, logging to standard error
    /// (without it, the daemon detaches and logs to syslog).
    #[arg(short = 'd')]
    pub foreground: bool,
    /// The configuration file [default: /etc/vmt.conf, if there is one].
    #[arg(short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Check the configuration file, print its errors, and exit.
    #[arg(short = 'n')]
    pub check: bool,
    /// Seconds between periodic clock syncs, 0 for none (overrides the
    /// file's clock_sync_period).
    #[arg(short = 'p', value_name = "SECONDS", value_parser = config::parse_seconds)]
    pub clock_sync_period: Option<Duration>,
    /// Seconds between polls while idle (overrides the file's
    /// poll_interval).
    #[arg(short = 'i', value_name = "SECONDS", value_parser = config::parse_poll_interval)]
    pub poll_interval: Option<Duration>,
    /// Log every request from the host too (log_level debug).
    #[arg(short = 'v')]
    pub verbose: bool,
    /// What to do; none: run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the backdoor's version, like vmware-checkvm; exit 1 unless it
    /// is a VMware-compatible host with backdoor version 6.
    Checkvm {
        /// Print the product (ESX Server, Workstation, ...) instead.
        #[arg(short = 'p')]
        product: bool,
    },
    /// Send one GuestRPC request and print the reply, like vmware-rpctool
    /// (e.g. 'info-get guestinfo.foo'); exit 1 when the host refuses it.
    Rpc {
        /// The request, as one argument.
        text: String,
    },
    /// Read or write guestinfo.KEY.
    #[command(subcommand)]
    Info(Info),
    /// Print what the running daemon last sent and did (its status file);
    /// exit 1 if it does not run.
    Status,
}

/// `vmt info ...`.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Info {
    /// Print the value of guestinfo.KEY (exit 1 if the host has none).
    Get {
        /// KEY or guestinfo.KEY.
        key: String,
    },
    /// Set guestinfo.KEY to VALUE.
    Set {
        /// KEY or guestinfo.KEY.
        key: String,
        /// The value (one argument; it may hold spaces).
        value: String,
    },
}

/// Exit status of a command that failed.
pub const EXIT_FAILURE: u8 = 1;

impl Cli {
    /// The daemon's configuration: the file (`-f`, or /etc/vmt.conf when
    /// there is one), then the flags over it.
    pub fn config(&self) -> Result<Config, FileErrors> {
        let mut c = match &self.file {
            Some(path) => config::load(path, true)?,
            None => config::load(config::DEFAULT_PATH.as_ref(), false)?,
        };
        if let Some(p) = self.clock_sync_period {
            c.settings.clock_sync_period = p;
        }
        if let Some(i) = self.poll_interval {
            c.settings.poll_interval = i;
        }
        if self.verbose {
            c.log_level = LogLevel::Debug;
        }
        Ok(c)
    }

    /// `vmt -n`: checks the configuration; its errors go to `err`, one
    /// `file:line: message` each (exit 1), or `configuration OK`.
    pub fn check_config(&self, err: &mut impl Write) -> u8 {
        match self.config() {
            Ok(_) => {
                let _ = writeln!(err, "configuration OK");
                0
            }
            Err(e) => {
                let _ = writeln!(err, "{e}");
                EXIT_FAILURE
            }
        }
    }
}

/// `vmt status`: the daemon's status file (`status_file`) on `out`, exit
/// 0, when the daemon that wrote it still holds its pid file
/// (`pid_file`). Otherwise a line on `err` and exit 1, the last status
/// still printed when there is one (a daemon that was killed).
pub fn status(
    status_file: &std::path::Path,
    pid_file: &std::path::Path,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let text = match std::fs::read_to_string(status_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(
                err,
                "vmt: the daemon is not running (no {})",
                status_file.display()
            );
            return EXIT_FAILURE;
        }
        Err(e) => {
            let _ = writeln!(err, "vmt: {}: {e}", status_file.display());
            return EXIT_FAILURE;
        }
    };
    let pid = crate::status::pid_of(&text);
    #[cfg(target_os = "linux")]
    let holder = crate::detach::holder(pid_file);
    #[cfg(not(target_os = "linux"))]
    let holder: Option<u32> = {
        let _ = pid_file;
        None
    };
    let code = match (pid, holder) {
        (Some(p), Some(h)) if p == h => 0,
        (Some(p), _) => {
            let _ = writeln!(
                err,
                "vmt: the daemon (pid {p}) is not running; its last status:"
            );
            EXIT_FAILURE
        }
        (None, _) => {
            let _ = writeln!(err, "vmt: {}: no pid line", status_file.display());
            return EXIT_FAILURE;
        }
    };
    let _ = out.write_all(text.as_bytes());
    code
}

/// Runs `command` against the host found by `detect::host`; what it prints
/// goes to `out`, errors (`vmt: ...`, one line) to `err`. Returns the exit
/// status: 0, or [`EXIT_FAILURE`].
pub fn run(
    command: &Command,
    host: &Host,
    bd: &mut impl Backdoor,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let result = match command {
        Command::Checkvm { product } => {
            let v = host.version;
            let line = if *product {
                v.product().to_owned()
            } else {
                v.to_string()
            };
            // vmware-checkvm fails on any version but 6.
            let _ = writeln!(out, "{line}");
            if v.good() {
                Ok(())
            } else {
                Err(format!(
                    "backdoor version {} (VMware tools require 6)",
                    v.version
                ))
            }
        }
        Command::Rpc { text } => ops::rpc(bd, text.as_bytes())
            .map(|reply| print_value(out, &reply))
            .map_err(|e| e.to_string()),
        Command::Info(Info::Get { key }) => ops::info_get(bd, key)
            .map(|value| print_value(out, &value))
            .map_err(|e| format!("info get {key}: {e}")),
        Command::Info(Info::Set { key, value }) => {
            ops::info_set(bd, key, value.as_bytes()).map_err(|e| format!("info set {key}: {e}"))
        }
        Command::Status => {
            return status(
                crate::status::STATUS_FILE.as_ref(),
                crate::status::PID_FILE.as_ref(),
                out,
                err,
            )
        }
    };
    match result {
        Ok(()) => 0,
        Err(msg) => {
            let _ = writeln!(err, "vmt: {}", one_line(&msg));
            EXIT_FAILURE
        }
    }
}

/// `msg` with control characters escaped (`\n`, `\u{1b}`): an error is
/// one line whatever the user or the host put into it.
fn one_line(msg: &str) -> String {
    msg.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The host's bytes as they are, then a newline (vmware-rpctool's output).
fn print_value(out: &mut impl Write, value: &[u8]) {
    let _ = out.write_all(value);
    let _ = out.write_all(b"\n");
}
