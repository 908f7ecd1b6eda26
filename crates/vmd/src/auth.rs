//! Who may do what. Every API request carries the peer's credentials
//! (SO_PEERCRED, taken by the kernel at connect time, so they cannot be
//! forged); this module turns them into answers: root may do anything,
//! others only act on VMs whose `owner` names their user or one of their
//! groups, as in OpenBSD's vmd.

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
    let mut buf = vec![0 as libc::c_char; buf_len(libc::_SC_GETPW_R_SIZE_MAX)];
    // SAFETY: zeroed passwd is a valid out-parameter; buffers are ours.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
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
    let name = user_name(peer.uid);
    if let (Some(u), Some(n)) = (&owner.user, &name) {
        if u == n {
            return true;
        }
    }
    if let Some(g) = &owner.group {
        if let Some(gid) = group_id(g) {
            if peer.gid == gid {
                return true;
            }
            if let Some(n) = &name {
                return groups_of(n, peer.gid).contains(&gid);
            }
        }
    }
    false
}

/// (uid, gid) a VM's owner maps to, for the console pty's ownership.
pub fn owner_ids(owner: &Owner) -> (Option<u32>, Option<u32>) {
    let user = owner.user.as_deref().and_then(user_ids);
    let gid = owner
        .group
        .as_deref()
        .and_then(group_id)
        .or(user.map(|u| u.1));
    (user.map(|u| u.0), gid)
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
        assert_eq!(owner_ids(&own).0, Some(nobody.0));
    }
}
