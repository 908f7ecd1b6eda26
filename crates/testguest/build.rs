//! Builds the bare-metal guests of `guest/` (a separate cargo project) with a
//! nested `cargo build`, and tells the library where they are.
//!
//! There is no bare-metal Rust target on our machines, so the guests are
//! built for x86_64-unknown-linux-gnu as `#![no_std]`, `#![no_main]`
//! programs and linked as static, position-dependent ELF executables at
//! 1 MiB by our own linker script, without crt files or libc. Those flags
//! must not leak into (or come from) the outer build, hence a nested cargo
//! with its own environment and target directory under OUT_DIR. The nested
//! build is `--offline`: its dependencies are path dependencies in this
//! repository (guestrpc), watched below like the guests' own sources.
//!
//! Outputs for src/lib.rs:
//! * `TESTGUEST_DIR` (rustc env): directory holding one ELF per guest;
//! * `$OUT_DIR/names.rs`: `pub const NAMES`, the guests' names.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guests are x86-64 code whatever the outer build targets.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The inputs of the guests' path dependencies, relative to this crate:
/// guestrpc, and the workspace manifest it inherits its edition from.
const GUEST_PATH_DEPS: &[&str] = &[
    "../guestrpc/Cargo.toml",
    "../guestrpc/src",
    "../../Cargo.toml",
];

/// rustc flags of the nested build (see the module comment).
fn guest_rustflags(link_script: &Path) -> Vec<String> {
    vec![
        // Absolute addresses: the image runs where it is linked.
        "-Crelocation-model=static".into(),
        // No crt0, no libc, no dynamic anything; our entry code is the start.
        "-Clink-arg=-nostartfiles".into(),
        "-Clink-arg=-nostdlib".into(),
        "-Clink-arg=-static".into(),
        // A build-id note would be a second PT_NOTE payload loaders must skip.
        "-Clink-arg=-Wl,--build-id=none".into(),
        format!("-Clink-arg=-T{}", link_script.display()),
    ]
}

/// Environment of the outer build that must not reach the nested cargo:
/// flags, wrappers (clippy's would lint the guests as workspace members) and
/// target selection.
fn confuses_nested_cargo(key: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ];
    ((key.starts_with("CARGO_") || key.starts_with("__CARGO")) && !KEEP.contains(&key))
        || DROP.contains(&key)
}

/// The guests: one per `guest/src/bin/*.rs`, sorted.
fn guest_names(bin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(bin_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bin_dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let target_dir = out_dir.join("guest-target");

    println!("cargo:rerun-if-changed=build.rs");
    for input in ["Cargo.toml", "Cargo.lock", "link.ld", "src"] {
        println!("cargo:rerun-if-changed=guest/{input}");
    }
    // The guests' path dependencies (see guest/Cargo.toml): the nested build
    // must run again when they change.
    for input in GUEST_PATH_DEPS {
        println!("cargo:rerun-if-changed={input}");
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--offline", "--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        if confuses_nested_cargo(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        guest_rustflags(&guest_dir.join("link.ld")).join("\x1f"),
    );
    // A build script's stdout is read by cargo as instructions: send the
    // nested build's output to stderr (shown when the build fails).
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo for the test guests: {e}"));
    assert!(
        status.success(),
        "building the test guests in {} failed: {status}",
        guest_dir.display()
    );

    let bin_dir = target_dir.join(GUEST_TARGET).join("release");
    let names = guest_names(&guest_dir.join("src/bin"));
    for name in &names {
        let file = bin_dir.join(name);
        assert!(
            file.is_file(),
            "the guest build did not produce {}",
            file.display()
        );
    }
    println!("cargo:rustc-env=TESTGUEST_DIR={}", bin_dir.display());

    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let names_rs = format!(
        "/// Names of the built guests, sorted: one per file in `guest/src/bin/`.\n\
         pub const NAMES: &[&str] = &[{}];\n",
        list.join(", ")
    );
    fs::write(out_dir.join("names.rs"), names_rs).expect("writing names.rs");

    build_bootsector(&manifest_dir.join("bootsector/bootsector.S"), &out_dir);
}

/// Assembles the real-mode boot sector (GNU as and ld, which every Rust
/// toolchain on Linux links with) into a flat 512-byte image at
/// `$OUT_DIR/bootsector.img`, named by `BOOTSECTOR_IMG`.
fn build_bootsector(source: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed=bootsector");
    let obj = out_dir.join("bootsector.o");
    let img = out_dir.join("bootsector.img");
    let run = |cmd: &mut Command| {
        let status = cmd
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(status.success(), "{cmd:?} failed: {status}");
    };
    run(Command::new("as")
        .args(["--32", "-o"])
        .arg(&obj)
        .arg(source));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext=0x7c00",
            "--oformat",
            "binary",
            "-o",
        ])
        .arg(&img)
        .arg(&obj));
    let bytes = fs::read(&img).expect("reading the boot sector");
    assert!(
        bytes.len() == 512 && bytes[510..] == [0x55, 0xaa],
        "the boot sector is {} bytes or lacks its signature",
        bytes.len()
    );
    println!("cargo:rustc-env=BOOTSECTOR_IMG={}", img.display());
}
