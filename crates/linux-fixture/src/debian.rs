//! Debian packages fetched and unpacked on demand.
//!
//! The fixture's user space is real Debian binaries (busybox-static,
//! open-vm-tools and the libraries they link), taken with `apt-get download`
//! and unpacked with `dpkg-deb -x`; nothing is installed on the host.
//!
//! Unpacked packages live in a cache outside the repository, so that they
//! survive `cargo clean` and are shared by every checkout on the machine:
//! `$VMD_FIXTURE_CACHE`, else `$XDG_CACHE_HOME/vmd-fixture`, else
//! `$HOME/.cache/vmd-fixture`. Layout under `debs/`:
//!
//! - `NAME_VERSION/root/`: the unpacked tree (`:` in the version written as
//!   `%3a`, as apt names its files);
//! - `NAME_VERSION/control`: the package's control file (its `Depends`);
//! - `NAME.index`: the version last unpacked for NAME and the state of apt's
//!   package lists at that time (see [`Package::fetch`]);
//! - `.lock`: serialises apt calls between concurrent test processes;
//! - `.tmp-*`: work directories, renamed into place when complete.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one apt call may take. `apt-get update` of Debian's lists and a
/// download of a few MB take seconds on a reachable mirror; a stalled one
/// should fail the test with a clear error, not hang it.
const APT_TIMEOUT: Duration = Duration::from_secs(300);
/// Local commands (`apt-cache`, `dpkg-deb`) read local files only.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// Library packages not fetched by [`fetch_with_libs`]: their libraries are
/// taken from the host instead.
///
/// Chosen: host libc. The library closure is computed with the host's
/// `ldd`, i.e. the host's dynamic loader. glibc's loader and `libc.so.6`
/// must come from the same build (they share `GLIBC_PRIVATE` symbols), so a
/// `libc6` package put on `LD_LIBRARY_PATH` next to the host's loader could
/// fail or, worse, resolve differently from the guest. Taking loader and libc
/// together from the host keeps them a matched pair, and the host runs the
/// same Debian release as the apt sources these packages come from, so the
/// other packages were built against this glibc. `libgcc-s1` and `libstdc++6`
/// are the compiler runtime that goes with it (every Rust toolchain host has
/// them) and follow the same rule.
pub const HOST_LIBRARY_PACKAGES: [&str; 3] = ["libc6", "libgcc-s1", "libstdc++6"];

