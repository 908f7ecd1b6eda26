//! Where configuration files come from: the real file system, or memory (for tests).

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

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
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn canonicalize(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
    }
}

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
}

impl FileSource for MemFiles {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
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
        let e = fs.read_to_string(Path::new("/etc/other")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "No such file or directory");
    }
}
