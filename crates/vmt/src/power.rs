//! Halting and rebooting the guest the way its init expects.
//!
//! `OS_Halt` and `OS_Reboot` end in one of these ways, chosen by what runs
//! as PID 1 ([`detect`], [`way`]):
//!
//! - **systemd** (`/run/systemd/system` is a directory, the test
//!   sd_booted(3) makes): `systemctl poweroff` / `systemctl reboot`;
//! - **busybox init** (PID 1 is busybox, called as `init` or `linuxrc`):
//!   the signals busybox's own `poweroff` and `reboot` send it, SIGUSR2
//!   (power off) and SIGTERM (reboot); busybox's init.c answers them by
//!   running the inittab's `shutdown` actions, killing every process and
//!   calling reboot(2) (SIGUSR1 would only halt);
//! - **sysvinit** (a FIFO at `/run/initctl`, or the older
//!   `/dev/initctl`): the request `telinit 0` / `telinit 6` writes there
//!   (sysvinit's initreq.h), so the runlevel scripts run;
//! - **anything else** (OpenRC's or runit's init, a shell as PID 1): the
//!   system's own `poweroff` / `reboot` commands.
//!
//! OpenBSD's vmt(4) signals init the same way (SIGUSR2 to power off);
//! vmtoolsd runs `shutdown -h now`. A command configured in vmt.conf
//! replaces the choice, as powerd(8)'s scripts do. When the chosen way
//! fails, or the system is still up after `power_timeout`, the daemon
//! falls back to [`last_resort`]: sync(2) and reboot(2), which is what the
//! inits themselves end with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::daemon::Power;

/// What runs as PID 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// systemd.
    Systemd,
    /// busybox's init.
    Busybox,
    /// sysvinit, listening on this FIFO.
    SysV(PathBuf),
    /// Something else (or nothing could be read).
    Other,
}

/// sysvinit's FIFOs, newest first (Debian moved it to /run in 2.88).
pub const INITCTL_FIFOS: [&str; 2] = ["run/initctl", "dev/initctl"];

/// Tells which init runs: `root` is where `run/` and `dev/` are (`/`),
/// `init` the init's directory in proc (`/proc/1`).
pub fn detect(root: &Path, init: &Path) -> Init {
    if root.join("run/systemd/system").is_dir() {
        return Init::Systemd;
    }
    if is_busybox_init(init) {
        return Init::Busybox;
    }
    for fifo in INITCTL_FIFOS {
        let path = root.join(fifo);
        if is_fifo(&path) {
            return Init::SysV(path);
        }
    }
    Init::Other
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Busybox called as init: its executable is busybox, and its name
/// (argv\[0\]) `init` or `linuxrc`, or it was started as `busybox init`.
/// A shell that busybox provides is not (the Linux test fixture's `/init`
/// is a script, so PID 1 there is busybox's `sh`, which ignores every
/// signal it has no handler for).
fn is_busybox_init(init: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(init.join("exe")) else {
        return false;
    };
    if !exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("busybox"))
    {
        return false;
    }
    let Ok(cmdline) = std::fs::read(init.join("cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let name = |arg: &[u8]| -> Vec<u8> {
        arg.rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec()
    };
    let argv0 = name(args.next().unwrap_or_default());
    match argv0.as_slice() {
        b"init" | b"linuxrc" => true,
        a if a.starts_with(b"busybox") => args.next() == Some(b"init"),
        _ => false,
    }
}

/// One way of halting or rebooting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Way {
    /// Run this command (the first word found in `PATH`).
    Command(Vec<String>),
    /// Send `signal` to `pid` (busybox init).
    Signal {
        /// The init's pid (1, but for tests).
        pid: i32,
        /// SIGUSR2 or SIGTERM.
        signal: libc::c_int,
    },
    /// Write telinit's runlevel request (`b'0'` or `b'6'`) to sysvinit's
    /// FIFO.
    Initctl {
        /// `/run/initctl` or `/dev/initctl`.
        fifo: PathBuf,
        /// The runlevel, as the character telinit sends.
        runlevel: u8,
    },
}

