//! qcow2 images through the `imago` crate (built with its `sync` feature:
//! plain blocking calls on the caller's thread, no async runtime), with
//! the locking and the base-image rules of this crate:
//!
//! - the image itself is opened (and locked) by us, exclusively when it
//!   may be written, shared when read-only;
//! - every base image it names (its "backing file", resolved relative to
//!   the image's directory as QEMU and OpenBSD's vmd do) is opened through
//!   [`ChainGate`], read-only and with the shared lock, so that several
//!   VMs may share one base while nobody writes it;
//! - a chain that comes back to an image already in it, or one longer
//!   than [`MAX_BASE_IMAGES`], is refused before anything more is opened;
//! - external data files are refused (OpenBSD's vmd has none, and they
//!   would let an image point a writable VM disk at any file).
//!
//! imago orders its metadata writes (refcounts before the L2 entries that
//! use them, L2 entries cleared before refcounts drop), so the file on
//! disk is consistent at every moment, and a process killed between two
//! flushes leaves at worst leaked clusters, which `qemu-img check` reports
//! as leaks, not errors. [`DiskImage::flush`] writes imago's cached
//! metadata back and then fsyncs the file.

use std::fs::{File as StdFile, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping, StorageOpenOptions};

use crate::{
    lock_image, open_image_file, open_unlocked, DiskImage, Format, OpenError, MAX_BASE_IMAGES,
    SECTOR_SIZE,
};

/// A qcow2 image (version 2 or 3), with its chain of base images.
pub struct Qcow2Image {
    access: FormatAccess<File>,
    size: u64,
    read_only: bool,
    /// Zero clusters (qcow2 v3): discard and write-zeroes can free space.
    zero_clusters: bool,
    chain: Vec<PathBuf>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("chain", &self.chain)
            .finish()
    }
}

/// What the gate knows about the chain being opened.
struct ChainState {
    /// (st_dev, st_ino) of every file opened so far, the top first.
    seen: Vec<(u64, u64)>,
    /// Paths of every file opened so far, the top first.
    paths: Vec<PathBuf>,
    /// The images whose headers are being read, outermost first: the last
    /// one is the image that names the next base.
    stack: Vec<PathBuf>,
    /// The first error the gate met, with the files it concerns (imago's
    /// own error, passed up through it, loses that structure).
    error: Option<OpenError>,
}

impl ChainState {
    fn fail(&mut self, err: OpenError) -> io::Error {
        let msg = err.to_string();
        if self.error.is_none() {
            self.error = Some(err);
        }
        io::Error::other(msg)
    }
}

/// imago's hook for every file and image that an image names: here the
/// base images, opened read-only with the shared lock, checked for loops
/// and for the length of the chain.
struct ChainGate<'a> {
    state: &'a mut ChainState,
}

