//! The command line: parse the arguments ([`args`]), run the command ([`commands`], one
//! function each), and exit with the code cron relies on ([`crate::error::exit`]).

use std::cell::OnceCell;

use anyhow::Result;
use clap::Parser;

use crate::engine::Engine;
use crate::error::{self, Log, exit};
use crate::logging;

/// Everything a command prints on stdout (the JSON report, `validate`, `verify`) goes
/// through the log's redactor, like the log itself.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::logging::println(&format!($($arg)*))
    };
}

pub mod args;
mod commands;

pub use args::{Cli, Command, EntityArgs, PickArgs, PluginsAction, SnapshotAction};

/// What the commands share: the WebAssembly engine, built once, on first use (a command
/// that runs no plugin, like `plugin new`, never builds it; one that checks its arguments
/// first does so before paying for it).
#[derive(Default)]
pub struct Context {
    engine: OnceCell<Engine>,
}

impl Context {
    pub fn engine(&self) -> Result<&Engine> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine);
        }
        let engine = Engine::new()?;
        Ok(self.engine.get_or_init(|| engine))
    }
}

pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            };
        }
    };
    let max = if cli.quiet {
        logging::Level::Warn
    } else if cli.verbose {
        logging::Level::Debug
    } else {
        logging::Level::Info
    };
    logging::init(cli.log_format, max);
    crate::progress::init(cli.progress, cli.log_format, cli.quiet);
    crate::oci::set_offline(cli.offline);
    let result = dispatch(&Context::default(), &cli);
    let exit = error::exit(&result, crate::shutdown::reason().as_ref());
    match &exit.log {
        Some(Log::Warn(line)) => logging::warn(None, line),
        Some(Log::Error(line)) => logging::error(None, line),
        None => {}
    }
    exit.code
}

/// The global flags of this invocation, for a `pipeline run` started by the daemon.
fn run_flags(cli: &Cli) -> Vec<String> {
    use clap::ValueEnum;
    let mut flags = Vec::new();
    if let Some(format) = cli.log_format.to_possible_value() {
        flags.extend(["--log-format".to_string(), format.get_name().to_string()]);
    }
    if cli.verbose {
        flags.push("--verbose".into());
    }
    if cli.quiet {
        flags.push("--quiet".into());
    }
    if cli.offline {
        flags.push("--offline".into());
    }
    flags
}

fn dispatch(cx: &Context, cli: &Cli) -> Result<()> {
    use commands::{
        completions, daemon, list, man, plugins, restore, run, snapshot, status, validate,
    };
    match &cli.command {
        Command::Run { pipeline } => run::run(cx, pipeline),
        Command::Validate { pipeline } => validate::validate(cx, pipeline),
        Command::List { pipeline } => list::list(cx, pipeline),
        Command::Status {
            pipeline,
            json,
            last,
            max_age,
        } => status::status(pipeline.as_deref(), *json, *last, max_age.as_deref()),
        Command::Restore {
            pipeline,
            pick,
            to,
            yes,
            allow_non_empty,
        } => restore::restore(cx, pipeline, pick, to.as_ref(), *yes, *allow_non_empty),
        Command::Verify {
            pipeline,
            pick,
            restore_into,
        } => restore::verify(cx, pipeline, pick, restore_into.as_ref()),
        Command::Snapshot { action } => match action {
            SnapshotAction::Record {
                pipeline,
                entity,
                name,
                action,
                user,
                data,
            } => snapshot::record(
                cx,
                pipeline,
                entity,
                name,
                action,
                user.as_ref(),
                data.as_deref(),
            ),
            SnapshotAction::History { pipeline, entity } => snapshot::history(cx, pipeline, entity),
            SnapshotAction::Show { pipeline, file } => snapshot::show(cx, pipeline, file),
            SnapshotAction::Diff {
                pipeline,
                entity,
                from,
                to,
            } => snapshot::diff(cx, pipeline, entity, from.as_deref(), to.as_deref()),
        },
        Command::Plugins { action: None } => plugins::list(cx),
        Command::Plugins {
            action: Some(PluginsAction::Inspect { file }),
        } => plugins::inspect(cx, file),
        Command::Plugins {
            action: Some(PluginsAction::New { kind, name, dir }),
        } => plugins::new(*kind, name, dir.as_deref()),
        Command::Plugins {
            action: Some(PluginsAction::Pull { reference }),
        } => plugins::pull(reference),
        Command::Plugins {
            action: Some(PluginsAction::Push { file, reference }),
        } => plugins::push(cx, file, reference),
        Command::Completions { shell } => completions::completions(*shell),
        Command::Man => man::man(),
        // The daemon's runs are this program again, with the same global flags.
        Command::Daemon { pipelines } => daemon::daemon(pipelines, &run_flags(cli)),
    }
}
