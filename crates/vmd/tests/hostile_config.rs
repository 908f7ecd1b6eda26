//! What a careless operator or a hostile file can put in vmd's way: a
//! control socket path that holds something else, configuration files that
//! are FIFOs, devices, huge, not UTF-8, or included a thousand deep. The
//! real daemon on real files; none of it may hang, crash or destroy.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A configured VM that is never started (no /dev/kvm needed).
fn disabled_vm(name: &str) -> String {
    format!(
        "vm \"{name}\" {{\n\tdisable\n\tkernel \"{}\"\n\tmemory 32M\n}}\n",
        guest("tools")
    )
}

/// A TestDaemon that has answered a request, and so handles signals.
fn daemon(conf: &str) -> TestDaemon {
    let d = TestDaemon::start(conf);
    d.status();
    d
}

/// `vmd ARGS`, at most 20 s, its address space capped at 2 GiB: a vmd
/// that reads a device without end fails fast instead of taking the
/// host's memory.
fn vmd(args: &[&std::ffi::OsStr]) -> Outcome {
    let mut c = Command::new(vmd_bin());
    c.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    run_bounded(c, Duration::from_secs(20))
}

/// `vmd -n -f PATH`.
fn check(path: &Path) -> Outcome {
    vmd(&["-n".as_ref(), "-f".as_ref(), path.as_os_str()])
}

