//! Names inside a backup set (`format/` "Set layout"). Every name walbundle reads is checked
//! against these patterns; anything else in the set folder is someone else's and left alone.

/// The set record, at the set's root.
pub const SET_FILE: &str = "walbundle-set.json";
pub use crate::bundle::manifest::{IMAGE_FILE, MANIFEST_FILE};

/// Folder name of the generation at bundle sequence `seq`.
pub fn generation_dir(seq: u64) -> String {
    format!("gen-{seq:012}")
}

/// Parse a generation folder name.
pub fn parse_generation_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A chain id: `YYYYMMDDTHHMMSSZ-xxxxxxxx` (UTC start time, 32 random bits in hex); sorts by
/// start time.
pub fn is_chain_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A new chain id for a chain starting at `now`.
pub fn new_chain_id(now: jiff::Timestamp) -> String {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!(
        "{}-{:08x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        u32::from_le_bytes(r)
    )
}

/// A new random 128-bit id in hex.
pub fn new_set_id() -> String {
    let mut r = [0u8; 16];
    if getrandom::fill(&mut r).is_err() {
        // No OS randomness: fall back to time and pid, still unique in practice.
        let t = jiff::Timestamp::now().as_nanosecond();
        r = (t ^ (i128::from(std::process::id()) << 64)).to_le_bytes();
    }
    crate::bundle::manifest::hex(&r)
}

/// Capture's heartbeat at the set's root (`capture::heartbeat`).
pub const HEARTBEAT_FILE: &str = ".walbundle-capture.json";

/// The lock file compaction and retention hold (flock) at the set's root; it names its holder.
pub const MAINTENANCE_LOCK: &str = ".walbundle-maintenance.lock";
/// The writer lock on Windows, where a folder cannot be locked (format section 2).
pub const WRITER_LOCK: &str = ".walbundle-writer.lock";
/// For a set in an object store, the folder of this machine's state folder where sealed
/// bundles wait until the store has them (`spool/<chain id>/<bundle file>`). Never in a
/// local set, whose bundles are published by a rename in the set itself.
pub const SPOOL_DIR: &str = "spool";

/// True for the files walbundle keeps at a set's root besides its chains: the set record, the
/// maintenance lock and capture's heartbeat.
pub fn is_set_file(name: &str) -> bool {
    name == SET_FILE || name == MAINTENANCE_LOCK || name == WRITER_LOCK || name == HEARTBEAT_FILE
}

/// True for every name walbundle writes inside a set (and only those): what it may delete.
pub fn is_own_name(name: &str) -> bool {
    is_set_file(name)
        || name == MANIFEST_FILE
        || name == IMAGE_FILE
        || name.starts_with(crate::store::TEMP_PREFIX)
        || parse_generation_dir(name).is_some()
        || crate::bundle::wbb::parse_file_name(name).is_some()
        || is_chain_id(name)
}

/// Check a set name given by the user or derived from a file name.
pub fn check_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} cannot name a set"));
    }
    if name.starts_with('.') {
        return Err(format!(
            "set name {name:?} starts with '.', which walbundle reserves"
        ));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!("set name {name:?} contains a path separator"));
    }
    if cfg!(windows) {
        windows_portable(name)?;
    }
    Ok(())
}

/// What a Windows folder name cannot be: a device name (`CON`, `PRN`, `AUX`, `NUL`, `COM0`-`9`,
/// `LPT0`-`9`, in any case, with or without an extension), one of `<>:"|?*` or a control
/// character, or a name ending in a dot or a space (Windows drops those, so two names would
/// meet). Unix allows these names, and sets made there keep them.
pub fn windows_portable(name: &str) -> Result<(), String> {
    let stem = name
        .split('.')
        .next()
        .unwrap_or(name)
        .trim_end()
        .to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if device {
        return Err(format!(
            "set name {name:?} is a Windows device name, which no Windows folder can have"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| "<>:\"|?*".contains(*c) || c.is_control())
    {
        return Err(format!(
            "set name {name:?} contains {c:?}, which Windows does not allow in a folder name"
        ));
    }
    if name.ends_with(['.', ' ']) {
        return Err(format!(
            "set name {name:?} ends in a dot or a space, which Windows drops from folder names"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_generation_dir(&generation_dir(42)), Some(42));
        assert_eq!(parse_generation_dir("gen-42"), None);
        assert_eq!(parse_generation_dir("gen-00000000004x"), None);
        let id = new_chain_id(jiff::Timestamp::now());
        assert!(is_chain_id(&id), "{id}");
        assert!(!is_chain_id("20261121T053550Z-ABCDEF12"));
    }

    #[test]
    fn windows_refuses_device_names_and_characters_it_cannot_store() {
        for bad in [
            "CON", "nul", "Aux.db", "com1", "LPT9.x", "a:b", "q?", "end.", "end ",
        ] {
            assert!(windows_portable(bad).is_err(), "{bad}");
        }
        for good in ["app", "console", "com10", "nullable", "app.v2", "my app"] {
            assert!(windows_portable(good).is_ok(), "{good}");
        }
    }
}
