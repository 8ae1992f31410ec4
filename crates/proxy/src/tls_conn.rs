//! The client side of TLS after the handshake. rustls (its unbuffered API) runs the
//! handshake; then the traffic keys are taken out of it and records are sealed and opened
//! here with ring, in buffers on the stack. What a connection keeps between reads is its
//! keys and at most one partial record: an idle client holds no buffers at all, where
//! rustls's buffered connection keeps a 4 KiB receive buffer and a copy of every record.
//! rustls keeps what a TLS 1.3 key update needs.
//!
//! Records: TLS 1.3 (RFC 8446 §5.2: inner content type, nonce = iv ^ seq, header as AAD)
//! and TLS 1.2 AEAD (RFC 5288 AES-GCM with an explicit nonce, RFC 7905 ChaCha20-Poly1305),
//! with AAD = seq, type, version, length. Renegotiation is refused; a TLS 1.3 key update
//! from the client is followed (and answered when asked); AES-GCM keys are renewed (1.3) or
//! the connection closed (1.2) before their record limit.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest plaintext of a record a peer may send.
const MAX_PLAIN: usize = 1 << 14;
/// Largest plaintext of a record sent here: half the protocol's limit, as PostgreSQL's own
/// 8 KiB send buffer makes its records. libpq reads with at least 8 KiB of room (pqReadData)
/// and OpenSSL hands over one record per read, so a record no larger than that is always
/// taken whole. A larger one can leave its tail decrypted inside OpenSSL while the socket is
/// empty; a client that then waits on the socket (psycopg 3, or any async libpq user: only
/// libpq's own blocking wait checks SSL_pending) waits forever when that tail ends a reply.
const MAX_SENT_PLAIN: usize = 8 * 1024;
/// Largest ciphertext fragment a peer may send (RFC 8446 §5.2, RFC 5246 §6.2.3).
const MAX_FRAGMENT: usize = MAX_PLAIN + 256;
/// Room for one whole record of the largest size.
const RECORD_ROOM: usize = HEADER + MAX_FRAGMENT;
/// Largest handshake message accepted while handshaking.
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024;
/// AES-GCM records per key (rustls's own limit, below the 2^24.5 of RFC 8446 §5.5).
const AES_GCM_RECORD_LIMIT: u64 = 1 << 24;
/// Writes up to this size are sealed in a small stack buffer.
const SMALL_WRITE: usize = 2048;
/// What sealing adds to a record at most: header, explicit nonce or inner type, tag.
const OVERHEAD: usize = HEADER + 8 + TAG;
/// Room for an alert, with a key update before it.
const ALERT_ROOM: usize = 2 + 2 * OVERHEAD;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const KEY_UPDATE: u8 = 24;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    Tls13,
    /// TLS 1.2 AES-GCM: an 8-byte explicit nonce leads each fragment.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: the nonce is implicit, as in 1.3.
    Tls12Chacha,
}

/// One direction's key, fixed IV and record sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    aes_gcm: bool,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Self> {
        let (alg, key, iv, aes_gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(invalid("unsupported cipher suite")),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| invalid("bad traffic key"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| invalid("bad traffic iv"))?;
        Ok(Keys { key: LessSafeKey::new(key), iv, seq, aes_gcm })
    }

    /// The nonce of the next record: the IV with the sequence number xored into its tail.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next_seq(&mut self) -> io::Result<()> {
        self.seq = self.seq.checked_add(1).ok_or_else(|| invalid("record sequence exhausted"))?;
        Ok(())
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether `buf` starts with a whole record.
fn whole_record(buf: &[u8]) -> bool {
    buf.len() >= HEADER && buf.len() >= HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize
}

