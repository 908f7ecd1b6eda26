//! vmd: the virtual machine daemon.
//!
//! Reads vm.conf, starts the enabled VMs (each in its own `vmm` process,
//! so a VM that crashes or is compromised takes nothing else with it),
//! and serves the control API on a Unix socket. SIGHUP reloads the
//! configuration; SIGTERM stops the VMs gracefully, then exits.

mod api;
mod auth;
mod net;
mod state;
mod vmproc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::UnixListener;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

use crate::state::Daemon;

const DEFAULT_CONFIG: &str = "/etc/vm.conf";

#[derive(Parser, Debug)]
#[command(name = "vmd", version, about = "The virtual machine daemon")]
struct Args {
    /// Stay in the foreground and log to stderr.
    #[arg(short = 'd')]
    foreground: bool,
    /// Check the configuration file and exit.
    #[arg(short = 'n')]
    check: bool,
    /// More verbose logging (twice for debug).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Define macro NAME to VALUE, overriding the file's definition.
    #[arg(short = 'D', value_name = "NAME=VALUE", value_parser = parse_macro)]
    macros: Vec<(String, String)>,
    /// Configuration file.
    #[arg(short = 'f', value_name = "FILE", default_value = DEFAULT_CONFIG)]
    file: PathBuf,
    /// Control socket.
    #[arg(short = 's', value_name = "SOCKET", default_value = ::api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn parse_macro(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty macro name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn level(verbose: bool, extra: u8) -> EnvFilter {
    EnvFilter::new(match (verbose, extra) {
        (_, 2..) => "debug",
        (true, _) | (_, 1) => "info",
        _ => "warn,vmd=info",
    })
}

/// Where `vmm`, the per-VM process, lives: beside vmd, unless VMD_VMM says.
fn vmm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VMD_VMM") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vmm")))
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

/// Binds the control socket. A socket a live vmd answers on is refused; a
/// stale one (nobody listening) is reclaimed, which the bool reports.
fn bind(
    path: &Path,
    owner: Option<&vmconf::Owner>,
) -> Result<(std::os::unix::net::UnixListener, bool), String> {
    let shown = path.display();
    let mut reclaimed = false;
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("{shown}: another vmd is already listening there"));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("{shown}: cannot remove stale socket: {e}"))?;
        reclaimed = true;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| format!("{shown}: {e}"))?;
    let (uid, gid) = owner.map(auth::owner_ids).unwrap_or((Some(0), Some(0)));
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: plain syscalls on a NUL-terminated path we just created.
    unsafe {
        libc::chown(c.as_ptr(), uid.unwrap_or(0), gid.unwrap_or(0));
        libc::chmod(c.as_ptr(), 0o660);
    }
    Ok((l, reclaimed))
}

/// Detaches from the terminal: fork, setsid, stdio to /dev/null.
fn daemonize() -> Result<(), String> {
    // SAFETY: called before any thread exists; the parent exits at once.
    unsafe {
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error().to_string()),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
    }
    Ok(())
}

/// Log lines to syslog(3) (the journal on systemd hosts) when detached.
struct Syslog;

impl std::io::Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Ok(c) = std::ffi::CString::new(line) {
                // SAFETY: "%s" with one C string argument.
                unsafe {
                    libc::syslog(
                        libc::LOG_DAEMON | libc::LOG_INFO,
                        c"%s".as_ptr(),
                        c.as_ptr(),
                    )
                };
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = vmconf::Options {
        macros: args.macros.clone(),
    };
    let cfg = match vmconf::parse_file(&args.file, &opts) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    // Bind before detaching, so a socket in use is an error the caller sees.
    let (listener, reclaimed) = match bind(&args.socket, cfg.globals.socket_owner.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.foreground {
        if let Err(e) = daemonize() {
            eprintln!("vmd: {e}");
            return ExitCode::FAILURE;
        }
        // SAFETY: the identity string is static.
        unsafe { libc::openlog(c"vmd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    }
    let (filter, handle) = reload::Layer::new(level(false, args.verbose));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    if args.foreground {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_writer(std::io::stderr))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(false).without_time().with_writer(|| Syslog))
            .init();
    }
    let extra = args.verbose;
    if reclaimed {
        tracing::info!("{}: removed a stale socket", args.socket.display());
    }
    let set_verbose: Arc<dyn Fn(bool) + Send + Sync> = Arc::new(move |v| {
        let _ = handle.modify(|f| *f = level(v, extra));
    });

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, cfg, listener, set_verbose)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("vmd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    cfg: vmconf::Config,
    std_listener: std::os::unix::net::UnixListener,
    set_verbose: Arc<dyn Fn(bool) + Send + Sync>,
) -> Result<(), String> {
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let listener = UnixListener::from_std(std_listener).map_err(|e| e.to_string())?;
    let daemon = Daemon::new(cfg, vmm_path(), args.file.clone(), args.macros.clone());
    tracing::info!(socket = %args.socket.display(), "vmd started, {} vms configured", daemon.lock().vms.len());

    // Switches first: VMs on them add their taps to the bridges.
    let switches = daemon.lock().switches.clone();
    for e in daemon.net.configure_switches(&switches).await {
        tracing::error!("{e}");
    }
    tokio::spawn(start_enabled(daemon.clone()));

    let app = api::App {
        daemon: daemon.clone(),
        set_verbose,
    };
    let router = api::router(app).into_make_service_with_connect_info::<auth::Peer>();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { api::reload(&daemon); }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    // Every VM at once; see Daemon::shutdown for the bound.
    daemon.shutdown().await;
    daemon.net.remove_created().await;
    server.abort();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Starts the enabled configured VMs, `parallel` at a time with `delay`
/// between groups (`staggered start`).
async fn start_enabled(d: Arc<Daemon>) {
    let g = d.globals();
    let parallel = g
        .staggered
        .parallel
        .map(|p| p.max(1) as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let ids: Vec<u32> = d
        .lock()
        .vms
        .values()
        .filter(|v| v.def.enabled && !v.running())
        .map(|v| v.id)
        .collect();
    for (i, group) in ids.chunks(parallel).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(g.staggered.delay_secs)).await;
        }
        let starts = group.iter().map(|&id| {
            let d = d.clone();
            async move {
                if let Err(e) = d.start(id).await {
                    tracing::error!("{}", e.message());
                }
            }
        });
        for s in starts.collect::<Vec<_>>() {
            s.await;
        }
    }
}
