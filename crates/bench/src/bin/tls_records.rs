//! `berth-tls-records`: what one idle TLS connection holds after the handshake, and how fast
//! plaintext goes through, for Berth's own record layer (`proxy::tls_conn`), rustls's
//! buffered `ServerConnection` (through tokio-rustls) and rustls's `UnbufferedServerConnection`
//! kept after the handshake. A figure printer, not a test: it never fails on a number.
//!
//! Each measurement runs the server side in a fresh child process (this binary, `serve`), so
//! its RSS and heap hold that layer's connections only; the clients (tokio-rustls) run in the
//! parent, on loopback TCP. Heap is counted by the `cap` global allocator (bytes requested,
//! live); RSS is `VmRSS`, which also counts malloc's own overhead and fragmentation. Server
//! CPU is the child's main-thread run time (`/proc/self/schedstat`, ns) during each
//! throughput phase: the child's runtime is single-threaded, so that is all of its work.

use std::alloc::System;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cap::Cap;
use clap::{Parser, Subcommand, ValueEnum};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Plaintext per record sent, as Berth's layer seals (`tls_conn::MAX_SENT_PLAIN`). rustls's
/// `max_fragment_size` counts the 5-byte record header too.
const MAX_SENT_PLAIN: usize = 8 * 1024;
const RUSTLS_MAX_FRAGMENT_SIZE: usize = MAX_SENT_PLAIN + 5;
/// Room for two whole records of the largest size a peer may send (as Berth's read does).
const READ_ROOM: usize = 2 * (5 + (1 << 14) + 256);

#[derive(Parser)]
#[command(name = "berth-tls-records")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Idle connections per measurement.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Rounds; each runs every layer once per TLS version (in a rotated order).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// MiB echoed in each of the 16 KiB and 8 KiB write phases.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// 100-byte messages echoed one at a time (request, then reply) in the small phase.
    #[arg(long, default_value_t = 20_000)]
    small: usize,
    /// Handshakes in flight from the client side.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// The server side of one measurement (started by the parent).
    #[command(hide = true)]
    Serve {
        #[arg(long, value_enum)]
        layer: Layer,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// `size:count:pingpong` phases, comma-separated.
        #[arg(long)]
        phases: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Layer {
    /// Plain TCP, no TLS: the socket's own share (tokio's registration), for reference.
    Tcp,
    /// (a) Berth's record layer.
    Berth,
    /// (b) rustls's buffered ServerConnection (tokio-rustls), max_fragment_size 8 KiB.
    Buffered,
    /// (c) rustls's UnbufferedServerConnection, buffers freed when idle.
    Unbuffered,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Tcp => "tcp",
            Layer::Berth => "berth",
            Layer::Buffered => "buffered",
            Layer::Unbuffered => "unbuffered",
        }
    }
}

#[derive(Clone, Copy)]
struct Phase {
    size: usize,
    count: usize,
    pingpong: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Serve { layer, conns, cert, key, phases }) => {
            let phases = parse_phases(&phases)?;
            current_thread()?.block_on(serve(layer, conns, &cert, &key, &phases))
        }
        None => current_thread()?.block_on(run(&cli)),
    }
}

fn current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn parse_phases(s: &str) -> Result<Vec<Phase>> {
    s.split(',')
        .map(|p| {
            let f: Vec<&str> = p.split(':').collect();
            let [size, count, pingpong] = f[..] else { bail!("bad phase {p}") };
            Ok(Phase { size: size.parse()?, count: count.parse()?, pingpong: pingpong == "1" })
        })
        .collect()
}

fn phases_arg(phases: &[Phase]) -> String {
    let p: Vec<String> =
        phases.iter().map(|p| format!("{}:{}:{}", p.size, p.count, u8::from(p.pingpong))).collect();
    p.join(",")
}

// ---- the server side (child) ----

/// An idle connection as a relay would keep it, boxed as Berth's session boxes its stream.
enum Conn {
    Tcp(#[allow(dead_code)] Box<TcpStream>),
    Berth(Box<proxy::TlsConn<TcpStream>>),
    Buffered(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unbuffered(Box<Unbuf>),
}

fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmRSS")?.parse()?;
    Ok(kb * 1024)
}

/// Run time of this (the main, only runtime) thread, in ns.
fn cpu_ns() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace().next().context("schedstat")?.parse()?)
}

