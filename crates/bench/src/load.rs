//! The two load shapes pgbench cannot make: many idle authenticated clients, and a storm of
//! short connections. Each prints one `key=value` line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::{Conn, Target};

/// Opens `clients` connections, `concurrency` at a time, holds them, and reports the RSS of
/// process `pid` before and after.
pub async fn idle(
    target: Target,
    clients: usize,
    concurrency: usize,
    pid: u32,
    settle: Duration,
) -> anyhow::Result<()> {
    let rss_before = vm_rss_kib(pid)?;
    let target = Arc::new(target);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (target, next) = (target.clone(), next.clone());
        workers.spawn(async move {
            let (mut held, mut errors, mut first_error) = (Vec::new(), 0usize, None);
            while next.fetch_add(1, Ordering::Relaxed) < clients {
                match Conn::connect(&target).await {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (held, errors, first_error)
        });
    }
    let (mut held, mut errors, mut first_error) = (Vec::with_capacity(clients), 0, None);
    while let Some(done) = workers.join_next().await {
        let (h, e, f) = done?;
        held.extend(h);
        errors += e;
        first_error = first_error.or(f);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss = vm_rss_kib(pid)?;
    // One held client must still answer: idle is not the same as dropped.
    let alive = match held.last_mut() {
        Some(c) => c.simple_query("select 1").await.is_ok(),
        None => false,
    };
    let per_client = (rss.saturating_sub(rss_before) * 1024) / held.len().max(1) as u64;
    println!(
        "clients={} errors={errors} connect_seconds={connect_seconds:.2} rss_before_kib={rss_before} \
         rss_kib={rss} bytes_per_client={per_client} last_alive={alive}{}",
        held.len(),
        first_error.map(|e| format!(" first_error={e:?}")).unwrap_or_default()
    );
    Ok(())
}

/// `clients` loops of connect, `select 1`, disconnect for `duration`.
pub async fn storm(target: Target, clients: usize, duration: Duration) -> anyhow::Result<()> {
    let target = Arc::new(target);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..clients.max(1) {
        let (target, stop) = (target.clone(), stop.clone());
        workers.spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0usize, 0usize, None);
            while !stop.load(Ordering::Relaxed) {
                let once = async {
                    let mut c = Conn::connect(&target).await?;
                    c.simple_query("select 1").await?;
                    c.terminate().await
                };
                match once.await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (ok, errors, first_error)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    while let Some(done) = workers.join_next().await {
        let (o, e, f) = done?;
        ok += o;
        errors += e;
        first_error = first_error.or(f);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "connections={ok} errors={errors} seconds={seconds:.2} per_second={:.1}{}",
        ok as f64 / seconds,
        first_error.map(|e| format!(" first_error={e:?}")).unwrap_or_default()
    );
    Ok(())
}

/// `clients` clients at once, each running one query; prints how many succeeded and the
/// SQLSTATEs of those that did not (`53400:12,08006:1`).
pub async fn crowd(target: Target, clients: usize, sleep: &str) -> anyhow::Result<()> {
    let sleep: f64 = sleep.parse().map_err(|_| anyhow::anyhow!("--sleep takes seconds"))?;
    let sql = format!("select pg_sleep({sleep})");
    let target = Arc::new(target);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (target, sql) = (target.clone(), sql.clone());
        tasks.spawn(async move {
            let mut c = Conn::connect(&target).await?;
            c.simple_query(&sql).await?;
            c.terminate().await
        });
    }
    let (mut ok, mut codes, mut first_error) = (0usize, std::collections::BTreeMap::new(), None);
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(()) => ok += 1,
            Err(e) => {
                let text = e.to_string();
                // "login failed: 53400 …" / "query failed: 53400 …"; anything else is "other".
                let code = text
                    .split_once(": ")
                    .and_then(|(_, rest)| rest.get(..5))
                    .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric()))
                    .unwrap_or("other")
                    .to_owned();
                *codes.entry(code).or_insert(0usize) += 1;
                first_error.get_or_insert(text);
            }
        }
    }
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    println!(
        "clients={clients} ok={ok} failed={} codes={}{}",
        clients - ok,
        if codes.is_empty() { "-".to_owned() } else { codes.join(",") },
        first_error.map(|e| format!(" first_error={e:?}")).unwrap_or_default()
    );
    Ok(())
}

/// The resident set of a process, from `/proc/PID/status`.
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}
