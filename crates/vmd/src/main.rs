//! vmd: the virtual machine daemon.
//!
//! Reads vm.conf, starts the enabled VMs (each in its own `vmm` process,
//! so a VM that crashes or is compromised takes nothing else with it),
//! and serves the control API on a Unix socket. SIGHUP reloads the
//! configuration; SIGTERM stops the VMs gracefully, then exits; SIGUSR2
//! exits leaving them running, for the next vmd to re-attach to.

mod api;
mod auth;
mod cgroup;
mod conn;
mod net;
mod netns;
mod persist;
mod pidns;
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
    /// VM number N's process runs confined as uid and gid BASE+N (vmm
    /// --confine); 0 leaves VM processes root and unconfined, for debugging.
    #[arg(long, value_name = "BASE", default_value_t = state::DEFAULT_VM_UID_BASE)]
    vm_uid_base: u32,
    /// Where running VMs are recorded, for a vmd started later to
    /// re-attach to them (default: the socket's path without `.sock`,
    /// /run/vmd for the default socket).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Run VM processes unlimited: no cgroup of their own (see vmd(8),
    /// SECURITY).
    #[arg(long)]
    no_cgroups: bool,
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

/// The control socket vmd made: its file's device and inode, recorded at
/// bind, so that vmd removes it at exit only if it is still the file there.
struct BoundSocket {
    dev: u64,
    ino: u64,
}

/// Binds the control socket. Only a socket is ever removed from `path`,
/// and only a stale one (nobody listening: connecting is refused), which
/// the bool reports; a live one, or anything else there, is an error and
/// is left alone.
fn bind(
    path: &Path,
    owner: Option<&vmconf::Owner>,
) -> Result<(std::os::unix::net::UnixListener, bool, BoundSocket), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let shown = path.display();
    let mut reclaimed = false;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "{shown}: exists and is not a socket ({}); not removing it",
                file_kind(&m)
            ));
        }
        Ok(m) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "{shown}: another vmd is listening (already running?)"
                ))
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                // Still the socket we looked at, not one that took its place?
                let same = std::fs::symlink_metadata(path).is_ok_and(|n| {
                    n.file_type().is_socket() && n.dev() == m.dev() && n.ino() == m.ino()
                });
                if !same {
                    return Err(format!(
                        "{shown}: changed while checking it; not removing it"
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("{shown}: cannot remove stale socket: {e}"))?;
                reclaimed = true;
            }
            Err(e) => {
                return Err(format!(
                    "{shown}: cannot tell whether a vmd listens there ({e}); not removing it"
                ))
            }
        },
    }
    // Created 0660 (no window with other modes), whatever the umask was.
    // SAFETY: umask(2) only; no other thread exists yet.
    let old = unsafe { libc::umask(0o117) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| format!("{shown}: {e}"))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let ours = BoundSocket {
        dev: m.dev(),
        ino: m.ino(),
    };
    let (uid, gid) = owner.map(auth::owner_ids).unwrap_or((Some(0), Some(0)));
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a plain syscall on a NUL-terminated path; lchown, so that
    // a symbolic link put in the socket's place is not followed. (Failing,
    // as it does for a vmd not run as root, leaves the socket the caller's.)
    unsafe { libc::lchown(c.as_ptr(), uid.unwrap_or(0), gid.unwrap_or(0)) };
    Ok((l, reclaimed, ours))
}

/// What a file that is not a socket is, in words.
fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "of an unknown type"
    }
}

/// Removes the control socket at exit, if it is still the one vmd bound
/// (another vmd may have taken the path since, or someone put something
/// else there).
fn remove_socket(path: &Path, ours: &BoundSocket) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && m.dev() == ours.dev && m.ino() == ours.ino => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("{}: cannot remove the socket: {e}", path.display());
            }
        }
        Ok(_) => tracing::warn!(
            "{}: no longer the socket vmd made; not removing it",
            path.display()
        ),
        Err(_) => {}
    }
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

