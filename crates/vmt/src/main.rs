//! `vmt`: see the library's documentation and vmt(8).

use std::process::ExitCode;

use clap::Parser;
use vmt::cli::{self, Cli, Command};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> ExitCode {
    use vmt::{detect, sys};

    let args = Cli::parse();
    if args.check {
        return ExitCode::from(args.check_config(&mut std::io::stderr().lock()));
    }
    if args.command == Some(Command::Status) {
        // Neither root nor the backdoor: the daemon's files.
        return ExitCode::from(cli::status(
            vmt::status::STATUS_FILE.as_ref(),
            vmt::status::PID_FILE.as_ref(),
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ));
    }
    // The daemon's configuration, checked before anything else is done.
    let config = if args.command.is_none() {
        match args.config() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(cli::EXIT_FAILURE);
            }
        }
    } else {
        None
    };
    // The signature decides nothing on its own (see detect::host): it says
    // how the host was found, and names the hypervisor when it is not one.
    let signature = detect::cpuid_signature();
    if let Err(e) = sys::ioperm_backdoor() {
        eprintln!("vmt: {e}");
        return ExitCode::from(cli::EXIT_FAILURE);
    }
    // SAFETY: ioperm above granted this process ports 0x5658..=0x565b, so
    // the port instructions do not fault (the permission is inherited
    // across the daemon's forks). Without a hypervisor the ports may
    // belong to hardware: the only access before the host is known is
    // GETVERSION's one 4-byte read of 0x5658, the probe vmware-checkvm and
    // NetBSD's vmt(4) make too (see detect::host).
    let mut bd = unsafe { guestrpc::x86::PortIo::new() };
    let host = match detect::host(signature, &mut bd) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("vmt: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    let Some(command) = args.command else {
        return daemon(bd, config.unwrap_or_default(), &args);
    };
    let code = cli::run(
        &command,
        &host,
        &mut bd,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// Set by SIGTERM and SIGINT: the daemon closes its channels and exits
/// within a second.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set by SIGHUP: the daemon reads its configuration again.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
extern "C" fn on_signal(sig: libc::c_int) {
    let flag = if sig == libc::SIGHUP { &RELOAD } else { &STOP };
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The daemon: detached (syslog) unless `-d` (standard error), holding
/// the pid file, the TCLO loop until a signal ends it; SIGHUP reads the
/// configuration again (`args` say where, and override it).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn daemon(mut bd: guestrpc::x86::PortIo, config: vmt::config::Config, args: &Cli) -> ExitCode {
    let foreground = args.foreground;
    use std::sync::atomic::Ordering;
    use vmt::daemon::{self, Daemon};
    use vmt::detach::{self, PidFile};
    use vmt::sys::{LinuxSystem, LogTarget};

    let (log, ready) = if foreground {
        (LogTarget::Stderr, None)
    } else {
        // Returns in the daemon only (the caller exits once it is ready).
        match detach::detach() {
            Ok(r) => (LogTarget::Syslog(vmt::syslog::Syslog::new("vmt")), Some(r)),
            Err(e) => {
                eprintln!("vmt: {e}");
                return ExitCode::from(cli::EXIT_FAILURE);
            }
        }
    };
    let pid_file = match PidFile::acquire(vmt::status::PID_FILE.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            match ready {
                Some(r) => r.fail(&e),
                None => eprintln!("vmt: {e}"),
            }
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let status_file = std::path::PathBuf::from(vmt::status::STATUS_FILE);
    let mut sys = LinuxSystem::default();
    sys.log = log;
    sys.status_file = Some(status_file.clone());
    sys.may_reboot = true;
    sys.may_set_clock = true;
    let mut d = Daemon::with_settings(sys, config.settings);
    apply(&mut d, config);
    if let Some(r) = ready {
        r.ok();
    }
    use vmt::daemon::System as _;
    d.sys.log(
        vmt::config::LogLevel::Info,
        &format!("started (pid {})", std::process::id()),
    );
    // Links and addresses: told by the kernel, not polled for. Without
    // the socket the NICs are still looked at every report period.
    let mut watcher = match vmt::netlink::Watcher::open() {
        Ok(w) => Some(w),
        Err(e) => {
            d.sys.log(
                vmt::config::LogLevel::Error,
                &format!("netlink: {e}; NIC changes are seen only every 30 s"),
            );
            None
        }
    };
    let wait = |t: std::time::Duration| match watcher.as_mut() {
        Some(w) => w.wait(t),
        None => {
            std::thread::sleep(t);
            false
        }
    };
    let mut wait = wait;
    daemon::start(&mut d, &mut bd);
    loop {
        daemon::serve(&mut d, &mut bd, &mut wait, &mut || {
            STOP.load(Ordering::Relaxed) || RELOAD.load(Ordering::Relaxed)
        });
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        RELOAD.store(false, Ordering::Relaxed);
        // A configuration that does not parse changes nothing: the daemon
        // goes on as it was, and says why, one line per error.
        match args.config() {
            Ok(c) => {
                apply(&mut d, c);
                d.sys
                    .log(vmt::config::LogLevel::Info, "configuration reloaded");
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    d.sys.log(vmt::config::LogLevel::Error, line);
                }
                d.sys.log(
                    vmt::config::LogLevel::Error,
                    "configuration not reloaded; keeping the running one",
                );
            }
        }
    }
    d.close(&mut bd);
    d.sys.log(vmt::config::LogLevel::Info, "exiting");
    let _ = std::fs::remove_file(&status_file);
    drop(pid_file);
    ExitCode::SUCCESS
}

/// Puts `config` into effect in the daemon: its power commands, log level,
/// NICs left out (looked at again at once) and tunables.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn apply(d: &mut vmt::daemon::Daemon<vmt::sys::LinuxSystem>, config: vmt::config::Config) {
    d.sys.halt = config.halt_command;
    d.sys.reboot = config.reboot_command;
    d.sys.log_level = config.log_level;
    if d.sys.exclude_nics != config.exclude_nics {
        d.sys.exclude_nics = config.exclude_nics;
        d.links_changed();
    }
    d.set_settings(config.settings);
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("vmt: runs only on x86-64 Linux");
    ExitCode::from(cli::EXIT_FAILURE)
}