/// `vmd -d -f CONF -s SOCK`, expected to refuse to start.
fn start_refused(conf: &Path, sock: &Path) -> Outcome {
    let o = vmd(&[
        "-d".as_ref(),
        "-f".as_ref(),
        conf.as_os_str(),
        "-s".as_ref(),
        sock.as_os_str(),
    ]);
    assert!(o.code.is_some_and(|c| c != 0), "{o:?}");
    assert!(
        o.stderr.contains(&sock.display().to_string()),
        "the message names the path: {o:?}"
    );
    o
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A chain of `n` files, `inc/0.conf` including `inc/1.conf` and so on,
/// the last defining VM `deep`; returns the first.
fn include_chain(dir: &Path, n: usize) -> std::path::PathBuf {
    let inc = dir.join("inc");
    std::fs::create_dir_all(&inc).unwrap();
    for i in 0..n - 1 {
        std::fs::write(
            inc.join(format!("{i}.conf")),
            format!("include \"{}.conf\"\n", i + 1),
        )
        .unwrap();
    }
    std::fs::write(inc.join(format!("{}.conf", n - 1)), disabled_vm("deep")).unwrap();
    inc.join("0.conf")
}

// --- The control socket (issue 12, item 5) ---

#[test]
fn a_file_at_the_socket_path_is_left_alone() {
    let dir = fresh_dir();
    let conf = dir.join("vm.conf");
    std::fs::write(&conf, disabled_vm("web1")).unwrap();
    // A regular file: vmd's own configuration, given as its socket.
    let o = start_refused(&conf, &conf);
    assert!(o.stderr.contains("not a socket"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), disabled_vm("web1"));
    // Any other file that is not a socket.
    let precious = dir.join("precious");
    std::fs::write(&precious, "do not remove\n").unwrap();
    start_refused(&conf, &precious);
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "do not remove\n"
    );
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let o = start_refused(&conf, &fifo);
    assert!(o.stderr.contains("not a socket"), "{o:?}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // A symbolic link (to a socket or not) is not followed nor removed.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    start_refused(&conf, &link);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "do not remove\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_socket_someone_listens_on_is_left_alone() {
    let dir = fresh_dir();
    let conf = dir.join("vm.conf");
    std::fs::write(&conf, disabled_vm("web1")).unwrap();
    // Not a vmd: any program's live socket.
    let sock = dir.join("sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let o = start_refused(&conf, &sock);
    assert!(o.stderr.contains("another vmd is listening"), "{o:?}");
    assert!(UnixStream::connect(&sock).is_ok(), "the socket still works");
    drop(listener);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn at_exit_vmd_removes_only_its_own_socket() {
    // Its own, as before.
    let mut d = daemon(&disabled_vm("web1"));
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        d.log()
    );
    assert!(!d.sock.exists(), "{}", d.log());

    // Another's socket, bound at the path since (as a second vmd started
    // after the first's socket was removed would): left listening.
    let mut d = daemon(&disabled_vm("web1"));
    std::fs::remove_file(&d.sock).unwrap();
    let other = UnixListener::bind(&d.sock).unwrap();
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        d.log()
    );
    assert!(
        UnixStream::connect(&d.sock).is_ok(),
        "the other socket was removed:\n{}",
        d.log()
    );
    assert!(d.log().contains("not removing it"), "{}", d.log());
    drop(other);

    // A regular file put in its place: left too.
    let mut d = daemon(&disabled_vm("web1"));
    std::fs::remove_file(&d.sock).unwrap();
    std::fs::write(&d.sock, "not a socket\n").unwrap();
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_to_string(&d.sock).unwrap(),
        "not a socket\n",
        "{}",
        d.log()
    );
}

#[test]
fn the_socket_is_made_0660() {
    let d = daemon(&disabled_vm("web1"));
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(&d.sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o660);
    assert_eq!((m.uid(), m.gid()), (0, 0));
}

// --- Files that are not configuration (issue 12, item 7) ---

#[test]
fn files_that_are_not_regular_are_refused_unread() {
    let dir = fresh_dir();
    let fifo = dir.join("fifo.conf");
    mkfifo(&fifo);
    let conf = dir.join("vm.conf");
    for (target, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
        (Path::new("/dev/urandom"), "a character device"),
        (dir.as_path(), "a directory"),
    ] {
        std::fs::write(
            &conf,
            format!("{}include \"{}\"\n", disabled_vm("a"), target.display()),
        )
        .unwrap();
        let o = check(&conf);
        assert_eq!(o.code, Some(1), "{o:?}");
        assert_eq!(
            o.stderr,
            format!(
                "{}:6: failed to include file \"{}\": not a regular file (it is {what})\n",
                conf.display(),
                target.display()
            ),
            "{o:?}"
        );
        // As the file itself.
        let o = check(target);
        assert_eq!(o.code, Some(1), "{o:?}");
        assert_eq!(
            o.stderr,
            format!("{}: not a regular file (it is {what})\n", target.display()),
            "{o:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn big_files_are_refused() {
    let dir = fresh_dir();
    let conf = dir.join("vm.conf");
    let big = dir.join("big.conf");
    // 2 MiB of comments.
    std::fs::write(&big, "# padding\n".repeat(200 << 10)).unwrap();
    std::fs::write(&conf, "include \"big.conf\"\n").unwrap();
    let o = check(&conf);
    assert_eq!(
        o.stderr,
        format!(
            "{}:1: failed to include file \"{}\": file too large (more than 1 MiB)\n",
            conf.display(),
            big.display()
        ),
        "{o:?}"
    );
    let o = check(&big);
    assert_eq!(
        o.stderr,
        format!("{}: file too large (more than 1 MiB)\n", big.display()),
        "{o:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_utf8_is_an_error_at_its_line() {
    let dir = fresh_dir();
    let conf = dir.join("vm.conf");
    let inc = dir.join("inc.conf");
    let mut text = disabled_vm("a").into_bytes();
    text.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(&inc, &text).unwrap();
    std::fs::write(&conf, "include \"inc.conf\"\n").unwrap();
    let o = check(&conf);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.stderr,
        format!("{}:6: invalid UTF-8\n", inc.display()),
        "{o:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_with_a_fifo_included_does_not_block_vmd() {
    let d = daemon(&disabled_vm("a"));
    let fifo = d.dir.join("fifo.conf");
    mkfifo(&fifo);
    d.write_conf(&format!(
        "{}{}include \"{}\"\n",
        disabled_vm("a"),
        disabled_vm("b"),
        fifo.display()
    ));
    d.signal(libc::SIGHUP);
    assert!(
        poll(Duration::from_secs(10), || d
            .log()
            .contains("not a regular file (it is a FIFO)")),
        "{}",
        d.log()
    );
    // Nothing changed, and vmd still answers (reload too) and obeys SIGTERM.
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a"]);
    let o = d.vmctl(&["reload"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("it is a FIFO"), "{o:?}");
    let o = d.vmctl(&["load", fifo.to_str().unwrap()]);
    assert_eq!(o.code, Some(1), "{o:?}");
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "vmd ignored SIGTERM:\n{}",
        d.log()
    );
}

// --- Include depth (issue 12, item 2) ---

#[test]
fn deep_includes_are_an_error_not_a_crash() {
    let d = daemon(&disabled_vm("a"));
    let too_deep = include_chain(&d.dir.join("deep"), 1000);
    let nested = "includes nested too deeply (more than 16 levels)";
    // vmd -n says so.
    let o = check(&too_deep);
    assert_eq!(o.code, Some(1), "{o:?}");
    let want = format!("{}:1: {nested}\n", d.dir.join("deep/inc/16.conf").display());
    assert_eq!(o.stderr, want, "{o:?}");
    // So does load, on a worker thread's stack, and vmd lives on.
    let o = d.vmctl(&["load", too_deep.to_str().unwrap()]);
    assert_eq!(o.code, Some(1), "{o:?}\nvmd:\n{}", d.log());
    assert_eq!(o.stderr, want, "{o:?}");
    assert!(alive(d.pid()), "vmd died:\n{}", d.log());
    // And reload (vm.conf including the chain: one level more).
    d.write_conf(&format!("include \"{}\"\n", too_deep.display()));
    let o = d.vmctl(&["reload"]);
    assert_eq!(o.code, Some(1), "{o:?}\nvmd:\n{}", d.log());
    let want = format!("{}:1: {nested}\n", d.dir.join("deep/inc/15.conf").display());
    assert_eq!(o.stderr, want, "{o:?}");
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a"]);

    // As deep as allowed: the top file and 16 levels of includes load.
    let deepest = include_chain(&d.dir.join("ok"), 17);
    let o = check(&deepest);
    assert_eq!(o.code, Some(0), "{o:?}");
    d.vmctl_ok(&["load", deepest.to_str().unwrap()]);
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "deep"]);
}