/// One log record, one line: tracing's formatter hands a writer each record
/// whole, ending in a newline; a newline or carriage return inside it (from
/// a message that quotes what a user or guest sent) is written as `\n` /
/// `\r`, so that nobody can forge a line of vmd's log or a syslog entry.
struct OneLine<W: std::io::Write>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
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
    // Room for the connections vmd allows (see conn) and its VMs' files,
    // whatever soft limit it was started with (systemd's is 1024).
    let nofile = conn::raise_nofile();
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| persist::default_dir(&args.socket));
    // Bind before detaching, so a socket in use is an error the caller sees.
    let (listener, reclaimed, ours) = match bind(&args.socket, cfg.globals.socket_owner.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    // After the bind: a vmd that finds another on its socket leaves that
    // one's state alone.
    let state = match persist::StateDir::open(state_dir) {
        Ok(s) => s,
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
    // Confined VM processes are grandchildren (the process vmd starts
    // forks each into a PID namespace of its own, and exits): as a child
    // subreaper, vmd inherits them, and reaps each with its exit status.
    // (Set here, in the process that stays: fork does not pass it on.)
    // SAFETY: prctl with integer arguments.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let subreaper = (subreaper != 0).then(std::io::Error::last_os_error);
    let (filter, handle) = reload::Layer::new(level(false, args.verbose));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    if args.foreground {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_writer(|| OneLine(std::io::stderr())))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt.with_ansi(false)
                    .without_time()
                    .with_writer(|| OneLine(Syslog)),
            )
            .init();
    }
    let extra = args.verbose;
    if reclaimed {
        tracing::info!("{}: removed a stale socket", args.socket.display());
    }
    if let Some(e) = subreaper {
        tracing::warn!("cannot become a child subreaper: {e} (confined VMs' exits go unexplained)");
    }
    match nofile {
        Ok(n) => tracing::debug!("open files limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
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
    match rt.block_on(run(args, cfg, listener, ours, state, set_verbose)) {
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
    ours: BoundSocket,
    state: persist::StateDir,
    set_verbose: Arc<dyn Fn(bool) + Send + Sync>,
) -> Result<(), String> {
    // First, so that a signal sent once the socket answers is not taken
    // with its default action (SIGHUP's: exit).
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let listener = UnixListener::from_std(std_listener).map_err(|e| e.to_string())?;
    let default_state = state.dir == persist::default_dir(Path::new(::api::DEFAULT_SOCKET));
    let cgroups = cgroup::Cgroups::setup(args.no_cgroups, &state.dir, default_state);
    let daemon = Daemon::new(
        cfg,
        vmm_path(),
        args.file.clone(),
        args.macros.clone(),
        args.vm_uid_base,
        state.clone(),
        cgroups.clone(),
    );
    tracing::info!(socket = %args.socket.display(), "vmd started, {} vms configured", daemon.lock().vms.len());

    // The VMs a previous vmd left running, before anything is started
    // or answered: they keep their ids, and are not started again.
    daemon.net.take_over(state.take_bridges());
    daemon.adopt().await;
    // Switches first: VMs on them add their taps to the bridges.
    let switches = daemon.lock().switches.clone();
    for e in daemon.net.configure_switches(&switches).await {
        tracing::error!("{e}");
    }
    // Written now, not only when leaving: a vmd that is killed leaves
    // them to the next one as well.
    state.write_bridges(&daemon.net.created());
    tokio::spawn(start_enabled(daemon.clone()));

    let app = api::App {
        daemon: daemon.clone(),
        set_verbose,
    };
    // Connections are counted and bounded per user, and timed while a
    // request is read (conn); a request's body is read, within its own
    // bound, before its handler runs.
    let listener = conn::Listener::new(listener);
    let router = api::router(app)
        .layer(axum::middleware::from_fn(conn::read_body))
        .into_make_service_with_connect_info::<auth::Peer>();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let leave_running = loop {
        tokio::select! {
            _ = hup.recv() => { api::reload(&daemon); }
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = usr2.recv() => break true,
        }
    };
    if leave_running {
        // No request is served from here on: what is half done (a start)
        // finishes without us, and its VM is recorded already.
        server.abort();
        let n = daemon.lock().vms.values().filter(|v| v.running()).count();
        tracing::info!("exiting, leaving {n} VMs running for the next vmd");
        state.write_bridges(&daemon.net.created());
        remove_socket(&args.socket, &ours);
        return Ok(());
    }
    tracing::info!("shutting down");
    // Every VM at once; see Daemon::shutdown for the bound.
    daemon.shutdown().await;
    daemon.net.remove_created().await;
    cgroups.settle().await;
    cgroups.remove_dirs();
    state.write_bridges(&[]);
    server.abort();
    remove_socket(&args.socket, &ours);
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

#[cfg(test)]
mod tests {
    use super::OneLine;
    use std::io::Write;

    #[test]
    fn a_log_record_stays_one_line() {
        let mut w = OneLine(Vec::new());
        w.write_all(b"INFO vm \"a\nFAKE root logged in\r\" stopped\n")
            .unwrap();
        w.write_all(b"plain\n").unwrap();
        w.write_all(b"no end").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "INFO vm \"a\\nFAKE root logged in\\r\" stopped\nplain\nno end"
        );
    }
}
