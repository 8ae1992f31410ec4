//! Replies reach libpq clients whole, whatever their size. libpq reads with at least 8 KiB
//! of room, and its asynchronous API (psycopg 3, and every event-loop client on libpq) waits
//! on the socket once a read leaves a message incomplete; OpenSSL may meanwhile hold the
//! rest of a larger record, decrypted, where no poll can see it, and the client then waits
//! forever for bytes that have already arrived. So no record the proxy sends carries more
//! than 8 KiB: a tap between client and proxy reads every record header on the way to the
//! client while a sweep of reply and request sizes (text and binary, simple and extended,
//! unnamed and prepared, COPY both ways) runs over both ports, each query with a deadline.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{PASSWORD, stack, within};
use futures_util::{SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a record of 8 KiB of plaintext takes at most on the wire, past its header: the
/// TLS 1.3 inner type byte or TLS 1.2's explicit nonce, and the tag.
const MOST_FRAGMENT: usize = 8 * 1024 + 8 + 16;

/// Forwards one port to `to`, noting the largest record fragment sent towards the client.
struct Tap {
    addr: SocketAddr,
    largest: Arc<AtomicUsize>,
    records: Arc<AtomicUsize>,
}

async fn tap(to: SocketAddr) -> Tap {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let largest = Arc::new(AtomicUsize::new(0));
    let records = Arc::new(AtomicUsize::new(0));
    let (l, r) = (Arc::clone(&largest), Arc::clone(&records));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(to).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
            });
            let (l, r) = (Arc::clone(&l), Arc::clone(&r));
            tokio::spawn(async move {
                // The proxy answers the SSLRequest with one byte; records follow.
                let mut first = [0u8; 1];
                if sr.read_exact(&mut first).await.is_err() || cw.write_all(&first).await.is_err() {
                    return;
                }
                let mut header = [0u8; 5];
                let mut body = vec![0u8; 1 << 15];
                loop {
                    if sr.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                    if sr.read_exact(&mut body[..len]).await.is_err() {
                        return;
                    }
                    // Application data, and in TLS 1.3 everything after the ServerHello.
                    if header[0] == 23 {
                        l.fetch_max(len, Ordering::Relaxed);
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    if cw.write_all(&header).await.is_err() || cw.write_all(&body[..len]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Tap { addr, largest, records }
}

/// Sizes across 0..70,000 bytes, and a few on each side of every 16 KiB and 8 KiB multiple.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=70_000).step_by(1_777).collect();
    for k in 1..=4 {
        for edge in [k * 16_384, k * 16_384 - 8_192] {
            for d in [-70i64, -40, -35, -33, -30, -22, -5, -1, 0, 1, 5, 30] {
                v.push((edge as i64 + d) as usize);
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

async fn sweep(c: &tokio_postgres::Client, what: &str) {
    c.batch_execute("create table if not exists blobs(t text, b bytea)").await.unwrap();
    let prepared = c.prepare("select repeat('x', $1::int), $2::bytea").await.unwrap();
    for n in sizes() {
        let what = format!("{what}, {n} bytes");
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        // Simple protocol, text.
        let rows = within(&what, c.simple_query(&format!("select repeat('x', {n})"))).await.unwrap();
        let text = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
            _ => None,
        });
        assert_eq!(text, Some(n), "{what}: simple");
        // Extended, unnamed and prepared, binary both ways.
        let row = within(&what, c.query_one("select length($1::bytea), $1::bytea", &[&bytes])).await.unwrap();
        assert_eq!(row.get::<_, i32>(0) as usize, n, "{what}: unnamed");
        assert_eq!(row.get::<_, Vec<u8>>(1), bytes, "{what}: unnamed echo");
        let row = within(&what, c.query_one(&prepared, &[&(n as i32), &bytes])).await.unwrap();
        assert_eq!(row.get::<_, String>(0).len(), n, "{what}: prepared");
        assert_eq!(row.get::<_, Vec<u8>>(1), bytes, "{what}: prepared echo");
    }
    // COPY in and out, with rows whose sizes cross the same edges.
    let sink = within("copy in", c.copy_in("copy blobs (t) from stdin")).await.unwrap();
    futures_util::pin_mut!(sink);
    for n in sizes() {
        let line = format!("{}\n", "y".repeat(n));
        within("copy in row", sink.send(Bytes::from(line))).await.unwrap();
    }
    let copied = within("copy in end", sink.finish()).await.unwrap();
    assert_eq!(copied as usize, sizes().len(), "{what}: copy in");
    let out = within("copy out", c.copy_out("copy (select t from blobs order by length(t)) to stdout"))
        .await
        .unwrap();
    let chunks: Vec<Bytes> = within("copy out rows", out.try_collect()).await.unwrap();
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let want: usize = sizes().iter().map(|n| n + 1).sum();
    assert_eq!(total, want, "{what}: copy out");
    c.batch_execute("truncate blobs").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_sent_carries_more_than_libpq_reads_at_once_on_either_port() {
    let s = stack().await;
    for pooled in [false, true] {
        let t = tap(if pooled { s.proxy.pooled_addr } else { s.proxy.addr }).await;
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .hostaddr(t.addr.ip())
            .port(t.addr.port())
            .dbname("app")
            .user("alice")
            .password(PASSWORD)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let (c, _conn) = within("connect", s.proxy.connect_with(config)).await.unwrap();
        sweep(&c, if pooled { "pooled" } else { "direct" }).await;
        let (largest, records) = (t.largest.load(Ordering::Relaxed), t.records.load(Ordering::Relaxed));
        assert!(records > 1_000, "the tap saw the replies ({records} records)");
        assert!(
            largest <= MOST_FRAGMENT,
            "pooled={pooled}: a record of {largest} bytes reached the client; libpq's asynchronous \
             API can stall on records over 8 KiB"
        );
        // Large replies went by in records close to the limit, not in tiny ones.
        assert!(largest > MOST_FRAGMENT - 64, "pooled={pooled}: largest record {largest} bytes");
    }
}
