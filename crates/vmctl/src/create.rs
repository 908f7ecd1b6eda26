//! `vmctl create`: disk images are made here, not by vmd, as in OpenBSD,
//! through the `disk` crate that the VM process reads them with.
//!
//! The forms are OpenBSD's: `create [-b base | -i disk] [-s size]
//! [raw:|qcow2:]path`: a new empty image, a qcow2 image that holds only
//! the changes over a base image, or a copy of another image (raw and
//! qcow2 either way; a qcow2 with base images comes out flattened), with
//! zero blocks skipped so that the copy stays sparse.

use std::io::{self, IoSlice, IoSliceMut, IsTerminal};
use std::path::{Component, Path, PathBuf};

use disk::{DiskImage, Format, OpenError};

use crate::cli::{CreateArgs, SizeArg};
use crate::size::{fmt_scaled, MIB};

/// The image format a `create` argument asks for: a `raw:` or `qcow2:`
/// prefix, else the `.qcow2` extension, else raw. Returns the format and the
/// path without the prefix.
pub fn image_format(disk: &str) -> (Format, &str) {
    match format_prefix(disk) {
        (Some(f), p) => (f, p),
        (None, p) if p.ends_with(".qcow2") => (Format::Qcow2, p),
        (None, p) => (Format::Raw, p),
    }
}

/// A `raw:` or `qcow2:` prefix on an existing image (`-b`, `-i`): the
/// format it names, else `None` (the image's first bytes decide).
pub fn format_prefix(disk: &str) -> (Option<Format>, &str) {
    if let Some(p) = disk.strip_prefix("raw:") {
        (Some(Format::Raw), p)
    } else if let Some(p) = disk.strip_prefix("qcow2:") {
        (Some(Format::Qcow2), p)
    } else {
        (None, disk)
    }
}

/// The size `-s` asks for: rounded up to whole megabytes, as OpenBSD's
/// vmctl rounds; under one megabyte (zero among them) is refused, and a
/// number without a unit, which counts bytes, is pointed out (`-s 10`
/// is ten bytes, not ten megabytes or gigabytes).
pub fn image_size(size: &SizeArg) -> Result<u64, String> {
    let text = &size.text;
    if size.bytes == 0 {
        return Err(format!(
            "size {text} is zero: give the size with a unit, as in -s 10G"
        ));
    }
    if size.bytes < MIB {
        return Err(if size.has_unit {
            format!("size {text} is less than 1M, the smallest image")
        } else {
            format!(
                "size {text} has no unit, so it is {text} bytes, less than 1M, the \
                 smallest image: did you mean -s {text}M or -s {text}G?"
            )
        });
    }
    size.bytes
        .div_ceil(MIB)
        .checked_mul(MIB)
        .ok_or_else(|| format!("size {text} is too large"))
}

/// What `create` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub path: String,
    pub format: Format,
    pub size: u64,
    /// The base image's name as stored in the new image.
    pub base: Option<String>,
}

/// A usage error (exit 2, with the usage line) or a failure (exit 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    Usage(String),
    Failed(String),
}

impl From<String> for CreateError {
    fn from(s: String) -> Self {
        CreateError::Failed(s)
    }
}

