//! Formatting into a caller's buffer, for guests that have no allocator.

use core::fmt;

use crate::BufferTooSmall;

/// A [`fmt::Write`] sink over a byte slice that fails instead of truncating.
///
/// A guest builds its RPCI requests with it (`write!(w, "info-set guestinfo.ip {ip}")`)
/// on the stack.
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    /// An empty writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, len: 0 }
    }

    /// Appends raw bytes (binary payloads that `fmt` cannot carry).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferTooSmall)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The written bytes, borrowed for as long as the underlying buffer.
    pub fn into_written(self) -> &'a [u8] {
        let len = self.len;
        let buf: &'a [u8] = self.buf;
        buf.get(..len).unwrap_or(&[])
    }

    /// Space not yet written, for encoders that write in place; pair with
    /// [`SliceWriter::advance`].
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.len..).unwrap_or(&mut [])
    }

    /// Marks `n` bytes of [`SliceWriter::spare`] as written.
    pub(crate) fn advance(&mut self, n: usize) -> Result<(), BufferTooSmall> {
        let end = self.len.checked_add(n).ok_or(BufferTooSmall)?;
        if end > self.buf.len() {
            return Err(BufferTooSmall);
        }
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// Formats `args` into `buf` and returns the written part.
///
/// ```
/// let mut buf = [0u8; 64];
/// let req = guestrpc::format_into(&mut buf, format_args!("tools.set.version {}", 7)).unwrap();
/// assert_eq!(req, b"tools.set.version 7");
/// ```
pub fn format_into<'a>(
    buf: &'a mut [u8],
    args: fmt::Arguments<'_>,
) -> Result<&'a [u8], BufferTooSmall> {
    let mut w = SliceWriter::new(buf);
    fmt::write(&mut w, args).map_err(|_| BufferTooSmall)?;
    Ok(w.into_written())
}
