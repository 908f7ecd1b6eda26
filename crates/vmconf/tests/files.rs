//! parse_file on the real file system: the shipped example, and includes between files.

use std::fs;
use std::path::{Path, PathBuf};

use vmconf::{parse_file, Options};

#[test]
fn example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vm.conf");
    let c = parse_file(&path, &Options::default())
        .unwrap_or_else(|e| panic!("{}", e.iter().map(|d| format!("{d}\n")).collect::<String>()));
    assert_eq!(c.vms.len(), 3);
    assert_eq!(c.vms[0].line.file, path.display().to_string());
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmconf-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("sub")).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn includes_on_disk() {
    let d = TempDir::new("inc");
    fs::write(
        d.0.join("vm.conf"),
        "include \"sub/vms.conf\"\nvm c { memory $m }\n",
    )
    .unwrap();
    fs::write(
        d.0.join("sub/vms.conf"),
        "m = 1G\nvm a {}\ninclude \"more.conf\"\n",
    )
    .unwrap();
    fs::write(d.0.join("sub/more.conf"), "vm b {}\n").unwrap();
    let c = parse_file(&d.0.join("vm.conf"), &Options::default()).unwrap();
    let names: Vec<_> = c.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(
        c.vms[1].line.file,
        d.0.join("sub/more.conf").display().to_string()
    );

    // A loop through a different spelling of the same file is still a loop.
    fs::write(d.0.join("sub/more.conf"), "include \"../sub/./vms.conf\"\n").unwrap();
    let e = parse_file(&d.0.join("vm.conf"), &Options::default()).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].file, d.0.join("sub/more.conf").display().to_string());
    assert_eq!(e[0].line, 1);
    assert!(e[0].message.starts_with("include loop: "), "{}", e[0]);
}

#[cfg(unix)]
#[test]
fn include_loop_through_a_symlink() {
    let d = TempDir::new("link");
    fs::write(d.0.join("vm.conf"), "include \"sub/link.conf\"\n").unwrap();
    std::os::unix::fs::symlink(d.0.join("vm.conf"), d.0.join("sub/link.conf")).unwrap();
    let e = parse_file(&d.0.join("vm.conf"), &Options::default()).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].message.starts_with("include loop: "), "{}", e[0]);
}

/// A file asked for as a directory (`a.conf/`) is an error naming the path as
/// written, on disk as in `MemFiles`.
#[test]
fn include_of_a_file_as_a_directory() {
    let d = TempDir::new("notdir");
    fs::write(d.0.join("vm.conf"), "include \"sub/a.conf/\"\n").unwrap();
    fs::write(d.0.join("sub/a.conf"), "vm a {}\n").unwrap();
    let e = parse_file(&d.0.join("vm.conf"), &Options::default()).unwrap_err();
    let asked = d.0.join("sub/a.conf").display().to_string() + "/";
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].message.starts_with(&format!(
            "failed to include file \"{asked}\": Not a directory"
        )),
        "{}",
        e[0]
    );
}
