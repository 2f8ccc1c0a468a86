//! `walbundle demo`: the main job end to end on a database it creates when there is none (the
//! steps are [`walbundle::ops::demo::run`]'s).

use std::path::PathBuf;

use walbundle::Result;

use crate::ui;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the demo: data/app.db (created if missing), backups/, restored/.
    #[arg(long, default_value = "walbundle-demo")]
    pub dir: PathBuf,
    /// Seconds the demo writer keeps committing around the snapshot.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

pub fn run(a: Args) -> Result<u8> {
    let bar = ui::Bar::new(true);
    let r = walbundle::ops::demo::run(&a.dir, a.seconds, &bar, &mut |line| ui::log(false, line))?;
    if !r.problems.is_empty() {
        for p in &r.problems {
            eprintln!("walbundle: problem: {}: {}", p.path, p.what);
        }
        return Ok(1);
    }
    let set = r.set_dir.display();
    ui::out(&format!(
        "demo ok: try `walbundle list {set}` and `walbundle verify {set} --deep`\n"
    ));
    Ok(if r.complete { 0 } else { 1 })
}
