//! Cursor helpers over message bodies: C strings and big-endian integers, each failing with
//! `Malformed` instead of panicking when the body is short.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::WireError;

pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Reader { what, buf }
    }

    fn err(&self) -> WireError {
        WireError::malformed(self.what)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        if self.buf.is_empty() {
            return Err(self.err());
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        if self.buf.len() < 2 {
            return Err(self.err());
        }
        Ok(self.buf.get_i16())
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        if self.buf.len() < 4 {
            return Err(self.err());
        }
        Ok(self.buf.get_i32())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        if self.buf.len() < 4 {
            return Err(self.err());
        }
        Ok(self.buf.get_u32())
    }

    /// A count sent in an Int16 field. PostgreSQL reads these as unsigned (`pq_getmsgint(msg,
    /// 2)`), so up to 65535 parameters are valid.
    pub(crate) fn count16(&mut self) -> Result<usize, WireError> {
        if self.buf.len() < 2 {
            return Err(self.err());
        }
        Ok(usize::from(self.buf.get_u16()))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<String, WireError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| self.err())?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| self.err())?;
        let s = s.to_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A value prefixed by an Int32 length, where -1 means NULL.
    pub(crate) fn nullable(&mut self, body: &Bytes) -> Result<Option<Bytes>, WireError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.err())?;
        let start = body.len() - self.buf.len();
        self.bytes(len)?;
        Ok(Some(body.slice(start..start + len)))
    }

    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.err()) }
    }
}

pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

pub(crate) fn put_nullable(buf: &mut BytesMut, v: &Option<Bytes>) {
    match v {
        None => buf.put_i32(-1),
        Some(b) => {
            buf.put_i32(b.len() as i32);
            buf.put_slice(b);
        }
    }
}

/// Writes `tag`, a length placeholder, the body written by `f`, then patches the length.
pub(crate) fn framed(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A count for an Int16 field. Callers never build messages with more than 65535 items (the
/// protocol cannot carry them); saturating keeps a bug from wrapping into a small count.
pub(crate) fn count16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