async fn accept(layer: Layer, config: &Arc<ServerConfig>, tcp: TcpStream) -> Result<Conn> {
    tcp.set_nodelay(true)?;
    Ok(match layer {
        Layer::Tcp => Conn::Tcp(Box::new(tcp)),
        Layer::Berth => Conn::Berth(Box::new(proxy::tls_accept(Arc::clone(config), tcp, &[]).await?.conn)),
        Layer::Buffered => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
            Conn::Buffered(Box::new(acceptor.accept(tcp).await?))
        }
        Layer::Unbuffered => Conn::Unbuffered(Box::new(Unbuf::accept(Arc::clone(config), tcp).await?)),
    })
}

async fn serve(layer: Layer, conns: usize, cert: &Path, key: &Path, phases: &[Phase]) -> Result<()> {
    let mut config = (*proxy::TlsServer::from_files(cert, key)?.config).clone();
    if layer != Layer::Berth {
        // Berth's config extracts secrets; rustls's own connections have no use for it.
        config.enable_secret_extraction = false;
        config.max_fragment_size = Some(RUSTLS_MAX_FRAGMENT_SIZE);
    }
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    // Warm-up: one connection through the layer (lazy statics, the runtime's first
    // allocations), dropped before the baseline.
    let (tcp, _) = listener.accept().await?;
    drop(accept(layer, &config, tcp).await?);
    let mut kept: Vec<Conn> = Vec::with_capacity(conns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Conn>>();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (heap0, rss0) = (ALLOC.allocated(), rss_bytes()?);
    println!("ready");
    let mut accepted = 0;
    while kept.len() < conns {
        tokio::select! {
            r = listener.accept(), if accepted < conns => {
                let (tcp, _) = r?;
                accepted += 1;
                let (tx, config) = (tx.clone(), Arc::clone(&config));
                tokio::spawn(async move { let _ = tx.send(accept(layer, &config, tcp).await); });
            }
            c = rx.recv() => kept.push(c.context("channel closed")??),
        }
    }
    drop((tx, rx));
    // Let finished tasks and their buffers go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (heap1, rss1) = (ALLOC.allocated(), rss_bytes()?);
    println!("mem {heap0} {heap1} {rss0} {rss1}");
    if layer == Layer::Tcp {
        return Ok(());
    }
    // Throughput: one more connection through the same layer.
    let (tcp, _) = listener.accept().await?;
    let mut conn = accept(layer, &config, tcp).await?;
    let mut msg = Vec::new();
    let mut rbuf = vec![0u8; READ_ROOM];
    let mut wbuf = vec![0u8; READ_ROOM];
    // Plaintext read ahead of the message being echoed (unbuffered: a read may open several).
    let mut pending = Vec::new();
    for p in phases {
        msg.resize(p.size, 0);
        let t0 = cpu_ns()?;
        for _ in 0..p.count {
            match &mut conn {
                Conn::Tcp(_) => bail!("no throughput over plain TCP"),
                Conn::Berth(c) => echo_one(&mut **c, &mut msg).await?,
                Conn::Buffered(c) => echo_one(&mut **c, &mut msg).await?,
                Conn::Unbuffered(c) => {
                    while pending.len() < p.size {
                        c.read_plain(&mut rbuf, &mut pending).await?;
                    }
                    c.write_plain(&pending[..p.size], &mut wbuf).await?;
                    pending.drain(..p.size);
                }
            }
        }
        println!("phase {} {}", p.size, cpu_ns()? - t0);
    }
    drop(kept);
    Ok(())
}

async fn echo_one<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &mut [u8]) -> Result<()> {
    s.read_exact(msg).await?;
    s.write_all(msg).await?;
    s.flush().await?;
    Ok(())
}

/// rustls's unbuffered server connection kept after the handshake, as a relay that frees its
/// buffers when idle would keep it: the connection, the socket, and a partial record (empty
/// when idle). Reads go into a buffer the caller lends (a relay's stack or a reused buffer).
struct Unbuf {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    partial: Vec<u8>,
}

