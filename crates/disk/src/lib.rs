//! Disk images for VMs: what a virtual disk reads and writes, apart from
//! any device model, so that the VM process's block devices and `vmctl
//! create` share one implementation.
//!
//! Every image opened for a VM is locked with an open file description
//! lock (`F_OFD_SETLK`): a write lock over the whole file for a disk the
//! VM may write, a read lock for a read-only one (a base image or an ISO
//! that several VMs share). Another VM, another vmd, `vmctl create` or
//! QEMU (which takes OFD locks too) then cannot write under a running
//! guest's feet.
//!
//! Two formats: raw ([`RawImage`]: a regular file or a block device) and
//! qcow2 ([`Qcow2Image`], through the `imago` crate, with chains of base
//! images). [`open`] opens either (telling them apart by the qcow2 magic
//! when not told), [`create`] makes either, new or derived from a base.
//! Every error is one line that names the file ([`OpenError`]).
//!
//! Important: the `imago` dependency is built with its `sync` feature,
//! which cannot be combined with its default `async` one in one build: no
//! other crate of the workspace may depend on `imago` with default
//! features.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

mod qcow2;
pub use qcow2::Qcow2Image;

/// Bytes per sector, as virtio-blk counts them.
pub const SECTOR_SIZE: u64 = 512;

/// A disk image as a device sees it: a flat array of bytes.
pub trait DiskImage: Send {
    /// Size in bytes the guest sees.
    fn size(&self) -> u64;
    /// Fill `bufs` from `offset`; all of them or an error.
    fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()>;
    /// Write all of `bufs` at `offset`.
    fn write_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// Make every write acknowledged so far durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether `discard` and `write_zeroes` do more than write zeroes.
    fn supports_discard(&self) -> bool;
    /// The guest no longer needs `len` bytes at `offset`: they may read
    /// back as anything (here: zeroes, the space given back to the host).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Make `len` bytes at `offset` read as zeroes; with `unmap` the space
    /// may be deallocated.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// Whether the bytes at `offset` may hold data, and for how many bytes
    /// (1 to `max`, 0 only at the end of the disk) that stays so: `false`
    /// means they surely read as zeroes (a hole, an unallocated cluster),
    /// so a copy may skip them. The default knows nothing: all data.
    fn data_extent(&mut self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        Ok((true, max.min(self.size().saturating_sub(offset))))
    }
}

