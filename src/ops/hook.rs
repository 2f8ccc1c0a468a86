//! The `on_error` hook of a config (and `--on-error CMD`): a user command run by `sh -c`
//! (Windows: `cmd /C`)
//! whenever a command fails for a database, with `WALBUNDLE_DB`, `WALBUNDLE_SET`,
//! `WALBUNDLE_COMMAND` and `WALBUNDLE_ERROR` in its environment. It runs in the background; its
//! own failure is reported on stderr and never changes the outcome of what failed.

use std::process::Stdio;

/// Run `cmd` for a failure of `command` on `db` (set `set`).
pub fn on_error(cmd: Option<&str>, command: &str, db: &str, set: &str, error: &str) {
    let Some(cmd) = cmd.filter(|c| !c.trim().is_empty()) else {
        return;
    };
    let child = crate::sys::shell(cmd)
        .env("WALBUNDLE_DB", db)
        .env("WALBUNDLE_SET", set)
        .env("WALBUNDLE_COMMAND", command)
        .env("WALBUNDLE_ERROR", error)
        .stdin(Stdio::null())
        .spawn();
    match child {
        Ok(mut c) => {
            // Reap it without blocking the caller.
            std::thread::spawn(move || {
                if let Ok(st) = c.wait()
                    && !st.success()
                {
                    eprintln!("walbundle: warning: --on-error hook exited with {st}");
                }
            });
        }
        Err(e) => eprintln!("walbundle: warning: could not run the --on-error hook: {e}"),
    }
}
