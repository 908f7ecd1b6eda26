//! Initramfs images: uncompressed newc cpio archives built in memory.
//!
//! Uncompressed because the fixture kernel unpacks on an emulated CPU
//! (gzip alone cost ~47 s there) and small for the same reason: every byte
//! is copied by emulated kernel code, ~10 s for 2.7 MB. So the image holds
//! exactly what a test names: busybox with its applet links made here (not
//! by `busybox --install` in the guest, ~6 s), single binaries with their
//! shared-library closure, and the test's `/init`.
//!
//! The same inputs give the same bytes: entries are sorted by path (a parent
//! sorts before its children), inode numbers follow that order, and owner,
//! group and mtime are always 0.
//!
//! ```no_run
//! # fn main() -> Result<(), linux_fixture::initramfs::Error> {
//! use linux_fixture::{debian, initramfs::Initramfs};
//! let tools = debian::fetch_with_libs("open-vm-tools")?;
//! let mut image = Initramfs::new();
//! image
//!     .busybox()?
//!     .binary_with_libs(
//!         "/usr/bin/vmware-checkvm",
//!         tools[0].root().join("usr/bin/vmware-checkvm"),
//!         &tools,
//!     )?
//!     .init("#!/bin/sh\nvmware-checkvm && echo CHECKVM-OK\npoweroff -f\n")?;
//! image.write("/tmp/initrd.cpio")?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::debian;

/// Where shared libraries go in the image: the first directory of the
/// loader's built-in search path on Debian x86-64, so no `ld.so.cache` is
/// needed.
pub const LIB_DIR: &str = "/lib/x86_64-linux-gnu";

/// Entries in one image at most: far above any test image (busybox brings
/// ~270), far below where inode numbers (32 bits) or memory would run out.
const MAX_ENTRIES: usize = 100_000;
/// Directory levels `tree_with_libs` descends at most.
const MAX_DEPTH: usize = 32;
/// newc's file size field has 8 hex digits.
const MAX_FILE_SIZE: u64 = u32::MAX as u64;
/// `ldd` reads the binary's dynamic section; a second or two at most.
const LDD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an image could not be built or written.
#[derive(Debug)]
pub enum Error {
    /// A guest path that is not absolute and normalised (`/a/b`).
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A mode with bits outside the permission bits (0o7777).
    InvalidMode {
        /// The guest path.
        path: String,
        /// The mode as given.
        mode: u32,
    },
    /// The entry clashes with one already in the image.
    Conflict {
        /// The guest path.
        path: String,
        /// What is in the way.
        reason: String,
    },
    /// A file bigger than newc can describe, or too many entries.
    TooLarge {
        /// The guest path.
        path: String,
        /// What overflowed.
        reason: String,
    },
    /// Reading a host file or writing the image failed.
    Io {
        /// What we were doing.
        action: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A host command (`ldd`, `busybox --list-full`) failed.
    Command {
        /// The command line.
        command: String,
        /// Exit status and the end of its output.
        detail: String,
    },
    /// `ldd` reported a library as not found.
    MissingLibrary {
        /// The library (its soname).
        library: String,
        /// The binary that needs it.
        binary: PathBuf,
        /// The `LD_LIBRARY_PATH` it was searched with.
        search_path: String,
    },
    /// Fetching a Debian package failed.
    Package(debian::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidPath { path, reason } => {
                write!(f, "initramfs path {path:?}: {reason}")
            }
            Error::InvalidMode { path, mode } => write!(
                f,
                "initramfs path {path:?}: mode {mode:#o} has bits outside 0o7777"
            ),
            Error::Conflict { path, reason } => write!(f, "initramfs path {path:?}: {reason}"),
            Error::TooLarge { path, reason } => write!(f, "initramfs path {path:?}: {reason}"),
            Error::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Error::Command { command, detail } => write!(f, "{command} failed: {detail}"),
            Error::MissingLibrary {
                library,
                binary,
                search_path,
            } => write!(
                f,
                "library {library} needed by {} not found (ldd with LD_LIBRARY_PATH={search_path:?}; \
                 is its package among the search roots?)",
                binary.display()
            ),
            Error::Package(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Package(e) => Some(e),
            _ => None,
        }
    }
}

impl From<debian::Error> for Error {
    fn from(e: debian::Error) -> Error {
        Error::Package(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits only; the file type comes from `kind`.
    perm: u32,
}

impl Entry {
    fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
        }
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(bytes) => bytes,
            Kind::Symlink(target) => target.as_bytes(),
            Kind::Dir | Kind::CharDev { .. } => &[],
        }
    }
}