/// Writes `len` zero bytes at `offset` through `img`, a buffer at a time:
/// write-zeroes for images that have nothing better.
fn write_zero_bytes(
    img: &mut (impl DiskImage + ?Sized),
    mut offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeroes = vec![0u8; 64 << 10];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(zeroes.len() as u64) as usize;
        img.write_at(&[IoSlice::new(&zeroes[..n])], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// Why an image cannot be opened (or created); the message is one line
/// that names the file.
#[derive(Debug)]
pub enum OpenError {
    Io {
        path: PathBuf,
        err: io::Error,
    },
    /// Not a regular file or block device (a FIFO, a directory, a tty).
    NotAnImage {
        path: PathBuf,
        kind: &'static str,
    },
    /// Another process holds a conflicting lock.
    Locked {
        path: PathBuf,
    },
    Empty {
        path: PathBuf,
    },
    /// A qcow2 image whose header or tables make no sense.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    /// A qcow2 feature this crate does not take (external data files,
    /// unknown backing formats).
    Unsupported {
        path: PathBuf,
        reason: String,
    },
    /// `image` names a base image that cannot be opened.
    Base {
        image: PathBuf,
        base: PathBuf,
        err: Box<OpenError>,
    },
    /// `image` names `base` as its base, but `base` is already in the chain
    /// (A -> B -> A).
    Loop {
        image: PathBuf,
        base: PathBuf,
    },
    /// More than [`MAX_BASE_IMAGES`] base images under `path`.
    ChainTooLong {
        path: PathBuf,
    },
    /// `create` was asked for a file that exists.
    Exists {
        path: PathBuf,
    },
}

/// How many base images one disk may stack under it. OpenBSD's vmd allows
/// four (`VM_MAX_BASE_PER_DISK`); this is more generous but still bounds
/// a chain that a crafted image could make endless.
pub const MAX_BASE_IMAGES: usize = 16;

impl OpenError {
    /// The file the message is about (for `Base`: the image naming it).
    pub fn path(&self) -> &Path {
        match self {
            OpenError::Io { path, .. }
            | OpenError::NotAnImage { path, .. }
            | OpenError::Locked { path }
            | OpenError::Empty { path }
            | OpenError::Corrupt { path, .. }
            | OpenError::Unsupported { path, .. }
            | OpenError::ChainTooLong { path }
            | OpenError::Exists { path } => path,
            OpenError::Base { image, .. } | OpenError::Loop { image, .. } => image,
        }
    }

    /// The message without the leading `path: `.
    pub fn reason(&self) -> String {
        match self {
            OpenError::Io { err, .. } => os_error(err),
            OpenError::NotAnImage { kind, .. } => {
                format!("is a {kind}, not a disk image (a regular file or a block device)")
            }
            OpenError::Locked { .. } => "in use: another VM or program holds a lock on it".into(),
            OpenError::Empty { .. } => "is smaller than one 512-byte sector".into(),
            OpenError::Corrupt { reason, .. } => format!("invalid qcow2 image: {reason}"),
            OpenError::Unsupported { reason, .. } => format!("unsupported qcow2 image: {reason}"),
            OpenError::Base { base, err, .. } => {
                let r = err.reason();
                if err.path() == base.as_path() {
                    format!("base image {}: {r}", base.display())
                } else {
                    // Deeper in the chain: say where.
                    format!(
                        "base image {}: {}: {r}",
                        base.display(),
                        err.path().display()
                    )
                }
            }
            OpenError::Loop { base, .. } => format!(
                "base image {} is already in the chain of base images (a loop)",
                base.display()
            ),
            OpenError::ChainTooLong { .. } => {
                format!("more than {MAX_BASE_IMAGES} base images in a chain")
            }
            OpenError::Exists { .. } => "File exists".into(),
        }
    }

    /// For a base image's error: the innermost one.
    pub fn root(&self) -> &OpenError {
        match self {
            OpenError::Base { err, .. } => err.root(),
            e => e,
        }
    }
}

/// An OS error as strerror(3) says it, without Rust's "(os error N)".
fn os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path().display(), self.reason())
    }
}

impl std::error::Error for OpenError {}

/// What a file that is not a regular one is, in words ("FIFO",
/// "directory", ...): for messages that refuse it.
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for use as an image: refuses what is not a regular file
/// or block device before it can block (O_NONBLOCK for the open, so a
/// FIFO cannot hang us), then takes the OFD lock.
pub fn open_image_file(path: &Path, read_only: bool) -> Result<(File, bool), OpenError> {
    let (file, block_device) = open_unlocked(path, read_only)?;
    lock_image(&file, path, read_only)?;
    Ok((file, block_device))
}

/// The first half of [`open_image_file`]: open and check the kind of
/// file, take no lock (a base chain checks for loops in between).
fn open_unlocked(path: &Path, read_only: bool) -> Result<(File, bool), OpenError> {
    let io_err = |err| OpenError::Io {
        path: path.to_owned(),
        err,
    };
    // Looked at before it is opened too: a device other than a disk may
    // act on an open (a watchdog starts counting, a tape rewinds).
    if let Ok(m) = std::fs::metadata(path) {
        let ft = m.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(OpenError::NotAnImage {
                path: path.to_owned(),
                kind: file_kind(ft),
            });
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    let ft = file.metadata().map_err(io_err)?.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(OpenError::NotAnImage {
            path: path.to_owned(),
            kind: file_kind(ft),
        });
    }
    // Back to blocking I/O now that it is known to be a file.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    Ok((file, ft.is_block_device()))
}