/// TLS 1.2 additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// Runs the server side of the handshake over `io`. `prefix` is what was already read from
/// it (the start of a direct-TLS ClientHello). The ALPN protocol the client chose and the
/// server name it asked for are returned with the connection.
pub async fn accept<S>(config: Arc<ServerConfig>, mut io: S, prefix: &[u8]) -> io::Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server_name = Arc::new(OnceLock::new());
    let mut noting = (*config).clone();
    noting.cert_resolver =
        Arc::new(NoteServerName { inner: Arc::clone(&config.cert_resolver), seen: Arc::clone(&server_name) });
    let mut conn = UnbufferedServerConnection::new(Arc::new(noting)).map_err(tls_error)?;
    let mut incoming = Vec::with_capacity(4096.max(prefix.len()));
    incoming.extend_from_slice(prefix);
    let mut outgoing: Vec<u8> = Vec::new();
    // rustls is given one whole record at a time (`incoming[..given]`), so every record
    // after the client's Finished is left for `TlsConn`: rustls never acts on a key update
    // or a close_notify whose effects the kernel API would not carry over.
    let mut given = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming[..given]);
        let mut blocked = false;
        let mut done = false;
        match state.map_err(tls_error)? {
            ConnectionState::EncodeTlsData(mut st) => {
                let start = outgoing.len();
                outgoing.resize(start + 4096, 0);
                let n = loop {
                    match st.encode(&mut outgoing[start..]) {
                        Ok(n) => break n,
                        Err(EncodeError::InsufficientSize(e)) => outgoing.resize(start + e.required_size, 0),
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    }
                };
                outgoing.truncate(start + n);
            }
            ConnectionState::TransmitTlsData(st) => {
                io.write_all(&outgoing).await?;
                io.flush().await?;
                outgoing.clear();
                st.done();
            }
            ConnectionState::BlockedHandshake => blocked = true,
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the TLS handshake"));
            }
            _ => return Err(invalid("unexpected TLS state during the handshake")),
        }
        incoming.drain(..discard);
        given -= discard;
        if done && conn.is_handshaking() {
            // Half-RTT data is not enabled, but should it be: wait for the client's Finished.
            (done, blocked) = (false, true);
        }
        if done {
            break;
        }
        if blocked {
            // The next whole record, read from the socket if it is not all here yet.
            loop {
                let rest = &incoming[given..];
                if rest.len() >= HEADER {
                    let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
                    if len > MAX_FRAGMENT {
                        return Err(invalid("TLS record too long"));
                    }
                    if rest.len() >= HEADER + len {
                        given += HEADER + len;
                        break;
                    }
                }
                if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err(invalid("TLS handshake message too large"));
                }
                let start = incoming.len();
                incoming.resize(start + 4096, 0);
                let n = io.read(&mut incoming[start..]).await?;
                incoming.truncate(start + n);
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ));
                }
            }
        }
    }
    if incoming.len() > RECORD_ROOM {
        // The client sent more after its Finished than one read of the first batch takes.
        return Err(invalid("too much data right after the TLS handshake"));
    }
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    let version = match (kernel.protocol_version(), &secrets.rx.1) {
        (ProtocolVersion::TLSv1_3, _) => Version::Tls13,
        (ProtocolVersion::TLSv1_2, ConnectionTrafficSecrets::Chacha20Poly1305 { .. }) => Version::Tls12Chacha,
        (ProtocolVersion::TLSv1_2, _) => Version::Tls12Gcm,
        _ => return Err(invalid("unsupported TLS version")),
    };
    let rx = Keys::new(secrets.rx.0, secrets.rx.1)?;
    let tx = Keys::new(secrets.tx.0, secrets.tx.1)?;
    // Records that came after the client's Finished stay for the first read.
    let incoming = if incoming.is_empty() { Vec::new() } else { incoming };
    let conn = TlsConn {
        io,
        version,
        rx,
        tx,
        kernel: Box::new(kernel),
        cipher: incoming,
        plain: Vec::new(),
        plain_pos: 0,
        out: Vec::new(),
        out_pos: 0,
        eof: false,
        failed: false,
        close_sent: false,
        key_update_due: false,
        key_updates_in_a_row: 0,
    };
    let server_name = server_name.get().cloned();
    Ok(Accepted { conn, alpn, server_name })
}

/// A finished handshake: the connection, the ALPN protocol agreed, and the server name the
/// client asked for (SNI, lower-cased by rustls; `None` without one or for an IP literal).
pub struct Accepted<S> {
    pub conn: TlsConn<S>,
    pub alpn: Option<Vec<u8>>,
    pub server_name: Option<String>,
}