impl imago::format::gate::ImplicitOpenGate<File> for ChainGate<'_> {
    fn open_format<F: FormatDriverBuilder<File>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<File>> {
        let parent = self.state.stack.last().cloned().unwrap_or_default();
        let path = builder.get_image_path().unwrap_or_default();
        self.state.stack.push(path.clone());
        let res = builder.open(ChainGate {
            state: &mut *self.state,
        });
        self.state.stack.pop();
        match res {
            Ok(f) => Ok(FormatAccess::new(f)),
            Err(e) => {
                // Say which image named this one, around whatever went
                // wrong inside it.
                let inner = match self.state.error.take() {
                    Some(inner) => inner,
                    None => imago_error(&path, e),
                };
                let wrapped = if inner.path() == parent.as_path() {
                    inner
                } else {
                    OpenError::Base {
                        image: parent,
                        base: path,
                        err: Box::new(inner),
                    }
                };
                let msg = wrapped.to_string();
                self.state.error = Some(wrapped);
                Err(io::Error::other(msg))
            }
        }
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<File> {
        let parent = self.state.stack.last().cloned().unwrap_or_default();
        let Some(path) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(self.state.fail(OpenError::Unsupported {
                path: parent,
                reason: "names a file without a name".into(),
            }));
        };
        if opts.get_writable() {
            // Only a qcow2 external data file is asked for writable.
            return Err(self.state.fail(OpenError::Unsupported {
                path: parent,
                reason: format!("external data file {} (not supported)", path.display()),
            }));
        }
        let base_err = |err| OpenError::Base {
            image: parent.clone(),
            base: path.clone(),
            err: Box::new(err),
        };
        let (file, _) = match open_unlocked(&path, true) {
            Ok(f) => f,
            Err(e) => return Err(self.state.fail(base_err(e))),
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(err) => {
                return Err(self.state.fail(base_err(OpenError::Io {
                    path: path.clone(),
                    err,
                })))
            }
        };
        if self.state.seen.contains(&(md.dev(), md.ino())) {
            return Err(self.state.fail(OpenError::Loop {
                image: parent,
                base: path,
            }));
        }
        // `seen` holds the top image and the bases so far.
        if self.state.seen.len() > MAX_BASE_IMAGES {
            return Err(self.state.fail(OpenError::ChainTooLong {
                path: self.state.paths[0].clone(),
            }));
        }
        if let Err(e) = lock_image(&file, &path, true) {
            return Err(self.state.fail(base_err(e)));
        }
        self.state.seen.push((md.dev(), md.ino()));
        self.state.paths.push(path.clone());
        match File::from_open_file(file, StorageOpenOptions::new().filename(&path).write(false)) {
            Ok(f) => Ok(f),
            Err(err) => {
                let e = base_err(OpenError::Io {
                    path: path.clone(),
                    err,
                });
                Err(self.state.fail(e))
            }
        }
    }
}

/// imago's error about `path` as one of ours.
fn imago_error(path: &Path, err: io::Error) -> OpenError {
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            let mut reason = err.to_string();
            if reason.contains("(dirty)") || reason.contains("(corrupt)") {
                // Left so by a program that crashed (lazy refcounts) or
                // that found it broken; QEMU's checker repairs both.
                reason.push_str("; repair it with qemu-img check -r all");
            }
            OpenError::Corrupt {
                path: path.to_owned(),
                reason,
            }
        }
        io::ErrorKind::Unsupported => OpenError::Unsupported {
            path: path.to_owned(),
            reason: err.to_string(),
        },
        _ => {
            let s = err.to_string();
            // imago says "Unknown backing format X" as a plain error.
            if s.contains("backing format") || s.contains("feature") {
                OpenError::Unsupported {
                    path: path.to_owned(),
                    reason: s,
                }
            } else {
                OpenError::Io {
                    path: path.to_owned(),
                    err,
                }
            }
        }
    }
}

/// Opens the qcow2 image in `file` (at `path`, with metadata `md`) and
/// its base images through imago; returns it and the paths of the chain.
fn open_chain(
    file: StdFile,
    path: &Path,
    md: &std::fs::Metadata,
    read_only: bool,
) -> Result<(Qcow2<File>, Vec<PathBuf>), OpenError> {
    // The storage options say how the descriptor was opened, whichever
    // way imago is to use it.
    let fd_writable = fd_writable(&file);
    let storage = File::from_open_file(
        file,
        StorageOpenOptions::new().filename(path).write(fd_writable),
    )
    .map_err(|err| OpenError::Io {
        path: path.to_owned(),
        err,
    })?;
    let mut state = ChainState {
        seen: vec![(md.dev(), md.ino())],
        paths: vec![path.to_owned()],
        stack: vec![path.to_owned()],
        error: None,
    };
    let res = Qcow2::<File>::builder(storage)
        .write(!read_only)
        .open(ChainGate { state: &mut state });
    match res {
        Ok(q) => Ok((q, state.paths)),
        Err(e) => Err(state.error.take().unwrap_or_else(|| imago_error(path, e))),
    }
}

