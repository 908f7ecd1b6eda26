//! Opening files with a user's rights in a process that runs as root.
//!
//! vmd starts VM processes as root, but some of the files a VM uses are
//! named by an unprivileged user (the kernel, disks or ISO of an instance
//! he starts). Those must open only if he could open them himself, with
//! every check the kernel makes (modes, ACLs, search permission on each
//! directory on the way), and so must every file they lead to (a qcow2
//! image's base images, which the image names). Checking mode bits
//! beforehand would miss the directories and race with the user renaming
//! files; so the opening itself runs with the user's credentials.
//!
//! Linux keeps credentials per thread, and the raw `setfsuid`,
//! `setfsgid` and `setgroups` system calls change only the calling
//! thread's (glibc's wrappers of the latter would change every thread's).
//! [`Creds::run`] runs a closure on a thread of its own that takes the
//! user's file-system identity and ends with the closure, so nothing else
//! in the process ever runs as the user, and the process keeps root for
//! what only root may do (/dev/kvm, the console's ownership).

use std::fmt;

/// A user's file-system identity: uid, primary gid and supplementary
/// groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl fmt::Display for Creds {
    /// `UID:GID[:G1,G2...]`, as [`Creds::parse`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)?;
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            write!(f, ":{}", groups.join(","))?;
        }
        Ok(())
    }
}

/// The most supplementary groups a thread may have (NGROUPS_MAX).
const MAX_GROUPS: usize = 65536;

impl Creds {
    /// Reads `UID:GID[:G1,G2...]`.
    pub fn parse(s: &str) -> Result<Creds, String> {
        let mut parts = s.splitn(3, ':');
        let id = |p: Option<&str>, what: &str| -> Result<u32, String> {
            let p = p.ok_or_else(|| format!("{s:?}: no {what} (UID:GID[:GROUPS])"))?;
            p.parse()
                .ok()
                .filter(|&n| n != u32::MAX)
                .ok_or_else(|| format!("{s:?}: {what} {p:?} is not an id"))
        };
        let uid = id(parts.next(), "uid")?;
        let gid = id(parts.next(), "gid")?;
        let groups = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|g| id(Some(g), "group"))
                .collect::<Result<Vec<u32>, String>>()?,
        };
        if groups.len() > MAX_GROUPS {
            return Err(format!("{} groups: at most {MAX_GROUPS}", groups.len()));
        }
        Ok(Creds { uid, gid, groups })
    }

    /// Runs `f` with this identity for every file-system access it makes,
    /// on a thread of its own, and returns what it returns. Fails without
    /// running `f` if the identity cannot be taken (the process is not
    /// root).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("open-as-user".into())
                .spawn_scoped(s, || {
                    self.assume()?;
                    Ok(f())
                })?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// This thread's file-system identity becomes this one, for good.
    fn assume(&self) -> std::io::Result<()> {
        let denied = || {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("cannot take the identity {self} to open files"),
            )
        };
        // SAFETY: raw system calls that change this thread's credentials
        // only; the groups pointer and count describe a live Vec.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Both return the previous id and report no errors: asking
            // again with an invalid id returns the current one unchanged.
            libc::syscall(libc::SYS_setfsgid, self.gid);
            if libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 != self.gid {
                return Err(denied());
            }
            libc::syscall(libc::SYS_setfsuid, self.uid);
            if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != self.uid {
                return Err(denied());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let c = Creds::parse("1000:100:24,27").unwrap();
        assert_eq!(
            c,
            Creds {
                uid: 1000,
                gid: 100,
                groups: vec![24, 27]
            }
        );
        assert_eq!(c.to_string(), "1000:100:24,27");
        let bare = Creds::parse("65534:65534").unwrap();
        assert!(bare.groups.is_empty());
        assert_eq!(bare.to_string(), "65534:65534");
        for bad in ["", "1000", "x:1", "1:y", "1:2:3,z", "4294967295:1", "1:2:,"] {
            assert!(Creds::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// As root (the tests run as root here): a file only root may read
    /// does not open as nobody, one anybody may read does, and the
    /// calling thread keeps root's rights.
    #[test]
    fn opens_with_the_users_rights() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return;
        }
        let dir = std::env::temp_dir().join(format!("vm-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        let public = dir.join("public");
        std::fs::write(&secret, "s").unwrap();
        std::fs::write(&public, "p").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = Creds {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        };
        let r = nobody.run(|| std::fs::read(&secret)).unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            nobody.run(|| std::fs::read(&public)).unwrap().unwrap(),
            b"p"
        );
        // A directory it may not search hides even a public file.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(nobody.run(|| std::fs::read(&public)).unwrap().is_err());
        // This thread is still root.
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