impl Unbuf {
    async fn accept(config: Arc<ServerConfig>, mut tcp: TcpStream) -> Result<Unbuf> {
        let mut conn = UnbufferedServerConnection::new(config)?;
        let mut incoming = vec![0u8; 4096];
        let mut filled = 0;
        let mut outgoing = Vec::new();
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming[..filled]);
            let mut read = false;
            let mut done = false;
            let state = state?;
            match state {
                ConnectionState::EncodeTlsData(mut st) => {
                    let start = outgoing.len();
                    outgoing.resize(start + 4096, 0);
                    let n = loop {
                        match st.encode(&mut outgoing[start..]) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(e)) => {
                                outgoing.resize(start + e.required_size, 0)
                            }
                            Err(e) => bail!("encode: {e}"),
                        }
                    };
                    outgoing.truncate(start + n);
                }
                ConnectionState::TransmitTlsData(st) => {
                    tcp.write_all(&outgoing).await?;
                    outgoing.clear();
                    st.done();
                }
                ConnectionState::BlockedHandshake => read = true,
                ConnectionState::WriteTraffic(_) => done = true,
                _ => bail!("unexpected state during the handshake"),
            }
            incoming.copy_within(discard..filled, 0);
            filled -= discard;
            if done && conn.is_handshaking() {
                (done, read) = (false, true);
            }
            if done {
                break;
            }
            if read {
                if filled == incoming.len() {
                    incoming.resize(2 * filled, 0);
                }
                let n = tcp.read(&mut incoming[filled..]).await?;
                if n == 0 {
                    bail!("closed during the handshake");
                }
                filled += n;
            }
        }
        let partial = if filled == 0 { Vec::new() } else { incoming[..filled].to_vec() };
        Ok(Unbuf { tcp, conn, partial })
    }

    /// One socket read; the plaintext of every whole record is appended to `out`.
    async fn read_plain(&mut self, room: &mut [u8], out: &mut Vec<u8>) -> Result<()> {
        let kept = self.partial.len();
        room[..kept].copy_from_slice(&self.partial);
        self.partial = Vec::new();
        let n = self.tcp.read(&mut room[kept..]).await?;
        if n == 0 {
            bail!("eof");
        }
        let filled = kept + n;
        let mut start = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut room[start..filled]);
            let state = state?;
            let more = match state {
                ConnectionState::ReadTraffic(mut rt) => {
                    while let Some(rec) = rt.next_record() {
                        let rec = rec?;
                        discard += rec.discard;
                        out.extend_from_slice(rec.payload);
                    }
                    true
                }
                ConnectionState::WriteTraffic(_) => false,
                _ => bail!("unexpected state after the handshake"),
            };
            start += discard;
            if !more {
                break;
            }
        }
        if start < filled {
            self.partial.extend_from_slice(&room[start..filled]);
        }
        Ok(())
    }

    async fn write_plain(&mut self, data: &[u8], room: &mut [u8]) -> Result<()> {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        let n = match state? {
            ConnectionState::WriteTraffic(mut wt) => {
                wt.encrypt(data, room).map_err(|e| anyhow::anyhow!("{e}"))?
            }
            _ => bail!("not writable"),
        };
        self.tcp.write_all(&room[..n]).await?;
        Ok(())
    }
}

// ---- the client side (parent) ----

struct Sample {
    heap_per_conn: f64,
    rss_per_conn: f64,
    /// Per phase: (server CPU ns, wall ns).
    phases: Vec<(u64, u64)>,
}