/// What went wrong while fetching a package; `Display` names the step and
/// the package.
#[derive(Debug)]
pub enum Error {
    /// The package name is not a Debian package name.
    InvalidName(String),
    /// None of `VMD_FIXTURE_CACHE`, `XDG_CACHE_HOME`, `HOME` is set.
    NoCacheDir,
    /// A command could not be started, timed out or failed.
    Command {
        /// The command, e.g. `apt-get download`.
        command: String,
        /// The package it was run for.
        package: String,
        /// Its exit status and the end of what it printed.
        detail: String,
    },
    /// apt or dpkg printed something we could not use.
    Unexpected {
        /// The step, e.g. `apt-cache policy`.
        step: String,
        /// The package.
        package: String,
        /// What was wrong.
        detail: String,
    },
    /// A file operation in the cache failed.
    Io {
        /// What we were doing, e.g. `create`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The package.
        package: String,
        /// The cause.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName(name) => write!(f, "{name:?} is not a Debian package name"),
            Error::NoCacheDir => write!(
                f,
                "no cache directory for Debian packages: set VMD_FIXTURE_CACHE, XDG_CACHE_HOME or HOME"
            ),
            Error::Command {
                command,
                package,
                detail,
            } => {
                write!(f, "{command} {package} failed: {detail}")?;
                if command.starts_with("apt-get") {
                    write!(f, " (is a Debian package registry reachable?)")?;
                }
                Ok(())
            }
            Error::Unexpected {
                step,
                package,
                detail,
            } => write!(f, "{step} {package}: {detail}"),
            Error::Io {
                action,
                path,
                package,
                source,
            } => write!(
                f,
                "fetching {package}: cannot {action} {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One Debian package, unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    name: String,
    version: String,
    /// `debs/NAME_VERSION`.
    dir: PathBuf,
    /// `debs/NAME_VERSION/root`, the unpacked tree.
    root: PathBuf,
}

impl Package {
    /// The package apt offers as NAME's candidate, downloaded and unpacked
    /// into the cache unless it is there already.
    ///
    /// Cost of a repeated call: `NAME.index` records the version unpacked
    /// last and the modification time of `/var/lib/apt/lists`. The candidate
    /// version can only change when those lists change (`apt-get update`
    /// replaces files there, which changes the directory's mtime), so while
    /// the time is the same and the unpacked directory exists, the call
    /// returns without running anything. Otherwise `apt-cache policy` (local,
    /// no network) gives the candidate, and only a candidate not yet unpacked
    /// is downloaded. If apt cannot tell a candidate (no apt) or the download
    /// fails (no registry) but a version was unpacked before, that version
    /// is used, so the fixture works offline once fetched.
    pub fn fetch(name: &str) -> Result<Package, Error> {
        check_name(name)?;
        let debs = cache_dir()?.join("debs");
        create_dir_all(&debs, name)?;
        let stamp = lists_stamp();
        let indexed = read_index(&debs, name);
        if let Some((version, indexed_stamp)) = &indexed {
            let package = Package::at(&debs, name, version);
            if *indexed_stamp == stamp && package.dir.is_dir() {
                return Ok(package);
            }
        }
        let cached = indexed
            .map(|(version, _)| Package::at(&debs, name, &version))
            .filter(|p| p.dir.is_dir());

        let candidate = match candidate(name) {
            Ok(Some(version)) => Some(version),
            Ok(None) => None,
            Err(e) => match cached {
                Some(package) => return Ok(package),
                None => return Err(e),
            },
        };
        if let Some(version) = &candidate {
            let package = Package::at(&debs, name, version);
            if package.dir.is_dir() {
                write_index(&debs, name, version, &stamp)?;
                return Ok(package);
            }
        }

        // Download and unpack, one process at a time: apt-get update takes
        // apt's own lock and fails rather than waits, and two processes that
        // want the same package should download it once.
        let _lock = match Lock::acquire(&debs.join(".lock"), name) {
            Ok(lock) => lock,
            Err(e) => return cached.ok_or(e),
        };
        match download_and_unpack(&debs, name, candidate) {
            Ok(package) => {
                // Written after the apt-get update we may have run, so the
                // stamp is the lists' state the candidate was read from.
                write_index(&debs, name, &package.version, &lists_stamp())?;
                Ok(package)
            }
            Err(e) => cached.ok_or(e),
        }
    }

    fn at(debs: &Path, name: &str, version: &str) -> Package {
        let dir = debs.join(format!("{name}_{}", version.replace(':', "%3a")));
        Package {
            name: name.to_string(),
            version: version.to_string(),
            root: dir.join("root"),
            dir,
        }
    }

    /// The package name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The package version, as apt writes it (`2:12.2.0-1+deb12u4`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The unpacked tree: the package's `/usr/bin/x` is `root().join("usr/bin/x")`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directories of this package where shared libraries live
    /// (`lib/x86_64-linux-gnu`, `usr/lib/x86_64-linux-gnu`, `lib`, `usr/lib`),
    /// those that exist, in the order the dynamic loader searches them.
    pub fn lib_dirs(&self) -> Vec<PathBuf> {
        lib_dirs(&self.root)
    }

    /// The packages this one depends on (`Pre-Depends` and `Depends`), the
    /// first alternative of each, without versions or architectures.
    pub fn depends(&self) -> Result<Vec<String>, Error> {
        Ok(depends_alternatives(&self.control()?)
            .into_iter()
            .filter_map(|alts| alts.into_iter().next())
            .collect())
    }

    fn control(&self) -> Result<String, Error> {
        let path = self.dir.join("control");
        fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "read",
            path,
            package: self.name.clone(),
            source,
        })
    }
}

/// A package is a search root for `Initramfs::binary_with_libs`: its tree.
impl AsRef<Path> for Package {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}

/// The library directories under an unpacked tree, in the loader's order.
pub(crate) fn lib_dirs(root: &Path) -> Vec<PathBuf> {
    [
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib",
        "usr/lib",
    ]
    .iter()
    .map(|d| root.join(d))
    .filter(|d| d.is_dir())
    .collect()
}

