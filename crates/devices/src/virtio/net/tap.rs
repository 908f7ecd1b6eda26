//! A Linux tap device: the host end of a VM's network interface. vmd
//! opens it (it needs CAP_NET_ADMIN) and hands the VM process the file
//! descriptor; `vmm` run by hand may open one by name itself.
//!
//! A tap opened here has a vnet header (IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR, as vmd's hostnet opens them), set to the 12 bytes of the
//! virtio 1.x `virtio_net_hdr_v1` (TUNSETVNETHDRSZ): the guest's header
//! then passes through the tap unchanged in both directions, and checksum
//! and segmentation offloads can be negotiated with the guest and handed
//! to the kernel (TUNSETOFFLOAD). A descriptor passed down without
//! IFF_VNET_HDR still works: its frames are plain Ethernet frames, the
//! device adds or strips the virtio header itself and offers no offloads.
//! [`Tap::from_fd`] tells the two apart (TUNGETIFF).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

use super::NET_HDR_LEN;

const IFF_TAP: libc::c_short = libc::IFF_TAP as libc::c_short;
const IFF_NO_PI: libc::c_short = libc::IFF_NO_PI as libc::c_short;
const IFF_VNET_HDR: libc::c_short = libc::IFF_VNET_HDR as libc::c_short;

/// TUN_F_USO4 and TUN_F_USO6 (linux/if_tun.h, Linux 6.2), not in libc.
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

/// Longest interface name Linux takes, with its NUL.
const IFNAMSIZ: usize = 16;

pub struct Tap {
    file: File,
    name: String,
    /// Frames carry a `virtio_net_hdr_v1` in front, both ways.
    vnet_hdr: bool,
    /// A real tap (not one end of a socket pair standing in for one).
    real: bool,
    /// The TUN_F_* offloads last given to the kernel.
    offloads: u32,
    /// The kernel takes UDP segmentation offload frames
    /// (`VIRTIO_NET_HDR_GSO_UDP_L4`) written to it.
    udp_gso: bool,
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (creating it if it does not exist) the tap called `name`, or
    /// a new one named by the kernel from a pattern such as `tap%d`, with
    /// a vnet header. Non-blocking: the device's I/O thread polls it.
    pub fn open(name: &str) -> io::Result<Tap> {
        Tap::open_with(name, true)
    }

    /// [`Tap::open`], with (`vnet_hdr`) or without a vnet header.
    pub fn open_with(name: &str, vnet_hdr: bool) -> io::Result<Tap> {
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
            flags: IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("tap {name}: {e}")));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Tap::setup(file, name, vnet_hdr)
    }

    /// A tap vmd opened and passed down; made non-blocking here. Whether
    /// it has a vnet header is asked of the kernel (TUNGETIFF).
    pub fn from_fd(fd: OwnedFd, name: String) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF fills the ifreq we pass.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("tap {name}: not an attached tap: {e}"),
            ));
        }
        if req.flags & IFF_TAP == 0 || req.flags & IFF_NO_PI == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tap {name}: flags {:#x}: want IFF_TAP | IFF_NO_PI",
                    req.flags
                ),
            ));
        }
        Tap::setup(file, name, req.flags & IFF_VNET_HDR != 0)
    }

    /// Takes ownership of descriptor `fd` (a tap from the parent process).
    ///
    /// # Safety
    /// `fd` must be an open descriptor nothing else owns.
    pub unsafe fn from_raw_fd(fd: i32, name: String) -> io::Result<Tap> {
        Tap::from_fd(OwnedFd::from_raw_fd(fd), name)
    }

    /// Sets the header size on a vnet-header tap, and its offloads to
    /// none until a guest accepts some.
    fn setup(file: File, name: String, vnet_hdr: bool) -> io::Result<Tap> {
        let mut tap = Tap {
            file,
            name,
            vnet_hdr,
            real: true,
            offloads: 0,
            udp_gso: false,
        };
        if vnet_hdr {
            let size = NET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads the int we point to.
            if unsafe { libc::ioctl(tap.fd(), libc::TUNSETVNETHDRSZ, &size) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("tap {}: TUNSETVNETHDRSZ: {e}", tap.name),
                ));
            }
            // Linux takes UDP GSO frames from a tap's writer since 6.2,
            // the release that lets its reader take them (TUN_F_USO4/6):
            // whether the kernel knows the flags says whether it does.
            let uso = libc::TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6;
            tap.udp_gso = tap.set_offloads(uso).is_ok();
            tap.set_offloads(0)?;
        }
        Ok(tap)
    }

    /// One end of a message socket pair standing in for a tap (with or
    /// without a vnet header), and the other end: what the device writes
    /// to the tap is read there, what is written there the device reads.
    /// For tests and the fuzz target (`fuzz/`); not an interface for
    /// devices.
    #[doc(hidden)]
    pub fn socket_pair(vnet_hdr: bool) -> io::Result<(Tap, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two descriptors.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are ours from here.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let tap = Tap {
            file: a,
            name: "pair".into(),
            vnet_hdr,
            real: false,
            offloads: 0,
            udp_gso: false,
        };
        Ok((tap, b))
    }

    /// Whether UDP segmentation offload frames may be written to the tap
    /// (`VIRTIO_NET_HDR_GSO_UDP_L4` in the vnet header; Linux 6.2): the
    /// device then merges the guest's datagrams (`coalesce`).
    pub fn udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// Makes one end of [`Tap::socket_pair`] take UDP GSO frames as a tap
    /// on Linux 6.2 does. For tests and the fuzz target.
    #[doc(hidden)]
    pub fn assume_udp_gso(&mut self) {
        self.udp_gso = self.vnet_hdr;
    }

    /// Whether frames carry a `virtio_net_hdr_v1` (IFF_VNET_HDR).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Tells the kernel which offloads (TUN_F_*) the reader takes: which
    /// frames it may hand over with a partial checksum (TUN_F_CSUM) or
    /// unsegmented (TUN_F_TSO4, ...). Only on a vnet-header tap.
    pub fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        if !self.vnet_hdr {
            return if flags == 0 {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "offloads need a vnet header",
                ))
            };
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if self.real
            && unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.offloads = flags;
        Ok(())
    }

    /// The TUN_F_* offloads last given to the kernel.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// The host side's MAC address (what the guest sees as the other end
    /// of its link, and our DHCP server's address).
    pub fn hw_addr(&self) -> io::Result<[u8; 6]> {
        // SIOCGIFHWADDR on the tap's own descriptor (the tun driver answers
        // it for its device), not on a socket by interface name: a confined
        // VM process's network namespace does not have the interface.
        const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
        let mut req = [0u8; 40]; // struct ifreq
        req[..self.name.len()].copy_from_slice(self.name.as_bytes());
        // SAFETY: the ioctl fills the ifreq we pass.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), SIOCGIFHWADDR, req.as_mut_ptr()) } != 0 {
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

    /// One frame (behind its vnet header, on a vnet-header tap) into
    /// `buf`; `WouldBlock` when there is none.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends one frame (behind its vnet header, on a vnet-header tap);
    /// `WouldBlock` when the tap's queue is full.
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
