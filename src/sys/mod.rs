//! The few operating-system calls std does not offer, one implementation per platform family
//! (`unix.rs`, `windows.rs`) behind one set of functions. Every `unsafe` block in the crate
//! lives in those two files, each a single system call on values we own.
//!
//! What differs on Windows, and why (format/README.md "Medium assumptions" says the same for
//! the on-disk side):
//! - publishing renames with `MoveFileExW(MOVEFILE_WRITE_THROUGH)` and no replace flag, so an
//!   existing name is never overwritten;
//! - folders cannot be flushed (NTFS makes a rename durable with the write-through move), so
//!   [`sync_dir`] does nothing there;
//! - byte-range locks are mandatory, not advisory: another process's SQLite locks cannot be
//!   probed without taking them, so [`lock_held`] is unsupported and continuous capture refuses
//!   to run (snapshot mode is the Windows way);
//! - a file's identity is its volume serial number and file index, not (device, inode).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

use std::fs::File;
use std::io;
use std::path::Path;

/// Rename `from` to `to`, failing with `AlreadyExists` if `to` exists (files and directories).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    crate::fault::io::inject("rename", to)?;
    rename_noreplace_inner(from, to)?;
    crate::fault::io::record(format_args!("rename\t{}\t{}", from.display(), to.display()));
    Ok(())
}

/// Non-blocking exclusive lock on an open file (`flock` on Unix, `LockFileEx` on Windows,
/// through std). `Ok(false)` if another open file holds it. Released when the file is closed or
/// the process dies.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Read at `offset` without relying on the file's cursor (Windows moves it; nobody here reads
/// a positioned file through its cursor).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

/// Write all of `buf` at `offset` (see [`read_at`] about the cursor).
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Write `bufs` one after another at `offset`, all of them (Linux: `pwritev`, so the pieces are
/// not first copied into one buffer; elsewhere one `write_all_at` a piece).
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        unix::pwritev_all(file, bufs, offset)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut at = offset;
        for b in bufs {
            write_all_at(file, b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
}

/// Positional read that fills as much of `buf` as the file has; returns bytes read (short only
/// at end of file).
pub fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Set by SIGTERM/SIGINT (Windows: Ctrl+C, Ctrl+Break, closing the console, logoff, shutdown)
/// once [`install_stop_signals`] has run.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The bytes of a path as SQLite's `file:` URIs and our own names take them: the OS bytes on
/// Unix, UTF-8 on Windows (where SQLite's VFS converts UTF-8 to the wide API).
pub fn path_bytes(p: &Path) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        std::borrow::Cow::Borrowed(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
    }
    #[cfg(windows)]
    {
        match p.to_string_lossy() {
            std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
        }
    }
}

/// `std::fs::canonicalize`, but on Windows without the `\\?\` prefix where the plain form means
/// the same (a drive or UNC path under 260 characters): the form users type and see in
/// messages. Longer paths keep the prefix, which lifts the 260-character limit for SQLite and
/// std alike.
pub fn canonicalize(path: &Path) -> io::Result<std::path::PathBuf> {
    if !cfg!(windows) {
        return std::fs::canonicalize(path);
    }
    match std::fs::canonicalize(path) {
        Ok(c) => Ok(plain_windows_path(c)),
        // Wine answers ERROR_MORE_DATA for paths past 260 characters: the absolute path of an
        // existing file serves (it only skips resolving links), made verbatim when long.
        Err(e) if e.raw_os_error() == Some(234) && path.exists() => {
            Ok(verbatim_if_long(std::path::absolute(path)?))
        }
        Err(e) => Err(e),
    }
}

fn verbatim_if_long(p: std::path::PathBuf) -> std::path::PathBuf {
    let Some(s) = p.to_str() else { return p };
    if s.len() < 260 || s.starts_with(r"\\?\") {
        return p;
    }
    match s.strip_prefix(r"\\") {
        Some(unc) => format!(r"\\?\UNC\{unc}").into(),
        None => format!(r"\\?\{s}").into(),
    }
}

fn plain_windows_path(c: std::path::PathBuf) -> std::path::PathBuf {
    let Some(s) = c.to_str() else { return c };
    let short = s.len() < 260 + 4;
    if let Some(rest) = s.strip_prefix(r"\\?\UNC\") {
        if short {
            return format!(r"\\{rest}").into();
        }
    } else if let Some(rest) = s.strip_prefix(r"\\?\") {
        let b = rest.as_bytes();
        if short && b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\' {
            return rest.into();
        }
    }
    c
}

