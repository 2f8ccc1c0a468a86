//! Terminal manners: progress bars only on a terminal, logs on stderr, JSON on stdout, and a
//! closed pipe is not an error.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use walbundle::Progress;

/// A progress bar on stderr when it is a terminal; silent otherwise.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bar {
    /// A bar shown only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            enabled: enabled && std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>9} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(label.to_string());
        *self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(b);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            b.inc(n);
        }
    }
    fn end(&self) {
        if let Some(b) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            b.finish_and_clear();
        }
    }
}

/// Print to stdout, treating a closed pipe as success.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
}

/// Print a JSON value on stdout.
pub fn json<T: serde::Serialize>(v: &T) {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    out(&s);
}

/// Log a line on stderr unless quiet.
pub fn log(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("walbundle: {msg}");
    }
}

/// Print an error on stderr (and as JSON on stdout when asked).
pub fn print_error(e: &walbundle::Error, as_json: bool) {
    eprintln!("walbundle: error: {e}");
    if as_json {
        json(&serde_json::json!({
            "ok": false,
            "error": {
                "kind": format!("{:?}", e.kind()).to_lowercase(),
                "path": e.path().map(|p| p.display().to_string()),
                "message": e.message(),
                "detail": std::error::Error::source(e).map(ToString::to_string),
                "hint": e.hint_text(),
            }
        }));
    }
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    walbundle::progress::human_bytes(n)
}