/// Notes the server name of the ClientHello, which rustls's unbuffered connection does not
/// expose: each handshake runs with a copy of the config whose certificate resolver is this
/// wrapper around the real one (which still picks the certificate).
#[derive(Debug)]
struct NoteServerName {
    inner: Arc<dyn ResolvesServerCert>,
    seen: Arc<OnceLock<String>>,
}

impl ResolvesServerCert for NoteServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            // A retried ClientHello must name the same server (rustls checks): the first stays.
            let _ = self.seen.set(name.to_owned());
        }
        self.inner.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }
}

/// A server-side TLS connection whose records are handled here.
pub struct TlsConn<S> {
    io: S,
    version: Version,
    rx: Keys,
    tx: Keys,
    kernel: Box<KernelConnection<ServerConnectionData>>,
    /// Received bytes of records not yet opened (a partial record, usually empty).
    cipher: Vec<u8>,
    /// Opened plaintext the reader has not taken yet (from `plain_pos`).
    plain: Vec<u8>,
    plain_pos: usize,
    /// Sealed records not yet written (from `out_pos`).
    out: Vec<u8>,
    out_pos: usize,
    /// The client sent close_notify.
    eof: bool,
    /// A record failed: every later read fails too.
    failed: bool,
    close_sent: bool,
    /// The client asked for our key update: it goes before our next record.
    key_update_due: bool,
    /// Key updates received since the last application data (bounded, as rustls does).
    key_updates_in_a_row: u8,
}

impl<S> TlsConn<S> {
    /// Seals `data` as one record of `typ` into `dst` (room for `data` plus
    /// `2 * OVERHEAD`: a key update may come first); the bytes written.
    fn seal(&mut self, typ: u8, data: &[u8], dst: &mut [u8]) -> io::Result<usize> {
        debug_assert!(data.len() <= MAX_PLAIN);
        let mut n = 0;
        if self.key_update_due || (self.tx.aes_gcm && self.tx.seq >= AES_GCM_RECORD_LIMIT) {
            self.key_update_due = false;
            n = self.renew_tx_key(dst)?;
        }
        Ok(n + self.seal_raw(typ, data, &mut dst[n..])?)
    }

    /// Seals one record under the current key, into the start of `dst`.
    fn seal_raw(&mut self, typ: u8, data: &[u8], dst: &mut [u8]) -> io::Result<usize> {
        let nonce = self.tx.nonce();
        let (explicit, inner_type) = match self.version {
            Version::Tls13 => (0, 1),
            Version::Tls12Gcm => (8, 0),
            Version::Tls12Chacha => (0, 0),
        };
        let body_len = data.len() + inner_type;
        let len = explicit + body_len + TAG;
        let (header, rest) = dst.split_at_mut(HEADER);
        header[0] = if self.version == Version::Tls13 { APPLICATION_DATA } else { typ };
        header[1] = 3;
        header[2] = 3;
        header[3..5].copy_from_slice(&(len as u16).to_be_bytes());
        rest[..explicit].copy_from_slice(&nonce[12 - explicit..]);
        let body = &mut rest[explicit..explicit + body_len];
        body[..data.len()].copy_from_slice(data);
        if inner_type == 1 {
            body[data.len()] = typ;
        }
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = match self.version {
            Version::Tls13 => self.tx.key.seal_in_place_separate_tag(nonce, Aad::from(&*header), body),
            _ => {
                let aad = aad12(self.tx.seq, typ, data.len());
                self.tx.key.seal_in_place_separate_tag(nonce, Aad::from(aad), body)
            }
        }
        .map_err(|_| invalid("encryption failed"))?;
        rest[explicit + body_len..explicit + body_len + TAG].copy_from_slice(tag.as_ref());
        self.tx.next_seq()?;
        Ok(HEADER + len)
    }