async fn run(cli: &Cli) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("berth-tls-records-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = proxy::LocalCa::generate(&["localhost".to_owned()])?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &ca.server_cert_pem)?;
    std::fs::write(&key, &ca.server_key_pem)?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.ca_cert_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let roots = Arc::new(roots);
    let mib = cli.mib * 1024 * 1024;
    let phases = [
        Phase { size: 16 * 1024, count: mib / (16 * 1024), pingpong: false },
        Phase { size: 8 * 1024, count: mib / (8 * 1024), pingpong: false },
        Phase { size: 100, count: cli.small, pingpong: true },
    ];
    let versions: [(&str, &'static rustls::SupportedProtocolVersion); 2] =
        [("TLS 1.3", &rustls::version::TLS13), ("TLS 1.2", &rustls::version::TLS12)];
    let layers = [Layer::Berth, Layer::Buffered, Layer::Unbuffered, Layer::Tcp];
    let mut samples: Vec<Vec<Vec<Sample>>> =
        (0..versions.len()).map(|_| (0..layers.len()).map(|_| Vec::new()).collect()).collect();
    println!(
        "berth-tls-records: {} idle connections per measurement, {} rounds, {} MiB per bulk phase, {} pingpong messages",
        cli.conns, cli.rounds, cli.mib, cli.small
    );
    for round in 0..cli.rounds {
        for (vi, (vname, version)) in versions.iter().enumerate() {
            let mut client = ClientConfig::builder_with_provider(proxy::tls::provider())
                .with_protocol_versions(&[*version])?
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            client.alpn_protocols = vec![proxy::tls::ALPN_POSTGRESQL.to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            for k in 0..layers.len() {
                let li = (k + round) % layers.len();
                let layer = layers[li];
                if layer == Layer::Tcp && vi > 0 {
                    continue;
                }
                let s = measure(cli, layer, &connector, &cert, &key, &phases).await?;
                eprintln!(
                    "round {} {vname} {:<10} heap {:>7.0} B/conn  rss {:>7.0} B/conn  {}",
                    round + 1,
                    layer.name(),
                    s.heap_per_conn,
                    s.rss_per_conn,
                    s.phases
                        .iter()
                        .zip(&phases)
                        .map(|((cpu, wall), p)| format!(
                            "{}B: {:.0} cpu {:.0} wall",
                            p.size,
                            mbps(p, *cpu),
                            mbps(p, *wall)
                        ))
                        .collect::<Vec<_>>()
                        .join("  ")
                );
                samples[vi][li].push(s);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_table(cli, &versions.map(|v| v.0), &layers, &samples, &phases);
    Ok(())
}

/// MB/s of plaintext for bulk phases; thousands of replies per second for request/reply.
fn mbps(p: &Phase, ns: u64) -> f64 {
    let per_s = if p.pingpong { p.count as f64 / 1e3 } else { (p.size * p.count) as f64 / 1e6 };
    per_s / (ns as f64 / 1e9)
}

async fn measure(
    cli: &Cli,
    layer: Layer,
    connector: &tokio_rustls::TlsConnector,
    cert: &Path,
    key: &Path,
    phases: &[Phase],
) -> Result<Sample> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .args(["--layer", layer.name(), "--conns", &cli.conns.to_string()])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["--phases", &phases_arg(phases)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> Result<String> { lines.next_line().await?.context("the server ended") };
    let line = next().await?;
    let addr = line.strip_prefix("listening ").context("no address")?.to_owned();
    let tls = layer != Layer::Tcp;
    let connect = async |addr: String| -> Result<Client> {
        let tcp = TcpStream::connect(&addr).await?;
        tcp.set_nodelay(true)?;
        Ok(if tls {
            Client::Tls(Box::new(connector.connect(ServerName::try_from("localhost")?, tcp).await?))
        } else {
            Client::Tcp(tcp)
        })
    };
    drop(connect(addr.clone()).await?);
    if next().await? != "ready" {
        bail!("server not ready");
    }
    let mut idle = Vec::with_capacity(cli.conns);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while idle.len() < cli.conns {
        while started < cli.conns && set.len() < cli.parallel {
            let connector = connector.clone();
            let addr = addr.clone();
            set.spawn(async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                anyhow::Ok(if tls {
                    Client::Tls(Box::new(connector.connect(ServerName::try_from("localhost")?, tcp).await?))
                } else {
                    Client::Tcp(tcp)
                })
            });
            started += 1;
        }
        idle.push(set.join_next().await.context("no task")???);
    }
    let mem = next().await?;
    let f: Vec<f64> = mem.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    let [heap0, heap1, rss0, rss1] = f[..] else { bail!("bad mem line {mem}") };
    let n = cli.conns as f64;
    let mut sample =
        Sample { heap_per_conn: (heap1 - heap0) / n, rss_per_conn: (rss1 - rss0) / n, phases: Vec::new() };
    if !tls {
        // No throughput over plain TCP: the reference is for memory only.
    } else if let Client::Tls(mut c) = connect(addr).await? {
        for p in phases {
            let t = Instant::now();
            client_phase(&mut c, p).await?;
            let wall = t.elapsed().as_nanos() as u64;
            let line = next().await?;
            let cpu: u64 = line.split_whitespace().nth(2).context("phase line")?.parse()?;
            sample.phases.push((cpu, wall));
        }
    }
    drop(idle);
    child.kill().await?;
    Ok(sample)
}

enum Client {
    Tcp(#[allow(dead_code)] TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn client_phase(c: &mut tokio_rustls::client::TlsStream<TcpStream>, p: &Phase) -> Result<()> {
    let msg = vec![7u8; p.size];
    if p.pingpong {
        let mut back = vec![0u8; p.size];
        for _ in 0..p.count {
            c.write_all(&msg).await?;
            c.flush().await?;
            c.read_exact(&mut back).await?;
        }
        return Ok(());
    }
    let (mut r, mut w) = tokio::io::split(c);
    let writer = async {
        for _ in 0..p.count {
            w.write_all(&msg).await?;
            w.flush().await?;
        }
        anyhow::Ok(())
    };
    let reader = async {
        let mut back = vec![0u8; 64 * 1024];
        let mut left = p.size * p.count;
        while left > 0 {
            let n = r.read(&mut back[..left.min(64 * 1024)]).await?;
            if n == 0 {
                bail!("eof");
            }
            left -= n;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(writer, reader)?;
    Ok(())
}

// ---- the table ----

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let m = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    (m, v[0], v[v.len() - 1])
}

fn print_table(
    cli: &Cli,
    versions: &[&str],
    layers: &[Layer],
    samples: &[Vec<Vec<Sample>>],
    phases: &[Phase],
) {
    println!();
    println!(
        "median [min-max] of {} rounds; (x) = ratio to berth; heap = bytes requested and still held per idle connection after the handshake; rss = VmRSS delta per idle connection; MB/s = plaintext echoed (opened and sealed once each by the server) per second of server CPU, and of wall time; k replies/s = 100-byte requests answered one at a time",
        cli.rounds
    );
    type Metric<'a> = (String, Box<dyn Fn(&Sample) -> f64 + 'a>);
    let mut metrics: Vec<Metric> = vec![
        ("heap B/conn".to_owned(), Box::new(|s: &Sample| s.heap_per_conn)),
        ("rss B/conn".to_owned(), Box::new(|s: &Sample| s.rss_per_conn)),
    ];
    for (i, p) in phases.iter().enumerate() {
        let (kind, unit) = if p.pingpong { ("request/reply", "k replies/s") } else { ("writes", "MB/s") };
        metrics.push((
            format!("{} B {kind}, {unit} server CPU", p.size),
            Box::new(move |s: &Sample| s.phases.get(i).map_or(f64::NAN, |x| mbps(p, x.0))),
        ));
        metrics.push((
            format!("{} B {kind}, {unit} wall", p.size),
            Box::new(move |s: &Sample| s.phases.get(i).map_or(f64::NAN, |x| mbps(p, x.1))),
        ));
    }
    for (vi, v) in versions.iter().enumerate() {
        println!();
        print!("| {v} | ");
        for l in layers {
            let tag = match l {
                Layer::Berth => "(a) berth tls_conn",
                Layer::Buffered => "(b) rustls ServerConnection",
                Layer::Unbuffered => "(c) rustls Unbuffered",
                Layer::Tcp => "tcp only (reference)",
            };
            if samples[vi][layers.iter().position(|x| x == l).unwrap_or(0)].is_empty() {
                continue;
            }
            print!("{tag} | ");
        }
        println!();
        println!("|---|{}", "---|".repeat(samples[vi].iter().filter(|s| !s.is_empty()).count()));
        for (name, f) in &metrics {
            let base = median_spread(samples[vi][0].iter().map(f).collect()).0;
            let mut row = format!("| {name} | ");
            for (li, _) in layers.iter().enumerate() {
                let s = &samples[vi][li];
                if s.is_empty() {
                    continue;
                }
                let (m, lo, hi) = median_spread(s.iter().map(f).collect());
                if m.is_nan() {
                    row.push_str("– | ");
                } else if li == 0 {
                    row.push_str(&format!("{m:.0} [{lo:.0}–{hi:.0}] | "));
                } else {
                    row.push_str(&format!("{m:.0} [{lo:.0}–{hi:.0}] ({:.2}×) | ", m / base));
                }
            }
            println!("{row}");
        }
    }
}
