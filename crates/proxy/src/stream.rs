//! The byte streams a session runs over: the client side (plain, or TLS after SSLRequest or
//! PostgreSQL 17 direct TLS) and the upstream side (unix socket, TCP, or TLS over TCP). Both
//! are enums rather than boxed trait objects so the relay's reads and writes stay static
//! calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Generates an enum stream that forwards every call to its variant.
macro_rules! either_stream {
    ($name:ident <$($g:ident),*> { $($variant:ident($ty:ty)),* $(,)? } $(where $($bound:tt)*)?) => {
        pub enum $name<$($g),*> { $($variant($ty)),* }

        impl<$($g),*> AsyncRead for $name<$($g),*> $(where $($bound)*)? {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_read(cx, buf)),* }
            }
        }

        impl<$($g),*> AsyncWrite for $name<$($g),*> $(where $($bound)*)? {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_write(cx, buf)),* }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_flush(cx)),* }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_shutdown(cx)),* }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($name::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs)),* }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($name::$variant(s) => s.is_write_vectored()),* }
            }
        }
    };
}

either_stream!(ClientStream<S> {
    Plain(S),
    Tls(Box<crate::tls_conn::TlsConn<S>>),
} where S: AsyncRead + AsyncWrite + Unpin);

either_stream!(UpstreamStream<> {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
});

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}
