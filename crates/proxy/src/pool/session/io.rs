//! The session's reads and writes, polled together: one side's stream with its buffers,
//! the poll that moves bytes on both sides and stops reading a side while the other has too
//! much waiting, and the awaited write used outside the poll loop. It never looks inside a
//! message; that is `frontend`'s and `backend`'s.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::pool::server::ServerConn;

use super::{Event, Gone, Session};

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
const READ_RESERVE: usize = 8 * 1024;
/// What a quiet client's reads start with: idle sessions, by the thousand, hold this little.
pub(super) const IDLE_READ: usize = 512;
/// A write buffer up to this size is given back as soon as it is written out; a larger one
/// is kept until the session has been quiet for `SHRINK_AFTER`.
const KEEP_WRITE: usize = 4 * 1024;
/// A session between transactions for this long gives its buffers back.
pub(super) const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// One side's stream with its buffers.
pub(super) struct Side<T> {
    pub(super) stream: T,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    needs_flush: bool,
    /// The last read filled the room it had: more is likely coming, read into a full buffer.
    grow: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Side<T> {
    pub(super) fn new(stream: T) -> Self {
        Side { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new(), needs_flush: false, grow: false }
    }

    /// Writes what is buffered. Ready(Ok(true)) when something was written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending },
            }
        }
        if wrote && self.wbuf.capacity() <= KEEP_WRITE {
            // All written: a small buffer is given back at once (one allocation per reply
            // costs less than every idle client keeping one).
            self.wbuf = BytesMut::new();
        }
        if self.needs_flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending }
    }

    /// Reads once. Ready(Ok(0)) is end of stream. A side that sends little reads into the
    /// stack and keeps only what came, so a quiet client holds no read buffer at all; one
    /// whose last read filled its room gets a full buffer, which is reused.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.is_empty() && !self.grow {
            if self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new();
            }
            let mut space = [MaybeUninit::<u8>::uninit(); IDLE_READ];
            let mut rb = ReadBuf::uninit(&mut space);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            self.rbuf.extend_from_slice(rb.filled());
            self.grow = n == IDLE_READ;
            return Poll::Ready(Ok(n));
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare == 0 || (self.grow && spare < READ_RESERVE / 2) {
            self.rbuf.reserve(if self.grow { READ_RESERVE } else { IDLE_READ });
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let read = poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf);
        if let Poll::Ready(Ok(n)) = &read {
            self.grow = *n >= spare;
        }
        read
    }

    /// Gives back buffers that are empty (the session is between transactions and quiet).
    pub(super) fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_READ {
            self.rbuf = BytesMut::new();
            self.grow = false;
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }

    /// Whether `shrink` would give back enough to be worth a timer: small buffers stay, so
    /// sessions with small messages set no timer between transactions.
    pub(super) fn shrinkable(&self) -> bool {
        (self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_READ)
            || (self.wbuf.is_empty() && self.wbuf.capacity() > KEEP_WRITE)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    pub(super) async fn write_out(&mut self) -> std::io::Result<()> {
        self.client.stream.write_all(&self.client.wbuf).await?;
        self.client.wbuf.clear();
        self.client.stream.flush().await
    }

    pub(super) fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            let mut progress = false;
            // Work on what is already buffered.
            if let Some(ev) = self.process() {
                return Poll::Ready(ev);
            }
            match self.client.poll_write_out(cx) {
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) | Poll::Pending => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Event::ClientGone(format!("client write failed: {e}")));
                }
            }
            if let Some(a) = self.attached.as_mut() {
                match poll_server_write(&mut a.server, cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) | Poll::Pending => {}
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Event::ServerGone(
                            Gone::Unwritable,
                            format!("server write failed: {e}"),
                        ));
                    }
                }
                if self.client.wbuf.len() < HIGH_WATER {
                    match poll_server_read(&mut a.server, cx) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Event::ServerGone(
                                Gone::Lost,
                                "server closed the connection".into(),
                            ));
                        }
                        Poll::Ready(Ok(n)) => {
                            self.pool.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Event::ServerGone(
                                Gone::Lost,
                                format!("server read failed: {e}"),
                            ));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            let server_backlog = self.attached.as_ref().map_or(0, |a| a.server.wbuf.len());
            if server_backlog < HIGH_WATER {
                match self.client.poll_read_in(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Event::ClientGone("client closed the connection".into()));
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Event::ClientGone(format!("client read failed: {e}")));
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

fn poll_server_write(s: &mut ServerConn, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
    let mut wrote = false;
    while !s.wbuf.is_empty() {
        match Pin::new(&mut s.stream).poll_write(cx, &s.wbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                s.wbuf.advance(n);
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if wrote {
        // TLS buffers records; unix sockets and TCP flush as a no-op.
        if let Poll::Ready(Err(e)) = Pin::new(&mut s.stream).poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        return Poll::Ready(Ok(true));
    }
    Poll::Pending
}

fn poll_server_read(s: &mut ServerConn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if s.rbuf.capacity() - s.rbuf.len() < READ_RESERVE / 2 {
        s.rbuf.reserve(READ_RESERVE);
    }
    poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf)
}
