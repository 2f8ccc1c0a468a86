//! Commands over every database of a config, each failure handed to the `on_error` hook
//! ([`walbundle::ops::hook`]).

use std::path::Path;

use walbundle::Result;
use walbundle::ops::config::{Config, Resolved};
pub use walbundle::ops::hook::on_error;

use crate::ui;

/// Run `one` for every database the config at `path` names (with `dest` for entries without
/// one): a failure is printed and handed to the hook (`cli_hook`, else the config's
/// `on_error`) and does not stop the others. Exit 2 if any failed.
pub fn each_database(
    path: &Path,
    dest: Option<&Path>,
    command: &str,
    cli_hook: &Option<String>,
    json: bool,
    mut one: impl FnMut(&Resolved) -> Result<()>,
) -> Result<u8> {
    let cfg = Config::load(path)?;
    let hook = cli_hook.clone().or_else(|| cfg.on_error.clone());
    let mut failed = 0;
    for r in cfg.resolve(path, dest)? {
        if let Err(e) = one(&r) {
            failed += 1;
            ui::print_error(&e, json);
            let (db, set) = (
                r.db.display().to_string(),
                r.set_dir().display().to_string(),
            );
            on_error(hook.as_deref(), command, &db, &set, &e.to_string());
        }
    }
    Ok(if failed > 0 { 2 } else { 0 })
}
