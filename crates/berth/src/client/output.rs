//! Human output: aligned tables, and a spinner or a progress bar on stderr while waiting
//! (only when stderr is a terminal, so scripts and logs stay clean).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A JSON field as table text (`-` for null).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub struct Spinner {
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: String) -> Spinner {
        let running = Arc::new(AtomicBool::new(true));
        let thread = std::io::stderr().is_terminal().then(|| {
            let running = Arc::clone(&running);
            std::thread::spawn(move || {
                let frames = ['|', '/', '-', '\\'];
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    eprint!("\r{} {message}", frames[i % frames.len()]);
                    let _ = std::io::stderr().flush();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprint!("\r{}\r", " ".repeat(message.chars().count() + 2));
            })
        });
        Spinner { running, thread }
    }

    pub fn stop(mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A progress bar for a job that reports bytes done of a total; a spinner until it does.
pub struct ProgressBar {
    message: String,
    frame: std::cell::Cell<usize>,
}

impl ProgressBar {
    pub fn new(message: String) -> ProgressBar {
        ProgressBar { message, frame: std::cell::Cell::new(0) }
    }

    pub fn draw(&self, done: Option<u64>, total: Option<u64>) {
        let line = match (done, total) {
            (Some(done), Some(total)) if total > 0 => render_bar(done, total, 30),
            _ => {
                let frames = ['|', '/', '-', '\\'];
                self.frame.set(self.frame.get() + 1);
                frames[self.frame.get() % frames.len()].to_string()
            }
        };
        eprint!("\r{line} {}\x1b[K", self.message);
        let _ = std::io::stderr().flush();
    }

    pub fn finish(self) {
        eprint!("\r\x1b[K");
        let _ = std::io::stderr().flush();
    }
}

/// `[#####-----]  50%  512.0 MiB / 1.0 GiB`
pub fn render_bar(done: u64, total: u64, width: usize) -> String {
    let done = done.min(total);
    let ratio = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = ((ratio * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3}%  {} / {}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        (ratio * 100.0).floor() as u64,
        bytes(done),
        bytes(total)
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars_show_the_share_done_and_the_sizes() {
        assert_eq!(render_bar(0, 100, 10), "[----------]   0%  0 B / 100 B");
        assert_eq!(render_bar(512 << 20, 1 << 30, 10), "[#####-----]  50%  512.0 MiB / 1.0 GiB");
        assert_eq!(render_bar(2000, 1000, 4), "[####] 100%  1000 B / 1000 B", "done is capped at the total");
        assert_eq!(render_bar(0, 0, 4), "[####] 100%  0 B / 0 B");
    }
}
