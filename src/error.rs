//! The error type every public function returns.
//!
//! Error handling rules:
//! - Every error that can reach a user names *what* it concerns (a file, a set, a database) and,
//!   where there is one, what to do about it (the `hint`). The binary prints `{error}` and exits 2.
//! - `ErrorKind` classifies errors for callers that must decide, not print: `verify` turns
//!   `Corrupt` into a reported problem (exit 1) and anything else into "could not run" (exit 2).
//! - Code inside the crate attaches context where it knows it (`Error::io(path, action, err)`)
//!   rather than re-wrapping the same error at every level.
//! - Input from disk never panics: decoders return `Corrupt` naming the file and the field.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias for walbundle.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What sort of failure an [`Error`] is; stable for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file or directory operation failed (permission, missing, full disk, ...).
    Io,
    /// An artifact or database is damaged or is not what it claims to be.
    Corrupt,
    /// The request is refused to protect data (existing output, wrong set, unsafe destination).
    Refused,
    /// The request itself is incomplete or contradictory.
    Usage,
    /// SQLite reported an error on the source or a staged database.
    Sqlite,
    /// The database or set is busy (locked by another process) and the wait timed out.
    Busy,
}

/// An error with the file it concerns and a hint for the user.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    path: Option<PathBuf>,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            path: None,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    /// This error, naming `to` where it named `from` (an object read through a temporary
    /// download names the object).
    #[must_use]
    pub fn relocated(mut self, from: &Path, to: &Path) -> Self {
        if self.path.as_deref() == Some(from) {
            self.path = Some(to.to_path_buf());
        }
        self.message = self
            .message
            .replace(&from.display().to_string(), &to.display().to_string());
        self
    }

    /// An I/O error on `path` while doing `action` ("reading", "creating", ...).
    pub fn io(path: impl AsRef<Path>, action: &str, err: io::Error) -> Self {
        let hint = match err.kind() {
            io::ErrorKind::PermissionDenied => {
                Some("check the permissions of this path for the user running walbundle".into())
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(
                "the file system is full: free space or choose another destination; \
                 nothing was published"
                    .into(),
            ),
            io::ErrorKind::ReadOnlyFilesystem => {
                Some("the file system is read-only: choose a writable destination".into())
            }
            _ => None,
        };
        Self {
            kind: ErrorKind::Io,
            path: Some(path.as_ref().to_path_buf()),
            message: action.to_string(),
            hint,
            source: Some(Box::new(err)),
        }
    }

    /// A damaged or foreign artifact: `what` says which field or part is wrong.
    pub fn corrupt(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, what).at(path)
    }

    /// A refusal that protects data.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    /// A SQLite error on `path`.
    pub fn sqlite(path: impl AsRef<Path>, action: &str, err: rusqlite::Error) -> Self {
        let busy = matches!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let notadb = matches!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase)
        );
        let kind = if busy {
            ErrorKind::Busy
        } else if notadb {
            ErrorKind::Corrupt
        } else {
            ErrorKind::Sqlite
        };
        let mut e = Self::new(kind, action).at(path);
        e.source = Some(Box::new(err));
        if busy {
            e.hint = Some(
                "another connection held a lock for longer than the busy timeout (walbundle \
                 only reads, but an application in `PRAGMA locking_mode=EXCLUSIVE` keeps every \
                 other reader out: use the normal locking mode, or back it up while it is \
                 closed); retry, or raise --busy-timeout"
                    .into(),
            );
        }
        e
    }

    /// Attach the path this error concerns (replaces an earlier one).
    #[must_use]
    pub fn at(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Attach what the user can do about it.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefix the message with context ("restoring generation X: ...").
    #[must_use]
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file this error concerns, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The message without path and hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What the user can do, if known.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The underlying I/O error kind, if this wraps one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.source
            .as_ref()?
            .downcast_ref::<io::Error>()
            .map(io::Error::kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Attach a path and action to I/O results.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: impl AsRef<Path>, action: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: impl AsRef<Path>, action: &str) -> Result<T> {
        self.map_err(|e| Error::io(path, action, e))
    }
}

/// Attach a path and action to SQLite results.
pub(crate) trait SqlContext<T> {
    fn sql_ctx(self, path: impl AsRef<Path>, action: &str) -> Result<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn sql_ctx(self, path: impl AsRef<Path>, action: &str) -> Result<T> {
        self.map_err(|e| Error::sqlite(path, action, e))
    }
}