/// NAME and the library packages it depends on, recursively, each fetched
/// with [`Package::fetch`]; NAME first, then breadth-first.
///
/// Only dependencies whose names start with `lib` are followed (the
/// libraries; not `iproute2`, `pciutils` and the like), except those in
/// [`HOST_LIBRARY_PACKAGES`], whose libraries come from the host (see
/// there). Of alternatives (`a | b`) the first library package that can be
/// fetched is taken. Non-`lib` runtime libraries (`zlib1g`) are resolved on
/// the host too; `ldd` in `Initramfs::binary_with_libs` finds them there.
pub fn fetch_with_libs(name: &str) -> Result<Vec<Package>, Error> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([vec![name.to_string()]]);
    while let Some(alternatives) = queue.pop_front() {
        if alternatives.iter().any(|a| seen.contains(a)) {
            continue;
        }
        let mut fetched = None;
        let mut first_error = None;
        for alt in &alternatives {
            match Package::fetch(alt) {
                Ok(p) => {
                    fetched = Some(p);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let package = match (fetched, first_error) {
            (Some(p), _) => p,
            (None, Some(e)) => return Err(e),
            (None, None) => continue,
        };
        seen.insert(package.name.clone());
        for alts in depends_alternatives(&package.control()?) {
            let libs: Vec<String> = alts
                .into_iter()
                .filter(|a| a.starts_with("lib") && !HOST_LIBRARY_PACKAGES.contains(&a.as_str()))
                .collect();
            if !libs.is_empty() && !libs.iter().any(|a| seen.contains(a)) {
                queue.push_back(libs);
            }
        }
        out.push(package);
    }
    Ok(out)
}

/// The cache directory: `$VMD_FIXTURE_CACHE`, else
/// `$XDG_CACHE_HOME/vmd-fixture`, else `$HOME/.cache/vmd-fixture`.
pub fn cache_dir() -> Result<PathBuf, Error> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("VMD_FIXTURE_CACHE") {
        return Ok(dir);
    }
    // The XDG spec says relative values are to be ignored.
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Ok(dir.join("vmd-fixture"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".cache").join("vmd-fixture"));
    }
    Err(Error::NoCacheDir)
}

/// Debian policy: lower-case letters, digits, `+ - .`, at least two
/// characters, starting with a letter or digit. Checked because the name
/// becomes a path component and a command argument (no `-option`).
fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Debian versions: `[epoch:]upstream[-revision]` of letters, digits and
/// `. + ~ - :`. Checked because the version becomes a path component.
fn check_version(name: &str, step: &str, version: &str) -> Result<(), Error> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Unexpected {
            step: step.to_string(),
            package: name.to_string(),
            detail: format!("{version:?} is not a Debian version"),
        })
    }
}

fn create_dir_all(path: &Path, package: &str) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "create",
        path: path.to_path_buf(),
        package: package.to_string(),
        source,
    })
}

/// The state of apt's package lists: the mtime of `/var/lib/apt/lists`, in
/// nanoseconds, or `none`.
fn lists_stamp() -> String {
    match fs::metadata("/var/lib/apt/lists") {
        Ok(m) => format!("{}.{:09}", m.mtime(), m.mtime_nsec()),
        Err(_) => "none".to_string(),
    }
}

/// `NAME.index`: two lines, version and lists stamp.
fn read_index(debs: &Path, name: &str) -> Option<(String, String)> {
    let text = fs::read_to_string(debs.join(format!("{name}.index"))).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?.to_string();
    let stamp = lines.next()?.to_string();
    check_version(name, "index", &version).ok()?;
    Some((version, stamp))
}

fn write_index(debs: &Path, name: &str, version: &str, stamp: &str) -> Result<(), Error> {
    // Written to a temporary file and renamed, so a concurrent reader sees
    // the old index or the new one, never half of one.
    let path = debs.join(format!("{name}.index"));
    let tmp = debs.join(format!(".tmp-{name}-{}.index", unique()));
    let io = |action, path: &Path, source| Error::Io {
        action,
        path: path.to_path_buf(),
        package: name.to_string(),
        source,
    };
    fs::write(&tmp, format!("{version}\n{stamp}\n")).map_err(|e| io("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("rename into place", &path, e)
    })
}

/// A name part unique to this process and call, for work files in the
/// shared cache.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The candidate version `apt-cache policy` shows, or `None` when apt knows
/// the name but has no candidate (or does not know it: no lists yet).
fn candidate(name: &str) -> Result<Option<String>, Error> {
    let out = run(
        Command::new("apt-cache").args(["policy", "--", name]),
        "apt-cache policy",
        name,
        LOCAL_TIMEOUT,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("Candidate:") {
            let v = v.trim();
            if v == "(none)" {
                return Ok(None);
            }
            check_version(name, "apt-cache policy", v)?;
            return Ok(Some(v.to_string()));
        }
    }
    Ok(None)
}

