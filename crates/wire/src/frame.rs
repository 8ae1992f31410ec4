//! Framing of tagged messages: a one-byte type, an Int32 length that counts itself, and the
//! body. `parse_frame` is synchronous and never touches I/O; callers fill a `BytesMut` and call
//! it until it returns `None`. Bodies are split off the buffer without copying.

use bytes::{Buf, Bytes, BytesMut};

use crate::WireError;

/// Tag byte plus the Int32 length.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Reads a frame header from the front of `buf`: the tag and the body length. `None` when
/// fewer than five bytes are buffered. A declared length below 4 or whose body exceeds
/// `max_body` is an error: the connection must be closed, the rest of the stream is garbage.
pub fn peek_header(buf: &[u8], max_body: usize) -> Result<Option<(u8, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::InvalidLength(len.into()));
    }
    let body = len as usize - 4;
    if body > max_body {
        return Err(WireError::TooLarge { len: body, max: max_body });
    }
    Ok(Some((tag, body)))
}

/// Splits one complete frame off the front of `buf`, or returns `None` if more bytes are
/// needed. Reserves room for the rest of a partial frame so the next read can complete it.
pub fn parse_frame(buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, WireError> {
    let Some((tag, body_len)) = peek_header(buf, max_body)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Frame { tag, body }))
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Frame { tag, body: body.into() }
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(HEADER_LEN + self.body.len());
        buf.extend_from_slice(&[self.tag]);
        buf.extend_from_slice(&((self.body.len() + 4) as i32).to_be_bytes());
        buf.extend_from_slice(&self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_then_complete() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09sel"[..]);
        assert_eq!(parse_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(b"1\0Z");
        let f = parse_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"sel1\0");
        assert_eq!(&buf[..], b"Z");
    }

    #[test]
    fn rejects_short_and_huge_lengths() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(parse_frame(&mut buf, 100), Err(WireError::InvalidLength(3)));
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(parse_frame(&mut buf, 1 << 20), Err(WireError::TooLarge { .. })));
        let mut buf = BytesMut::from(&b"Q\x80\0\0\0"[..]);
        assert!(matches!(parse_frame(&mut buf, 1 << 20), Err(WireError::InvalidLength(_))));
    }
}
