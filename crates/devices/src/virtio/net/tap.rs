//! A Linux tap device: the host end of a VM's network interface. vmd
//! opens it (it needs CAP_NET_ADMIN) and hands the VM process the file
//! descriptor; `vmm` run by hand may open one by name itself.
//!
//! The tap is opened without a vnet header (IFF_NO_PI, no IFF_VNET_HDR):
//! no offloads are offered to the guest yet, so every frame is a plain
//! Ethernet frame on both sides and the device adds or strips the virtio
//! header itself.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Longest interface name Linux takes, with its NUL.
const IFNAMSIZ: usize = 16;

pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (creating it if it does not exist) the tap called `name`, or
    /// a new one named by the kernel from a pattern such as `tap%d`.
    /// Non-blocking: the device's I/O thread polls it.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap name {name:?}: 1 to 15 characters, no '/'"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("tap {name}: {e}")));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Tap { file, name })
    }

    /// A tap vmd opened and passed down; made non-blocking here.
    pub fn from_fd(fd: OwnedFd, name: String) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Tap { file, name })
    }

    /// Takes ownership of descriptor `fd` (a tap from the parent process).
    ///
    /// # Safety
    /// `fd` must be an open descriptor nothing else owns.
    pub unsafe fn from_raw_fd(fd: i32, name: String) -> io::Result<Tap> {
        Tap::from_fd(OwnedFd::from_raw_fd(fd), name)
    }

    /// The host side's MAC address (what the guest sees as the other end
    /// of its link, and our DHCP server's address).
    pub fn hw_addr(&self) -> io::Result<[u8; 6]> {
        // SIOCGIFHWADDR on any socket, by interface name.
        const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
        // SAFETY: plain socket(2).
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: we own the descriptor from here.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut req = [0u8; 40]; // struct ifreq
        req[..self.name.len()].copy_from_slice(self.name.as_bytes());
        // SAFETY: the ioctl fills the ifreq we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFHWADDR, req.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // ifr_hwaddr: a sockaddr (family, then the address) at offset 16.
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req[18..24]);
        Ok(mac)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// One frame into `buf`; `WouldBlock` when there is none.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends one frame; `WouldBlock` when the tap's queue is full.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: writes frame.len() bytes from frame.
        let n = unsafe { libc::write(self.fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
