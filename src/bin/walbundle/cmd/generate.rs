//! `walbundle generate KIND`: the man page or a shell's completions, from the same clap
//! definitions the parser uses, for packagers (as ripgrep's `--generate` does).

use clap::CommandFactory;
use walbundle::{Error, Result};

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    walbundle generate man > /usr/local/share/man/man1/walbundle.1\n  \
    walbundle generate bash > ~/.local/share/bash-completion/completions/walbundle\n  \
    walbundle generate zsh > ~/.zfunc/_walbundle\n  \
    walbundle generate fish > ~/.config/fish/completions/walbundle.fish")]
pub struct Args {
    /// What to print on stdout.
    #[arg(value_enum)]
    pub kind: Kind,
}

/// What `generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// The man page, walbundle(1), in roff.
    Man,
    /// Bash completions.
    Bash,
    /// Zsh completions.
    Zsh,
    /// Fish completions.
    Fish,
    /// PowerShell completions.
    Powershell,
    /// Elvish completions.
    Elvish,
}

pub fn run(a: &Args) -> Result<u8> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    let shell = match a.kind {
        Kind::Man => {
            clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| {
                Error::io(std::path::Path::new("stdout"), "writing the man page", e)
            })?;
            crate::ui::out(&String::from_utf8_lossy(&out));
            return Ok(0);
        }
        Kind::Bash => clap_complete::Shell::Bash,
        Kind::Zsh => clap_complete::Shell::Zsh,
        Kind::Fish => clap_complete::Shell::Fish,
        Kind::Powershell => clap_complete::Shell::PowerShell,
        Kind::Elvish => clap_complete::Shell::Elvish,
    };
    clap_complete::generate(shell, &mut cmd, "walbundle", &mut out);
    crate::ui::out(&String::from_utf8_lossy(&out));
    Ok(0)
}