/// Called with the cache lock held.
fn download_and_unpack(
    debs: &Path,
    name: &str,
    candidate: Option<String>,
) -> Result<Package, Error> {
    // Another process may have unpacked it while we waited for the lock.
    if let Some(version) = &candidate {
        let package = Package::at(debs, name, version);
        if package.dir.is_dir() {
            return Ok(package);
        }
    }
    let work = WorkDir::create(debs, name)?;
    let download = |version: &Option<String>| {
        // NAME=VERSION: the version we looked at, not whatever the
        // candidate is by the time apt-get runs.
        let spec = match version {
            Some(v) => format!("{name}={v}"),
            None => name.to_string(),
        };
        run(
            Command::new("apt-get")
                .current_dir(&work.0)
                // Downloads into a root-owned directory: without this, apt
                // warns that its sandbox user cannot write there.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", "--"])
                .arg(&spec),
            "apt-get download",
            name,
            APT_TIMEOUT,
        )
    };
    if download(&candidate).is_err() {
        // Stale or missing lists are the usual cause (a fresh container has
        // none; an old mirror state names files the mirror dropped).
        run(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
            name,
            APT_TIMEOUT,
        )?;
        let candidate = candidate_after_update(debs, name)?;
        if let Some(package) = candidate.1 {
            return Ok(package);
        }
        download(&candidate.0)?;
    }

    let deb = find_deb(&work.0, name)?;
    let field = |field: &str| -> Result<String, Error> {
        let out = run(
            Command::new("dpkg-deb").arg("-f").arg(&deb).arg(field),
            "dpkg-deb -f",
            name,
            LOCAL_TIMEOUT,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let package_field = field("Package")?;
    if package_field != name {
        return Err(Error::Unexpected {
            step: "apt-get download".to_string(),
            package: name.to_string(),
            detail: format!("got package {package_field:?}"),
        });
    }
    let version = field("Version")?;
    check_version(name, "dpkg-deb -f", &version)?;
    let control = run(
        Command::new("dpkg-deb").arg("-f").arg(&deb),
        "dpkg-deb -f",
        name,
        LOCAL_TIMEOUT,
    )?;
    let control_path = work.0.join("control");
    fs::write(&control_path, &control.stdout).map_err(|source| Error::Io {
        action: "write",
        path: control_path,
        package: name.to_string(),
        source,
    })?;
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(work.0.join("root")),
        "dpkg-deb -x",
        name,
        LOCAL_TIMEOUT,
    )?;
    let _ = fs::remove_file(&deb);

    let package = Package::at(debs, name, &version);
    match fs::rename(&work.0, &package.dir) {
        Ok(()) => {
            work.keep();
            Ok(package)
        }
        // Renaming onto an existing non-empty directory fails: another
        // process (not one of ours holding the lock, e.g. another cache
        // user) put the same version there first. Theirs is as good.
        Err(_) if package.dir.is_dir() => Ok(package),
        Err(source) => Err(Error::Io {
            action: "rename into place",
            path: package.dir,
            package: name.to_string(),
            source,
        }),
    }
}

/// After `apt-get update`: the new candidate, and the package if that
/// version is unpacked already.
fn candidate_after_update(
    debs: &Path,
    name: &str,
) -> Result<(Option<String>, Option<Package>), Error> {
    let candidate = candidate(name)?;
    let Some(version) = candidate else {
        return Err(Error::Unexpected {
            step: "apt-cache policy".to_string(),
            package: name.to_string(),
            detail: "apt has no candidate version after apt-get update (unknown package?)"
                .to_string(),
        });
    };
    let package = Package::at(debs, name, &version);
    let unpacked = package.dir.is_dir().then_some(package);
    Ok((Some(version), unpacked))
}

/// The one `.deb` apt-get download wrote into `dir`.
fn find_deb(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        action: "list",
        path: dir.to_path_buf(),
        package: name.to_string(),
        source,
    })?;
    let debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::Unexpected {
            step: "apt-get download".to_string(),
            package: name.to_string(),
            detail: format!(
                "expected one .deb in {}, found {}",
                dir.display(),
                debs.len()
            ),
        }),
    }
}

