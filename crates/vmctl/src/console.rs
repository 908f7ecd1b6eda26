//! `vmctl console`: a cu(1)-like relay between this terminal and a VM's
//! console pty. `~.` (or `~^D`) at the start of a line disconnects, `~~`
//! sends one `~`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The escape character, as in cu(1).
const ESCAPE: u8 = b'~';
const SPEED: u32 = 115200;

/// What the user typed means for the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    Continue,
    Disconnect,
}

/// Recognizes cu's escapes in what the user types. Input goes through
/// [`Escape::feed`], which passes on what the VM should get.
#[derive(Debug)]
pub struct Escape {
    at_line_start: bool,
    after_escape: bool,
}

impl Default for Escape {
    fn default() -> Self {
        Self::new()
    }
}

impl Escape {
    /// A session starts at the start of a line.
    pub fn new() -> Self {
        Escape {
            at_line_start: true,
            after_escape: false,
        }
    }

    /// Appends to `out` what of `input` goes to the VM. Stops at a
    /// disconnect escape; what came before it is in `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'.' | 0x04 => return Feed::Disconnect,
                    ESCAPE => {
                        out.push(ESCAPE);
                        self.at_line_start = false;
                        continue;
                    }
                    // Not an escape after all: the `~` goes through too.
                    _ => out.push(ESCAPE),
                }
            } else if self.at_line_start && b == ESCAPE {
                self.after_escape = true;
                continue;
            }
            out.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        Feed::Continue
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Puts a terminal in raw mode; gives it back as it was when dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// `speed`: also set the line speed (for the console line, like cu).
    fn enter(fd: RawFd, speed: Option<u32>) -> io::Result<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let saved = t;
        // SAFETY: t is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        if speed == Some(SPEED) {
            // SAFETY: as above; a pty ignores the speed, a real line uses it.
            unsafe { libc::cfsetspeed(&mut t, libc::B115200) };
        }
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring what tcgetattr gave us on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved) };
    }
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only looks at the fd.
    unsafe { libc::isatty(fd) == 1 }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects this terminal (stdin/stdout) to the console at `tty` until the