/// Whether a descriptor was opened for writing.
fn fd_writable(file: &StdFile) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: F_GETFL on a descriptor we own.
    let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path` and every base image under it.
    /// Nothing is written on failure (nor on success until the first
    /// write: imago changes no header field on open).
    pub fn open(path: &Path, read_only: bool) -> Result<Qcow2Image, OpenError> {
        let (file, _) = open_image_file(path, read_only)?;
        Self::from_file(file, path, read_only)
    }

    /// Opens the image from `file`, opened and locked by the caller.
    pub(crate) fn from_file(
        file: StdFile,
        path: &Path,
        read_only: bool,
    ) -> Result<Qcow2Image, OpenError> {
        let io_err = |err| OpenError::Io {
            path: path.to_owned(),
            err,
        };
        let md = file.metadata().map_err(io_err)?;
        // The smallest header there is (version 2).
        const V2_HEADER: u64 = 72;
        if md.is_file() && md.len() < V2_HEADER {
            return Err(OpenError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "{} bytes long, shorter than a qcow2 header ({V2_HEADER})",
                    md.len()
                ),
            });
        }
        let mut magic = [0u8; 4];
        {
            use std::os::unix::fs::FileExt;
            if file.read_exact_at(&mut magic, 0).is_err() || magic != crate::QCOW2_MAGIC {
                return Err(OpenError::Corrupt {
                    path: path.to_owned(),
                    reason: "no qcow2 magic (QFI\\xfb) at the start".into(),
                });
            }
        }
        if !read_only {
            // imago clears a writable image's autoclear feature bits as it
            // reads the header, before it opens the base images: open the
            // whole chain read-only first, so that an image that cannot be
            // opened is left exactly as it was.
            let probe = file.try_clone().map_err(io_err)?;
            // Read-only: nothing to flush when it is dropped.
            drop(open_chain(probe, path, &md, true)?.0);
        }
        let (qcow2, chain) = open_chain(file, path, &md, read_only)?;
        let access = FormatAccess::new(qcow2);
        let size = access.size();
        if size < SECTOR_SIZE {
            return Err(OpenError::Empty {
                path: path.to_owned(),
            });
        }
        let zero_clusters = access.inner().zero_granularity().is_some();
        Ok(Qcow2Image {
            access,
            size,
            read_only,
            zero_clusters,
            chain,
        })
    }

    /// The image and its base images, the image first, as opened
    /// (relative names resolved against the naming image's directory).
    pub fn chain(&self) -> &[PathBuf] {
        &self.chain
    }

    fn check_bounds(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{len} bytes at {offset} reach past the end of the disk ({} bytes)",
                    self.size
                ),
            )),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the image is open read-only",
            ))
        } else {
            Ok(())
        }
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_bounds(offset, len)?;
        let v: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        self.access.readv(IoVectorMut::from(v), offset)
    }

    fn write_at(&mut self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_bounds(offset, len)?;
        let v: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        self.access.writev(IoVector::from(v), offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // imago's caches to the file, then the file to the disk.
        self.access.flush()?;
        self.access.sync()
    }

    fn supports_discard(&self) -> bool {
        !self.read_only && self.zero_clusters
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_bounds(offset, len)?;
        if !self.zero_clusters {
            return Err(io::ErrorKind::Unsupported.into());
        }
        // Zeroes, not the base image's data: what the guest reads back
        // stays what it was told (the device says DISCARD reads zeroes).
        self.access.discard_to_zero(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_bounds(offset, len)?;
        if unmap && self.zero_clusters {
            self.access.discard_to_zero(offset, len)
        } else if self.zero_clusters {
            self.access.write_zeroes(offset, len)
        } else {
            crate::write_zero_bytes(self, offset, len)
        }
    }

    fn data_extent(&mut self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        let max = max.min(self.size.saturating_sub(offset));
        if max == 0 {
            return Ok((false, 0));
        }
        let (mapping, len) = self.access.get_mapping(offset, max)?;
        let data = !matches!(mapping, Mapping::Zero { .. } | Mapping::Eof { .. });
        Ok((data, len.clamp(1, max)))
    }
}

/// Formats the new, empty file `file` (at `path`) as a qcow2 image of
/// `size` bytes: version 3, 64 KiB clusters, 16-bit refcounts (what
/// `qemu-img create -f qcow2` makes), with `base` as its backing file,
/// the name stored as given and its format recorded, as `qemu-img
/// create -b NAME -F FMT` does.
pub(crate) fn format_qcow2(
    file: StdFile,
    path: &Path,
    size: u64,
    base: Option<(&str, Format)>,
) -> io::Result<()> {
    let storage = File::from_open_file(file, StorageOpenOptions::new().filename(path).write(true))?;
    let mut builder = Qcow2::<File>::create_builder(storage).size(size);
    if let Some((name, format)) = base {
        builder = builder.backing(name.to_owned(), format.to_string());
    }
    builder.create()
}

