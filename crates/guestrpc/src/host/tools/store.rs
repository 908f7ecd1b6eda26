//! The guestinfo key/value store behind `info-set` / `info-get` (§4).
//!
//! Keys are stored without their `guestinfo.` prefix. Both the guest and the
//! host write here, so it is bounded in keys and bytes: a guest looping over
//! fresh keys gets an error reply instead of growing the VM process.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Most keys in a VM's guestinfo store.
pub const MAX_GUESTINFO_KEYS: usize = 128;
/// Most bytes (keys plus values) in a VM's guestinfo store.
pub const MAX_GUESTINFO_BYTES: usize = 1 << 20;

/// The guestinfo store is full; the value was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreFull;

impl core::fmt::Display for StoreFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("guestinfo store full")
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl Store {
    pub(super) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    pub(super) fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreFull> {
        let old = self.map.get(key).map(|v| key.len() + v.len());
        let new_bytes = self
            .bytes
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(key.len() + value.len());
        if new_bytes > MAX_GUESTINFO_BYTES
            || (old.is_none() && self.map.len() >= MAX_GUESTINFO_KEYS)
        {
            return Err(StoreFull);
        }
        self.map.insert(key.to_vec(), value.to_vec());
        self.bytes = new_bytes;
        Ok(())
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.map.remove(key)?;
        self.bytes = self.bytes.saturating_sub(key.len() + v.len());
        Some(v)
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let mut s = Store::default();
        for i in 0..MAX_GUESTINFO_KEYS {
            s.set(alloc::format!("k{i}").as_bytes(), b"v").unwrap();
        }
        assert_eq!(s.set(b"one-more", b"v"), Err(StoreFull));
        // Replacing an existing key is still allowed.
        s.set(b"k0", b"w").unwrap();
        assert_eq!(s.get(b"k0"), Some(&b"w"[..]));
        let big = alloc::vec![0u8; MAX_GUESTINFO_BYTES];
        assert_eq!(s.set(b"k1", &big), Err(StoreFull));
        let before = s.bytes();
        s.remove(b"k1").unwrap();
        assert_eq!(s.bytes(), before - 3);
    }
}