/// The second half of [`open_image_file`]: the lock, as an [`OpenError`].
fn lock_image(file: &File, path: &Path, shared: bool) -> Result<(), OpenError> {
    lock(file, shared).map_err(|err| {
        if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
            OpenError::Locked {
                path: path.to_owned(),
            }
        } else {
            OpenError::Io {
                path: path.to_owned(),
                err,
            }
        }
    })
}

/// Takes the image lock on `file` (see the crate documentation).
pub fn lock(file: &File, shared: bool) -> io::Result<()> {
    let fl = libc::flock {
        l_type: if shared { libc::F_RDLCK } else { libc::F_WRLCK } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end, however far it grows
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK reads the struct we pass.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether some process holds a lock on `path` that would stop us from
/// writing it (the test `vmctl create` makes before overwriting).
pub fn is_locked(path: &Path) -> io::Result<bool> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_OFD_GETLK reads and writes the struct we pass.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The first bytes of a qcow2 image ("QFI\xfb").
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Whether the file at `path` starts with the qcow2 magic: how an image
/// whose format is not given is told apart from a raw one, as OpenBSD's
/// vmd does. Opens without blocking (a FIFO answers false).
pub fn is_qcow2(path: &Path) -> io::Result<bool> {
    use std::io::Read;
    let ft = std::fs::metadata(path)?.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Ok(false);
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() && !f.metadata()?.file_type().is_block_device() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    Ok(f.read_exact(&mut magic).is_ok() && magic == QCOW2_MAGIC)
}

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name `qemu-img` and vm.conf use: `raw`, `qcow2`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(format!("unknown image format {s:?} (raw or qcow2)")),
        }
    }
}

