//! Just enough XDR (RFC 4506) for NicInfo: big-endian 32-bit words, variable
//! opaque data padded to a multiple of four, optional data as a boolean word.

use crate::BufferTooSmall;

/// Why XDR data could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdrError {
    /// The data ended inside an item.
    Truncated,
    /// A length or count above the limit the schema allows.
    TooLong,
    /// A value outside its enumeration (a boolean other than 0 or 1, an
    /// unknown union arm).
    BadValue,
}

impl core::fmt::Display for XdrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            XdrError::Truncated => "XDR data truncated",
            XdrError::TooLong => "XDR length above limit",
            XdrError::BadValue => "XDR value out of range",
        })
    }
}

/// Bytes of padding after `len` bytes of opaque data.
fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A bounds-checked cursor over guest-supplied XDR.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if n > self.data.len() {
            return Err(XdrError::Truncated);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        let mut w = [0u8; 4];
        w.copy_from_slice(b);
        Ok(u32::from_be_bytes(w))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError::BadValue),
        }
    }

    /// A counted array or string length, checked against the schema's
    /// maximum before anything is allocated or looped over.
    pub(crate) fn count(&mut self, max: u32) -> Result<u32, XdrError> {
        let n = self.u32()?;
        if n > max {
            return Err(XdrError::TooLong);
        }
        Ok(n)
    }

    /// Variable-length opaque data (or a string) of at most `max` bytes.
    pub(crate) fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let n = self.count(max)? as usize;
        let body = self.take(n)?;
        self.take(pad(n))?;
        Ok(body)
    }

    /// Optional data: the presence flag, then `f` when present.
    pub(crate) fn optional<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Option<T>, XdrError> {
        if self.bool()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Writes XDR into a caller's buffer.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferTooSmall)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(BufferTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), BufferTooSmall> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn bool(&mut self, v: bool) -> Result<(), BufferTooSmall> {
        self.u32(u32::from(v))
    }

    pub(crate) fn opaque(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let n = u32::try_from(bytes.len()).map_err(|_| BufferTooSmall)?;
        self.u32(n)?;
        self.put(bytes)?;
        self.put(&[0u8; 3][..pad(bytes.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_round_trip_and_padding() {
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        w.opaque(b"abcde").unwrap();
        w.bool(true).unwrap();
        let n = w.len();
        assert_eq!(n, 4 + 8 + 4);
        assert_eq!(&buf[..n], b"\0\0\0\x05abcde\0\0\0\0\0\0\x01");
        let mut r = Reader::new(&buf[..n]);
        assert_eq!(r.opaque(5).unwrap(), b"abcde");
        assert!(r.bool().unwrap());
        assert_eq!(r.u32(), Err(XdrError::Truncated));
    }

    #[test]
    fn limits() {
        let data = [0xff, 0xff, 0xff, 0xff];
        assert_eq!(Reader::new(&data).opaque(255), Err(XdrError::TooLong));
        assert_eq!(Reader::new(&data).bool(), Err(XdrError::BadValue));
        let mut small = [0u8; 6];
        assert_eq!(Writer::new(&mut small).opaque(b"abc"), Err(BufferTooSmall));
    }
}