/// user types `~.`, stdin ends, or the VM goes away.
pub fn run(tty: &str) -> Result<(), String> {
    let line: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(tty)
        .map_err(|e| format!("{tty}: {}", crate::os_error(&e)))?;
    let line_fd = line.as_raw_fd();
    // Like cu: the line is raw at our speed. It stays so: the next user
    // wants it raw too.
    if is_tty(line_fd) {
        let raw = RawMode::enter(line_fd, Some(SPEED))
            .map_err(|e| format!("{tty}: {}", crate::os_error(&e)))?;
        std::mem::forget(raw);
    }

    let stdin_fd = io::stdin().as_raw_fd();
    let local_tty = is_tty(stdin_fd);
    let nl = if local_tty { "\r\n" } else { "\n" };
    let mut stdout = io::stdout().lock();
    let _ = write!(stdout, "Connected to {tty} (speed {SPEED}){nl}");
    let _ = stdout.flush();

    let _raw = if local_tty {
        Some(
            RawMode::enter(stdin_fd, None)
                .map_err(|e| format!("stdin: {}", crate::os_error(&e)))?,
        )
    } else {
        None
    };
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic. No SA_RESTART,
        // so poll(2) wakes with EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }

    let mut esc = Escape::new();
    let mut buf = [0u8; 4096];
    let mut to_vm = Vec::with_capacity(buf.len());
    let eot = |out: &mut io::StdoutLock| {
        let _ = write!(out, "{nl}[EOT]{nl}");
        let _ = out.flush();
    };
    loop {
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 {
            eot(&mut stdout);
            return Err(format!("console: terminated by signal {sig}"));
        }
        let mut fds = [
            libc::pollfd {
                fd: stdin_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: line_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {}", crate::os_error(&e)));
        }
        let gone = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        // The VM's output first, so nothing it said before going away is lost.
        if fds[1].revents & (libc::POLLIN | gone) != 0 {
            // EIO: the VM side of the pty is closed.
            let n = read_fd(line_fd, &mut buf).unwrap_or(0);
            if n == 0 {
                eot(&mut stdout);
                return Ok(());
            }
            stdout
                .write_all(&buf[..n])
                .and_then(|_| stdout.flush())
                .map_err(|e| format!("stdout: {}", crate::os_error(&e)))?;
        }
        if fds[0].revents & (libc::POLLIN | gone) != 0 {
            let n = read_fd(stdin_fd, &mut buf)
                .map_err(|e| format!("stdin: {}", crate::os_error(&e)))?;
            if n == 0 {
                // The end of our input ends the session, as with cu.
                return Ok(());
            }
            to_vm.clear();
            let feed = esc.feed(&buf[..n], &mut to_vm);
            (&line)
                .write_all(&to_vm)
                .map_err(|e| format!("{tty}: {}", crate::os_error(&e)))?;
            if feed == Feed::Disconnect {
                eot(&mut stdout);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(e: &mut Escape, input: &[u8]) -> (Vec<u8>, Feed) {
        let mut out = Vec::new();
        let f = e.feed(input, &mut out);
        (out, f)
    }

    #[test]
    fn tilde_dot_at_session_start_disconnects() {
        let mut e = Escape::new();
        assert_eq!(feed_all(&mut e, b"~."), (vec![], Feed::Disconnect));
        let mut e = Escape::new();
        assert_eq!(feed_all(&mut e, b"~\x04"), (vec![], Feed::Disconnect));
    }

    #[test]
    fn tilde_dot_after_newline_disconnects() {
        for nl in [&b"\r"[..], b"\n", b"\r\n"] {
            let mut e = Escape::new();
            let mut input = b"ls".to_vec();
            input.extend_from_slice(nl);
            input.extend_from_slice(b"~.rest");
            let mut expect = b"ls".to_vec();
            expect.extend_from_slice(nl);
            assert_eq!(feed_all(&mut e, &input), (expect, Feed::Disconnect));
        }
    }

    #[test]
    fn tilde_dot_mid_line_passes() {
        let mut e = Escape::new();
        assert_eq!(
            feed_all(&mut e, b"cd ~.ssh\r"),
            (b"cd ~.ssh\r".to_vec(), Feed::Continue)
        );
        let mut e = Escape::new();
        assert_eq!(feed_all(&mut e, b"a~."), (b"a~.".to_vec(), Feed::Continue));
    }

    #[test]
    fn tilde_tilde_sends_one() {
        let mut e = Escape::new();
        assert_eq!(feed_all(&mut e, b"~~"), (b"~".to_vec(), Feed::Continue));
        // Then we are mid-line: `~.` goes through.
        assert_eq!(feed_all(&mut e, b"~."), (b"~.".to_vec(), Feed::Continue));
        let mut e = Escape::new();
        assert_eq!(
            feed_all(&mut e, b"~~.\n~~~"),
            (b"~.\n~~".to_vec(), Feed::Continue)
        );
    }

    #[test]
    fn other_escapes_pass_through() {
        let mut e = Escape::new();
        assert_eq!(
            feed_all(&mut e, b"~x\n"),
            (b"~x\n".to_vec(), Feed::Continue)
        );
        // A `~` then newline: both go, and the next line starts fresh.
        assert_eq!(
            feed_all(&mut e, b"~\r~."),
            (b"~\r".to_vec(), Feed::Disconnect)
        );
    }

    #[test]
    fn escape_split_across_reads() {
        let mut e = Escape::new();
        assert_eq!(
            feed_all(&mut e, b"echo hi\n~"),
            (b"echo hi\n".to_vec(), Feed::Continue)
        );
        assert_eq!(feed_all(&mut e, b"."), (vec![], Feed::Disconnect));
        let mut e = Escape::new();
        assert_eq!(feed_all(&mut e, b"~"), (vec![], Feed::Continue));
        assert_eq!(feed_all(&mut e, b"~"), (b"~".to_vec(), Feed::Continue));
    }
}
