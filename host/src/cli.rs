//! The command line: what each command does, and the exit codes cron relies on.

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::engine::Engine;
use crate::error::{self, Log, RunFailed, UsageError, exit};
use crate::logging::{self, Format};
use crate::runner;
use crate::stages::{Mode, component};
use crate::{bindings, builtin, naming, restore, snapshot};

/// Everything a command prints on stdout (the JSON report, `validate`, `verify`) goes
/// through the log's redactor, like the log itself.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::logging::println(&format!($($arg)*))
    };
}

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Declarative backup pipelines whose stages are WebAssembly components"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: Format,
    /// Also log debug lines.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a pipeline: dump, transform, store in every sink, prune.
    Run {
        /// A name (looked up in $PIPELINE_DIR, then ./pipelines) or a path to a .toml file.
        pipeline: String,
    },
    /// Check a pipeline file and its plugins without running anything.
    Validate { pipeline: String },
    /// List this pipeline's backups in each sink, newest first, with what retention would do.
    List { pipeline: String },
    /// Restore a backup into a database: the newest, or the one chosen, checked against its
    /// SHA-256 while it streams; nothing is committed if anything fails.
    Restore {
        pipeline: String,
        #[command(flatten)]
        pick: PickArgs,
        /// The database to restore into: a libpq URI or key=value string (default: the
        /// pipeline's own, which needs --yes). Without --to, PIPELINE_RESTORE_TO is read:
        /// it keeps a password off the command line (or keep it in ~/.pgpass).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Allow restoring into the pipeline's own database, replacing what it holds.
        #[arg(long)]
        yes: bool,
        /// Restore even though the target database already holds tables.
        #[arg(long)]
        allow_non_empty: bool,
    },
    /// Check the newest (or chosen) backup in every sink: present, complete, size and
    /// SHA-256; with --restore-into, restore it into a scratch database and report.
    Verify {
        pipeline: String,
        #[command(flatten)]
        pick: PickArgs,
        /// An empty scratch database to restore the backup into, as a full test. Without
        /// it, PIPELINE_VERIFY_INTO is read: it keeps a password off the command line.
        #[arg(long, value_name = "URL")]
        restore_into: Option<String>,
    },
    /// Snapshot pipelines: record a change an application reports, and read an entity's
    /// history back.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// List the built-in plugins with their version, kind and configuration keys, inspect
    /// a plugin file before granting it anything, or start a new plugin crate.
    #[command(visible_alias = "plugin")]
    Plugins {
        #[command(subcommand)]
        action: Option<PluginsAction>,
    },
}

