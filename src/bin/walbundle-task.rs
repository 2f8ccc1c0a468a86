//! `walbundle-task`: what a Windows scheduled task runs. It starts `walbundle` (the executable
//! beside it) with the arguments after `--log FILE`, with no console window (this program is a
//! GUI-subsystem executable, and the child is created with `CREATE_NO_WINDOW`), its output
//! appended to FILE, and exits with walbundle's exit code, which Task Scheduler records as the
//! task's last result. Elsewhere it does the same, without the window flag, so it is tested on
//! every platform.
//!
//! The log is rotated before each run once it passes 8 MiB (one `.old` kept).
#![cfg_attr(windows, windows_subsystem = "windows")]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const ROTATE_BYTES: u64 = 8 << 20;

fn usage() -> ExitCode {
    eprintln!("usage: walbundle-task --log FILE WALBUNDLE-ARGUMENTS...");
    ExitCode::from(2)
}

fn walbundle_beside_me() -> std::io::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let name = if cfg!(windows) {
        "walbundle.exe"
    } else {
        "walbundle"
    };
    Ok(me.with_file_name(name))
}

fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(log).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let mut old = log.as_os_str().to_owned();
        old.push(".old");
        let _ = std::fs::remove_file(&old);
        std::fs::rename(log, &old)?;
    }
    OpenOptions::new().create(true).append(true).open(log)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != "--log") {
        return usage();
    }
    let Some(log) = args.next().map(PathBuf::from) else {
        return usage();
    };
    let rest: Vec<_> = args.collect();
    if rest.is_empty() {
        return usage();
    }
    let mut out = match open_log(&log) {
        Ok(f) => f,
        // No log, no console: the exit code is all Task Scheduler will show.
        Err(_) => return ExitCode::from(3),
    };
    let started = jiff::Timestamp::now();
    let exe = match walbundle_beside_me() {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "walbundle-task: cannot locate itself: {e}");
            return ExitCode::from(3);
        }
    };
    let mut cmd = Command::new(&exe);
    cmd.args(&rest).stdin(Stdio::null());
    match (out.try_clone(), out.try_clone()) {
        (Ok(o), Ok(e)) => {
            cmd.stdout(o).stderr(e);
        }
        _ => return ExitCode::from(3),
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        cmd.creation_flags(CREATE_NO_WINDOW);
    }
    let what = rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(out, "walbundle-task: {started}: walbundle {what}");
    match cmd.status() {
        Ok(s) => {
            let code = s.code().unwrap_or(1);
            let _ = writeln!(out, "walbundle-task: exit {code}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            let _ = writeln!(out, "walbundle-task: cannot start {}: {e}", exe.display());
            ExitCode::from(3)
        }
    }
}
