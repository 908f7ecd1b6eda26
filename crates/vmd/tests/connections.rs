//! The control socket's bounds: an unprivileged user who opens a thousand
//! idle connections cannot lock root out, and clients that send requests
//! slowly, or not at all, are cut off (vmd.8, CONNECTIONS).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

/// vmd's bounds (conn.rs): connections per user, header timeout.
const PER_USER: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many idle connections the user opens.
const FLOOD: usize = 1100;

/// What the flooding child reports, as 4 u32s: connections made,
/// connections refused (readable at once), whether a refused one's answer
/// was a 503 with vmd's error, and (second report) how many of those it
/// kept vmd closed within the header timeout.
fn read_u32s(fd: libc::c_int, n: usize, timeout: Duration) -> Vec<u32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    let deadline = Instant::now() + timeout;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the flooding child did not report in time");
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) } <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer of ours.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 4) };
        assert_eq!(r, 4, "the flooding child's report was cut short");
        out.push(u32::from_ne_bytes(buf));
    }
    out
}

/// Whether `fd` has something to read (data or end of file) right now.
fn readable(fd: libc::c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// The child: becomes `uid`:`gid`, opens FLOOD connections to `addr` and
/// keeps them open, silent. Only async-signal-safe calls (it is forked
/// from a threaded process); its memory is prepared by the parent.
///
/// # Safety
/// Call only in a freshly forked child; it never returns.
unsafe fn flood(
    uid: u32,
    gid: u32,
    addr: &libc::sockaddr_un,
    fds: &mut [libc::c_int],
    report: libc::c_int,
    control: libc::c_int,
    parents: [libc::c_int; 2],
) -> ! {
    // The parent's ends: with a copy of its end of `control` kept here,
    // the child would never see it closed.
    for fd in parents {
        libc::close(fd);
    }
    let put = |v: u32| {
        let b = v.to_ne_bytes();
        libc::write(report, b.as_ptr().cast(), 4);
    };
    if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0
    {
        libc::_exit(2);
    }
    let mut made = 0u32;
    for fd in fds.iter_mut() {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            break;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(s, (addr as *const libc::sockaddr_un).cast(), len) != 0 {
            libc::close(s);
            break;
        }
        *fd = s;
        made += 1;
    }
    // vmd answers each connection beyond the bound at accept: wait (at
    // most 5 s) until it has seen them all.
    let refused = |fds: &[libc::c_int]| fds.iter().filter(|&&fd| readable(fd)).count();
    let wait = libc::timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    for _ in 0..250 {
        if refused(fds) + PER_USER >= made as usize {
            break;
        }
        libc::nanosleep(&wait, std::ptr::null_mut());
    }
    put(made);
    put(refused(fds) as u32);
    // A refused connection's answer: a 503 with vmd's JSON error.
    let mut answer = [0u8; 512];
    let mut is_503 = 0;
    if let Some(&fd) = fds.iter().find(|&&fd| readable(fd)) {
        let n = libc::read(fd, answer.as_mut_ptr().cast(), answer.len());
        if n > 0 {
            let a = &answer[..n as usize];
            let has = |needle: &[u8]| a.windows(needle.len()).any(|w| w == needle);
            is_503 = (a.starts_with(b"HTTP/1.1 503 ") && has(b"too many connections")) as u32;
        }
    }
    put(is_503);
    // Wait for the parent's word, then see which of the kept connections
    // vmd has closed by then (all of them, after the header timeout).
    let mut b = 0u8;
    libc::read(control, (&mut b as *mut u8).cast(), 1);
    let mut closed = 0u32;
    for &fd in fds.iter() {
        if fd >= 0 && readable(fd) {
            closed += 1;
        }
    }
    put(closed);
    // Then hold on until killed.
    libc::read(control, (&mut b as *mut u8).cast(), 1);
    libc::_exit(0);
}

/// A forked child, killed and reaped when dropped.
struct Reaped(libc::pid_t);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.0, &mut st, 0);
        }
    }
}

