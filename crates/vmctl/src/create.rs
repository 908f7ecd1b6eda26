//! `vmctl create`: disk images are made here, not by vmd, as in OpenBSD.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::size::MIB;

/// The image format a `create` argument asks for: a `raw:` or `qcow2:`
/// prefix, else the `.qcow2` extension, else raw. Returns the format and the
/// path without the prefix.
pub fn image_format(disk: &str) -> (&'static str, &str) {
    if let Some(p) = disk.strip_prefix("raw:") {
        ("raw", p)
    } else if let Some(p) = disk.strip_prefix("qcow2:") {
        ("qcow2", p)
    } else if disk.ends_with(".qcow2") {
        ("qcow2", disk)
    } else {
        ("raw", disk)
    }
}

/// The size a new image gets: `bytes` rounded up to whole megabytes, as
/// OpenBSD's vmctl rounds to megabytes; at least one.
pub fn image_size(bytes: u64) -> Result<u64, String> {
    if bytes == 0 {
        return Err("size must be at least one megabyte".into());
    }
    bytes
        .div_ceil(MIB)
        .checked_mul(MIB)
        .ok_or_else(|| "size too large".into())
}

/// Creates a sparse raw image of `size` bytes at `path`; never overwrites.
pub fn create_raw(path: &Path, size: u64) -> Result<(), String> {
    let what = |e: std::io::Error| format!("{}: {}", path.display(), crate::os_error(&e));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(what)?;
    if let Err(e) = f.set_len(size) {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(what(e));
    }
    f.sync_all().map_err(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmctl-create-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn makes_sparse_file_and_refuses_to_overwrite() {
        let d = tempdir();
        let img = d.join("disk.img");
        create_raw(&img, image_size(1 << 30).unwrap()).unwrap();
        let md = fs::metadata(&img).unwrap();
        assert_eq!(md.len(), 1 << 30);
        // Sparse: next to nothing is allocated for a gigabyte.
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{} blocks allocated",
            md.blocks()
        );
        assert_eq!(md.mode() & 0o777, 0o600);

        let err = create_raw(&img, 4096).unwrap_err();
        assert_eq!(err, format!("{}: File exists", img.display()));
        assert_eq!(
            fs::metadata(&img).unwrap().len(),
            1 << 30,
            "file was touched"
        );

        let err = create_raw(&d.join("no/such/dir.img"), MIB).unwrap_err();
        assert!(err.ends_with("No such file or directory"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sizes_round_up_to_megabytes() {
        assert_eq!(image_size(1), Ok(MIB));
        assert_eq!(image_size(MIB), Ok(MIB));
        assert_eq!(image_size(1500 * 1024), Ok(2 * MIB));
        assert_eq!(image_size(10 << 30), Ok(10 << 30));
        assert!(image_size(0).is_err());
        assert!(image_size(u64::MAX).is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(image_format("disk.img"), ("raw", "disk.img"));
        assert_eq!(image_format("raw:disk.qcow2"), ("raw", "disk.qcow2"));
        assert_eq!(image_format("disk.qcow2"), ("qcow2", "disk.qcow2"));
        assert_eq!(image_format("qcow2:disk"), ("qcow2", "disk"));
    }
}
