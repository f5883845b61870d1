//! `pipeline completions SHELL`: a completion script generated from the clap definition,
//! so it never lags behind the commands.

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    // Straight to stdout: the script holds no secret, and the redactor's line buffering
    // adds nothing here.
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    write_stdout(&out).context("writing the completion script to stdout")
}

/// Writes all of `bytes` to stdout; a closed stdout (`| head`) is not an error.
pub(super) fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}
