//! Who may do what. Every API request carries the peer's credentials
//! (SO_PEERCRED, taken by the kernel at connect time, so they cannot be
//! forged); this module turns them into answers: root may do anything,
//! others only act on VMs whose `owner` names their user or one of their
//! groups, as in OpenBSD's vmd. An owner is a name or, as vm.conf(5) allows,
//! a numeric id; users are compared by uid.

use std::ffi::{CStr, CString};

use vmconf::Owner;

/// The credentials of an API client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

fn buf_len(which: libc::c_int) -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(which) };
    if n > 0 {
        n as usize
    } else {
        16384
    }
}

/// User name of `uid`.
pub fn user_name(uid: u32) -> Option<String> {
    passwd_of(uid).map(|(name, _)| name)
}

/// (name, primary gid) of `uid`.
fn passwd_of(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0 as libc::c_char; buf_len(libc::_SC_GETPW_R_SIZE_MAX)];
    // SAFETY: zeroed passwd is a valid out-parameter; buffers are ours.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pw.pw_gid))
}

/// uid of an owner's user: a number as it is, else the user of that name.
fn owner_uid(user: &str) -> Option<u32> {
    user.parse()
        .ok()
        .or_else(|| user_ids(user).map(|(uid, _)| uid))
}

/// gid of an owner's group: a number as it is, else the group of that name.
fn owner_gid(group: &str) -> Option<u32> {
    group.parse().ok().or_else(|| group_id(group))
}

/// (uid, primary gid) of user `name`.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; buf_len(libc::_SC_GETPW_R_SIZE_MAX)];
    // SAFETY: as in `user_name`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    (rc == 0 && !res.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// gid of group `name`.
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; buf_len(libc::_SC_GETGR_R_SIZE_MAX)];
    // SAFETY: as in `user_name`.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut res) };
    (rc == 0 && !res.is_null()).then_some(gr.gr_gid)
}

/// All groups of `user` (primary `gid` included).
fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(user) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: `groups` has room for `n` entries; n is updated on overflow.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n > 65536 {
            return vec![gid];
        }
    }
}

/// Whether `peer` may control a VM owned by `owner` (None: root only).
pub fn may_control(peer: &Peer, owner: Option<&Owner>) -> bool {
    if peer.is_root() {
        return true;
    }
    let Some(owner) = owner else { return false };
    if owner.user.as_deref().and_then(owner_uid) == Some(peer.uid) {
        return true;
    }
    let Some(gid) = owner.group.as_deref().and_then(owner_gid) else {
        return false;
    };
    peer.gid == gid || user_name(peer.uid).is_some_and(|n| groups_of(&n, peer.gid).contains(&gid))
}

/// (uid, gid) a VM's owner maps to, for the console pty's ownership.
/// The group is the owner's, else the user's primary group if the user
/// exists.
pub fn owner_ids(owner: &Owner) -> (Option<u32>, Option<u32>) {
    let uid = owner.user.as_deref().and_then(owner_uid);
    let gid = owner
        .group
        .as_deref()
        .and_then(owner_gid)
        .or_else(|| uid.and_then(passwd_of).map(|(_, gid)| gid));
    (uid, gid)
}

/// Whether `peer` may read (and, with `write`, write) the file at `path`,
/// judged by its owner, group and mode bits as the kernel would for that
/// user (OpenBSD vmd's `vm_checkaccess`). vmd and its VM processes run as
/// root, so every path a client names is checked before a VM opens it.
pub fn may_access(peer: &Peer, path: &std::path::Path, write: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if peer.is_root() {
        return Ok(());
    }
    let mode = md.mode();
    let bits = if md.uid() == peer.uid {
        mode >> 6
    } else if md.gid() == peer.gid || user_groups(peer.uid).contains(&md.gid()) {
        mode >> 3
    } else {
        mode
    };
    let need = if write { 0o6 } else { 0o4 };
    if bits & need == need {
        Ok(())
    } else {
        Err(format!(
            "{}: permission denied (you may not {} it)",
            path.display(),
            if write { "read and write" } else { "read" }
        ))
    }
}

/// Every group `uid` is a member of.
pub fn user_groups(uid: u32) -> Vec<u32> {
    let Some((name, gid)) = passwd_of(uid) else {
        return Vec::new();
    };
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Vec::new();
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: getgrouplist writes at most `n` entries and updates `n`.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= before {
            return Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_owners() {
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        assert!(may_control(&root, None));
        let nobody = user_ids("nobody").expect("nobody exists on Debian");
        let p = Peer {
            uid: nobody.0,
            gid: nobody.1,
            pid: 1,
        };
        assert!(!may_control(&p, None));
        let own = Owner {
            user: Some("nobody".into()),
            group: None,
        };
        assert!(may_control(&p, Some(&own)));
        let other = Owner {
            user: Some("root".into()),
            group: None,
        };
        assert!(!may_control(&p, Some(&other)));
        let grp = Owner {
            user: None,
            group: Some("nogroup".into()),
        };
        assert_eq!(
            may_control(&p, Some(&grp)),
            group_id("nogroup") == Some(nobody.1)
        );
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(owner_ids(&own), (Some(nobody.0), Some(nobody.1)));
    }

    #[test]
    fn numeric_owners_are_ids() {
        let nobody = user_ids("nobody").expect("nobody exists on Debian");
        let p = Peer {
            uid: nobody.0,
            gid: nobody.1,
            pid: 1,
        };
        let by_uid = Owner {
            user: Some(nobody.0.to_string()),
            group: None,
        };
        assert!(may_control(&p, Some(&by_uid)));
        assert_eq!(owner_ids(&by_uid), (Some(nobody.0), Some(nobody.1)));
        let by_gid = Owner {
            user: None,
            group: Some(nobody.1.to_string()),
        };
        assert!(may_control(&p, Some(&by_gid)));
        // An id no account has still names that id.
        let stray = Owner {
            user: Some("54321".into()),
            group: Some("54322".into()),
        };
        assert_eq!(owner_ids(&stray), (Some(54321), Some(54322)));
        assert!(!may_control(&p, Some(&stray)));
        let q = Peer {
            uid: 54321,
            gid: 1,
            pid: 1,
        };
        assert!(may_control(&q, Some(&stray)));
    }
}
