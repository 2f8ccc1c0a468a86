//! How `capture` reports as it goes: each event as a log line on stderr, or as a JSON line on
//! stdout with `--json`, and failures of a config-mode run as they happen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use walbundle::Error;
use walbundle::capture::engine::{CaptureStats, Event};
use walbundle::ops::protect::Observer;
use walbundle::ops::sources::Note;

use crate::ui;

/// What the CLI prints as capture goes.
pub struct CaptureLog {
    json: bool,
    quiet: bool,
    /// Print each failure here (config mode); a single database's ends the run and is printed
    /// by `main` — unless the run still ends normally (a failure while stopping), when
    /// [`CaptureLog::unreported`] hands it over.
    print_errors: bool,
    failed: AtomicBool,
    unreported: std::sync::Mutex<Vec<String>>,
}

impl CaptureLog {
    pub fn new(json: bool, quiet: bool, print_errors: bool) -> Self {
        Self {
            json,
            quiet,
            print_errors,
            failed: AtomicBool::new(false),
            unreported: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Failures not printed yet (single-database mode), taken once.
    pub fn unreported(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .unreported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether any database failed during the run.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Observer for CaptureLog {
    fn event(&self, db: &str, e: &Event, st: &CaptureStats) {
        if self.json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["db"] = serde_json::Value::String(db.to_string());
            v["pin_moves"] = st.pin_moves.into();
            v["step_aside_max_us"] = st.step_aside_max_us.into();
            ui::out(&format!("{v}\n"));
            return;
        }
        if !self.quiet
            && let Some(line) = e.describe()
        {
            ui::log(false, &format!("{db}: {line}"));
        }
    }

    fn error(&self, db: &str, _set: &Path, e: &Error) {
        self.failed.store(true, Ordering::SeqCst);
        if self.print_errors {
            eprintln!("walbundle: error: {db}: {e}");
        } else {
            self.unreported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(format!("{db}: {e}"));
        }
    }

    fn note(&self, n: &Note) {
        if matches!(n, Note::Failed { .. }) {
            eprintln!("walbundle: error: {}", n.describe());
        } else {
            ui::log(self.quiet, &n.describe());
        }
    }
}
