//! Unix (Linux, macOS): each call a single libc call on values we own.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::STOP;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Linux: `renameat2(RENAME_NOREPLACE)`, atomic. Where the file system does not support it
/// (some FUSE and network file systems), fall back to check-then-rename: a tiny race window, but
/// walbundle also holds the set lock while it publishes, so no second walbundle races it.
pub(super) fn rename_noreplace_inner(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {}
            _ => return Err(err),
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "target exists",
        ));
    }
    std::fs::rename(from, to)
}

/// True if a process with this pid exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name, or "unknown-host".
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(hostname_uncached).clone()
}

fn hostname_uncached() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates on success
    // when the name fits, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Probe whether any process holds a POSIX (fcntl) lock that conflicts with a shared read lock
/// on byte range `start..start+len` of `file`, without taking one (F_GETLK). SQLite's unix VFS
/// uses such locks, so this answers "is a SQLite connection in some process using this file?".
pub fn lock_held(file: &std::fs::File, start: i64, len: i64, write: bool) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed flock is a valid value for this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fd valid; fl is a valid, initialised struct the kernel may write.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Route SIGTERM and SIGINT to [`STOP`] (a long-running capture seals what it has and exits).
pub fn install_stop_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(sig, handler) };
    }
}

/// (device, inode) of a path, to notice a file being replaced. A `stat`, never an open: closing
/// a descriptor of a file would drop the POSIX locks this process's SQLite connections hold on
/// it.
pub fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)?;
    Ok((md.dev(), md.ino()))
}

/// (device, inode) of an open file.
pub fn file_id_of(f: &std::fs::File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = f.metadata()?;
    Ok((md.dev(), md.ino()))
}

/// Raise this process's soft limit on open files to its hard limit (as Go programs do at
/// start); returns (old soft, new soft). Capture holds a few descriptors per database, and the
/// common soft default of 1024 would cap one process at a few hundred databases.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: lim is a valid rlimit struct with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

/// Linux: `pwritev` until every byte of `bufs` is written at `offset` (a short write resumes
/// where it stopped; at most `IOV_MAX` pieces a call).
#[cfg(target_os = "linux")]
pub(super) fn pwritev_all(file: &std::fs::File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const IOV_MAX: usize = 1024;
    let (mut bufs, mut skip, mut offset) = (bufs, 0usize, offset);
    let mut iov = Vec::with_capacity(bufs.len().min(IOV_MAX));
    loop {
        while bufs.first().is_some_and(|b| b.len() == skip) {
            (bufs, skip) = (&bufs[1..], 0); // written, or empty
        }
        if bufs.is_empty() {
            return Ok(());
        }
        iov.clear();
        iov.extend(bufs.iter().take(IOV_MAX).enumerate().map(|(i, b)| {
            let b = if i == 0 { &b[skip..] } else { b };
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            }
        }));
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: every iovec points into a slice borrowed for the duration of the call, and
        // the count is the vector's length (at most IOV_MAX).
        let n =
            unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize; // never more than the pieces hold
        offset += n as u64;
        while n > 0 {
            let left = bufs[0].len() - skip;
            if n >= left {
                n -= left;
                (bufs, skip) = (&bufs[1..], 0);
            } else {
                skip += n;
                n = 0;
            }
        }
    }
}