/// The way to `action` for `init`, whose pid is `pid`.
pub fn way(init: &Init, pid: i32, action: Power) -> Way {
    let (systemctl, command, signal, runlevel) = match action {
        Power::Halt => ("poweroff", "poweroff", libc::SIGUSR2, b'0'),
        Power::Reboot => ("reboot", "reboot", libc::SIGTERM, b'6'),
    };
    match init {
        Init::Systemd => Way::Command(vec!["systemctl".into(), systemctl.into()]),
        Init::Busybox => Way::Signal { pid, signal },
        Init::SysV(fifo) => Way::Initctl {
            fifo: fifo.clone(),
            runlevel,
        },
        Init::Other => Way::Command(vec![command.into()]),
    }
}

impl fmt::Display for Way {
    /// For the log: `systemctl poweroff`, `SIGUSR2 to pid 1 (busybox
    /// init)`, `runlevel 0 through /run/initctl (sysvinit)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Way::Command(argv) => f.write_str(&argv.join(" ")),
            Way::Signal { pid, signal } => {
                let name = match *signal {
                    libc::SIGUSR2 => "SIGUSR2".to_owned(),
                    libc::SIGTERM => "SIGTERM".to_owned(),
                    s => format!("signal {s}"),
                };
                write!(f, "{name} to pid {pid} (busybox init)")
            }
            Way::Initctl { fifo, runlevel } => write!(
                f,
                "runlevel {} through {} (sysvinit)",
                char::from(*runlevel),
                fifo.display()
            ),
        }
    }
}

