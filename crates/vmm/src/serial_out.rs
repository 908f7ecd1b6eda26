//! Where the guest's COM1 goes: stdio, a pty, a file, or nowhere.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Stdio,
    Pty,
    None,
    File(PathBuf),
}

pub fn parse(s: &str) -> Result<Dest, String> {
    match s {
        "stdio" => Ok(Dest::Stdio),
        "pty" => Ok(Dest::Pty),
        "none" => Ok(Dest::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(Dest::File(PathBuf::from(p))),
            _ => Err(format!("{s:?}: expected stdio, pty, none or file:PATH")),
        },
    }
}

pub struct Console {
    pub writer: Box<dyn Write + Send>,
    pub input: Option<Box<dyn Read + Send>>,
    /// The pty's slave path, for `Dest::Pty`.
    pub tty: Option<String>,
}

/// A pty master. Writes never block the vCPU: with no reader on the
/// slave side, output that does not fit the pty buffer is dropped, as a
/// serial line with nothing attached would lose it.
struct PtyMaster(File);

impl Write for PtyMaster {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EIO)) => Ok(buf.len()),
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the pty master, waiting with poll(2) since the fd is non-blocking.
struct PtyReader(File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                // EIO: no slave open right now; wait for one.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                r => return r,
            }
            let mut p = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, -1) };
        }
    }
}

fn open_pty() -> io::Result<(File, String)> {
    // SAFETY: standard posix_openpt sequence; every return value is checked.
    unsafe {
        let fd =
            libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = File::from_raw_fd(fd);
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        // Raw mode on the line: the guest's bytes pass untouched (no echo,
        // no CR/LF translation), as on a real serial cable.
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Ok((master, path))
    }
}

pub fn open(dest: &Dest) -> io::Result<Console> {
    Ok(match dest {
        Dest::Stdio => Console {
            writer: Box::new(io::stdout()),
            input: Some(Box::new(io::stdin())),
            tty: None,
        },
        Dest::None => Console {
            writer: Box::new(io::sink()),
            input: None,
            tty: None,
        },
        Dest::File(p) => Console {
            writer: Box::new(
                File::create(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            ),
            input: None,
            tty: None,
        },
        Dest::Pty => {
            let (master, path) = open_pty()?;
            eprintln!("vmm: serial console on {path}");
            Console {
                input: Some(Box::new(PtyReader(master.try_clone()?))),
                writer: Box::new(PtyMaster(master)),
                tty: Some(path),
            }
        }
    })
}

/// Copies console input into the guest until EOF, waiting while the
/// UART's receive FIFO is full.
pub fn pump_input(mut input: Box<dyn Read + Send>, mut deliver: impl FnMut(&[u8]) -> usize) {
    let mut buf = [0u8; 256];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let took = deliver(rest);
            rest = &rest[took..];
            if !rest.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(parse("stdio"), Ok(Dest::Stdio));
        assert_eq!(parse("file:/tmp/x"), Ok(Dest::File("/tmp/x".into())));
        assert!(parse("file:").is_err());
        assert!(parse("tcp:1").is_err());
    }

    #[test]
    fn pty_output_never_blocks() {
        let (master, _path) = open_pty().unwrap();
        let mut w = PtyMaster(master);
        // Far more than a pty buffer holds, with nobody reading.
        for _ in 0..1024 {
            w.write_all(&[b'x'; 1024]).unwrap();
        }
    }
}