/// An initramfs image being built. Paths are guest paths: absolute,
/// without `.`/`..` or empty components. Missing parent directories are
/// created (mode 0755); an entry replaces one of the same kind at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    /// Keyed by path without the leading `/`, the name newc stores. String
    /// order puts a directory before everything under it (`a` < `a/...`).
    entries: BTreeMap<String, Entry>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// The skeleton every image has: `/dev /proc /sys /tmp /run /etc /bin
    /// /sbin /usr/bin /usr/sbin /lib /lib64`, and `/dev/console` (char 5:1)
    /// so that the kernel can open a console for `/init` before anything
    /// mounts devtmpfs.
    pub fn new() -> Initramfs {
        let mut entries = BTreeMap::new();
        let dirs = [
            "bin", "dev", "etc", "lib", "lib64", "proc", "run", "sbin", "sys", "tmp", "usr",
            "usr/bin", "usr/sbin",
        ];
        for d in dirs {
            // /tmp is world-writable and sticky, as on any Linux system.
            let perm = if d == "tmp" { 0o1777 } else { 0o755 };
            entries.insert(
                d.to_string(),
                Entry {
                    kind: Kind::Dir,
                    perm,
                },
            );
        }
        entries.insert(
            "dev/console".to_string(),
            Entry {
                kind: Kind::CharDev { major: 5, minor: 1 },
                perm: 0o600,
            },
        );
        Initramfs { entries }
    }

    /// A directory (mode: permission bits, e.g. 0o755).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, Error> {
        self.insert(path, Kind::Dir, mode)
    }

    /// A regular file with these contents.
    pub fn file(
        &mut self,
        path: &str,
        bytes: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, Error> {
        self.insert(path, Kind::File(bytes.into()), mode)
    }

    /// A host file (symlinks followed), mode 0755 if the host file has any
    /// execute bit, else 0644: the host's other bits (umask, ownership
    /// conventions) would make the image depend on the host.
    pub fn copy(
        &mut self,
        guest_path: &str,
        host_path: impl AsRef<Path>,
    ) -> Result<&mut Self, Error> {
        let (bytes, mode) = read_host_file(host_path.as_ref())?;
        self.insert(guest_path, Kind::File(bytes), mode)
    }

    /// A symbolic link at `path` pointing to `target` (stored as given).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, Error> {
        if target.is_empty() || target.contains('\0') {
            return Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        self.insert(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// A character device node.
    pub fn node(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, Error> {
        self.insert(path, Kind::CharDev { major, minor }, mode)
    }

    /// `/init`, mode 0755. The script carries its own interpreter line
    /// (`#!/bin/sh`); one without fails here rather than as "No working init
    /// found" after a 45 s boot.
    pub fn init(&mut self, script: &str) -> Result<&mut Self, Error> {
        if !script.starts_with("#!/") {
            return Err(Error::InvalidPath {
                path: "/init".to_string(),
                reason: "the script must start with its interpreter line, e.g. #!/bin/sh",
            });
        }
        self.file("/init", script, 0o755)
    }

    /// Whether the image has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        path.strip_prefix('/')
            .is_some_and(|key| self.entries.contains_key(key))
    }

    /// Busybox at `/bin/busybox`, with a symlink to it for every applet it
    /// lists (`busybox --list-full`: `bin/sh`, `usr/bin/awk`, ...), so
    /// `/init` can call applets by name without `busybox --install`.
    ///
    /// Busybox comes from Debian's `busybox-static`, so its version is the
    /// one apt gives. Only if that package cannot be fetched is the host's
    /// `busybox` taken (with its libraries, should it be the dynamic one),
    /// and a line on stderr says so. Applet paths where the image already
    /// has something are left alone.
    pub fn busybox(&mut self) -> Result<&mut Self, Error> {
        let host_busybox = match debian::Package::fetch("busybox-static") {
            Ok(package) => {
                let path = package.root().join("bin/busybox");
                self.copy("/bin/busybox", &path)?;
                path
            }
            Err(e) => {
                let host = ["/usr/bin/busybox", "/bin/busybox"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
                    .ok_or(Error::Package(e))?;
                eprintln!(
                    "linux-fixture: busybox-static not available, using the host's {}",
                    host.display()
                );
                self.binary_with_libs("/bin/busybox", &host, &[] as &[&Path])?;
                host
            }
        };
        let command = format!("{} --list-full", host_busybox.display());
        let out =
            debian::run_with_timeout(Command::new(&host_busybox).arg("--list-full"), LDD_TIMEOUT)
                .map_err(|detail| Error::Command {
                command: command.clone(),
                detail,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command,
                detail: debian::failure_detail(&out),
            });
        }
        let list = String::from_utf8_lossy(&out.stdout);
        for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = format!("/{applet}");
            if path == "/bin/busybox" || self.contains(&path) {
                continue;
            }
            self.symlink(&path, "/bin/busybox")?;
        }
        Ok(self)
    }

    /// An ELF executable (or library) from the host at `guest_path`, with
    /// every shared library it loads and the dynamic loader.
    ///
    /// The closure is what the host's `ldd` reports with `LD_LIBRARY_PATH`
    /// set to the library directories of `search_roots` (unpacked trees,
    /// e.g. [`debian::Package`]s from [`debian::fetch_with_libs`]), so
    /// libraries from those packages win over the host's; libc and the
    /// loader come from the host (see [`debian::HOST_LIBRARY_PACKAGES`]).
    /// Libraries go to [`LIB_DIR`] under the name the binary asks for (its
    /// soname), the content of the file the link resolves to stored once;
    /// the loader goes to the absolute path the binary names
    /// (`/lib64/ld-linux-x86-64.so.2`). A library `ldd` cannot find is an
    /// error naming it and the binary. A static binary is copied alone.
    pub fn binary_with_libs<P: AsRef<Path>>(
        &mut self,
        guest_path: &str,
        host_path: impl AsRef<Path>,
        search_roots: &[P],
    ) -> Result<&mut Self, Error> {
        let host_path = host_path.as_ref();
        self.copy(guest_path, host_path)?;
        let search_path = search_path(search_roots);
        self.add_closure(host_path, &search_path)?;
        Ok(self)
    }

    /// A host directory at `guest_dir`, recursively: every ELF file in it
    /// with its library closure (as [`Initramfs::binary_with_libs`]), other
    /// files copied, symlinks kept as symlinks. For plugin directories that
    /// programs open at run time, which `ldd` of the program cannot see:
    /// vmtoolsd loads `/usr/lib/x86_64-linux-gnu/open-vm-tools/plugins/vmsvc/*.so`.
    pub fn tree_with_libs<P: AsRef<Path>>(
        &mut self,
        guest_dir: &str,
        host_dir: impl AsRef<Path>,
        search_roots: &[P],
    ) -> Result<&mut Self, Error> {
        let search_path = search_path(search_roots);
        self.dir(guest_dir, 0o755)?;
        self.add_tree(guest_dir, host_dir.as_ref(), &search_path, 0)?;
        Ok(self)
    }

    /// The image: newc entries in path order, then `TRAILER!!!`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.size()).unwrap_or(0));
        for (ino, (name, entry)) in (1u32..).zip(&self.entries) {
            let (rdev_major, rdev_minor) = match entry.kind {
                Kind::CharDev { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if entry.kind == Kind::Dir { 2 } else { 1 };
            // Sizes were checked on insertion (MAX_FILE_SIZE, MAX_ENTRIES).
            let size = entry.data().len() as u32;
            push_header(
                &mut out,
                [
                    ino,
                    entry.type_bits() | entry.perm,
                    0, // uid
                    0, // gid
                    nlink,
                    0, // mtime
                    size,
                    0, // devmajor
                    0, // devminor
                    rdev_major,
                    rdev_minor,
                ],
                name,
            );
            out.extend_from_slice(entry.data());
            pad4(&mut out);
        }
        push_header(&mut out, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], "TRAILER!!!");
        out
    }

    /// The length of [`Initramfs::to_bytes`], without building it.
    pub fn size(&self) -> u64 {
        let entries: u64 = self
            .entries
            .iter()
            .map(|(name, e)| header_len(name) + align4(e.data().len() as u64))
            .sum();
        entries + header_len("TRAILER!!!")
    }

    /// Writes the image to a host file: to a temporary file beside it, then
    /// renamed, so a reader (a VM booting it) never sees half an image.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        let io = |action, path: &Path, source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        fs::write(&tmp, self.to_bytes()).map_err(|e| io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io("rename into place", path, e)
        })
    }

    fn insert(&mut self, path: &str, kind: Kind, perm: u32) -> Result<&mut Self, Error> {
        let key = key(path)?;
        if perm & !0o7777 != 0 {
            return Err(Error::InvalidMode {
                path: path.to_string(),
                mode: perm,
            });
        }
        let size = match &kind {
            Kind::File(bytes) => bytes.len() as u64,
            Kind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        if size > MAX_FILE_SIZE {
            return Err(Error::TooLarge {
                path: path.to_string(),
                reason: format!("{size} bytes, newc allows {MAX_FILE_SIZE}"),
            });
        }
        // Parents: missing ones are created, existing ones must be
        // directories (through a symlink, a path would mean different things
        // to different cpio readers).
        let parents: Vec<&str> = key.match_indices('/').map(|(i, _)| &key[..i]).collect();
        for parent in &parents {
            if let Some(e) = self.entries.get(*parent) {
                if e.kind != Kind::Dir {
                    return Err(Error::Conflict {
                        path: path.to_string(),
                        reason: format!("/{parent} is not a directory"),
                    });
                }
            }
        }
        if let Some(old) = self.entries.get(key) {
            if old.kind == Kind::Dir && kind != Kind::Dir {
                return Err(Error::Conflict {
                    path: path.to_string(),
                    reason: "a directory is there".to_string(),
                });
            }
        }
        let new_entries = parents
            .iter()
            .filter(|p| !self.entries.contains_key(**p))
            .count()
            + usize::from(!self.entries.contains_key(key));
        if self.entries.len() + new_entries > MAX_ENTRIES {
            return Err(Error::TooLarge {
                path: path.to_string(),
                reason: format!("more than {MAX_ENTRIES} entries"),
            });
        }
        for parent in parents {
            self.entries.entry(parent.to_string()).or_insert(Entry {
                kind: Kind::Dir,
                perm: 0o755,
            });
        }
        self.entries.insert(key.to_string(), Entry { kind, perm });
        Ok(self)
    }

    /// A library of a closure: like `insert`, but two different files for
    /// one library path are an error rather than a silent replacement (two
    /// search roots with different builds of one soname).
    fn add_library(&mut self, guest_path: &str, host_path: &Path) -> Result<(), Error> {
        let (bytes, mode) = read_host_file(host_path)?;
        let key = key(guest_path)?;
        match self.entries.get(key) {
            Some(Entry {
                kind: Kind::File(old),
                ..
            }) if *old == bytes => Ok(()),
            Some(_) => Err(Error::Conflict {
                path: guest_path.to_string(),
                reason: format!(
                    "already in the image with other contents than {}",
                    host_path.display()
                ),
            }),
            None => self.insert(guest_path, Kind::File(bytes), mode).map(|_| ()),
        }
    }

    fn add_closure(&mut self, elf: &Path, search_path: &str) -> Result<(), Error> {
        for dep in ldd(elf, search_path)? {
            match dep {
                Dependency::Library { name, path } => {
                    self.add_library(&format!("{LIB_DIR}/{name}"), &path)?
                }
                Dependency::Absolute(path) => {
                    let guest = path.to_str().ok_or_else(|| Error::InvalidPath {
                        path: path.display().to_string(),
                        reason: "not UTF-8",
                    })?;
                    self.add_library(guest, &path)?
                }
                Dependency::Missing(library) => {
                    return Err(Error::MissingLibrary {
                        library,
                        binary: elf.to_path_buf(),
                        search_path: search_path.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn add_tree(
        &mut self,
        guest_dir: &str,
        host_dir: &Path,
        search_path: &str,
        depth: usize,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooLarge {
                path: guest_dir.to_string(),
                reason: format!("more than {MAX_DEPTH} directory levels"),
            });
        }
        let io = |action, path: &Path, source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut children = Vec::new();
        for entry in fs::read_dir(host_dir).map_err(|e| io("list", host_dir, e))? {
            let entry = entry.map_err(|e| io("list", host_dir, e))?;
            children.push(entry.path());
        }
        // Sorted so errors (and the order of ldd runs) do not depend on the
        // file system's directory order.
        children.sort();
        for host in children {
            let Some(name) = host.file_name().and_then(|n| n.to_str()) else {
                return Err(Error::InvalidPath {
                    path: host.display().to_string(),
                    reason: "not UTF-8",
                });
            };
            let guest = format!("{}/{name}", guest_dir.trim_end_matches('/'));
            // symlink_metadata: a link is kept as a link, never followed,
            // so a link cycle cannot make this walk endless.
            let meta = fs::symlink_metadata(&host).map_err(|e| io("stat", &host, e))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host).map_err(|e| io("read link", &host, e))?;
                let target = target.to_str().ok_or_else(|| Error::InvalidPath {
                    path: host.display().to_string(),
                    reason: "symlink target not UTF-8",
                })?;
                self.symlink(&guest, target)?;
            } else if meta.is_dir() {
                self.dir(&guest, 0o755)?;
                self.add_tree(&guest, &host, search_path, depth + 1)?;
            } else if meta.is_file() {
                self.copy(&guest, &host)?;
                if is_elf(&host)? {
                    self.add_closure(&host, search_path)?;
                }
            }
            // Sockets, fifos, devices: not part of a package tree; skipped.
        }
        Ok(())
    }
}

/// The newc name of a guest path: without its leading `/`.
fn key(path: &str) -> Result<&str, Error> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let key = path
        .strip_prefix('/')
        .ok_or_else(|| invalid("not absolute"))?;
    if key.is_empty() {
        return Err(invalid("the root itself"));
    }
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid("empty, . or .. component"));
    }
    if key.len() > 4096 {
        return Err(invalid("longer than PATH_MAX"));
    }
    Ok(key)
}

