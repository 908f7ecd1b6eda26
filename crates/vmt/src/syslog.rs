//! Logging to syslog from the detached daemon: one message per line to the
//! `/dev/log` socket, facility `LOG_DAEMON`, in the format glibc's
//! syslog(3) sends and every syslog daemon (rsyslog, busybox syslogd,
//! journald's `/dev/log`) reads: `<PRI>Mmm dd hh:mm:ss vmt[PID]: text`.
//!
//! Written here rather than through libc's syslog(3) so that the socket
//! path can be a test's. Like glibc it tries a datagram socket, then a
//! stream socket (old syslog-ng setups; the message then ends in a NUL),
//! reconnects once when a send fails (the syslog daemon restarted), and
//! when no syslog daemon listens writes the line to the console instead
//! (glibc's `LOG_CONS`): a busybox guest without syslogd still shows what
//! vmt did.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;

use crate::config::LogLevel;

/// The socket syslog daemons listen on.
pub const SOCKET: &str = "/dev/log";
/// Where lines go when nothing listens there.
pub const CONSOLE: &str = "/dev/console";
/// `LOG_DAEMON`.
pub const FACILITY_DAEMON: u8 = 3 << 3;

/// A syslog severity for a log level: `LOG_ERR`, `LOG_INFO`, `LOG_DEBUG`.
pub fn severity(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 3,
        LogLevel::Info => 6,
        LogLevel::Debug => 7,
    }
}

enum Conn {
    Datagram(UnixDatagram),
    Stream(UnixStream),
}

/// A connection to the syslog daemon, opened when first needed.
pub struct Syslog {
    ident: String,
    socket: PathBuf,
    console: PathBuf,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog")
            .field("ident", &self.ident)
            .field("socket", &self.socket)
            .field("console", &self.console)
            .finish_non_exhaustive()
    }
}

impl Syslog {
    /// Messages tagged `ident[PID]` to `/dev/log`, else `/dev/console`.
    pub fn new(ident: &str) -> Syslog {
        Syslog::with_paths(ident, SOCKET.into(), CONSOLE.into())
    }

    /// The same with other paths (tests).
    pub fn with_paths(ident: &str, socket: PathBuf, console: PathBuf) -> Syslog {
        Syslog {
            ident: ident.to_owned(),
            socket,
            console,
            conn: None,
        }
    }

    /// The message for one line: `<PRI>timestamp ident[pid]: line`, the
    /// timestamp in local time as syslog(3) writes it.
    pub fn message(&self, level: LogLevel, line: &str) -> String {
        format!(
            "<{}>{} {}[{}]: {line}",
            FACILITY_DAEMON | severity(level),
            timestamp(),
            self.ident,
            std::process::id()
        )
    }

    /// Logs one line.
    pub fn log(&mut self, level: LogLevel, line: &str) {
        let msg = self.message(level, line);
        for _ in 0..2 {
            if self.conn.is_none() {
                self.conn = self.connect();
            }
            let sent = match &mut self.conn {
                Some(Conn::Datagram(s)) => s.send(msg.as_bytes()).is_ok(),
                Some(Conn::Stream(s)) => s
                    .write_all(msg.as_bytes())
                    .and_then(|()| s.write_all(b"\0"))
                    .is_ok(),
                None => break,
            };
            if sent {
                return;
            }
            self.conn = None;
        }
        // LOG_CONS: the console, without the priority.
        if let Ok(mut c) = std::fs::OpenOptions::new()
            .write(true)
            // Never the daemon's controlling terminal.
            .custom_flags(libc::O_NOCTTY)
            .open(&self.console)
        {
            let text = msg.split_once('>').map_or(msg.as_str(), |(_, t)| t);
            let _ = c.write_all(format!("{text}\r\n").as_bytes());
        }
    }

