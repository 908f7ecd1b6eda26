//! Where configuration files come from: the real file system, or memory (for tests).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// The largest configuration file read (each file, the top one and every `include`).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The only way the parser reads files (the top file for [`crate::parse_file`], and every
/// `include`).
pub trait FileSource {
    fn read_to_string(&self, path: &Path) -> io::Result<String>;

    /// A name that is the same for every path to one file, for include loop detection.
    /// By default `.` and `..` are resolved in the path's text alone.
    fn canonicalize(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl FileSource for StdFs {
    /// Reads a regular file of at most [`MAX_FILE_SIZE`] bytes of UTF-8 text. Anything else
    /// is refused without being read, so that a FIFO cannot hang the reader nor a device
    /// (`/dev/zero`) fill its memory; a FIFO or device is not even opened unless it replaces
    /// the file between the check and the open, and then the open does not block.
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        check_regular(&std::fs::metadata(path)?)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK | O_NOCTTY)
            .open(path)?;
        let meta = f.metadata()?;
        check_regular(&meta)?;
        let mut bytes = Vec::new();
        // +1: a file that grew past the limit since the fstat is still refused.
        (&mut f).take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(too_large());
        }
        String::from_utf8(bytes).map_err(|e| {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
            io::Error::new(
                io::ErrorKind::InvalidData,
                InvalidUtf8 {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                },
            )
        })
    }

    fn canonicalize(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
    }
}

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

/// Whether this is a Linux architecture whose open(2) flags are asm-generic/fcntl.h's (std
/// does not export O_NONBLOCK and O_NOCTTY, and this crate does without libc). Elsewhere
/// they are left out, and the check before the open is what keeps FIFOs and devices out.
const GENERIC_FCNTL: bool = cfg!(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "riscv32",
        target_arch = "powerpc64",
        target_arch = "powerpc",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
));
const O_NONBLOCK: i32 = if GENERIC_FCNTL { 0o4000 } else { 0 };
const O_NOCTTY: i32 = if GENERIC_FCNTL { 0o400 } else { 0 };

/// Refuses what is not a regular file, or one larger than [`MAX_FILE_SIZE`].
fn check_regular(meta: &std::fs::Metadata) -> io::Result<()> {
    let t = meta.file_type();
    let what = if t.is_file() {
        if meta.len() > MAX_FILE_SIZE {
            return Err(too_large());
        }
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "of an unknown type"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file (it is {what})"),
    ))
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("file too large (more than {} MiB)", MAX_FILE_SIZE >> 20),
    )
}

/// The error of a file that is not UTF-8: [`crate::parse_file`] and `include` report it at
/// its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8 {
    /// The line (1-based) of the first byte that is not UTF-8.
    pub line: u32,
}

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid UTF-8 on line {}", self.line)
    }
}

impl std::error::Error for InvalidUtf8 {}

/// Files held in memory, by path (looked up after resolving `.` and `..`).
#[derive(Clone, Debug, Default)]
pub struct MemFiles {
    files: HashMap<PathBuf, String>,
}

impl MemFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file; returns self, for chaining.
    pub fn with(mut self, path: impl AsRef<Path>, text: impl Into<String>) -> Self {
        self.insert(path, text);
        self
    }

    pub fn insert(&mut self, path: impl AsRef<Path>, text: impl Into<String>) {
        self.files.insert(normalize(path.as_ref()), text.into());
    }

    /// Goes down `path` as the kernel does: every component followed by
    /// another, `..` included, must be a directory (one that holds a
    /// file). `d/../f` with no `d` is "No such file or directory" on disk,
    /// and `f/../f` "Not a directory", although `normalize` makes both `f`
    /// (found by the vmconf_parse fuzz target).
    fn walk(&self, path: &Path) -> io::Result<()> {
        let mut at = PathBuf::new();
        let mut parts = path.components().peekable();
        while let Some(c) = parts.next() {
            at = normalize(&at.join(c.as_os_str()));
            if parts.peek().is_none() || !matches!(c, Component::Normal(_)) {
                continue;
            }
            if self.files.contains_key(&at) {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "Not a directory",
                ));
            }
            if !self.files.keys().any(|k| k.starts_with(&at)) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "No such file or directory",
                ));
            }
        }
        Ok(())
    }
}

impl FileSource for MemFiles {
    /// The file at `path` once `.` and `..` are resolved; but, as on a real file
    /// system, a path that ends in `/` or `/.` asks for a directory, and is "Not a
    /// directory" when it names a file (`normalize` alone would drop the ending and
    /// find the file, so a test would pass where the real `include` fails).
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.walk(path)?;
        let text =
            self.files.get(&normalize(path)).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "No such file or directory")
            })?;
        if names_a_directory(path) {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "Not a directory",
            ));
        }
        Ok(text)
    }
}

/// Whether the text of `path` ends in `/` or `/.`, which only a directory can be
/// (and which `normalize`, like `Path::components`, drops).
pub(crate) fn names_a_directory(path: &Path) -> bool {
    let b = path.as_os_str().as_encoded_bytes();
    b.ends_with(b"/") || b.ends_with(b"/.")
}

/// Resolves `.` and `..` in the text of a path (`a/./b/../c` -> `a/c`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(normalize(Path::new("../a/..")), PathBuf::from(".."));
        assert_eq!(normalize(Path::new("./")), PathBuf::from("."));
    }

    #[test]
    fn mem_files() {
        let fs = MemFiles::new().with("/etc/vm.conf", "x");
        assert_eq!(fs.read_to_string(Path::new("/etc/./vm.conf")).unwrap(), "x");
        // As on disk: a file is not a directory (found by the vmconf_parse fuzz
        // target, which compares the two).
        for dir in ["/etc/vm.conf/", "/etc/vm.conf/.", "/etc/vm.conf//"] {
            let e = fs.read_to_string(Path::new(dir)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{dir}");
            assert_eq!(e.to_string(), "Not a directory");
        }
        // The kernel goes down a path: `..` goes back from a directory that
        // must be there.
        assert_eq!(
            fs.read_to_string(Path::new("/etc/../etc/vm.conf")).unwrap(),
            "x"
        );
        for (path, kind) in [
            ("/etc/nodir/../vm.conf", io::ErrorKind::NotFound),
            ("/etc/vm.conf/../vm.conf", io::ErrorKind::NotADirectory),
            ("/etc/vm.conf/x", io::ErrorKind::NotADirectory),
        ] {
            let e = fs.read_to_string(Path::new(path)).unwrap_err();
            assert_eq!(e.kind(), kind, "{path}");
        }
        let e = fs.read_to_string(Path::new("/etc/other")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "No such file or directory");
    }
}
