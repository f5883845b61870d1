//! `pipeline man`: the man page pipeline(1), roff generated from the clap definition, for
//! packagers (`pipeline man > pipeline.1`).
//!
//! One page for the whole tool: clap_mangen's own subcommand section points at a page per
//! command (`pipeline-run(1)`) that nobody installs, so a COMMANDS section replaces it,
//! with each command's (and nested command's) usage, description and options.

use std::io::Write;

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_mangen::Man;

use crate::cli::Cli;

pub fn man() -> Result<()> {
    let out = page().context("rendering the man page")?;
    super::write_stdout(&out).context("writing the man page to stdout")
}

fn page() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    section(&mut out, |w| man.render_name_section(w))?;
    section(&mut out, |w| man.render_synopsis_section(w))?;
    section(&mut out, |w| man.render_description_section(w))?;
    section(&mut out, |w| man.render_options_section(w))?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands() {
        command(&mut out, cmd.get_name(), sub)?;
    }
    section(&mut out, |w| man.render_version_section(w))?;
    Ok(out)
}

/// Appends one rendered section. Each starts with the page preamble (the `Aq` string
/// definition), which the title already wrote.
fn section(
    out: &mut Vec<u8>,
    render: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut text = Vec::new();
    render(&mut text)?;
    for line in String::from_utf8_lossy(&text).lines() {
        if !(line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// `pipeline snapshot record` as a subsection: its synopsis, description and options, the
/// page's section headers turned into bold lines of their own; then its own subcommands.
fn command(out: &mut Vec<u8>, parent: &str, cmd: &clap::Command) -> std::io::Result<()> {
    let name = format!("{parent} {}", cmd.get_name());
    writeln!(out, ".SS \"{name}\"")?;
    let page = Man::new(cmd.clone().bin_name(name.clone()));
    let mut body = Vec::new();
    section(&mut body, |w| page.render_synopsis_section(w))?;
    section(&mut body, |w| page.render_description_section(w))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        section(&mut body, |w| page.render_options_section(w))?;
    }
    for line in String::from_utf8_lossy(&body).lines() {
        match line.strip_prefix(".SH ") {
            Some(header) => writeln!(out, ".PP\n.B {header}\n.br")?,
            None => writeln!(out, "{line}")?,
        }
    }
    for sub in cmd.get_subcommands() {
        command(out, &name, sub)?;
    }
    Ok(())
}