#[test]
fn a_user_cannot_lock_root_out() {
    if !is_root() {
        eprintln!("skipping: creating a user and acting as it needs root");
        return;
    }
    let (uid, gid) = test_user();
    // This process needs room for the user's FLOOD descriptors.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_max < FLOOD as libc::rlim_t + 64 {
            eprintln!("skipping: the open files limit is below {FLOOD}");
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let d = TestDaemon::start(&format!("socket owner {USER}\n"));
    // vmd as under systemd, whose default soft limit is 1024, but with no
    // higher hard limit to raise it to: the bounds alone must keep root's
    // way in.
    let low = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: prlimit on our own child, lowering only.
    let rc = unsafe {
        libc::prlimit(
            d.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &low,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let as_user = user_vmctl(&d, uid, gid);
    assert!(as_user(&["status"]).ok());

    // SAFETY: a zeroed sockaddr_un is valid; the path fits (checked).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = d.sock.as_os_str().as_encoded_bytes();
    assert!(path.len() < addr.sun_path.len());
    for (i, &b) in path.iter().enumerate() {
        addr.sun_path[i] = b as libc::c_char;
    }
    let mut fds = vec![-1 as libc::c_int; FLOOD];
    let mut report = [0 as libc::c_int; 2];
    let mut control = [0 as libc::c_int; 2];
    // SAFETY: pipe2 into arrays of two.
    unsafe {
        assert_eq!(libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(control.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    // SAFETY: the child runs `flood` (async-signal-safe calls, memory made
    // above) and exits; it never returns here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            flood(
                uid,
                gid,
                &addr,
                &mut fds,
                report[1],
                control[0],
                [report[0], control[1]],
            )
        };
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(report[1]);
        libc::close(control[0]);
    }
    // Ended (and reaped) however the test ends.
    let child = Reaped(pid);

    let r = read_u32s(report[0], 3, Duration::from_secs(30));
    let started = Instant::now();
    let (made, refused, is_503) = (r[0] as usize, r[1] as usize, r[2]);
    assert_eq!(made, FLOOD, "the user could not even connect {FLOOD} times");
    assert_eq!(
        refused,
        FLOOD - PER_USER,
        "vmd kept {} of the user's connections, not {PER_USER}\nvmd:\n{}",
        FLOOD - refused,
        d.log()
    );
    assert_eq!(is_503, 1, "a refused connection was not answered 503");

    // Root is not locked out: status answers at once, again and again.
    for _ in 0..5 {
        let t = Instant::now();
        let o = d.vmctl(&["status"]);
        assert!(o.ok(), "root's status failed: {o:?}\nvmd:\n{}", d.log());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "root's status took {:?}",
            t.elapsed()
        );
    }
    // The user's next connection is refused.
    let o = as_user(&["status"]);
    assert!(
        !o.ok(),
        "the user's {}th connection was let in",
        PER_USER + 1
    );
    assert!(
        o.stderr.contains("too many connections")
            || o.stderr.contains("Broken pipe")
            || o.stderr.contains("reset"),
        "{o:?}"
    );
    assert!(
        started.elapsed() < HEADER_TIMEOUT - Duration::from_secs(2),
        "the checks above took too long to mean anything ({:?})",
        started.elapsed()
    );

    // The kept connections never send a header: vmd closes them after
    // its header timeout.
    std::thread::sleep((HEADER_TIMEOUT + Duration::from_secs(3)).saturating_sub(started.elapsed()));
    // SAFETY: one byte on our end of the control pipe.
    unsafe { libc::write(control[1], b"x".as_ptr().cast(), 1) };
    let closed = read_u32s(report[0], 1, Duration::from_secs(10))[0] as usize;
    assert_eq!(
        closed, FLOOD,
        "vmd did not close the user's idle connections after {HEADER_TIMEOUT:?}"
    );
    // Killing the child closes the connections it held.
    drop(child);
    // SAFETY: our ends of the pipes.
    unsafe {
        libc::close(report[0]);
        libc::close(control[1]);
    }

    // Their slots are free again: the user gets in.
    let o = as_user(&["status"]);
    assert!(
        o.ok(),
        "the user could not connect again: {o:?}\nvmd:\n{}",
        d.log()
    );
    assert!(
        d.log().contains("refused a connection of uid"),
        "vmd did not log the refusals:\n{}",
        d.log()
    );
}

/// Reads from `s` until the other side closes it (or 30 s pass); what it
/// sent and how long that took.
fn read_to_close(mut s: &UnixStream) -> (String, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("still open after {:?}", t.elapsed())
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

/// Reads one answer (headers and a Content-Length body) from `s`.
fn read_answer(mut s: &UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = s.read(&mut buf).expect("read an answer");
        assert!(n > 0, "closed before answering: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let d = TestDaemon::start("");
    let within = |took: Duration, bound: Duration| {
        took >= bound - Duration::from_millis(500) && took <= bound + Duration::from_secs(3)
    };

    // Half a header, then nothing.
    let half = UnixStream::connect(&d.sock).unwrap();
    (&half)
        .write_all(b"GET /v1/vms HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // A header, then part of the body it announces.
    let body = UnixStream::connect(&d.sock).unwrap();
    (&body)
        .write_all(b"POST /v1/log HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"lev")
        .unwrap();
    // A request answered, the connection kept open: idle for longer than
    // the header timeout is still within the idle one.
    let idle = UnixStream::connect(&d.sock).unwrap();
    let get = b"GET /v1/vms HTTP/1.1\r\nHost: localhost\r\n\r\n";
    (&idle).write_all(get).unwrap();
    let a = read_answer(&idle);
    assert!(a.starts_with("HTTP/1.1 200 "), "{a}");

    let h = std::thread::spawn(move || read_to_close(&half));
    let b = std::thread::spawn(move || read_to_close(&body));
    let (got, took) = h.join().unwrap();
    assert!(
        within(took, HEADER_TIMEOUT) && got.is_empty(),
        "half a header: closed after {took:?} with {got:?}"
    );
    let (got, took) = b.join().unwrap();
    assert!(
        within(took, HEADER_TIMEOUT) && got.starts_with("HTTP/1.1 408 "),
        "half a body: after {took:?}, {got:?}"
    );
    assert!(got.contains("not received in time"), "{got}");

    // Idle for more than the header timeout: still served.
    std::thread::sleep(Duration::from_secs(1));
    (&idle).write_all(get).unwrap();
    let a = read_answer(&idle);
    assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
}

#[test]
fn a_long_poll_is_not_cut_off() {
    if !kvm_or_skip() {
        return;
    }
    let d = TestDaemon::start(&format!(
        "vm \"tick\" {{\n\tkernel \"{}\"\n\tmemory 32M\n}}\n",
        guest("ticker")
    ));
    d.wait_running("tick");
    let s = UnixStream::connect(&d.sock).unwrap();
    (&s).write_all(
        b"GET /v1/vms/tick/wait HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    // Longer than the header timeout: only reading the request is timed.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_secs(2));
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let early = (&s).read(&mut b);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the wait ended while the VM runs: {early:?}"
    );
    s.set_nonblocking(false).unwrap();
    d.vmctl_ok(&["stop", "-f", "tick"]);
    let (got, _) = read_to_close(&s);
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
}