fn read_host_file(path: &Path) -> Result<(Vec<u8>, u32), Error> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(|e| io("stat", e))?;
    if !meta.is_file() {
        return Err(io(
            "copy",
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(Error::TooLarge {
            path: path.display().to_string(),
            reason: format!("{} bytes, newc allows {MAX_FILE_SIZE}", meta.len()),
        });
    }
    let bytes = fs::read(path).map_err(|e| io("read", e))?;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    Ok((bytes, mode))
}

fn is_elf(path: &Path) -> Result<bool, Error> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// `LD_LIBRARY_PATH` for the search roots: their library directories.
fn search_path<P: AsRef<Path>>(roots: &[P]) -> String {
    let dirs: Vec<String> = roots
        .iter()
        .flat_map(|r| debian::lib_dirs(r.as_ref()))
        .map(|d| d.display().to_string())
        .collect();
    dirs.join(":")
}

#[derive(Debug, PartialEq, Eq)]
enum Dependency {
    /// `soname => /resolved/path`.
    Library { name: String, path: PathBuf },
    /// An absolute path on its own: the dynamic loader.
    Absolute(PathBuf),
    /// `soname => not found`.
    Missing(String),
}

/// The shared-library closure of an ELF file, by the host's `ldd`.
fn ldd(elf: &Path, search_path: &str) -> Result<Vec<Dependency>, Error> {
    let command = format!("LD_LIBRARY_PATH={search_path} ldd {}", elf.display());
    let out = debian::run_with_timeout(
        Command::new("ldd")
            .arg(elf)
            .env("LD_LIBRARY_PATH", search_path)
            .env("LC_ALL", "C"),
        LDD_TIMEOUT,
    )
    .map_err(|detail| Error::Command {
        command: command.clone(),
        detail,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static executable: nothing to add.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::Command {
            command,
            detail: debian::failure_detail(&out),
        });
    }
    parse_ldd(&text).map_err(|line| Error::Command {
        command,
        detail: format!("unexpected output line {line:?}"),
    })
}

/// Lines of `ldd` output:
///
/// ```text
///     linux-vdso.so.1 (0x00007ffd...)                  (in the kernel: skipped)
///     libvmtools.so.0 => /cache/.../libvmtools.so.0 (0x00007f...)
///     libfoo.so.1 => not found
///     /lib64/ld-linux-x86-64.so.2 (0x00007f...)
///     statically linked
/// ```
fn parse_ldd(text: &str) -> Result<Vec<Dependency>, String> {
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let without_address = match line.rfind(" (0x") {
            Some(i) if line.ends_with(')') => &line[..i],
            _ => line,
        };
        if let Some((name, target)) = without_address.split_once(" => ") {
            let name = name.trim();
            if name.is_empty() || name.contains('/') {
                return Err(line.to_string());
            }
            let target = target.trim();
            if target == "not found" {
                deps.push(Dependency::Missing(name.to_string()));
            } else if target.starts_with('/') {
                deps.push(Dependency::Library {
                    name: name.to_string(),
                    path: PathBuf::from(target),
                });
            } else {
                return Err(line.to_string());
            }
        } else if without_address.starts_with('/') {
            deps.push(Dependency::Absolute(PathBuf::from(without_address)));
        } else if !without_address.contains('/') && without_address.contains(".so") {
            // The vDSO: mapped by the kernel, no file.
            continue;
        } else {
            return Err(line.to_string());
        }
    }
    Ok(deps)
}

