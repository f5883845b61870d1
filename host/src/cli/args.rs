//! The command line's shape: clap structures only. What each command does is in
//! [`super::commands`].

use clap::{Parser, Subcommand};

use crate::logging::Format;
use crate::progress::When;

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
    /// Log only warnings and errors (what a command prints on stdout is unchanged).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// A live progress line on stderr while a run or restore streams: `auto` when stderr
    /// is a terminal (not with --quiet), `always`, `never`; never with --log-format json.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "PIPELINE_PROGRESS",
        global = true,
        value_name = "WHEN"
    )]
    pub progress: When,
    /// Load `oci://` plugins from the local cache only, never from a registry; a plugin not
    /// cached is an error naming `pipeline plugins pull REF`. Also PIPELINE_OFFLINE=1.
    #[arg(
        long,
        global = true,
        env = "PIPELINE_OFFLINE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub offline: bool,
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
    /// Run scheduled pipelines in the foreground, each at the times of its `[pipeline]
    /// schedule`, each run a `pipeline run FILE` of its own; never two runs of one pipeline
    /// at once. SIGTERM or Ctrl-C: no new runs, the running ones stop cleanly, exit 0.
    Daemon {
        /// Pipeline names or files, each with a `schedule` (default: every file in
        /// $PIPELINE_DIR and ./pipelines that has one).
        pipelines: Vec<String>,
    },
    /// Check a pipeline file and its plugins without running anything.
    Validate { pipeline: String },
    /// List this pipeline's backups in each sink, newest first, with what retention would do.
    List { pipeline: String },
    /// Show each pipeline's last runs (when, outcome, artifact, size, duration) from the run
    /// history in the state directory; or one pipeline's (a name, or a file's path).
    Status {
        pipeline: Option<String>,
        /// Print JSON: per pipeline, its last success and its runs, newest first.
        #[arg(long)]
        json: bool,
        /// How many runs to show per pipeline.
        #[arg(long, default_value_t = 10, value_name = "N")]
        last: usize,
        /// Fail (exit 1, naming them) if a shown pipeline's last success is older than this
        /// ("26h", "2d") or missing: a check for monitoring.
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
    },
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
    /// Print a shell completion script, generated from this command line:
    /// `pipeline completions bash > /etc/bash_completion.d/pipeline`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page, pipeline(1), as roff: `pipeline man > pipeline.1`.
    Man,
}

#[derive(Subcommand)]
pub enum PluginsAction {
    /// Show what a component is (name, version, kind, WIT version, config keys) and which
    /// host capabilities it imports, so you know what its stage would have to grant.
    Inspect {
        /// A `.wasm` component file, or an `oci://` reference (pulled into the cache).
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
    /// Pull a plugin from an OCI registry into the cache (again, for a tag: this is how a
    /// cached tag is refreshed) and print its manifest digest, `sha256:…`, to pin it with.
    Pull {
        /// `oci://registry/repository:tag`, `…@sha256:<hex>` or both.
        reference: String,
    },
    /// Publish a component to an OCI registry as a Wasm artifact and print its manifest
    /// digest, `sha256:…`. The file must be a plugin whose contract this host runs.
    Push {
        /// The `.wasm` component file.
        file: std::path::PathBuf,
        /// `oci://registry/repository:tag`.
        reference: String,
    },
}

/// Which entity: its type and id.
#[derive(clap::Args)]
pub struct EntityArgs {
    /// The entity type (`role`, `coorp-graph`): lowercase letters, digits, `-`.
    #[arg(long = "type", value_name = "TYPE")]
    pub entity_type: String,
    /// The entity's id.
    #[arg(long, value_name = "ID")]
    pub id: String,
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
    pub backup: Option<String>,
    /// The newest backup made at or before this time (2025-12-10T12:00:00Z, 2025-12-10).
    #[arg(long, value_name = "TIME", conflicts_with = "backup")]
    pub at: Option<String>,
    /// Only this sink (default: the first sink that has the backup).
    #[arg(long, value_name = "SINK")]
    pub from: Option<String>,
}