impl Way {
    /// Starts it: a command is spawned (and returned, for the caller to
    /// reap and check), a signal sent, a request written. An error says
    /// why it could not start.
    pub fn start(&self) -> Result<Option<Child>, String> {
        match self {
            Way::Command(argv) => {
                let (prog, args) = argv.split_first().ok_or("an empty command")?;
                Command::new(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .spawn()
                    .map(Some)
                    .map_err(|e| format!("{prog}: {e}"))
            }
            Way::Signal { pid, signal } => {
                // SAFETY: kill has no memory effects.
                if unsafe { libc::kill(*pid, *signal) } != 0 {
                    return Err(format!("kill({pid}): {}", std::io::Error::last_os_error()));
                }
                Ok(None)
            }
            Way::Initctl { fifo, runlevel } => {
                write_initctl(fifo, &initctl_request(*runlevel))?;
                Ok(None)
            }
        }
    }
}

/// sysvinit's `INIT_MAGIC`.
pub const INIT_MAGIC: u32 = 0x0309_1969;
/// `INIT_CMD_RUNLVL`.
pub const INIT_CMD_RUNLVL: u32 = 1;
/// The size of `struct init_request`, which init reads whole.
pub const INIT_REQUEST_LEN: usize = 384;
/// Seconds between SIGTERM and SIGKILL when init kills the processes the
/// runlevel no longer has (telinit's default).
pub const INIT_SLEEPTIME: u32 = 5;

/// telinit's request to change to `runlevel` (the character, `b'0'`):
/// magic, command, runlevel, sleep time as native `int`s, then zeros.
pub fn initctl_request(runlevel: u8) -> [u8; INIT_REQUEST_LEN] {
    let mut req = [0u8; INIT_REQUEST_LEN];
    let fields = [
        INIT_MAGIC,
        INIT_CMD_RUNLVL,
        u32::from(runlevel),
        INIT_SLEEPTIME,
    ];
    for (dst, v) in req.chunks_exact_mut(4).zip(fields) {
        dst.copy_from_slice(&v.to_ne_bytes());
    }
    req
}

/// Writes `req` to the FIFO in one write (it is under PIPE_BUF, so init
/// reads it whole). Without a reader (init not listening) the open fails
/// at once rather than blocking.
fn write_initctl(fifo: &Path, req: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(fifo)
        .map_err(|e| format!("{}: {e}", fifo.display()))?;
    match f.write(req) {
        Ok(n) if n == req.len() => Ok(()),
        Ok(n) => Err(format!(
            "{}: wrote {n} of {} bytes",
            fifo.display(),
            req.len()
        )),
        Err(e) => Err(format!("{}: {e}", fifo.display())),
    }
}

/// The last resort: flushes the file systems (sync(2)) and powers off or
/// reboots at once (reboot(2)). Returns only if reboot(2) failed, with
/// its error. In a PID namespace other than the first, reboot(2) ends
/// only that namespace (its init dies of SIGINT for a power-off, SIGHUP
/// for a reboot), which is how the tests run it.
pub fn last_resort(action: Power) -> std::io::Error {
    let cmd = match action {
        Power::Halt => libc::RB_POWER_OFF,
        Power::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: sync and reboot have no memory effects; reboot returns
    // only when it failed.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake root: `run/`, `dev/`, and `proc/1` with an `exe` link and a
    /// `cmdline`.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let dir = std::env::temp_dir().join(format!("vmt-power-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for d in ["run", "dev", "proc/1"] {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            Root(dir)
        }
        fn init(&self, exe: &str, argv: &[&str]) -> &Self {
            let p = self.0.join("proc/1");
            let _ = std::fs::remove_file(p.join("exe"));
            std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
            let mut cmdline = Vec::new();
            for a in argv {
                cmdline.extend_from_slice(a.as_bytes());
                cmdline.push(0);
            }
            std::fs::write(p.join("cmdline"), cmdline).unwrap();
            self
        }
        fn fifo(&self, rel: &str) -> PathBuf {
            let path = self.0.join(rel);
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            path
        }
        fn detect(&self) -> Init {
            detect(&self.0, &self.0.join("proc/1"))
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn inits_are_told_apart() {
        let r = Root::new("detect");
        // Nothing readable: another init.
        assert_eq!(r.detect(), Init::Other);
        // Busybox as init, under its usual names.
        for argv in [
            &["/sbin/init"][..],
            &["init"],
            &["/linuxrc"],
            &["busybox", "init"],
        ] {
            r.init("/bin/busybox", argv);
            assert_eq!(r.detect(), Init::Busybox, "{argv:?}");
        }
        r.init("/bin/busybox.static", &["/sbin/init", "splash"]);
        assert_eq!(r.detect(), Init::Busybox);
        // Busybox's shell running a script as PID 1 is no init.
        r.init("/bin/busybox", &["/bin/sh", "/init"]);
        assert_eq!(r.detect(), Init::Other);
        r.init("/bin/busybox", &["busybox", "sh"]);
        assert_eq!(r.detect(), Init::Other);
        // sysvinit: its FIFO, /run's before /dev's.
        r.init("/sbin/init", &["/sbin/init"]);
        let dev = r.fifo("dev/initctl");
        assert_eq!(r.detect(), Init::SysV(dev));
        let run = r.fifo("run/initctl");
        assert_eq!(r.detect(), Init::SysV(run));
        // A regular file is no FIFO.
        std::fs::remove_file(r.0.join("run/initctl")).unwrap();
        std::fs::remove_file(r.0.join("dev/initctl")).unwrap();
        std::fs::write(r.0.join("run/initctl"), "").unwrap();
        assert_eq!(r.detect(), Init::Other);
        // systemd wins over everything (it serves /run/initctl too).
        r.fifo("dev/initctl");
        std::fs::create_dir_all(r.0.join("run/systemd/system")).unwrap();
        assert_eq!(r.detect(), Init::Systemd);
        r.init("/bin/busybox", &["init"]);
        assert_eq!(r.detect(), Init::Systemd);
    }

    #[test]
    fn ways_per_init_and_action() {
        let fifo = PathBuf::from("/run/initctl");
        let cases = [
            (Init::Systemd, Power::Halt, "systemctl poweroff"),
            (Init::Systemd, Power::Reboot, "systemctl reboot"),
            (
                Init::Busybox,
                Power::Halt,
                "SIGUSR2 to pid 1 (busybox init)",
            ),
            (
                Init::Busybox,
                Power::Reboot,
                "SIGTERM to pid 1 (busybox init)",
            ),
            (
                Init::SysV(fifo.clone()),
                Power::Halt,
                "runlevel 0 through /run/initctl (sysvinit)",
            ),
            (
                Init::SysV(fifo.clone()),
                Power::Reboot,
                "runlevel 6 through /run/initctl (sysvinit)",
            ),
            (Init::Other, Power::Halt, "poweroff"),
            (Init::Other, Power::Reboot, "reboot"),
        ];
        for (init, action, text) in cases {
            assert_eq!(way(&init, 1, action).to_string(), text, "{init:?}");
        }
        assert_eq!(
            way(&Init::Systemd, 1, Power::Halt),
            Way::Command(vec!["systemctl".into(), "poweroff".into()])
        );
        assert_eq!(
            way(&Init::Busybox, 7, Power::Reboot),
            Way::Signal {
                pid: 7,
                signal: libc::SIGTERM
            }
        );
    }

    /// telinit's request, byte for byte (sysvinit's struct init_request
    /// on x86-64: four ints, then 368 bytes of union).
    #[test]
    fn initctl_request_layout() {
        let req = initctl_request(b'0');
        assert_eq!(req.len(), 384);
        assert_eq!(req[..4], 0x0309_1969u32.to_le_bytes());
        assert_eq!(req[4..8], 1u32.to_le_bytes());
        assert_eq!(req[8..12], u32::from(b'0').to_le_bytes());
        assert_eq!(req[12..16], 5u32.to_le_bytes());
        assert!(req[16..].iter().all(|&b| b == 0));
        assert_eq!(initctl_request(b'6')[8], b'6');
    }

    /// The request through a real FIFO, as sysvinit reads it; and the
    /// error when nothing reads (no init listening).
    #[test]
    fn initctl_is_written_to_the_fifo() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let r = Root::new("initctl");
        let fifo = r.fifo("run/initctl");
        let way = Way::Initctl {
            fifo: fifo.clone(),
            runlevel: b'6',
        };
        let e = way.start().unwrap_err();
        assert!(e.starts_with(&format!("{}: ", fifo.display())), "{e}");
        // A reader, as init holds it open (non-blocking, so the open
        // does not wait for a writer).
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert!(way.start().unwrap().is_none());
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, initctl_request(b'6'));
    }

    /// Commands are spawned, not waited for; one that cannot start is an
    /// error at once.
    #[test]
    fn commands_are_spawned() {
        let mut child = Way::Command(vec!["sh".into(), "-c".into(), "exit 3".into()])
            .start()
            .unwrap()
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
        let e = Way::Command(vec!["/nonexistent/poweroff".into()])
            .start()
            .unwrap_err();
        assert!(e.starts_with("/nonexistent/poweroff: "), "{e}");
        assert!(Way::Command(vec![]).start().is_err());
    }

    /// A signal reaches its process (a child of ours standing in for
    /// init: SIGTERM ends it); one to a pid no process can have fails.
    #[test]
    fn signals_are_sent() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let way = Way::Signal {
            pid: child.id() as i32,
            signal: libc::SIGTERM,
        };
        assert!(way.start().unwrap().is_none());
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
        // Above the kernel's largest pid_max (2^22).
        let none = Way::Signal {
            pid: i32::MAX,
            signal: libc::SIGTERM,
        };
        let e = none.start().unwrap_err();
        assert!(e.starts_with(&format!("kill({}): ", i32::MAX)), "{e}");
    }
}