/// How a copy reports how far it got: bytes done of the total.
pub trait Progress {
    fn start(&mut self, _total: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// A progress bar on standard error, with `indicatif`: only when standard
/// error is a terminal; otherwise nothing at all is drawn.
pub struct Bar {
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl Bar {
    pub fn new(label: &str) -> Bar {
        Bar {
            bar: None,
            label: label.to_owned(),
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        if !io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{wide_bar}] {percent:>3}% {bytes}/{total_bytes} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(self.label.clone());
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `vmctl create`, all of it but the printing.
pub fn create(a: &CreateArgs, progress: &mut dyn Progress) -> Result<Created, CreateError> {
    let (format, path_str) = image_format(&a.disk);
    let path = Path::new(path_str);
    let fail = |msg: String| CreateError::Failed(format!("{path_str}: {msg}"));
    let size = a.size.as_ref().map(image_size).transpose().map_err(fail)?;
    refuse_existing(path)?;

    if let Some(base) = &a.base {
        if format != Format::Qcow2 {
            return Err(fail(
                "an image with a base image must be qcow2: name it *.qcow2 or prefix it \
                 with qcow2:"
                    .into(),
            ));
        }
        let (base_format, base_path) = format_prefix(base);
        let base_path = Path::new(base_path);
        let img = disk::open(base_path, base_format, true)
            .map_err(|e| fail(format!("base image {e}")))?;
        let base_size = img.size();
        let base_format = match base_format {
            Some(f) => f,
            None => disk::detect(base_path).map_err(|e| fail(format!("base image {e}")))?,
        };
        drop(img);
        let size = match size {
            None => base_size,
            Some(s) if s < base_size => {
                return Err(fail(format!(
                    "size {} is smaller than the base image {} ({})",
                    fmt_scaled(s),
                    base_path.display(),
                    fmt_scaled(base_size)
                )))
            }
            Some(s) => s,
        };
        let name = base_name(path, base_path).map_err(fail)?;
        let mut img = disk::create(path, Format::Qcow2, size, Some((&name, base_format)))
            .map_err(|e| CreateError::Failed(e.to_string()))?;
        img.flush().map_err(|e| fail(crate::os_error(&e)))?;
        return Ok(Created {
            path: path_str.to_owned(),
            format,
            size,
            base: Some(name),
        });
    }

    if let Some(input) = &a.input {
        let (in_format, in_path) = format_prefix(input);
        let mut src = disk::open(Path::new(in_path), in_format, true)
            .map_err(|e| CreateError::Failed(format!("input image {e}")))?;
        let src_size = src.size();
        let size = match size {
            None => src_size,
            Some(s) if s < src_size => {
                return Err(fail(format!(
                    "size {} is smaller than the input image {in_path} ({})",
                    fmt_scaled(s),
                    fmt_scaled(src_size)
                )))
            }
            Some(s) => s,
        };
        let mut dst = disk::create(path, format, size, None)
            .map_err(|e| CreateError::Failed(e.to_string()))?;
        let copied = copy(src.as_mut(), dst.as_mut(), format, progress);
        progress.finish();
        if let Err(e) = copied {
            drop(dst);
            let _ = std::fs::remove_file(path);
            return Err(CreateError::Failed(e));
        }
        return Ok(Created {
            path: path_str.to_owned(),
            format,
            size,
            base: None,
        });
    }

    let Some(size) = size else {
        return Err(CreateError::Usage(format!(
            "could not create {path_str}: missing size argument (-s size is required \
             without -b or -i)"
        )));
    };
    let mut img =
        disk::create(path, format, size, None).map_err(|e| CreateError::Failed(e.to_string()))?;
    img.flush().map_err(|e| fail(crate::os_error(&e)))?;
    Ok(Created {
        path: path_str.to_owned(),
        format,
        size,
        base: None,
    })
}

/// Refuses a path that exists: never overwritten, and an image that a VM
/// (or QEMU, or another vmctl) holds locked is said to be in use.
fn refuse_existing(path: &Path) -> Result<(), CreateError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let locked = disk::is_locked(path).unwrap_or(false);
    let e = if locked {
        OpenError::Locked {
            path: path.to_owned(),
        }
    } else {
        OpenError::Exists {
            path: path.to_owned(),
        }
    };
    Err(CreateError::Failed(e.to_string()))
}

/// The name a new image at `image` stores for its base image `base` (a
/// path as the user gave it, relative to the working directory): an
/// absolute path as given; a relative one made relative to the new
/// image's directory, which is how QEMU and OpenBSD's vmd resolve it (so
/// `create -b base.img sub/new.qcow2` stores `../base.img`). When the new
/// image is in the working directory that is the name as given.
pub fn base_name(image: &Path, base: &Path) -> Result<String, String> {
    let text = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("base image {}: not a UTF-8 file name", p.display()))
    };
    if base.is_absolute() {
        return text(base);
    }
    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return text(base),
    };
    let io = |p: &Path, e: io::Error| format!("{}: {}", p.display(), crate::os_error(&e));
    let dir_abs = dir.canonicalize().map_err(|e| io(dir, e))?;
    // The base's directory resolved, its file name kept: a symbolic link
    // as the base stays a link.
    let base_abs = match (base.parent(), base.file_name()) {
        (Some(bd), Some(name)) => {
            let bd = if bd.as_os_str().is_empty() {
                Path::new(".")
            } else {
                bd
            };
            bd.canonicalize().map_err(|e| io(bd, e))?.join(name)
        }
        _ => base.canonicalize().map_err(|e| io(base, e))?,
    };
    text(&relative_to(&base_abs, &dir_abs))
}

/// `path` relative to the directory `dir`; both absolute and normal.
fn relative_to(path: &Path, dir: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let d: Vec<Component> = dir.components().collect();
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

/// How much is copied at a time.
const CHUNK: usize = 1 << 20;

/// Copies every byte of `src` into the new image `dst` (as big or bigger,
/// and reading as zeroes), skipping what reads as zeroes: holes and
/// unallocated clusters without reading them, zero blocks after reading
/// them (4 KiB, a file system block, for a raw image; 64 KiB, a cluster,
/// for qcow2). Then flushes `dst`.
pub fn copy(
    src: &mut dyn DiskImage,
    dst: &mut dyn DiskImage,
    dst_format: Format,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let total = src.size();
    let block = match dst_format {
        Format::Raw => 4096,
        Format::Qcow2 => 64 << 10,
    };
    progress.start(total);
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < total {
        let want = (total - off).min(CHUNK as u64);
        let (data, len) = src
            .data_extent(off, want)
            .map_err(|e| format!("reading the input at {off}: {}", crate::os_error(&e)))?;
        let len = len.clamp(1, want);
        if data {
            let chunk = &mut buf[..len as usize];
            src.read_at(&mut [IoSliceMut::new(chunk)], off)
                .map_err(|e| format!("reading the input at {off}: {}", crate::os_error(&e)))?;
            write_nonzero(dst, chunk, off, block)?;
        }
        off += len;
        progress.advance(len);
    }
    dst.flush()
        .map_err(|e| format!("flushing the new image: {}", crate::os_error(&e)))
}

/// Writes the blocks of `chunk` (at `off` in the image) that hold
/// anything but zeroes, runs of them at a time. Blocks are counted from
/// the start of the image, so they line up with clusters.
fn write_nonzero(
    dst: &mut dyn DiskImage,
    chunk: &[u8],
    off: u64,
    block: u64,
) -> Result<(), String> {
    let end = off + chunk.len() as u64;
    let mut pos = off;
    let mut run: Option<u64> = None;
    let flush_run = |dst: &mut dyn DiskImage, from: u64, to: u64| {
        let s = &chunk[(from - off) as usize..(to - off) as usize];
        dst.write_at(&[IoSlice::new(s)], from)
            .map_err(|e| format!("writing the new image at {from}: {}", crate::os_error(&e)))
    };
    while pos < end {
        let next = ((pos / block + 1) * block).min(end);
        let bytes = &chunk[(pos - off) as usize..(next - off) as usize];
        let zero = bytes.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(pos),
            (true, Some(from)) => {
                flush_run(dst, from, pos)?;
                run = None;
            }
            _ => {}
        }
        pos = next;
    }
    if let Some(from) = run {
        flush_run(dst, from, end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmctl-create-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn size(text: &str) -> SizeArg {
        crate::cli::parse_size_arg(text).unwrap()
    }

    fn args(disk: &Path, size: Option<&str>) -> CreateArgs {
        CreateArgs {
            size: size.map(self::size),
            input: None,
            base: None,
            disk: disk.to_str().unwrap().to_owned(),
        }
    }

    #[test]
    fn makes_sparse_file_and_refuses_to_overwrite() {
        let d = tempdir("sparse");
        let img = d.join("disk.img");
        let made = create(&args(&img, Some("1G")), &mut Quiet).unwrap();
        assert_eq!(made.format, Format::Raw);
        assert_eq!(made.size, 1 << 30);
        let md = fs::metadata(&img).unwrap();
        assert_eq!(md.len(), 1 << 30);
        // Sparse: next to nothing is allocated for a gigabyte.
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{} blocks allocated",
            md.blocks()
        );
        assert_eq!(md.mode() & 0o777, 0o600);

        let err = create(&args(&img, Some("4M")), &mut Quiet).unwrap_err();
        assert_eq!(
            err,
            CreateError::Failed(format!("{}: File exists", img.display()))
        );
        assert_eq!(
            fs::metadata(&img).unwrap().len(),
            1 << 30,
            "file was touched"
        );

        // Locked by a running VM: said so, and still not touched.
        let held = disk::open(&img, None, false).unwrap();
        let err = create(&args(&img, Some("4M")), &mut Quiet).unwrap_err();
        assert_eq!(
            err,
            CreateError::Failed(format!(
                "{}: in use: another VM or program holds a lock on it",
                img.display()
            ))
        );
        drop(held);

        let err = create(&args(&d.join("no/such/dir.img"), Some("1M")), &mut Quiet).unwrap_err();
        assert!(
            matches!(&err, CreateError::Failed(m) if m.ends_with("No such file or directory")),
            "{err:?}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sizes_round_up_to_megabytes() {
        assert_eq!(image_size(&size("1M")), Ok(MIB));
        assert_eq!(image_size(&size("1048577")), Ok(2 * MIB));
        assert_eq!(image_size(&size("1500K")), Ok(2 * MIB));
        assert_eq!(image_size(&size("10G")), Ok(10 << 30));
        assert_eq!(image_size(&size("1.5G")), Ok(3 << 29));
        assert_eq!(
            image_size(&size("0")),
            Err("size 0 is zero: give the size with a unit, as in -s 10G".into())
        );
        assert!(image_size(&size("0G")).unwrap_err().contains("is zero"));
        assert_eq!(
            image_size(&size("10")),
            Err(
                "size 10 has no unit, so it is 10 bytes, less than 1M, the smallest image: \
                 did you mean -s 10M or -s 10G?"
                    .into()
            )
        );
        assert_eq!(
            image_size(&size("512K")),
            Err("size 512K is less than 1M, the smallest image".into())
        );
        let huge = SizeArg {
            bytes: u64::MAX,
            has_unit: false,
            text: "18446744073709551615".into(),
        };
        assert!(image_size(&huge).unwrap_err().contains("too large"));
    }

    #[test]
    fn formats() {
        assert_eq!(image_format("disk.img"), (Format::Raw, "disk.img"));
        assert_eq!(image_format("raw:disk.qcow2"), (Format::Raw, "disk.qcow2"));
        assert_eq!(image_format("disk.qcow2"), (Format::Qcow2, "disk.qcow2"));
        assert_eq!(image_format("qcow2:disk"), (Format::Qcow2, "disk"));
        assert_eq!(format_prefix("disk.qcow2"), (None, "disk.qcow2"));
        assert_eq!(format_prefix("raw:x"), (Some(Format::Raw), "x"));
    }

    #[test]
    fn base_names_resolve_from_the_new_image() {
        let d = tempdir("names");
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::create_dir_all(d.join("c")).unwrap();
        fs::write(d.join("c/base.img"), b"").unwrap();
        // Paths as a user in the working directory would give them.
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        let rel = relative_to(&d.canonicalize().unwrap(), &cwd);
        let cwd_rel = |p: &str| rel.join(p);
        // Absolute: as given.
        let abs = d.join("c/base.img");
        assert!(abs.is_absolute() && cwd_rel("c").is_relative());
        assert_eq!(
            base_name(&cwd_rel("a/new.qcow2"), &abs).unwrap(),
            abs.to_str().unwrap()
        );
        // Same directory (no directory part): as given.
        assert_eq!(
            base_name(Path::new("new.qcow2"), Path::new("c/base.img")).unwrap(),
            "c/base.img"
        );
        // Elsewhere: relative to the new image.
        assert_eq!(
            base_name(&cwd_rel("a/b/new.qcow2"), &cwd_rel("c/base.img")).unwrap(),
            "../../c/base.img"
        );
        assert_eq!(
            base_name(&cwd_rel("c/new.qcow2"), &cwd_rel("c/base.img")).unwrap(),
            "base.img"
        );
        assert_eq!(
            relative_to(Path::new("/x/y/z"), Path::new("/x")),
            Path::new("y/z")
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// A progress that records what it was told.
    #[derive(Default)]
    struct Record {
        total: u64,
        done: u64,
        finished: bool,
    }

    impl Progress for Record {
        fn start(&mut self, total: u64) {
            self.total = total;
        }
        fn advance(&mut self, bytes: u64) {
            self.done += bytes;
        }
        fn finish(&mut self) {
            self.finished = true;
        }
    }

    #[test]
    fn copies_skip_zeroes_and_stay_sparse() {
        let d = tempdir("copy");
        let src = d.join("src.img");
        let mut data = vec![0u8; 8 << 20];
        data[100..200].fill(1);
        data[(3 << 20) + 5000..(3 << 20) + 9000].fill(2);
        data[(8 << 20) - 1] = 3;
        fs::write(&src, &data).unwrap();
        for (name, fmt) in [("dst.qcow2", Format::Qcow2), ("dst.img", Format::Raw)] {
            let dst = d.join(name);
            let mut a = args(&dst, None);
            a.input = Some(src.to_str().unwrap().to_owned());
            let mut rec = Record::default();
            let made = create(&a, &mut rec).unwrap();
            assert_eq!((made.format, made.size), (fmt, 8 << 20));
            assert_eq!(
                (rec.total, rec.done, rec.finished),
                (8 << 20, 8 << 20, true)
            );
            let mut img = disk::open(&dst, Some(fmt), true).unwrap();
            let mut back = vec![0u8; 8 << 20];
            img.read_at(&mut [IoSliceMut::new(&mut back)], 0).unwrap();
            assert!(back == data, "{name}: the copy differs");
            let used = fs::metadata(&dst).unwrap().blocks() * 512;
            assert!(used < 1 << 20, "{name}: {used} bytes allocated");
        }
        // Bigger is fine, smaller is refused.
        let mut a = args(&d.join("big.img"), Some("16M"));
        a.input = Some(src.to_str().unwrap().to_owned());
        assert_eq!(create(&a, &mut Quiet).unwrap().size, 16 << 20);
        let mut a = args(&d.join("small.img"), Some("4M"));
        a.input = Some(src.to_str().unwrap().to_owned());
        let err = create(&a, &mut Quiet).unwrap_err();
        assert!(
            matches!(&err, CreateError::Failed(m) if m.contains("smaller than the input image")),
            "{err:?}"
        );
        assert!(!d.join("small.img").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