#[derive(Subcommand)]
pub enum PluginsAction {
    /// Show what a component is (name, version, kind, WIT version, config keys) and which
    /// host capabilities it imports, so you know what its stage would have to grant.
    Inspect {
        /// A `.wasm` component file.
        file: std::path::PathBuf,
    },
    /// Write a new plugin crate, ready to build with
    /// `cargo build --target wasm32-wasip2 --release`, with the guest SDK of this version.
    New {
        kind: crate::scaffold::Kind,
        /// The plugin's (and crate's) name: lowercase letters, digits, `-`, `_`.
        name: String,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// Which entity: its type and id.
#[derive(clap::Args)]
pub struct EntityArgs {
    /// The entity type (`role`, `coorp-graph`): lowercase letters, digits, `-`.
    #[arg(long = "type", value_name = "TYPE")]
    entity_type: String,
    /// The entity's id.
    #[arg(long, value_name = "ID")]
    id: String,
}

#[derive(Subcommand)]
pub enum SnapshotAction {
    /// Record one change: the entity's JSON on stdin (or --data FILE) becomes a snapshot
    /// file in every sink of the pipeline and, in a git sink, a commit
    /// `[SNAPSHOT] <action> <type>: <name> (<id>)`. Waits up to 2 minutes for a running
    /// pull of the same pipeline. Prints the file name.
    Record {
        pipeline: String,
        #[command(flatten)]
        entity: EntityArgs,
        /// The entity's name (any text; it is data, never a command).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// create, update or delete.
        #[arg(long, value_name = "ACTION")]
        action: String,
        /// Who made the change (left out of the document when not given).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Read the JSON from this file instead of stdin (`-` is stdin). For delete, an
        /// empty input records `null`.
        #[arg(long, value_name = "FILE")]
        data: Option<std::path::PathBuf>,
    },
    /// The snapshots of one entity, newest first.
    History {
        pipeline: String,
        #[command(flatten)]
        entity: EntityArgs,
    },
    /// Print one snapshot file as stored.
    Show { pipeline: String, file: String },
    /// A unified diff of the name and data of two snapshots of an entity (default: the
    /// newest against the one before it).
    Diff {
        pipeline: String,
        #[command(flatten)]
        entity: EntityArgs,
        /// The older snapshot file.
        #[arg(long, value_name = "FILE")]
        from: Option<String>,
        /// The newer snapshot file.
        #[arg(long, value_name = "FILE")]
        to: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct PickArgs {
    /// A backup by name (default: the newest).
    #[arg(long, value_name = "NAME")]
    backup: Option<String>,
    /// The newest backup made at or before this time (2025-12-10T12:00:00Z, 2025-12-10).
    #[arg(long, value_name = "TIME", conflicts_with = "backup")]
    at: Option<String>,
    /// Only this sink (default: the first sink that has the backup).
    #[arg(long, value_name = "SINK")]
    from: Option<String>,
}

impl PickArgs {
    fn pick(&self) -> Result<restore::Pick> {
        Ok(restore::Pick {
            backup: self.backup.clone(),
            at: self.at.as_deref().map(restore::parse_at).transpose()?,
            from: self.from.clone(),
        })
    }
}

/// A restore target from the command line (`option`) or, without it, the variable `var`,
/// with the name of the one it came from. The target is a secret from here on; one given
/// on the command line with a password in it gets a warning, since every user of the
/// machine can read a command line.
fn restore_target(
    argv: Option<&String>,
    option: &str,
    var: &str,
) -> Result<Option<(String, String)>> {
    let (value, from) = match argv {
        Some(v) => (v.clone(), option.to_string()),
        None => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v, var.to_string()),
            Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!(UsageError(format!("{var}: not valid UTF-8")))
            }
        },
    };
    // The parse error never quotes the value; it is registered as a secret once it is a
    // connection string (a bare word registered would mask that word in every message).
    let target = restore::Target::parse(&value).map_err(|e| UsageError(format!("{from}: {e}")))?;
    let mut secrets = crate::redact::Redactor::default();
    secrets.add(&value);
    logging::add_secrets(&secrets);
    if argv.is_some() && target.has_password {
        logging::warn(
            None,
            &format!(
                "{option} holds a password, and a command line is readable by every user of this \
                 machine (ps, /proc): give the target in {var} instead, or keep the password in \
                 ~/.pgpass"
            ),
        );
    }
    Ok(Some((value, from)))
}

fn print_report(report: &restore::Report) -> String {
    report
        .facts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    logging::init(cli.log_format, cli.verbose);
    let result = dispatch(&cli.command);
    let exit = error::exit(&result, crate::shutdown::reason().as_ref());
    match &exit.log {
        Some(Log::Warn(line)) => logging::warn(None, line),
        Some(Log::Error(line)) => logging::error(None, line),
        None => {}
    }
    exit.code
}

fn dispatch(command: &Command) -> Result<()> {
    match command {
        Command::Run { pipeline } => {
            let engine = Engine::new()?;
            let p = runner::load(&engine, pipeline)?;
            if p.mode == Mode::Snapshot {
                let r = snapshot::run::run(&engine, &p)?;
                report_recorded(&p, &r);
                return Ok(());
            }
            let o = runner::run(&engine, &p)?;
            logging::info(
                None,
                &format!(
                    "pipeline `{}` succeeded: {} ({} bytes, sha256 {}) in {}; pruned {}; {:.1}s",
                    p.pipeline.name,
                    o.artifact,
                    o.size,
                    o.sha256,
                    o.sinks.join(", "),
                    o.pruned,
                    o.seconds
                ),
            );
            if logging::format() == Format::Json {
                let report = serde_json::json!({
                    "pipeline": p.pipeline.name, "artifact": o.artifact, "size": o.size,
                    "sha256": o.sha256, "sinks": o.sinks, "pruned": o.pruned, "seconds": o.seconds,
                });
                println!("{report}");
            }
            Ok(())
        }
        Command::Validate { pipeline } => {
            let engine = Engine::new()?;
            let p = runner::load(&engine, pipeline)?;
            let chain: Vec<String> = p
                .chain()
                .map(|(s, info)| format!("{} ({} {})", s.label(), info.name, info.version))
                .collect();
            println!("{}: ok", p.pipeline.file.display());
            println!("  stages: {}", chain.join(" → "));
            if p.mode == Mode::Snapshot {
                println!("  snapshots are named like <time>_<type>_<action>_<name>_<id>.json");
                return Ok(());
            }
            println!(
                "  backups are named like {}",
                p.names.render(jiff::Timestamp::now())
            );
            match &p.pipeline.retention {
                Some(r) => println!(
                    "  retention: {}",
                    serde_json::to_string(r).unwrap_or_default()
                ),
                None => println!("  retention: none (nothing is ever pruned)"),
            }
            Ok(())
        }
        Command::List { pipeline } => {
            let engine = Engine::new()?;
            let p = runner::load(&engine, pipeline)?;
            let now = runner::now();
            let mut out = logging::stdout();
            if p.mode == Mode::Snapshot {
                for sink in &p.sinks {
                    let names = snapshot::store::SnapshotStore::open(&engine, sink)?.names()?;
                    let entities: std::collections::BTreeSet<(&str, &str)> = names
                        .iter()
                        .map(|(_, n)| (n.entity_type.as_str(), n.encoded_id.as_str()))
                        .collect();
                    writeln!(
                        out,
                        "sink {}: {} snapshots of {} entities{}",
                        sink.stage.name,
                        names.len(),
                        entities.len(),
                        names
                            .last()
                            .map(|(n, _)| format!(", newest {n}"))
                            .unwrap_or_default()
                    )?;
                }
                return Ok(());
            }
            for sink in &p.sinks {
                let listed = runner::list(&engine, &p, sink)?;
                let own = listed
                    .iter()
                    .filter(|l| l.owner == runner::Owner::This)
                    .count();
                let mut extra = Vec::new();
                let theirs = listed
                    .iter()
                    .filter(|l| matches!(l.owner, runner::Owner::Other(_)))
                    .count();
                if theirs > 0 {
                    extra.push(format!("{theirs} of other pipelines"));
                }
                let unowned = listed.len() - own - theirs;
                if unowned > 0 {
                    extra.push(format!("{unowned} without a recorded owner"));
                }
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!("; also {}", extra.join(", "))
                };
                writeln!(out, "sink {} ({own} backups{extra})", sink.stage.name)?;
                let decisions = p
                    .pipeline
                    .retention
                    .as_ref()
                    .map(|pol| runner::decide(&listed, pol, now, None));
                for l in &listed {
                    let decision = decisions
                        .as_ref()
                        .and_then(|d| d.iter().find(|d| d.name == l.name));
                    let verdict = match (&l.owner, decision) {
                        (runner::Owner::Other(o), _) => {
                            format!("kept: not this pipeline's (made by pipeline `{o}`)")
                        }
                        (runner::Owner::Unrecorded, _) => {
                            "kept: made before owners were recorded: delete by hand".to_string()
                        }
                        (runner::Owner::Unfinished, _) => {
                            "kept: unfinished, owner unknown: delete by hand".to_string()
                        }
                        (_, None) if l.future => "keep (dated in the future: check the clock \
                                                  of the run that made it)"
                            .to_string(),
                        (_, None) => "keep (no retention)".to_string(),
                        (_, Some(d)) if d.delete() => "prune next run".to_string(),
                        (_, Some(d)) => format!(
                            "keep ({})",
                            d.keep
                                .iter()
                                .map(|r| r.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    writeln!(
                        out,
                        "  {}  {:>12}  {}  {}  {}",
                        l.name,
                        l.size,
                        naming::format_time(l.created),
                        if l.has_manifest {
                            "sha256 recorded"
                        } else {
                            "NO MANIFEST (incomplete?)"
                        },
                        verdict
                    )?;
                }
                // A sink that cannot list leftovers (a third-party one may refuse a `.`
                // prefix) only loses this part of the listing.
                let leftovers = runner::leftovers(&engine, &p, sink).unwrap_or_else(|e| {
                    logging::debug(
                        Some(&sink.label()),
                        &format!("cannot list unfinished writes: {e:#}"),
                    );
                    Vec::new()
                });
                for left in leftovers {
                    let why = if left.ours {
                        format!(
                            "left by a run of this pipeline that did not finish: its next run \
                             removes it (or `pipeline run {}` now)",
                            p.pipeline.name
                        )
                    } else {
                        "left by another pipeline's or an older version's run: delete it by \
                         hand once no run is going"
                            .to_string()
                    };
                    writeln!(out, "  {}  {:>12}  {why}", left.name, left.size)?;
                }
            }
            Ok(())
        }
        Command::Restore {
            pipeline,
            pick,
            to,
            yes,
            allow_non_empty,
        } => {
            let pick = pick.pick()?;
            let target = restore_target(to.as_ref(), "--to", "PIPELINE_RESTORE_TO")?;
            let engine = Engine::new()?;
            let p = runner::load(&engine, pipeline)?;
            let (to, to_option) = match target {
                Some((to, from)) => (Some(to), from),
                None => (None, "--to".to_string()),
            };
            let args = restore::RestoreArgs {
                pick,
                to,
                to_option,
                yes: Some(*yes),
                allow_non_empty: *allow_non_empty,
            };
            let r = restore::restore(&engine, &p, &args)?;
            logging::info(
                None,
                &format!(
                    "restored {} from sink `{}` in {:.1}s: {}",
                    r.backup,
                    r.sink,
                    r.seconds,
                    print_report(&r.report)
                ),
            );
            Ok(())
        }
        Command::Verify {
            pipeline,
            pick,
            restore_into,
        } => {
            let pick = pick.pick()?;
            let restore_into = restore_target(
                restore_into.as_ref(),
                "--restore-into",
                "PIPELINE_VERIFY_INTO",
            )?;
            let engine = Engine::new()?;
            let p = runner::load(&engine, pipeline)?;
            // Refuse a wrong target before reading anything.
            if let Some((url, from)) = &restore_into {
                restore::check_target(&p, from, url, None)?;
            }
            let checked = restore::verify(&engine, &p, &pick)?;
            let mut failed = 0;
            let mut good: Option<(String, String)> = None;
            for c in &checked {
                let backup = c.backup.as_deref().unwrap_or("-");
                match &c.result {
                    Ok(msg) => {
                        println!("ok      sink {}: {backup}: {msg}", c.sink);
                        good.get_or_insert((c.sink.clone(), backup.to_string()));
                    }
                    Err(msg) => {
                        failed += 1;
                        println!("FAILED  sink {}: {backup}: {msg}", c.sink);
                    }
                }
            }
            if let (Some((url, from)), Some((sink, backup))) = (restore_into, &good) {
                let args = restore::RestoreArgs {
                    pick: restore::Pick {
                        backup: Some(backup.clone()),
                        at: None,
                        from: Some(sink.clone()),
                    },
                    to: Some(url),
                    to_option: from,
                    yes: None,
                    allow_non_empty: false,
                };
                match restore::restore(&engine, &p, &args) {
                    Ok(r) => println!(
                        "ok      restore of {} from sink {}: {:.1}s, {}",
                        r.backup,
                        r.sink,
                        r.seconds,
                        print_report(&r.report)
                    ),
                    Err(e) => {
                        failed += 1;
                        println!(
                            "FAILED  restore of {backup} from sink {sink}: {}",
                            logging::redact(&format!("{e:#}"))
                        );
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(RunFailed(format!("{failed} check(s) failed")));
            }
            Ok(())
        }
        Command::Snapshot { action } => snapshot_command(action),
        Command::Plugins {
            action: Some(PluginsAction::Inspect { file }),
        } => {
            let engine = Engine::new()?;
            let plugin = crate::config::PluginRef::File(file.clone());
            let c = engine.load(&plugin)?;
            // An incompatible plugin cannot even be instantiated: say why, with the versions.
            crate::engine::check_world_version(&c, &engine)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
            let role = role_of(&engine, &c)?;
            let info = component::describe(&engine, &c, role, &file.display().to_string())?;
            let mut out = logging::stdout();
            print_info(&mut out, &info)?;
            let ty = c.component_type();
            let exports: Vec<String> = ty
                .exports(engine.wasmtime())
                .map(|(n, _)| n.to_string())
                .collect();
            let wit = exports
                .iter()
                .find_map(|n| {
                    n.strip_prefix("pipeline:plugin/")
                        .and_then(|r| r.split_once('@'))
                        .map(|(_, v)| v)
                })
                .unwrap_or("unknown");
            let compatible = crate::engine::check_world_version(&c, &engine).map_or_else(
                |e| format!("{e:#}"),
                |_| {
                    format!(
                        "compatible with this host (pipeline:plugin@{})",
                        bindings::WIT_VERSION
                    )
                },
            );
            writeln!(out, "  WIT: pipeline:plugin@{wit}: {compatible}")?;
            writeln!(out, "  exports: {}", exports.join(", "))?;
            writeln!(
                out,
                "  imports (what it can ask for; it gets only what its stage grants):"
            )?;
            for (name, _) in ty.imports(engine.wasmtime()) {
                writeln!(out, "    {name}{}", capability_hint(name))?;
            }
            Ok(())
        }
        Command::Plugins {
            action: Some(PluginsAction::New { kind, name, dir }),
        } => {
            crate::scaffold::check_name(name).map_err(|e| UsageError(e.to_string()))?;
            let dir = crate::scaffold::new_plugin(*kind, name, dir.as_deref())?;
            let lib = name.replace('-', "_");
            println!(
                "wrote {}\n\nnext:\n  cd {}\n  cargo build --target wasm32-wasip2 --release\n  pipeline plugins inspect target/wasm32-wasip2/release/{lib}.wasm\n\nsee its README.md for the stage to add to a pipeline file",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Plugins { action: None } => {
            let engine = Engine::new()?;
            let mut out = logging::stdout();
            for name in builtin::names() {
                let info = match crate::stages::native::describe(name) {
                    Some(i) => i,
                    None => {
                        let c = engine.load(&crate::config::PluginRef::Builtin(name.into()))?;
                        let role = role_of(&engine, &c)?;
                        component::describe(&engine, &c, role, name)?
                    }
                };
                print_info(&mut out, &info)?;
            }
            Ok(())
        }
    }
}

fn snapshot_pipeline(engine: &Engine, pipeline: &str) -> Result<crate::stages::Prepared> {
    let p = runner::load(engine, pipeline)?;
    if p.mode != Mode::Snapshot {
        anyhow::bail!(UsageError(format!(
            "pipeline `{}` is not a snapshot pipeline (its source `{}` reports no entities)",
            p.pipeline.name, p.pipeline.source.plugin
        )));
    }
    Ok(p)
}

fn snapshot_command(action: &SnapshotAction) -> Result<()> {
    use crate::snapshot::{document, history};
    let engine = Engine::new()?;
    let mut out = logging::stdout();
    match action {
        SnapshotAction::Record {
            pipeline,
            entity,
            name,
            action,
            user,
            data,
        } => {
            let p = snapshot_pipeline(&engine, pipeline)?;
            let action = document::Action::parse(action).ok_or_else(|| {
                UsageError(format!(
                    "--action {action:?}: must be create, update or delete"
                ))
            })?;
            let text = match data.as_deref() {
                None => read_stdin()?,
                Some(f) if f == std::path::Path::new("-") => read_stdin()?,
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| UsageError(format!("--data {}: {e}", f.display())))?,
            };
            let data = if text.trim().is_empty() && action == document::Action::Delete {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| UsageError(format!("the entity's data is not JSON: {e}")))?
            };
            let snap = document::Snapshot {
                entity_type: entity.entity_type.clone(),
                entity_id: entity.id.clone(),
                entity_name: name.clone(),
                action,
                user: user.clone(),
                time: jiff::Timestamp::now(),
                data,
            };
            let r = snapshot::run::record_one(&engine, &p, &snap)?;
            report_recorded(&p, &r);
            for f in &r.files {
                writeln!(out, "{f}")?;
            }
            Ok(())
        }
        SnapshotAction::History { pipeline, entity } => {
            let p = snapshot_pipeline(&engine, pipeline)?;
            history::history(&engine, &p, &entity.entity_type, &entity.id, &mut out)?;
            Ok(())
        }
        SnapshotAction::Show { pipeline, file } => {
            let p = snapshot_pipeline(&engine, pipeline)?;
            history::show(&engine, &p, file, &mut out)
        }
        SnapshotAction::Diff {
            pipeline,
            entity,
            from,
            to,
        } => {
            let p = snapshot_pipeline(&engine, pipeline)?;
            history::diff(
                &engine,
                &p,
                &entity.entity_type,
                &entity.id,
                from.as_deref(),
                to.as_deref(),
                &mut out,
            )
        }
    }
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|e| UsageError(format!("cannot read the entity's data from stdin: {e}")))?;
    Ok(text)
}

fn report_recorded(p: &crate::stages::Prepared, r: &snapshot::run::Recorded) {
    let commits: usize = r.commits.iter().map(|(_, ids)| ids.len()).sum();
    logging::info(
        None,
        &format!(
            "pipeline `{}` succeeded: {} snapshot(s), {commits} commit(s); {:.1}s",
            p.pipeline.name,
            r.files.len(),
            r.seconds
        ),
    );
    if logging::format() == Format::Json {
        let report = serde_json::json!({
            "pipeline": p.pipeline.name, "snapshots": r.files,
            "commits": r.commits.iter().map(|(s, ids)| serde_json::json!({"sink": s, "ids": ids})).collect::<Vec<_>>(),
            "seconds": r.seconds,
        });
        println!("{report}");
    }
}

/// What an imported interface means for the pipeline file.
fn capability_hint(import: &str) -> &'static str {
    let iface = import.split('@').next().unwrap_or(import);
    match iface {
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => {
            "  — files: only directories in `allow.directories` / `allow.read_only_directories`"
        }
        "wasi:http/outgoing-handler" => "  — HTTP: only hosts in `allow.hosts`",
        "pipeline:plugin/process" => "  — programs: only those in `allow.programs`",
        "pipeline:plugin/postgres" => "  — read-only SQL: only the database in `allow.databases`",
        "pipeline:plugin/git" => {
            "  — git commits and pushes: only repositories in `allow.repositories`"
        }
        "pipeline:plugin/aws-credentials" => {
            "  — AWS credentials: only the built-in `s3` sink without keys in its configuration"
        }
        "wasi:cli/environment" => "  — environment variables: always empty",
        i if i.starts_with("wasi:sockets/") => "  — network sockets: always denied",
        _ => "",
    }
}

fn role_of(engine: &Engine, c: &wasmtime::component::Component) -> Result<crate::config::Role> {
    use crate::config::Role;
    let ty = c.component_type();
    for (name, _) in ty.exports(engine.wasmtime()) {
        for role in [Role::Source, Role::Transform, Role::Sink] {
            if name.starts_with(&format!("pipeline:plugin/{}@", role.as_str())) {
                return Ok(role);
            }
        }
        if name.starts_with("pipeline:plugin/snapshot-source@") {
            return Ok(Role::Source);
        }
    }
    Err(anyhow::anyhow!(
        "the component exports no pipeline:plugin source, snapshot-source, transform or sink interface"
    ))
}

fn print_info(out: &mut impl Write, info: &bindings::PluginInfo) -> Result<()> {
    writeln!(
        out,
        "{} {} ({}): {}",
        info.name, info.version, info.kind, info.description
    )?;
    let width = info
        .config_keys
        .iter()
        .map(|k| k.name.len())
        .max()
        .unwrap_or(0);
    for k in &info.config_keys {
        let req = if k.required { ", required" } else { "" };
        writeln!(
            out,
            "    {:<width$}  {}{req}: {}",
            k.name,
            k.value_type.as_str(),
            k.description
        )?;
    }
    Ok(())
}