/// A work directory in the cache, removed unless kept.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(debs: &Path, name: &str) -> Result<WorkDir, Error> {
        let path = debs.join(format!(".tmp-{name}-{}", unique()));
        fs::create_dir(&path).map_err(|source| Error::Io {
            action: "create",
            path: path.clone(),
            package: name.to_string(),
            source,
        })?;
        Ok(WorkDir(path))
    }

    /// Renamed into place: nothing left to remove.
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// An exclusive `flock` on a file in the cache, released on drop (when the
/// file is closed), also when the process dies.
struct Lock(#[allow(dead_code)] File);

impl Lock {
    fn acquire(path: &Path, package: &str) -> Result<Lock, Error> {
        let io = |source| Error::Io {
            action: "lock",
            path: path.to_path_buf(),
            package: package.to_string(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io(e));
            }
        }
    }
}

/// Runs a command with a deadline, output captured, `LC_ALL=C` so apt's
/// messages are the ones we parse. Fails on a non-zero exit, naming the
/// command and the package, with the end of what it printed.
pub(crate) fn run(
    cmd: &mut Command,
    command: &str,
    package: &str,
    timeout: Duration,
) -> Result<Output, Error> {
    let fail = |detail: String| Error::Command {
        command: command.to_string(),
        package: package.to_string(),
        detail,
    };
    let out = run_with_timeout(cmd.env("LC_ALL", "C"), timeout).map_err(fail)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(fail(failure_detail(&out)))
    }
}

/// "exit status N: <last lines of stderr, else stdout>".
pub(crate) fn failure_detail(out: &Output) -> String {
    let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" / ");
    format!("{}: {}", out.status, tail)
}

/// Spawns `cmd`, collects stdout and stderr (on threads, so a chatty child
/// cannot block on a full pipe) and kills it at the deadline.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The `Pre-Depends` and `Depends` of a control file: per dependency, its
/// alternatives' package names (no versions, no `:arch`).
fn depends_alternatives(control: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for field in ["Pre-Depends", "Depends"] {
        let Some(value) = control_field(control, field) else {
            continue;
        };
        for dep in value.split(',') {
            let alts: Vec<String> = dep
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split(['(', '[', '<']).next()?.trim();
                    let name = name.split(':').next()?.trim();
                    check_name(name).ok()?;
                    Some(name.to_string())
                })
                .collect();
            if !alts.is_empty() {
                out.push(alts);
            }
        }
    }
    out
}

/// A field of a control file, continuation lines joined.
fn control_field(control: &str, field: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in control.lines() {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((key, rest)) = line.split_once(':') {
            if key.eq_ignore_ascii_case(field) {
                value = Some(rest.trim().to_string());
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_parsed() {
        let control = "Package: open-vm-tools\nPre-Depends: init-system-helpers (>= 1.54~)\n\
                       Depends: libc6 (>= 2.34), libdrm2 (>= 2.4.3),\n libfuse3-3 (>= 3.2.3) | fuse,\
                        python3:any, libfoo [amd64]\nDescription: x\n";
        assert_eq!(
            depends_alternatives(control),
            vec![
                vec!["init-system-helpers".to_string()],
                vec!["libc6".to_string()],
                vec!["libdrm2".to_string()],
                vec!["libfuse3-3".to_string(), "fuse".to_string()],
                vec!["python3".to_string()],
                vec!["libfoo".to_string()],
            ]
        );
        assert_eq!(control_field(control, "Recommends"), None);
    }

    #[test]
    fn names_and_versions_are_checked() {
        assert!(check_name("open-vm-tools").is_ok());
        assert!(check_name("libstdc++6").is_ok());
        assert!(check_name("-o").is_err());
        assert!(check_name("a/../b").is_err());
        assert!(check_version("x", "t", "2:12.2.0-1+deb12u4").is_ok());
        assert!(check_version("x", "t", "1.0/../..").is_err());
        let p = Package::at(Path::new("/c/debs"), "x", "2:1.0-1");
        assert_eq!(p.root(), Path::new("/c/debs/x_2%3a1.0-1/root"));
    }

    #[test]
    fn errors_name_the_step_and_the_package() {
        let e = Error::Command {
            command: "apt-get download".into(),
            package: "open-vm-tools".into(),
            detail: "exit status: 100: E: Unable to locate package".into(),
        };
        assert_eq!(
            e.to_string(),
            "apt-get download open-vm-tools failed: exit status: 100: E: Unable to locate \
             package (is a Debian package registry reachable?)"
        );
        assert!(Package::fetch("../etc")
            .unwrap_err()
            .to_string()
            .contains("../etc"));
    }

    #[test]
    fn timeouts_are_enforced() {
        let start = Instant::now();
        let r = run_with_timeout(Command::new("sleep").arg("10"), Duration::from_millis(200));
        assert!(r.unwrap_err().contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