/// Opens a file that must not exist yet, for [`crate::create`].
pub(crate) fn create_new(path: &Path) -> Result<StdFile, OpenError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::AlreadyExists {
                OpenError::Exists {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create, open, RawImage};
    use std::fs;
    use std::process::Command;

    /// A fresh directory for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("disk-qcow2-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes a qcow2 header naming `base` without opening it (as
    /// `qemu-img create -u` does), so that tests can build broken chains.
    fn qcow2_naming(path: &Path, size: u64, base: Option<(&str, Format)>) {
        let f = create_new(path).unwrap();
        format_qcow2(f, path, size, base).unwrap();
    }

    fn raw_with(path: &Path, size: u64, fill: u8) {
        fs::write(path, vec![fill; size as usize]).unwrap();
    }

    fn read(img: &mut dyn DiskImage, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        img.read_at(&mut [IoSliceMut::new(&mut buf)], offset)
            .unwrap();
        buf
    }

    fn write(img: &mut dyn DiskImage, offset: u64, data: &[u8]) {
        img.write_at(&[IoSlice::new(data)], offset).unwrap();
    }

    #[test]
    fn create_write_reopen_read() {
        let _g = crate::no_fork();
        let d = Dir::new("rw");
        let p = d.join("a.qcow2");
        let mut img = create(&p, Format::Qcow2, 8 << 20, None).unwrap();
        assert_eq!(img.size(), 8 << 20);
        assert_eq!(read(img.as_mut(), 0, 4096), vec![0; 4096]);
        // Vectored, unaligned, across a cluster boundary.
        let (a, b) = (vec![0xa5u8; 1000], vec![0x5au8; 70_000]);
        img.write_at(&[IoSlice::new(&a), IoSlice::new(&b)], 65_000)
            .unwrap();
        img.flush().unwrap();
        assert!(is_locked_by_other(&p));
        drop(img);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let mut img = open(&p, None, true).unwrap();
        let got = read(img.as_mut(), 65_000, 71_000);
        assert_eq!(&got[..1000], &a[..]);
        assert_eq!(&got[1000..], &b[..]);
        assert_eq!(read(img.as_mut(), 0, 65_000), vec![0; 65_000]);
        // Past the end: an error, not zeroes.
        let mut past = [0u8; 16];
        assert!(img
            .read_at(&mut [IoSliceMut::new(&mut past)], (8 << 20) - 8)
            .is_err());
        // Read-only refuses writes.
        assert!(img.write_at(&[IoSlice::new(&[1])], 0).is_err());
        assert!(!img.supports_discard());
    }

    fn is_locked_by_other(p: &Path) -> bool {
        crate::is_locked(p).unwrap()
    }

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn discard_and_write_zeroes() {
        let _g = crate::no_fork();
        let d = Dir::new("discard");
        let base = d.join("base.img");
        raw_with(&base, 1 << 20, 0x11);
        let p = d.join("top.qcow2");
        let mut img = create(&p, Format::Qcow2, 1 << 20, Some(("base.img", Format::Raw))).unwrap();
        assert!(img.supports_discard());
        write(img.as_mut(), 0, &[0x22; 3 << 16]);
        // A whole cluster discarded, a part of one zeroed, one zeroed
        // where only the base had data.
        img.discard(0, 1 << 16).unwrap();
        img.write_zeroes(1 << 16, 100, false).unwrap();
        img.write_zeroes(5 << 16, 1 << 16, true).unwrap();
        assert_eq!(read(img.as_mut(), 0, 1 << 16), vec![0; 1 << 16]);
        let c1 = read(img.as_mut(), 1 << 16, 1 << 16);
        assert_eq!(&c1[..100], &[0; 100][..]);
        assert!(c1[100..].iter().all(|&b| b == 0x22));
        assert_eq!(read(img.as_mut(), 5 << 16, 1 << 16), vec![0; 1 << 16]);
        assert!(read(img.as_mut(), 6 << 16, 1 << 16)
            .iter()
            .all(|&b| b == 0x11));
        // The extents a copy sees: unallocated clusters over the base are
        // data (the base's), zero clusters are not.
        assert_eq!(img.data_extent(0, 1 << 20).unwrap(), (false, 1 << 16));
        assert!(img.data_extent(1 << 16, 1 << 20).unwrap().0);
        assert_eq!(img.data_extent(5 << 16, 1 << 16).unwrap(), (false, 1 << 16));
        img.flush().unwrap();
        assert!(fs::read(&base).unwrap().iter().all(|&b| b == 0x11));
    }

    #[test]
    fn chain_of_bases_reads_through_and_writes_on_top() {
        let _g = crate::no_fork();
        let d = Dir::new("chain");
        let base = d.join("base.img");
        raw_with(&base, 4 << 20, 0x01);
        let mid = d.join("mid.qcow2");
        let mut m = create(
            &mid,
            Format::Qcow2,
            4 << 20,
            Some(("base.img", Format::Raw)),
        )
        .unwrap();
        write(m.as_mut(), 1 << 20, &[0x02; 4096]);
        m.flush().unwrap();
        drop(m);
        // An absolute name for the second link; a sub-directory for the top.
        fs::create_dir(d.join("sub")).unwrap();
        let top = d.join("sub/top.qcow2");
        let mid_abs = mid.to_str().unwrap().to_owned();
        let mut t = create(
            &top,
            Format::Qcow2,
            4 << 20,
            Some((&mid_abs, Format::Qcow2)),
        )
        .unwrap();
        write(t.as_mut(), 2 << 20, &[0x03; 4096]);
        t.flush().unwrap();
        drop(t);

        let before_base = fs::read(&base).unwrap();
        let before_mid = fs::read(&mid).unwrap();
        let img = Qcow2Image::open(&top, false).unwrap();
        assert_eq!(img.chain().len(), 3);
        let mut img: Box<dyn DiskImage> = Box::new(img);
        assert_eq!(read(img.as_mut(), 0, 16), vec![1; 16]);
        assert_eq!(read(img.as_mut(), 1 << 20, 16), vec![2; 16]);
        assert_eq!(read(img.as_mut(), 2 << 20, 16), vec![3; 16]);
        // Partial write into a cluster that only the base has: the rest
        // of the cluster is copied up.
        write(img.as_mut(), (1 << 20) + 100, &[0x04; 8]);
        let got = read(img.as_mut(), 1 << 20, 4096);
        assert_eq!(&got[..100], &[2; 100][..]);
        assert_eq!(&got[100..108], &[4; 8][..]);
        assert_eq!(&got[108..], &[2; 4096 - 108][..]);
        // The bases are locked shared: readable by others, writable by none.
        assert!(RawImage::open(&base, true).is_ok());
        assert!(matches!(
            RawImage::open(&base, false),
            Err(OpenError::Locked { .. })
        ));
        assert!(matches!(
            Qcow2Image::open(&mid, false),
            Err(OpenError::Locked { .. })
        ));
        // A second overlay on the same base opens beside it.
        let other = d.join("other.qcow2");
        let o = create(
            &other,
            Format::Qcow2,
            4 << 20,
            Some(("base.img", Format::Raw)),
        )
        .unwrap();
        drop(o);
        img.flush().unwrap();
        drop(img);
        assert!(fs::read(&base).unwrap() == before_base, "base changed");
        assert!(fs::read(&mid).unwrap() == before_mid, "mid changed");
    }

    #[test]
    fn missing_image_and_missing_base() {
        let _g = crate::no_fork();
        let d = Dir::new("missing");
        let e = open(&d.join("nope.qcow2"), None, false).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: No such file or directory",
                d.join("nope.qcow2").display()
            )
        );
        let top = d.join("top.qcow2");
        qcow2_naming(&top, 1 << 20, Some(("gone.img", Format::Raw)));
        // An autoclear feature bit (as QEMU's persistent bitmaps set): a
        // writable open clears it, but a failed one must not.
        let mut h = fs::read(&top).unwrap();
        h[88..96].copy_from_slice(&1u64.to_be_bytes());
        fs::write(&top, &h).unwrap();
        let before = fs::read(&top).unwrap();
        let e = open(&top, None, false).err().unwrap();
        assert!(matches!(e, OpenError::Base { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: base image {}: No such file or directory",
                top.display(),
                d.join("gone.img").display()
            )
        );
        assert!(fs::read(&top).unwrap() == before, "image changed");
        assert!(!crate::is_locked(&top).unwrap(), "lock left behind");

        // Deeper in a chain: every link is named.
        let top2 = d.join("top2.qcow2");
        qcow2_naming(&top2, 1 << 20, Some(("top.qcow2", Format::Qcow2)));
        let e = open(&top2, None, true).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: base image {}: base image {}: No such file or directory",
                top2.display(),
                top.display(),
                d.join("gone.img").display()
            )
        );
        assert!(matches!(e.root(), OpenError::Io { .. }));
        // create() with a missing base makes nothing.
        let e = create(
            &d.join("new.qcow2"),
            Format::Qcow2,
            1 << 20,
            Some(("gone.img", Format::Raw)),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("gone.img: No such file"), "{e}");
        assert!(!d.join("new.qcow2").exists());
    }

    #[test]
    fn loops_are_refused() {
        let _g = crate::no_fork();
        let d = Dir::new("loop");
        let a = d.join("a.qcow2");
        let b = d.join("b.qcow2");
        qcow2_naming(&a, 1 << 20, Some(("b.qcow2", Format::Qcow2)));
        qcow2_naming(&b, 1 << 20, Some(("a.qcow2", Format::Qcow2)));
        let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        for ro in [false, true] {
            let e = open(&a, None, ro).err().unwrap();
            assert!(matches!(e.root(), OpenError::Loop { .. }), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: base image {}: base image {} is already in the chain of base images (a loop)",
                    a.display(),
                    b.display(),
                    a.display()
                )
            );
        }
        // An image that is its own base, through a symbolic link.
        let c = d.join("c.qcow2");
        std::os::unix::fs::symlink("c.qcow2", d.join("c-link")).unwrap();
        qcow2_naming(&c, 1 << 20, Some(("c-link", Format::Qcow2)));
        let e = open(&c, None, false).err().unwrap();
        assert!(matches!(e, OpenError::Loop { .. }), "{e:?}");
        assert!(fs::read(&a).unwrap() == ba, "a changed");
        assert!(fs::read(&b).unwrap() == bb, "b changed");
        assert!(!crate::is_locked(&a).unwrap() && !crate::is_locked(&b).unwrap());
    }

    #[test]
    fn chain_length_is_bounded() {
        let _g = crate::no_fork();
        let d = Dir::new("long");
        raw_with(&d.join("i0"), 1 << 16, 7);
        // i1 -> i0 (raw), i2 -> i1, ...: image iN has N base images.
        for i in 1..=MAX_BASE_IMAGES + 1 {
            let name = format!("i{}", i - 1);
            let fmt = if i == 1 { Format::Raw } else { Format::Qcow2 };
            qcow2_naming(&d.join(&format!("i{i}")), 1 << 16, Some((&name, fmt)));
        }
        let ok = d.join(&format!("i{MAX_BASE_IMAGES}"));
        let mut img = open(&ok, None, true).unwrap();
        assert_eq!(read(img.as_mut(), 0, 4), vec![7; 4]);
        drop(img);
        let long = d.join(&format!("i{}", MAX_BASE_IMAGES + 1));
        let e = open(&long, None, true).err().unwrap();
        assert!(matches!(e.root(), OpenError::ChainTooLong { .. }), "{e:?}");
        assert!(
            e.to_string().ends_with(&format!(
                "more than {MAX_BASE_IMAGES} base images in a chain"
            )),
            "{e}"
        );
    }

    #[test]
    fn corrupt_headers() {
        let _g = crate::no_fork();
        let d = Dir::new("corrupt");
        let good = d.join("good.qcow2");
        qcow2_naming(&good, 1 << 20, None);
        let hdr = fs::read(&good).unwrap();
        type Spoil = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: [(&str, Spoil); 5] = [
            (
                "version",
                Box::new(|h| h[4..8].copy_from_slice(&99u32.to_be_bytes())),
            ),
            (
                "cluster",
                Box::new(|h| h[20..24].copy_from_slice(&40u32.to_be_bytes())),
            ),
            (
                "l1",
                Box::new(|h| h[40..48].copy_from_slice(&12345u64.to_be_bytes())),
            ),
            ("short", Box::new(|h| h.truncate(6))),
            (
                "backing",
                Box::new(|h| {
                    h[8..16].copy_from_slice(&(1u64 << 20).to_be_bytes());
                    h[16..20].copy_from_slice(&10u32.to_be_bytes());
                }),
            ),
        ];
        for (name, spoil) in cases {
            let p = d.join(name);
            let mut h = hdr.clone();
            spoil(&mut h);
            fs::write(&p, &h).unwrap();
            let e = open(&p, Some(Format::Qcow2), false).err().unwrap();
            assert!(
                matches!(e, OpenError::Corrupt { .. } | OpenError::Unsupported { .. }),
                "{name}: {e:?}"
            );
            let s = e.to_string();
            assert!(s.starts_with(&format!("{}: ", p.display())), "{s}");
            assert!(!s.contains('\n'), "{s}");
            assert!(fs::read(&p).unwrap() == h, "{name}: file changed");
        }
        // A raw file opened as qcow2.
        let raw = d.join("raw");
        raw_with(&raw, 4096, 0);
        let e = open(&raw, Some(Format::Qcow2), true).err().unwrap();
        assert!(e.to_string().contains("no qcow2 magic"), "{e}");
        // Unknown incompatible feature bits (the dirty bit among them).
        let p = d.join("dirty");
        let mut h = hdr.clone();
        h[72..80].copy_from_slice(&1u64.to_be_bytes());
        fs::write(&p, &h).unwrap();
        let e = open(&p, None, false).err().unwrap();
        assert!(e.to_string().contains("(dirty)"), "{e}");
        assert!(
            e.to_string()
                .ends_with("repair it with qemu-img check -r all"),
            "{e}"
        );
    }

    #[test]
    fn locked_images_are_refused() {
        let _g = crate::no_fork();
        let d = Dir::new("locked");
        let p = d.join("a.qcow2");
        let img = create(&p, Format::Qcow2, 1 << 20, None).unwrap();
        let e = open(&p, None, true).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: in use: another VM or program holds a lock on it",
                p.display()
            )
        );
        drop(img);
        // A base written by someone: the overlay cannot open.
        let base = d.join("base.img");
        raw_with(&base, 1 << 20, 0);
        let top = d.join("top.qcow2");
        drop(
            create(
                &top,
                Format::Qcow2,
                1 << 20,
                Some(("base.img", Format::Raw)),
            )
            .unwrap(),
        );
        let writer = RawImage::open(&base, false).unwrap();
        let e = open(&top, None, false).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: base image {}: in use: another VM or program holds a lock on it",
                top.display(),
                base.display()
            )
        );
        assert!(!crate::is_locked(&top).unwrap());
        drop(writer);
        assert!(open(&top, None, false).is_ok());
    }

    #[test]
    fn create_never_overwrites() {
        let _g = crate::no_fork();
        let d = Dir::new("exists");
        let p = d.join("x.qcow2");
        fs::write(&p, b"keep").unwrap();
        for f in [Format::Raw, Format::Qcow2] {
            let e = create(&p, f, 1 << 20, None).err().unwrap();
            assert!(matches!(e, OpenError::Exists { .. }));
            assert_eq!(e.to_string(), format!("{}: File exists", p.display()));
        }
        assert_eq!(fs::read(&p).unwrap(), b"keep");
        let e = create(
            &d.join("r.img"),
            Format::Raw,
            1 << 20,
            Some(("x", Format::Raw)),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("only a qcow2 image can have a base"),
            "{e}"
        );
        assert!(!d.join("r.img").exists());
    }

    /// Runs this test binary's `name` test as user nobody: root passes
    /// every permission check, and the tests run as root here.
    fn as_nobody(name: &str, env: &[(&str, &Path)]) -> String {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        let out = {
            let _g = crate::forking();
            cmd.output().unwrap()
        };
        let s = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{s}");
        s
    }

    #[test]
    #[ignore = "run by permission_denied, as another user"]
    fn open_and_print() {
        let Some(p) = std::env::var_os("DISK_TEST_OPEN") else {
            return;
        };
        let e = open(Path::new(&p), None, true).err().unwrap();
        println!("ERROR<{e}>");
    }

    #[test]
    fn permission_denied() {
        let d = Dir::new("perm");
        fs::set_permissions(&d.0, fs::Permissions::from_mode(0o755)).unwrap();
        let base = d.join("base.img");
        raw_with(&base, 1 << 20, 0);
        let top = d.join("top.qcow2");
        drop(
            create(
                &top,
                Format::Qcow2,
                1 << 20,
                Some(("base.img", Format::Raw)),
            )
            .unwrap(),
        );
        // The top readable by all, the base by its owner only.
        fs::set_permissions(&top, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o600)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Not root: the base (ours) would open; deny the top instead.
            fs::set_permissions(&top, fs::Permissions::from_mode(0o000)).unwrap();
            let e = open(&top, None, true).err().unwrap();
            assert_eq!(
                e.to_string(),
                format!("{}: Permission denied", top.display())
            );
            return;
        }
        let out = as_nobody("qcow2::tests::open_and_print", &[("DISK_TEST_OPEN", &top)]);
        let want = format!(
            "ERROR<{}: base image {}: Permission denied>",
            top.display(),
            base.display()
        );
        assert!(out.contains(&want), "{out}");
        fs::set_permissions(&top, fs::Permissions::from_mode(0o600)).unwrap();
        let out = as_nobody("qcow2::tests::open_and_print", &[("DISK_TEST_OPEN", &top)]);
        assert!(
            out.contains(&format!("ERROR<{}: Permission denied>", top.display())),
            "{out}"
        );
    }

    #[test]
    #[ignore = "run by flushed_writes_survive_kill, in a process it kills"]
    fn write_flush_and_wait() {
        let Some(p) = std::env::var_os("DISK_TEST_KILL") else {
            return;
        };
        let mut img = open(Path::new(&p), None, false).unwrap();
        for i in 0..64u64 {
            write(img.as_mut(), i * 70_000, &[i as u8 + 1; 5000]);
        }
        img.flush().unwrap();
        // Unflushed writes after the flush: may or may not survive.
        for i in 0..64u64 {
            write(img.as_mut(), (4 << 20) + i * 70_000, &[0xee; 5000]);
        }
        println!("FLUSHED");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }

    #[test]
    fn flushed_writes_survive_kill() {
        use std::io::{BufRead, BufReader};
        let d = Dir::new("kill");
        let base = d.join("base.img");
        raw_with(&base, 16 << 20, 0x33);
        let p = d.join("top.qcow2");
        drop(create(&p, Format::Qcow2, 16 << 20, Some(("base.img", Format::Raw))).unwrap());
        let spawning = crate::forking();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "qcow2::tests::write_flush_and_wait",
                "--include-ignored",
                "--nocapture",
            ])
            .env("DISK_TEST_KILL", &p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(spawning);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("FLUSHED")),
            "the child never flushed"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut img = open(&p, None, false).unwrap();
        for i in 0..64u64 {
            assert_eq!(
                read(img.as_mut(), i * 70_000, 5000),
                vec![i as u8 + 1; 5000]
            );
            // Around it: the base, copied up with the cluster.
            assert_eq!(read(img.as_mut(), i * 70_000 + 5000, 10), vec![0x33; 10]);
        }
        // And the image still takes writes after the crash.
        write(img.as_mut(), 15 << 20, &[9; 100]);
        img.flush().unwrap();
        drop(img);
        let checked = {
            let _g = crate::forking();
            qemu_img_check(&p)
        };
        if let Some(out) = checked {
            assert!(!out.contains("ERROR"), "{out}");
        }
    }

    /// `qemu-img check` output, or `None` where qemu-img is missing.
    fn qemu_img_check(p: &Path) -> Option<String> {
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(p)
            .output()
            .ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}