fn align4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// A newc header with its name is 110 bytes + name + NUL, padded to 4.
fn header_len(name: &str) -> u64 {
    align4(110 + name.len() as u64 + 1)
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(align4(out.len() as u64) as usize, 0);
}

/// "070701", then ino mode uid gid nlink mtime filesize devmajor devminor
/// rdevmajor rdevminor namesize check, 8 hex digits each; the name, NUL,
/// padding to 4 (counted from the start of the archive, which every entry
/// keeps 4-aligned).
fn push_header(out: &mut Vec<u8>, fields: [u32; 11], name: &str) {
    out.extend_from_slice(b"070701");
    let namesize = name.len() as u32 + 1; // key() bounds the length
    for field in fields.iter().chain([namesize, 0].iter()) {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "linux-fixture-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A test that needs a download: the fixture's own rule, skip with the
    /// reason on a developer machine, fail under CI.
    fn fetched<T>(r: Result<T, Error>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("{e}"),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    /// Runs a shell command line, panicking with its output if it fails.
    fn sh(script: &str, dir: &Path) -> std::process::Output {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Debian's cpio, the reference reader.
    fn ensure_cpio() {
        if Command::new("cpio").arg("--version").output().is_err() {
            sh("apt-get install -y -qq cpio", Path::new("/"));
        }
    }

    fn sample() -> Initramfs {
        let mut image = Initramfs::new();
        image
            .init("#!/bin/sh\necho hello\n")
            .unwrap()
            .file("/etc/hostname", "guest\n", 0o644)
            .unwrap()
            .file("/usr/share/deep/file.bin", vec![0u8, 1, 2, 3, 4], 0o600)
            .unwrap()
            .dir("/var/empty", 0o700)
            .unwrap()
            .symlink("/bin/sh", "busybox")
            .unwrap()
            .symlink("/lib/abs", "/etc/hostname")
            .unwrap()
            .node("/dev/null", 0o666, 1, 3)
            .unwrap();
        image
    }

    /// name, mode, (rdev major, minor), data.
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Our own reading of the archive, one `Parsed` per entry.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut inodes = std::collections::BTreeSet::new();
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (ino, mode, size, namesize) = (field(0), field(1), field(6), field(11));
            let rdev = (field(9), field(10));
            assert_eq!((field(2), field(3), field(5)), (0, 0, 0), "uid gid mtime");
            let name_end = at + 110 + namesize as usize;
            assert_eq!(bytes[name_end - 1], 0);
            let name = String::from_utf8(bytes[at + 110..name_end - 1].to_vec()).unwrap();
            let data_at = align4(name_end as u64) as usize;
            let data = bytes[data_at..data_at + size as usize].to_vec();
            at = align4((data_at + size as usize) as u64) as usize;
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            assert!(inodes.insert(ino), "inode {ino} twice");
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn image_is_newc_deterministic_and_sized() {
        let image = sample();
        let bytes = image.to_bytes();
        assert_eq!(bytes, sample().to_bytes(), "same inputs, same bytes");
        assert_eq!(image.size(), bytes.len() as u64);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        // Parents before children.
        for (i, name) in names.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let p = names.iter().position(|n| *n == parent).unwrap();
                assert!(p < i, "{parent} after {name}");
            }
        }
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("init").3, b"#!/bin/sh\necho hello\n");
        assert_eq!(find("usr/share/deep").1, 0o040755, "implicit parent");
        assert_eq!(find("var/empty").1, 0o040700);
        assert_eq!(find("tmp").1, 0o041777);
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").3, b"busybox");
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!(find("dev/console").2, (5, 1));
        assert_eq!(find("dev/null").2, (1, 3));
        assert_eq!(Initramfs::new().to_bytes(), Initramfs::default().to_bytes());
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut image = sample();
        let before = image.clone();
        assert!(matches!(
            image.file("etc/x", "", 0o644),
            Err(Error::InvalidPath { .. })
        ));
        assert!(image.file("/", "", 0o644).is_err());
        assert!(image.file("/etc//x", "", 0o644).is_err());
        assert!(image.file("/etc/../x", "", 0o644).is_err());
        assert!(image.file("/etc/./x", "", 0o644).is_err());
        assert!(image.file("/etc/x/", "", 0o644).is_err());
        assert!(image.file("/etc/x\0", "", 0o644).is_err());
        assert!(matches!(
            image.file("/etc/x", "", 0o100644),
            Err(Error::InvalidMode { .. })
        ));
        assert!(matches!(
            image.file("/etc", "", 0o644),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            image.file("/etc/hostname/x", "", 0o644),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            image.file("/bin/sh/x", "", 0o644),
            Err(Error::Conflict { .. })
        ));
        assert!(image.symlink("/x", "").is_err());
        assert!(image.init("echo no interpreter line\n").is_err());
        assert!(matches!(
            image.copy("/x", "/nonexistent/file"),
            Err(Error::Io { .. })
        ));
        assert!(
            image.copy("/x", "/etc").is_err(),
            "a directory is not a file"
        );
        assert_eq!(image, before, "failed calls change nothing");
        // Replacing a file, re-moding a directory: fine.
        image.file("/etc/hostname", "other\n", 0o600).unwrap();
        image.dir("/etc", 0o750).unwrap();
        assert!(image.contains("/etc/hostname"));
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5a3f1000)\n\
                    \tlibvmtools.so.0 => /c/debs/o/root/usr/lib/x86_64-linux-gnu/libvmtools.so.0 (0x00007f1)\n\
                    \tlibfoo.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                Dependency::Library {
                    name: "libvmtools.so.0".into(),
                    path: "/c/debs/o/root/usr/lib/x86_64-linux-gnu/libvmtools.so.0".into()
                },
                Dependency::Missing("libfoo.so.1".into()),
                Dependency::Absolute("/lib64/ld-linux-x86-64.so.2".into()),
            ]
        );
        assert_eq!(parse_ldd("\tstatically linked\n").unwrap(), vec![]);
        assert!(parse_ldd("something else\n").is_err());
    }

    #[test]
    fn missing_library_names_library_and_binary() {
        // A host binary whose libraries are all on the host, searched with
        // nothing extra: fine. The error path is checked by parsing.
        let mut image = Initramfs::new();
        image
            .binary_with_libs("/bin/true", "/bin/true", &[] as &[&Path])
            .unwrap();
        assert!(image.contains("/lib64/ld-linux-x86-64.so.2"));
        assert!(image.contains("/lib/x86_64-linux-gnu/libc.so.6"));
        let e = Error::MissingLibrary {
            library: "libvmtools.so.0".into(),
            binary: "/x/vmtoolsd".into(),
            search_path: String::new(),
        };
        assert!(e
            .to_string()
            .starts_with("library libvmtools.so.0 needed by /x/vmtoolsd not found"));
    }

    /// Debian's cpio lists and extracts what we write: names, contents,
    /// modes, symlink targets and (as root) /dev/console as a device.
    #[test]
    fn host_cpio_reads_the_image() {
        ensure_cpio();
        let tmp = TempDir::new("cpio");
        let image = sample();
        let archive = tmp.0.join("image.cpio");
        image.write(&archive).unwrap();
        assert_eq!(fs::read(&archive).unwrap(), image.to_bytes());

        let listed = sh("cpio -it --quiet < image.cpio", &tmp.0);
        let listed: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let expected: Vec<String> = image.entries.keys().cloned().collect();
        assert_eq!(listed, expected);

        let root = tmp.0.join("root");
        fs::create_dir(&root).unwrap();
        // Device nodes need root; as another user cpio reports them and
        // extracts the rest.
        let extract = "cpio -idv --quiet < ../image.cpio";
        if is_root() {
            sh(extract, &root);
        } else {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(extract)
                .current_dir(&root)
                .output();
        }
        let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(
            fs::read(root.join("init")).unwrap(),
            b"#!/bin/sh\necho hello\n"
        );
        assert_eq!(meta("init").mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read(root.join("usr/share/deep/file.bin")).unwrap(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(meta("usr/share/deep/file.bin").mode() & 0o7777, 0o600);
        assert_eq!(meta("etc/hostname").mode() & 0o7777, 0o644);
        assert!(meta("var/empty").is_dir());
        assert_eq!(meta("var/empty").mode() & 0o7777, 0o700);
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(root.join("lib/abs")).unwrap(),
            Path::new("/etc/hostname")
        );
        if is_root() {
            let console = meta("dev/console");
            assert!(console.file_type().is_char_device());
            assert_eq!(
                (libc::major(console.rdev()), libc::minor(console.rdev())),
                (5, 1)
            );
            assert_eq!(console.mode() & 0o7777, 0o600);
            assert!(meta("dev/null").file_type().is_char_device());
        }
    }

    /// Busybox from Debian with its applet links; the extracted image's
    /// shell runs (as root, chrooted), which proves the links resolve.
    #[test]
    fn busybox_image_has_applet_links() {
        let mut image = Initramfs::new();
        let Some(_) = fetched(image.busybox().map(|_| ())) else {
            return;
        };
        let bytes = image.to_bytes();
        eprintln!("busybox-only image: {} bytes", bytes.len());
        assert_eq!(
            image.entries["bin/sh"].kind,
            Kind::Symlink("/bin/busybox".into())
        );
        for applet in ["usr/bin/awk", "bin/mount", "sbin/poweroff", "bin/cat"] {
            assert_eq!(
                image.entries[applet].kind,
                Kind::Symlink("/bin/busybox".into()),
                "{applet}"
            );
        }
        assert!(matches!(image.entries["bin/busybox"].kind, Kind::File(_)));
        assert_eq!(image.entries["bin/busybox"].perm, 0o755);
        let links = image
            .entries
            .values()
            .filter(|e| e.kind == Kind::Symlink("/bin/busybox".into()))
            .count();
        assert!(links > 200, "{links} applet links");

        if !is_root() {
            return;
        }
        ensure_cpio();
        let tmp = TempDir::new("busybox");
        image.write(tmp.0.join("image.cpio")).unwrap();
        fs::create_dir(tmp.0.join("root")).unwrap();
        sh("cpio -id --quiet < ../image.cpio", &tmp.0.join("root"));
        let out = sh(
            "chroot root /bin/sh -c 'echo a b | awk \"{print \\$2}\"'",
            &tmp.0,
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "b\n");
    }

    /// open-vm-tools' binaries and vmsvc plugins with their closure from
    /// Debian packages: extracted, vmware-checkvm runs chrooted (outside a
    /// VMware VM it says so and exits 1, which needs every library to
    /// load), and the loader in the image resolves every plugin's libraries.
    #[test]
    fn open_vm_tools_closure_loads() {
        let Some(packages) = fetched(debian::fetch_with_libs("open-vm-tools").map_err(Error::from))
        else {
            return;
        };
        let tools = packages[0].root();
        let plugins = "/usr/lib/x86_64-linux-gnu/open-vm-tools/plugins/vmsvc";
        let mut image = Initramfs::new();
        image
            .binary_with_libs(
                "/usr/bin/vmware-checkvm",
                tools.join("usr/bin/vmware-checkvm"),
                &packages,
            )
            .unwrap();
        eprintln!("image with vmware-checkvm: {} bytes", image.size());
        image
            .binary_with_libs(
                "/usr/bin/vmware-rpctool",
                tools.join("usr/bin/vmware-rpctool"),
                &packages,
            )
            .unwrap()
            .binary_with_libs(
                "/usr/bin/vmtoolsd",
                tools.join("usr/bin/vmtoolsd"),
                &packages,
            )
            .unwrap()
            .tree_with_libs(plugins, tools.join(&plugins[1..]), &packages)
            .unwrap();
        eprintln!(
            "image with vmware-checkvm, vmware-rpctool, vmtoolsd and the vmsvc plugins: {} bytes",
            image.size()
        );
        let mut libs: Vec<(&String, usize)> = image
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with("lib"))
            .map(|(k, e)| (k, e.data().len()))
            .collect();
        libs.sort_by_key(|l| std::cmp::Reverse(l.1));
        eprintln!("largest libraries: {:?}", &libs[..libs.len().min(8)]);
        assert!(image.contains("/lib64/ld-linux-x86-64.so.2"));
        assert!(image.contains("/lib/x86_64-linux-gnu/libvmtools.so.0"));
        assert!(image.contains(&format!("{plugins}/libtimeSync.so")));
        let mut with_busybox = image.clone();
        if fetched(with_busybox.busybox().map(|_| ())).is_some() {
            eprintln!("the same with busybox: {} bytes", with_busybox.size());
        }

        if !is_root() {
            eprintln!("not root: the chrooted runs are skipped");
            return;
        }
        ensure_cpio();
        let tmp = TempDir::new("vmtools");
        image.write(tmp.0.join("image.cpio")).unwrap();
        let root = tmp.0.join("root");
        fs::create_dir(&root).unwrap();
        sh("cpio -id --quiet < ../image.cpio", &root);
        let out = Command::new("chroot")
            .arg(&root)
            .arg("/usr/bin/vmware-checkvm")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("vmware-checkvm in the chroot: {} {text:?}", out.status);
        assert_eq!(out.status.code(), Some(1), "{text}");
        // "Error: vmware-checkvm must be run inside a virtual machine on a
        // VMware hypervisor product." (open-vm-tools 12.2).
        assert!(text.contains("virtual machine"), "{text}");

        // Every ELF in the image resolves all its libraries inside the
        // image, with the image's own loader (what vmtoolsd's dlopen of a
        // plugin will need in the guest).
        let elves: Vec<&String> = image
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.kind, Kind::File(b) if b.starts_with(b"\x7fELF")))
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("usr/"))
            .collect();
        assert!(elves.len() >= 12, "{elves:?}");
        for elf in elves {
            let out = Command::new("chroot")
                .arg(&root)
                .args(["/lib64/ld-linux-x86-64.so.2", "--list", &format!("/{elf}")])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && !text.contains("not found"),
                "{elf}: {text}"
            );
        }
    }
}