/// A non-empty environment variable as a path.
fn env_path(key: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// [`env_path`] on Windows only.
fn windows_env_path(key: &str) -> Option<std::path::PathBuf> {
    if cfg!(windows) { env_path(key) } else { None }
}

/// The user's home folder: `HOME`, else on Windows `USERPROFILE`.
pub fn home_dir() -> Option<std::path::PathBuf> {
    env_path("HOME").or_else(|| windows_env_path("USERPROFILE"))
}

/// `%LOCALAPPDATA%`, where Windows keeps a user's per-machine program data (read on every
/// platform, so what a Windows schedule writes can be generated and tested elsewhere).
pub fn local_app_data() -> Option<std::path::PathBuf> {
    env_path("LOCALAPPDATA")
}

/// Where this user's walbundle state lives (locks and heartbeats of object-store sets):
/// `XDG_STATE_HOME`, else `%LOCALAPPDATA%` on Windows, else `~/.local/state`, else the
/// temporary folder.
pub fn state_home() -> std::path::PathBuf {
    env_path("XDG_STATE_HOME")
        .or_else(|| {
            if cfg!(windows) {
                local_app_data()
            } else {
                None
            }
        })
        .or_else(|| home_dir().map(|h| h.join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir)
}

/// A user's shell command line as the platform runs one: `sh -c` on Unix, `cmd /C` on
/// Windows.
pub fn shell(cmd: &str) -> std::process::Command {
    let (program, flag) = if cfg!(windows) {
        ("cmd", "/C")
    } else {
        ("sh", "-c")
    };
    let mut c = std::process::Command::new(program);
    c.arg(flag).arg(cmd);
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_paths_lose_the_verbatim_prefix_only_where_it_means_the_same() {
        let p = |s: &str| super::plain_windows_path(s.into()).display().to_string();
        assert_eq!(p(r"\\?\C:\Users\me\app.db"), r"C:\Users\me\app.db");
        assert_eq!(p(r"\\?\UNC\server\share\app.db"), r"\\server\share\app.db");
        assert_eq!(p(r"\\?\Volume{1234}\x"), r"\\?\Volume{1234}\x");
        let long = format!(r"\\?\C:\{}", "a".repeat(300));
        assert_eq!(p(&long), long);
        let v = |s: &str| super::verbatim_if_long(s.into()).display().to_string();
        assert_eq!(v(r"C:\short"), r"C:\short");
        assert_eq!(v(&long[4..]), long);
        let unc = format!(r"\\server\share\{}", "b".repeat(300));
        assert_eq!(
            v(&unc),
            format!(r"\\?\UNC\server\share\{}", "b".repeat(300))
        );
    }

    /// Many pieces (more than one `pwritev` takes), some empty, land contiguously.
    #[test]
    fn vectored_writes_land_in_order() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 3])
            .collect();
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        super::write_all_vectored_at(t.as_file(), &refs, 5).unwrap();
        let want: Vec<u8> = std::iter::repeat_n(0u8, 5).chain(pieces.concat()).collect();
        assert_eq!(std::fs::read(t.path()).unwrap(), want);
        super::write_all_vectored_at(t.as_file(), &[], 0).unwrap();
        super::write_all_vectored_at(t.as_file(), &[&[], &[]], 0).unwrap();
        assert_eq!(std::fs::read(t.path()).unwrap(), want);
    }
}
