//! The static vmt that goes into guests: built the way the README says
//! (`cargo static` in crates/vmt, the alias in crates/vmt/.cargo), it
//! is one ELF file with no interpreter and no shared libraries, and it
//! runs alone in an empty root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The target directory this test was built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.parent().unwrap().to_path_buf()
}

/// `cargo static` into this test's target directory; the binary.
fn build_static() -> PathBuf {
    let target = target_dir();
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("cargo static: still building after 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "cargo static: {status}");
    target.join("x86_64-unknown-linux-gnu/release/vmt")
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
}

fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// What an x86-64 ELF file needs at run time: its interpreter
/// (PT_INTERP) and the DT_NEEDED entries of its dynamic section, counted.
fn needs(path: &Path) -> (bool, usize) {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: usize = 1;
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "not ELF");
    assert_eq!(b[4], 2, "not 64-bit");
    assert_eq!(u16_at(&b, 0x12), 62, "not x86-64");
    let (phoff, phentsize, phnum) = (u64_at(&b, 0x20), u16_at(&b, 0x36), u16_at(&b, 0x38));
    let (mut interp, mut needed) = (false, 0);
    for i in 0..phnum {
        let ph = &b[phoff + i * phentsize..][..phentsize];
        let p_type = u32::from_le_bytes(ph[..4].try_into().unwrap());
        if p_type == PT_INTERP {
            interp = true;
        }
        if p_type == PT_DYNAMIC {
            let (off, size) = (u64_at(ph, 0x08), u64_at(ph, 0x20));
            for entry in b[off..off + size].chunks_exact(16) {
                match u64_at(entry, 0) {
                    0 => break,
                    DT_NEEDED => needed += 1,
                    _ => {}
                }
            }
        }
    }
    (interp, needed)
}

#[test]
fn one_static_executable() {
    let vmt = build_static();
    assert_eq!(needs(&vmt), (false, 0), "{} is not static", vmt.display());
    // The test's own dynamic build does need something: the check sees it.
    let dynamic = needs(Path::new(env!("CARGO_BIN_EXE_vmt")));
    assert!(dynamic.0 && dynamic.1 > 0, "{dynamic:?}");

    let size = std::fs::metadata(&vmt).unwrap().len();
    eprintln!("static vmt: {size} bytes");
    assert!(size < 4 << 20, "{size} bytes");

    // Alone in an empty root (no libc, no loader, no /etc, no /proc):
    // the commands that need neither the backdoor nor root still work.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the empty-root run is skipped");
        return;
    }
    let root = std::env::temp_dir().join(format!("vmt-static-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(&vmt, root.join("vmt")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(&root)
            .arg("/vmt")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["-n"]),
        (Some(0), String::new(), "configuration OK\n".into())
    );
    assert_eq!(
        run(&["status"]),
        (
            Some(1),
            String::new(),
            "vmt: the daemon is not running (no /run/vmt.status)\n".into()
        )
    );
    let (code, out, _) = run(&["--version"]);
    assert_eq!((code, out.as_str()), (Some(0), "vmt 0.1.0\n"));
    std::fs::remove_dir_all(&root).unwrap();
}