    /// Before AES-GCM's record limit: a TLS 1.3 key update, or the end of a TLS 1.2
    /// connection (which has no way to renew keys short of renegotiation).
    fn renew_tx_key(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.version != Version::Tls13 {
            return Err(invalid("TLS 1.2 record limit of the key reached"));
        }
        // KeyUpdate, update_not_requested, under the old key.
        let n = self.seal_raw(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], dst)?;
        let (seq, secrets) = self.kernel.update_tx_secret().map_err(tls_error)?;
        self.tx = Keys::new(seq, secrets)?;
        Ok(n)
    }

    /// Opens the whole record at the start of `rec` in place; its plaintext and content type.
    fn open<'a>(&mut self, rec: &'a mut [u8]) -> io::Result<(u8, &'a mut [u8])> {
        let outer = rec[0];
        let (header, frag) = rec.split_at_mut(HEADER);
        let nonce = self.rx.nonce();
        let (typ, plain) = match self.version {
            Version::Tls13 => {
                if outer != APPLICATION_DATA {
                    return Err(invalid("unencrypted TLS record after the handshake"));
                }
                let plain = self
                    .rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&*header), frag)
                    .map_err(|_| invalid("TLS record failed to decrypt"))?;
                // The content type is the last non-zero byte; zeros after it are padding.
                let end = plain
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or_else(|| invalid("TLS record without a type"))?;
                if plain.len() > MAX_PLAIN + 1 || end > MAX_PLAIN {
                    return Err(invalid("TLS record plaintext too long"));
                }
                let typ = plain[end];
                (typ, &mut plain[..end])
            }
            Version::Tls12Gcm | Version::Tls12Chacha => {
                let explicit = if self.version == Version::Tls12Gcm { 8 } else { 0 };
                if frag.len() < explicit + TAG {
                    return Err(invalid("TLS record too short"));
                }
                let mut nonce = nonce;
                if explicit > 0 {
                    nonce[4..].copy_from_slice(&frag[..8]);
                }
                let aad = aad12(self.rx.seq, outer, frag.len() - explicit - TAG);
                let plain = self
                    .rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut frag[explicit..])
                    .map_err(|_| invalid("TLS record failed to decrypt"))?;
                if plain.len() > MAX_PLAIN {
                    return Err(invalid("TLS record plaintext too long"));
                }
                (outer, plain)
            }
        };
        self.rx.next_seq()?;
        Ok((typ, plain))
    }

    /// Acts on one opened record: data is appended to `plain` (and `into`, while it has
    /// room), an alert or a handshake message is handled.
    fn on_record(&mut self, typ: u8, data: &[u8], into: &mut ReadBuf<'_>) -> io::Result<()> {
        match typ {
            APPLICATION_DATA => {
                self.key_updates_in_a_row = 0;
                let n = data.len().min(into.remaining());
                into.put_slice(&data[..n]);
                self.plain.extend_from_slice(&data[n..]);
                Ok(())
            }
            ALERT => {
                if data == [1, 0] || data == [2, 0] {
                    self.eof = true;
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::ConnectionAborted, "TLS alert from the client"))
                }
            }
            HANDSHAKE if self.version == Version::Tls13 => self.on_handshake(data),
            HANDSHAKE => Err(invalid("TLS renegotiation is not supported")),
            _ => Err(invalid("unexpected TLS record type")),
        }
    }

    /// TLS 1.3 post-handshake messages: only KeyUpdate is expected from a client, alone in
    /// its record (a key change must not fall inside a record, RFC 8446 §5.1). An answer that
    /// is asked for goes before our next record (§4.6.3), once however often it was asked.
    fn on_handshake(&mut self, msg: &[u8]) -> io::Result<()> {
        if msg.len() != 5 || msg[..4] != [KEY_UPDATE, 0, 0, 1] || msg[4] > 1 {
            return Err(invalid("unexpected TLS handshake message after the handshake"));
        }
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > 32 {
            return Err(invalid("too many TLS key updates without data"));
        }
        let (seq, secrets) = self.kernel.update_rx_secret().map_err(tls_error)?;
        self.rx = Keys::new(seq, secrets)?;
        if msg[4] == 1 {
            self.key_update_due = true;
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> TlsConn<S> {
    /// Seals `data` as a record of `typ` in a stack buffer of `ROOM` bytes (at least
    /// `data.len() + 2 * OVERHEAD`) and sends it.
    fn write_record<const ROOM: usize>(
        &mut self,
        cx: &mut Context<'_>,
        typ: u8,
        data: &[u8],
    ) -> io::Result<()> {
        let mut room = [0u8; ROOM];
        let n = self.seal(typ, data, &mut room)?;
        self.send(cx, &room[..n])
    }

    /// Tells the client why the connection ends (a fatal alert, sent if the socket takes it
    /// now) and hands back the error.
    fn alert(&mut self, cx: &mut Context<'_>, description: u8, e: io::Error) -> io::Error {
        if !self.close_sent {
            self.close_sent = true;
            let _ = self.write_record::<ALERT_ROOM>(cx, ALERT, &[2, description]);
        }
        e
    }

    /// Writes out sealed records that are waiting. Ready(Ok) once none are.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `rec` (sealed records) now as far as the socket takes it; keeps the rest.
    fn send(&mut self, cx: &mut Context<'_>, rec: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.out.is_empty() {
            while done < rec.len() {
                match Pin::new(&mut self.io).poll_write(cx, &rec[done..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => done += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.out.extend_from_slice(&rec[done..]);
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.failed || this.cipher.len() > RECORD_ROOM {
                this.failed = true;
                return Poll::Ready(Err(invalid("the TLS connection failed")));
            }
            // Read into the stack, after any partial record kept from the last read.
            // Not zeroed: only what is read is looked at.
            let mut space = [MaybeUninit::<u8>::uninit(); 2 * RECORD_ROOM];
            let mut rb = ReadBuf::uninit(&mut space);
            let kept = this.cipher.len();
            rb.put_slice(&this.cipher);
            let read = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let got = rb.filled().len() - kept;
            let room = rb.filled_mut();
            match read {
                // Nothing new, but whole records may be waiting (those that came with the
                // client's Finished).
                Poll::Pending if whole_record(room) => {}
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            // The client closed: what it sent before still counts (a CancelRequest and the
            // close right after it, say). A close without close_notify is the end of the
            // stream too, as the session cannot tell the difference that matters here.
            let closed = got == 0 && read.is_ready();
            if closed && kept == 0 {
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
            this.cipher = Vec::new();
            let filled = kept + got;
            let before = buf.filled().len();
            let mut pos = 0;
            while filled - pos >= HEADER {
                let len = u16::from_be_bytes([room[pos + 3], room[pos + 4]]) as usize;
                if len > MAX_FRAGMENT {
                    this.failed = true;
                    return Poll::Ready(Err(this.alert(cx, RECORD_OVERFLOW, invalid("TLS record too long"))));
                }
                if filled - pos < HEADER + len {
                    break;
                }
                let (typ, data) = match this.open(&mut room[pos..pos + HEADER + len]) {
                    Ok((typ, data)) => (typ, &*data),
                    Err(e) => {
                        this.failed = true;
                        return Poll::Ready(Err(this.alert(cx, BAD_RECORD_MAC, e)));
                    }
                };
                if let Err(e) = this.on_record(typ, data, buf) {
                    this.failed = true;
                    return Poll::Ready(Err(this.alert(cx, UNEXPECTED_MESSAGE, e)));
                }
                pos += HEADER + len;
                if this.eof {
                    break;
                }
            }
            if !this.eof && pos < filled {
                if closed {
                    this.failed = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed inside a TLS record",
                    )));
                }
                this.cipher.extend_from_slice(&room[pos..filled]);
            }
            this.eof |= closed;
            if buf.filled().len() > before || this.eof {
                return Poll::Ready(Ok(()));
            }
            // Only a partial record, or records without data: read again.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = data.len().min(MAX_SENT_PLAIN);
        // Most replies are small: a small stack buffer is cheaper to clear than a record's.
        let sent = if take <= SMALL_WRITE {
            this.write_record::<{ SMALL_WRITE + 2 * OVERHEAD }>(cx, APPLICATION_DATA, &data[..take])
        } else {
            this.write_record::<{ MAX_SENT_PLAIN + 2 * OVERHEAD }>(cx, APPLICATION_DATA, &data[..take])
        };
        Poll::Ready(sent.map(|()| take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            // close_notify, warning level.
            this.write_record::<ALERT_ROOM>(cx, ALERT, &[1, 0])?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
