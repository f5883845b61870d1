//! `pipeline completions SHELL`: a completion script generated from the clap definition,
//! so it never lags behind the commands.

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    super::write_stdout(&out).context("writing the completion script to stdout")
}