/// The format of the image in `file`: qcow2 if it starts with the qcow2
/// magic, else raw (OpenBSD's vmd decides the same way).
fn detect_file(file: &File) -> Format {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_ok() && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

/// The format of the image at `path`, by its first bytes (see
/// [`is_qcow2`]); the error names the file.
pub fn detect(path: &Path) -> Result<Format, OpenError> {
    let (file, _) = open_unlocked(path, true)?;
    Ok(detect_file(&file))
}

/// Opens the image at `path` for a VM (or for `vmctl create -i`): raw or
/// qcow2 as `format` says, or, with `None`, as its first bytes say (the
/// qcow2 magic, as OpenBSD's vmd probes). The image is locked (see the
/// crate documentation); a qcow2 image's base images are opened too,
/// read-only with the shared lock. On failure nothing was changed and
/// nothing stays open; the error is one line naming the file(s).
pub fn open(
    path: &Path,
    format: Option<Format>,
    read_only: bool,
) -> Result<Box<dyn DiskImage>, OpenError> {
    let (file, block_device) = open_image_file(path, read_only)?;
    match format.unwrap_or_else(|| detect_file(&file)) {
        Format::Raw => Ok(Box::new(RawImage::from_file(file, block_device, path)?)),
        Format::Qcow2 => Ok(Box::new(Qcow2Image::from_file(file, path, read_only)?)),
    }
}

/// Creates a new image at `path` (never over an existing file) of `size`
/// bytes, readable and writable by its owner only, and returns it open
/// for writing and locked. A raw image is a sparse file. A qcow2 image is
/// version 3 with 64 KiB clusters and 16-bit refcounts, as `qemu-img
/// create -f qcow2` makes it (imago writes it); with `base`, it holds only
/// the changes over that image: `base.0` is stored in its header as given
/// (a relative name is relative to the new image's directory, as QEMU and
/// OpenBSD read it) with `base.1` as its format, and the base must open.
/// On failure the new file is removed again.
pub fn create(
    path: &Path,
    format: Format,
    size: u64,
    base: Option<(&str, Format)>,
) -> Result<Box<dyn DiskImage>, OpenError> {
    if format == Format::Raw && base.is_some() {
        return Err(OpenError::Unsupported {
            path: path.to_owned(),
            reason: "only a qcow2 image can have a base image".into(),
        });
    }
    let file = qcow2::create_new(path)?;
    let made = (|| {
        let io_err = |err| OpenError::Io {
            path: path.to_owned(),
            err,
        };
        lock_image(&file, path, false)?;
        let img: Box<dyn DiskImage> = match format {
            Format::Raw => {
                file.set_len(size).map_err(io_err)?;
                Box::new(RawImage::from_file(file, false, path)?)
            }
            Format::Qcow2 => {
                let dup = file.try_clone().map_err(io_err)?;
                qcow2::format_qcow2(dup, path, size, base).map_err(io_err)?;
                Box::new(Qcow2Image::from_file(file, path, false)?)
            }
        };
        Ok(img)
    })();
    match made {
        Ok(mut img) => match img.flush() {
            Ok(()) => Ok(img),
            Err(err) => {
                drop(img);
                let _ = std::fs::remove_file(path);
                Err(OpenError::Io {
                    path: path.to_owned(),
                    err,
                })
            }
        },
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// A raw image: a regular file or a block device, byte for byte.
pub struct RawImage {
    file: File,
    size: u64,
    block_device: bool,
}

impl RawImage {
    pub fn open(path: &Path, read_only: bool) -> Result<RawImage, OpenError> {
        let (file, block_device) = open_image_file(path, read_only)?;
        Self::from_file(file, block_device, path)
    }

    /// The image in `file`, opened and locked by the caller.
    fn from_file(file: File, block_device: bool, path: &Path) -> Result<RawImage, OpenError> {
        let size = if block_device {
            let mut size: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
            // SAFETY: the ioctl writes one u64.
            if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
                return Err(OpenError::Io {
                    path: path.to_owned(),
                    err: io::Error::last_os_error(),
                });
            }
            size
        } else {
            file.metadata()
                .map_err(|err| OpenError::Io {
                    path: path.to_owned(),
                    err,
                })?
                .len()
        };
        if size < SECTOR_SIZE {
            return Err(OpenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(RawImage {
            file,
            size,
            block_device,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Advances a vectored transfer past `n` bytes: drops finished buffers
/// and trims the first partial one. Returns the remaining iovecs.
fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut done = 0;
    for v in iov.iter_mut() {
        if n >= v.iov_len {
            n -= v.iov_len;
            done += 1;
        } else {
            // SAFETY: stays within the buffer the iovec describes.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
    }
    iov.drain(..done);
}

/// preadv/pwritev until every byte moved; a short transfer at EOF is an
/// error (the caller checked bounds, so the file shrank under us).
fn transfer(fd: i32, mut iov: Vec<libc::iovec>, mut offset: u64, write: bool) -> io::Result<()> {
    // IOV_MAX is 1024 on Linux.
    while !iov.is_empty() {
        let cnt = iov.len().min(1024) as libc::c_int;
        // SAFETY: the iovecs describe buffers the caller lent us for the
        // duration of this call.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iov.as_ptr(), cnt, offset as libc::off_t)
            } else {
                libc::preadv(fd, iov.as_ptr(), cnt, offset as libc::off_t)
            }
        };
        match n {
            n if n > 0 => {
                offset += n as u64;
                advance(&mut iov, n as usize);
            }
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let iov = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        transfer(self.file.as_raw_fd(), iov, offset, false)
    }

    fn write_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let iov = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        transfer(self.file.as_raw_fd(), iov, offset, true)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn supports_discard(&self) -> bool {
        !self.block_device
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device {
            return Err(io::ErrorKind::Unsupported.into());
        }
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if !self.block_device {
            let mode = if unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            match self.fallocate(mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => {}
                Err(e) => return Err(e),
            }
        }
        write_zero_bytes(self, offset, len)
    }

    fn data_extent(&mut self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        let max = max.min(self.size.saturating_sub(offset));
        if max == 0 || self.block_device {
            return Ok((true, max));
        }
        let fd = self.file.as_raw_fd();
        let seek = |whence| {
            // SAFETY: lseek on a descriptor we own; it moves no shared
            // state that matters (all I/O here is positioned).
            let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as u64)
            }
        };
        match seek(libc::SEEK_DATA) {
            // A hole up to the next data.
            Ok(data) if data > offset => Ok((false, (data - offset).min(max))),
            // Data up to the next hole.
            Ok(_) => match seek(libc::SEEK_HOLE) {
                Ok(hole) if hole > offset => Ok((true, (hole - offset).min(max))),
                _ => Ok((true, max)),
            },
            // No data after `offset`: a hole to the end.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok((false, max)),
            // A file system without SEEK_DATA: all data.
            Err(_) => Ok((true, max)),
        }
    }
}

/// Tests that look at locks hold this shared; tests that start a process
/// hold it exclusively while they do: a child between fork and exec
/// shares every open file description of this process, and so holds its
/// OFD locks for that moment.
#[cfg(test)]
pub(crate) static FORK_GUARD: std::sync::RwLock<()> = std::sync::RwLock::new(());

#[cfg(test)]
pub(crate) fn no_fork() -> std::sync::RwLockReadGuard<'static, ()> {
    FORK_GUARD.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(crate) fn forking() -> std::sync::RwLockWriteGuard<'static, ()> {
    FORK_GUARD.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tmp(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("disk-test-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn raw_reads_and_writes_vectored() {
        let p = tmp("rw", 1 << 20);
        let mut img = RawImage::open(&p, false).unwrap();
        assert_eq!(img.size(), 1 << 20);
        let (a, b) = ([1u8; 700], [2u8; 324]);
        img.write_at(&[IoSlice::new(&a), IoSlice::new(&b)], 4096)
            .unwrap();
        img.flush().unwrap();
        let (mut x, mut y) = ([0u8; 1000], [0u8; 24]);
        img.read_at(
            &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
            4096,
        )
        .unwrap();
        assert!(x[..700].iter().all(|&v| v == 1) && x[700..].iter().all(|&v| v == 2));
        assert!(y.iter().all(|&v| v == 2));
        img.write_zeroes(4096, 512, false).unwrap();
        img.discard(4096 + 512, 512).unwrap();
        let mut all = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut all).unwrap();
        assert!(all[4096..4096 + 1024].iter().all(|&v| v == 0));
        let mut past = [0u8; 16];
        assert!(img
            .read_at(&mut [IoSliceMut::new(&mut past)], (1 << 20) - 8)
            .is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn locks_conflict_and_readers_share() {
        let _g = no_fork();
        let p = tmp("lock", 4096);
        let w = RawImage::open(&p, false).unwrap();
        assert!(is_locked(&p).unwrap());
        let e = RawImage::open(&p, true).err().unwrap();
        assert!(matches!(e, OpenError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("in use"));
        drop(w);
        assert!(!is_locked(&p).unwrap());
        let r1 = RawImage::open(&p, true).unwrap();
        let _r2 = RawImage::open(&p, true).unwrap();
        assert!(matches!(
            RawImage::open(&p, false),
            Err(OpenError::Locked { .. })
        ));
        drop(r1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let dir = std::env::temp_dir().join(format!("disk-test-{}-fifo", std::process::id()));
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = RawImage::open(&dir, true).err().unwrap();
        assert!(e.to_string().contains("FIFO"), "{e}");
        std::fs::remove_file(&dir).unwrap();
        let e = RawImage::open(Path::new("/nonexistent/x.img"), true)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("/nonexistent/x.img: "), "{e}");
        let p = tmp("empty", 100);
        assert!(matches!(
            RawImage::open(&p, true),
            Err(OpenError::Empty { .. })
        ));
        std::fs::remove_file(&p).unwrap();
    }
}
