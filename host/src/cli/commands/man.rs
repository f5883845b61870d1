//! `pipeline man`: the man page pipeline(1), roff generated from the clap definition, for
//! packagers (`pipeline man > pipeline.1`).

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::Cli;

pub fn man() -> Result<()> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render(&mut out).context("rendering the man page")?;
    // One page for the whole tool: a SUBCOMMAND DETAILS section after the generated
    // SUBCOMMANDS list, with each command's own usage, options and arguments.
    section(&mut out, &cmd)?;
    super::completions::write_stdout(&out).context("writing the man page to stdout")
}

fn section(out: &mut Vec<u8>, cmd: &clap::Command) -> Result<()> {
    use std::io::Write;
    writeln!(out, ".SH \"SUBCOMMAND DETAILS\"")?;
    for sub in cmd.get_subcommands() {
        details(out, cmd.get_name(), sub)?;
    }
    Ok(())
}

fn details(out: &mut Vec<u8>, parent: &str, cmd: &clap::Command) -> Result<()> {
    use std::io::Write;
    let name = format!("{parent} {}", cmd.get_name());
    writeln!(out, ".SS \"{name}\"")?;
    // The rendered sections of a page of its own, minus the title and NAME header.
    let page = clap_mangen::Man::new(cmd.clone().bin_name(name.clone()));
    let mut body = Vec::new();
    page.render_synopsis_section(&mut body)?;
    page.render_description_section(&mut body)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        page.render_options_section(&mut body)?;
    }
    // Demote the page's section headers to bold lines of their own inside this subsection.
    // The page preamble (the `Aq` string definition) is already at the top of the page.
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") {
            continue;
        }
        match line.strip_prefix(".SH ") {
            Some(header) => writeln!(out, ".PP\n.B {header}\n.br")?,
            None => writeln!(out, "{line}")?,
        }
    }
    for sub in cmd.get_subcommands() {
        details(out, &name, sub)?;
    }
    Ok(())
}
