//! Windows: each call a single Win32 call on values we own.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ACCESS_DENIED, STILL_ACTIVE};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, GetFileInformationByHandle, MOVEFILE_WRITE_THROUGH, MoveFileExW,
};
use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::STOP;

fn wide(p: &Path) -> io::Result<Vec<u16>> {
    let mut w: Vec<u16> = p.as_os_str().encode_wide().collect();
    if w.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path contains a NUL character",
        ));
    }
    w.push(0);
    Ok(w)
}

/// `MoveFileExW` without `MOVEFILE_REPLACE_EXISTING` (an existing `to` fails the call with
/// `ERROR_ALREADY_EXISTS`, which std maps to `AlreadyExists`), with `MOVEFILE_WRITE_THROUGH` so
/// that the call returns once the move is on disk: NTFS has no folder flush to do it later.
/// Works for folders on the same volume too.
pub(super) fn rename_noreplace_inner(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (wide(from)?, wide(to)?);
    // SAFETY: both pointers are valid NUL-terminated wide strings that outlive the call.
    let ok = unsafe { MoveFileExW(f.as_ptr(), t.as_ptr(), MOVEFILE_WRITE_THROUGH) };
    if ok == 0 {
        let e = io::Error::last_os_error();
        // ERROR_FILE_EXISTS (80) and ERROR_ALREADY_EXISTS (183) both mean "taken".
        if matches!(e.raw_os_error(), Some(80) | Some(183)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "target exists",
            ));
        }
        return Err(e);
    }
    Ok(())
}

/// True if a process with this pid exists on this host (it can be opened for a query and has
/// not exited; a process we may not open exists too).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: OpenProcess takes plain values; a null handle is checked below.
    let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if h.is_null() {
        return io::Error::last_os_error().raw_os_error() == Some(ERROR_ACCESS_DENIED as i32);
    }
    let mut code = 0u32;
    // SAFETY: h is a valid process handle; code is writable.
    let ok = unsafe { GetExitCodeProcess(h, &mut code) };
    // SAFETY: h is valid and closed once.
    unsafe { CloseHandle(h) };
    ok != 0 && code == STILL_ACTIVE as u32
}

/// This machine's name (`COMPUTERNAME`), or "unknown-host".
pub fn hostname() -> String {
    std::env::var("COMPUTERNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Windows byte-range locks are mandatory: another process's lock cannot be seen without
/// taking a conflicting one, which would make that process's SQLite call fail with
/// `SQLITE_BUSY` at that instant. So this is unsupported, and what needs it (continuous
/// capture) refuses on Windows.
pub fn lock_held(_file: &std::fs::File, _start: i64, _len: i64, _write: bool) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "probing another process's SQLite locks is not possible on Windows",
    ))
}

unsafe extern "system" fn on_ctrl(_kind: u32) -> windows_sys::core::BOOL {
    // Only an atomic store. Returning TRUE keeps the process alive long enough to stop cleanly
    // (Windows ends it anyway after a few seconds for close, logoff and shutdown events).
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    1
}

/// Route Ctrl+C, Ctrl+Break and console close/logoff/shutdown to [`STOP`].
pub fn install_stop_signals() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { SetConsoleCtrlHandler(Some(on_ctrl), 1) };
}

/// (volume serial number, file index) of a path: what (device, inode) is on Unix. Opened with
/// std's default sharing (read, write and delete), so the application can still open, write and
/// delete the file meanwhile.
pub fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    file_id_of(&std::fs::File::open(path)?)
}

/// (volume serial number, file index) of an open file.
pub fn file_id_of(f: &std::fs::File) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero BY_HANDLE_FILE_INFORMATION is a valid value of this plain C struct.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is valid for the lifetime of `f`; info is writable.
    let ok = unsafe { GetFileInformationByHandle(f.as_raw_handle(), &mut info) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
    Ok((u64::from(info.dwVolumeSerialNumber), index))
}

/// Windows has no per-process descriptor limit to raise (handles are limited only by memory);
/// returns (0, 0) to say nothing was changed.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    Ok((0, 0))
}