    fn connect(&self) -> Option<Conn> {
        if let Ok(s) = UnixDatagram::unbound() {
            match s.connect(&self.socket) {
                Ok(()) => return Some(Conn::Datagram(s)),
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {}
                Err(_) => return None,
            }
        }
        UnixStream::connect(&self.socket).ok().map(Conn::Stream)
    }
}

/// Now, in local time, as syslog(3) stamps it: `Dec  7 14:05:09`.
fn timestamp() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time with a null pointer only returns the time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: all-zero is a valid tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return "Jan  1 00:00:00".to_owned();
    }
    let month = MONTHS
        .get(usize::try_from(tm.tm_mon).unwrap_or(0))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{month} {:2} {:02}:{:02}:{:02}",
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmt-syslog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `<PRI>Mmm dd hh:mm:ss vmt[PID]: text`.
    fn check_format(msg: &str, pri: u8, text: &str) {
        let head = format!("<{pri}>");
        let rest = msg.strip_prefix(&head).unwrap_or_else(|| panic!("{msg:?}"));
        let (stamp, tail) = rest.split_at(15);
        let b = stamp.as_bytes();
        assert!(
            b[0].is_ascii_uppercase()
                && b[3] == b' '
                && (b[4] == b' ' || b[4].is_ascii_digit())
                && b[5].is_ascii_digit()
                && b[6] == b' '
                && b[9] == b':'
                && b[12] == b':',
            "{msg:?}"
        );
        assert_eq!(tail, format!(" vmt[{}]: {text}", std::process::id()));
    }

    #[test]
    fn messages_reach_a_datagram_socket_as_daemon_facility() {
        let d = dir("dgram");
        let sock = d.join("log");
        let server = UnixDatagram::bind(&sock).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut log = Syslog::with_paths("vmt", sock.clone(), d.join("console"));
        log.log(LogLevel::Info, "resumed");
        log.log(LogLevel::Error, "tclo: GuestRPC send failed; retrying");
        log.log(LogLevel::Debug, "tclo: ping");
        let mut buf = [0u8; 1024];
        for (pri, text) in [
            (30, "resumed"),
            (27, "tclo: GuestRPC send failed; retrying"),
            (31, "tclo: ping"),
        ] {
            let n = server.recv(&mut buf).unwrap();
            check_format(std::str::from_utf8(&buf[..n]).unwrap(), pri, text);
        }
        // The syslog daemon restarts (a new socket at the same path): the
        // next line reconnects and arrives.
        drop(server);
        std::fs::remove_file(&sock).unwrap();
        let server = UnixDatagram::bind(&sock).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        log.log(LogLevel::Info, "after the restart");
        let n = server.recv(&mut buf).unwrap();
        check_format(
            std::str::from_utf8(&buf[..n]).unwrap(),
            30,
            "after the restart",
        );
        assert!(!d.join("console").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stream_socket_gets_nul_terminated_messages() {
        use std::io::Read;
        let d = dir("stream");
        let sock = d.join("log");
        let server = UnixListener::bind(&sock).unwrap();
        let mut log = Syslog::with_paths("vmt", sock, d.join("console"));
        log.log(LogLevel::Info, "one");
        log.log(LogLevel::Info, "two");
        let (mut conn, _) = server.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.iter().filter(|&&b| b == 0).count() < 2 {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8(got).unwrap();
        let msgs: Vec<&str> = got.split_terminator('\0').collect();
        check_format(msgs[0], 30, "one");
        check_format(msgs[1], 30, "two");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Nothing listens: the line goes to the console, without the
    /// priority.
    #[test]
    fn without_a_syslog_daemon_lines_go_to_the_console() {
        let d = dir("console");
        let console = d.join("console");
        std::fs::write(&console, "").unwrap();
        let mut log = Syslog::with_paths("vmt", d.join("no-such-socket"), console.clone());
        log.log(LogLevel::Info, "halting: systemctl poweroff");
        let text = std::fs::read_to_string(&console).unwrap();
        let line = text.strip_suffix("\r\n").unwrap();
        check_format(&format!("<30>{line}"), 30, "halting: systemctl poweroff");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
