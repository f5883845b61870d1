//! Guest SDK for `pipeline` plugins.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` that targets one of the
//! worlds of `wit/plugin.wit` (`source-plugin`, `transform-plugin`, `sink-plugin`). This
//! crate holds the generated bindings for all of them, so a plugin is its logic and little
//! else:
//!
//! ```
//! use pipeline_plugin_sdk::{
//!     ArtifactMeta, InputStream, OutputStream, StagePlan, Plugin, PluginError, PluginInfo,
//!     PluginKind, Sink, Stored, ValueType, config, config_key, io, log,
//! };
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     endpoint: String,
//! }
//!
//! struct MySink;
//!
//! impl Plugin for MySink {
//!     fn describe() -> PluginInfo {
//!         PluginInfo {
//!             name: "my-sink".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             kind: PluginKind::Sink,
//!             description: "Stores artifacts somewhere".into(),
//!             config_keys: vec![config_key("endpoint", ValueType::Text, true, "Where to")],
//!         }
//!     }
//!
//!     fn plan(config: String) -> Result<StagePlan, PluginError> {
//!         let _config: Config = config::parse(&config)?; // rejects unknown keys
//!         Ok(StagePlan { extension: None, content_type: None, grants: vec![] })
//!     }
//! }
//!
//! impl Sink for MySink {
//!     fn put(config: String, meta: ArtifactMeta, data: InputStream) -> Result<Stored, PluginError> {
//!         let config: Config = config::parse(&config)?;
//!         let mut reader = io::InputReader::new(data); // std::io::Read + BufRead
//!         let size = std::io::copy(&mut reader, &mut std::io::sink())?;
//!         log::info(format_args!("stored {} at {}", meta.name, config.endpoint));
//!         Ok(Stored { name: meta.name, size, created_ms: meta.created_ms, locked_until_ms: None })
//!     }
//!     fn list(_config: String, _prefix: String) -> Result<Vec<Stored>, PluginError> {
//!         Ok(vec![])
//!     }
//!     // `artifact` is what `list` returned: its name, size and creation time.
//!     fn get(_config: String, artifact: Stored, out: OutputStream) -> Result<u64, PluginError> {
//!         let _writer = io::OutputWriter::new(out); // std::io::Write
//!         Err(PluginError::NotFound(artifact.name))
//!     }
//!     fn delete(_config: String, artifact: Stored) -> Result<(), PluginError> {
//!         Err(PluginError::NotFound(artifact.name))
//!     }
//! }
//!
//! pipeline_plugin_sdk::export_sink!(MySink);
//! ```
//!
//! * [`Plugin`] is the part every plugin kind exports (`describe`, `plan`); [`Source`],
//!   [`Transform`] and [`Sink`] are the kind-specific parts.
//! * [`export_source!`], [`export_transform!`] and [`export_sink!`] export a type that
//!   implements [`Plugin`] and its kind's trait as the component's exports.
//! * [`config::parse`] reads the stage's configuration (JSON of its TOML table) into a
//!   `#[serde(deny_unknown_fields)]` struct with messages that name keys.
//! * [`log`] writes to the run's log; [`io`] adapts WASI streams to `std::io`;
//!   [`process`] starts granted programs and [`program`] runs one the way sources and
//!   restores do (stdout into the output, the input into stdin, exit checked); [`url`]
//!   splits a `scheme://user:password@host/…` connection URL so its password can reach a
//!   program some other way than its arguments.
//!
//! The bindings compile for the native target too (their imports then panic if called),
//! so a plugin's pure helpers can be unit-tested with a plain `cargo test`. The export
//! macros export nothing outside `wasm32`.

// The export macros name this crate by path (`pipeline_plugin_sdk::…`); this makes the same
// path work inside the crate.
extern crate self as pipeline_plugin_sdk;

pub mod artifact;
pub mod config;
pub mod date;
mod error;
pub mod io;
pub mod log;
pub mod program;
pub mod url;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The version of the WIT package `pipeline:plugin` this SDK is built against, read from
/// the `package` line of `wit/plugin.wit` when the SDK compiles: the WIT is the one
/// source of truth. A plugin's component imports and exports every interface of the
/// package at this version.
pub const WIT_VERSION: &str = wit_package_version(include_str!("../wit/plugin.wit"));

/// The `X.Y.Z` of the line `package pipeline:plugin@X.Y.Z;` in `wit`, at compile time.
const fn wit_package_version(wit: &str) -> &str {
    const PACKAGE: &[u8] = b"package pipeline:plugin@";
    let bytes = wit.as_bytes();
    let mut start = 0;
    while start + PACKAGE.len() <= bytes.len() {
        let line_start = start == 0 || bytes[start - 1] == b'\n';
        let mut k = 0;
        while line_start && k < PACKAGE.len() && bytes[start + k] == PACKAGE[k] {
            k += 1;
        }
        if line_start && k == PACKAGE.len() {
            let (_, rest) = bytes.split_at(start + k);
            let mut end = 0;
            while end < rest.len() && rest[end] != b';' {
                end += 1;
            }
            let (version, _) = rest.split_at(end);
            match core::str::from_utf8(version) {
                Ok(version) => return version,
                Err(_) => panic!("the version in wit/plugin.wit is not UTF-8"),
            }
        }
        start += 1;
    }
    panic!("wit/plugin.wit has no `package pipeline:plugin@X.Y.Z;` line")
}

/// The one place the SDK spells the contract's version in its bindings. wit-bindgen's
/// `generate!` reads only literal strings, so the interface names below carry the version
/// literally; everything else each binding module shares (the WIT, the worlds, the
/// mapping of `types` and `wasi:io` to one module, the runtime path) is written here once.
/// When `wit/plugin.wit` moves to another version, these literals no longer name a package
/// it defines and the SDK stops compiling until they are changed with it; the
/// `every_contract_name_in_the_sdk_is_at_wit_version` test names any that differ from
/// [`WIT_VERSION`].
///
/// The plugin worlds (`source-plugin`, …) are generated as slices that each export one
/// interface (`plugin-exports`, `<kind>-exports`), combined by
/// [`export_source!`](crate::export_source) & co. Generating the full worlds would emit
/// the `plugin` interface's export macro once per world, and `#[macro_export]` macros of
/// the same name collide at the crate root. The componentization step (in rustc's linker)
/// unions the slices back into the plugin's world.
macro_rules! contract_bindings {
    // The imports every plugin world shares: `types`, `log`, `process` and `wasi:io`.
    (host) => {
        wit_bindgen::generate!({
            world: "host",
            path: "wit",
            generate_all,
            // The plugin-facing records (`plugin-info`, `stage-plan`, …) are used only by
            // the plugin worlds' exports; generate them here so those worlds can share them.
            generate_unused_types: true,
            with: {
                "pipeline:plugin/types@0.3.0/plugin-error": crate::error::PluginError,
            },
            runtime_path: "pipeline_plugin_sdk::__wit_bindgen::rt",
        });
    };
    // A slice whose functions pass WASI streams: they are the `host` module's.
    ($world:literal, streams, $($options:tt)*) => {
        contract_bindings!(@slice $world, {
            "wasi:io/error@0.2.12": crate::bindings::host::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::host::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::host::wasi::io::streams,
        }, $($options)*);
    };
    ($world:literal, $($options:tt)*) => {
        contract_bindings!(@slice $world, {}, $($options)*);
    };
    (@slice $world:literal, { $($with:tt)* }, $($options:tt)*) => {
        wit_bindgen::generate!({
            inline: "
                package pipeline:sdk;
                world plugin-exports { export pipeline:plugin/plugin@0.3.0; }
                world source-exports { export pipeline:plugin/source@0.3.0; }
                world restore-exports { export pipeline:plugin/restore@0.3.0; }
                world transform-exports { export pipeline:plugin/transform@0.3.0; }
                world sink-exports { export pipeline:plugin/sink@0.3.0; }
                world mail-imports { import pipeline:plugin/mail@0.3.0; }
                world snapshot-source-exports { export pipeline:plugin/snapshot-source@0.3.0; }
                world snapshot-sink-exports { export pipeline:plugin/snapshot-sink@0.3.0; }
                world snapshot-imports {
                    import pipeline:plugin/postgres@0.3.0;
                    import pipeline:plugin/git@0.3.0;
                }
                world aws-imports { import pipeline:plugin/aws-credentials@0.3.0; }
                world notifier-exports { export pipeline:plugin/notifier@0.3.0; }
            ",
            path: "wit",
            world: $world,
            with: {
                $($with)*
                "pipeline:plugin/types@0.3.0": crate::types,
            },
            // What is not mapped above is the slice's own import (`postgres`, `git`,
            // `aws-credentials`): generate it.
            generate_all,
            runtime_path: "pipeline_plugin_sdk::__wit_bindgen::rt",
            $($options)*
        });
    };
}

/// Generated bindings. Plugin authors rarely need these paths: the crate root re-exports
/// what a plugin uses.
pub mod bindings {
    /// The imports every plugin world shares: `types`, `log`, `process` and `wasi:io`.
    /// Each plugin world below maps these interfaces to this module, so there is a single
    /// `PluginError`, `InputStream`, … whatever the plugin kind.
    pub mod host {
        contract_bindings!(host);
    }

    /// The `plugin` interface every plugin exports (`describe`, `plan`).
    pub mod plugin {
        contract_bindings!("plugin-exports",
            pub_export_macro: true,
            export_macro_name: "export_plugin",
            default_bindings_module: "pipeline_plugin_sdk::bindings::plugin",
        );
    }

    /// The `source` interface (`dump`).
    pub mod source {
        contract_bindings!("source-exports", streams,
            pub_export_macro: true,
            export_macro_name: "export_source",
            default_bindings_module: "pipeline_plugin_sdk::bindings::source",
        );
    }

    /// The `restore` interface (`plan-restore`, `restore`, `source-target`) of restorable
    /// sources.
    pub mod restore {
        contract_bindings!("restore-exports", streams,
            pub_export_macro: true,
            export_macro_name: "export_restore",
            default_bindings_module: "pipeline_plugin_sdk::bindings::restore",
        );
    }

    /// The `transform` interface (`encode`, `decode`).
    pub mod transform {
        contract_bindings!("transform-exports", streams,
            pub_export_macro: true,
            export_macro_name: "export_transform",
            default_bindings_module: "pipeline_plugin_sdk::bindings::transform",
        );
    }

    /// The `sink` interface (`put`, `list`, `get`, `delete`).
    pub mod sink {
        contract_bindings!("sink-exports", streams,
            pub_export_macro: true,
            export_macro_name: "export_sink",
            default_bindings_module: "pipeline_plugin_sdk::bindings::sink",
        );
    }
}

/// The imports only snapshot plugins use: `postgres` (snapshot sources) and `git`
/// (snapshot sinks).
pub mod snapshot_bindings {
    /// `postgres` and `git` as imports.
    pub mod imports {
        contract_bindings!("snapshot-imports",);
    }

    /// The `snapshot-source` interface (`entities`).
    pub mod source {
        contract_bindings!("snapshot-source-exports",
            pub_export_macro: true,
            export_macro_name: "export_snapshot_source",
            default_bindings_module: "pipeline_plugin_sdk::snapshot_bindings::source",
        );
    }

    /// The `snapshot-sink` interface (`commit`).
    pub mod sink {
        contract_bindings!("snapshot-sink-exports",
            pub_export_macro: true,
            export_macro_name: "export_snapshot_sink",
            default_bindings_module: "pipeline_plugin_sdk::snapshot_bindings::sink",
        );
    }
}

/// The `notifier` interface (`notify`).
pub mod notifier_bindings {
    contract_bindings!("notifier-exports",
        pub_export_macro: true,
        export_macro_name: "export_notifier",
        default_bindings_module: "pipeline_plugin_sdk::notifier_bindings",
    );
}

/// Notifier plugins: told of a pipeline's runs ([`notify::Notifier::notify`]) with the
/// run's [`notify::RunReport`].
pub mod notify {
    pub use crate::notifier_bindings::exports::pipeline::plugin::notifier::{
        Event, Guest as Notifier, RunReport,
    };

    impl Event {
        /// `start`, `success` or `failure`.
        pub fn as_str(&self) -> &'static str {
            match self {
                Event::Start => "start",
                Event::Success => "success",
                Event::Failure => "failure",
            }
        }
    }
}

/// Export `$ty` as a notifier: `$ty` implements [`Plugin`] and [`notify::Notifier`].
#[macro_export]
macro_rules! export_notifier {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::plugin::export_plugin!($ty with_types_in $crate::bindings::plugin);
        #[cfg(target_arch = "wasm32")]
        $crate::notifier_bindings::export_notifier!($ty with_types_in $crate::notifier_bindings);
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_exports() {
            let _ = <$ty as $crate::Plugin>::describe;
            let _ = <$ty as $crate::Plugin>::plan;
            let _ = <$ty as $crate::notify::Notifier>::notify;
        }
    };
}

/// The import only sinks that sign AWS requests use: `aws-credentials`.
pub mod aws_bindings {
    contract_bindings!("aws-imports",);
}

/// AWS credentials the host resolved for the stage and keeps fresh ([`aws::get`]). Only a
/// stage whose plan asked for [`Grant::AwsCredentials`] (and was given it) may ask; any
/// other gets `denied`.
pub mod aws {
    pub use crate::aws_bindings::pipeline::plugin::aws_credentials::{Credentials, get};
}

/// The import only mail notifiers use: `mail`.
pub mod mail_bindings {
    contract_bindings!("mail-imports",);
}

/// Sending mail through an SMTP server the stage was granted ([`Grant::MailServer`]):
/// [`mail::send`]. The host speaks SMTP (TLS, login); the plugin writes the message.
pub mod mail {
    pub use crate::mail_bindings::pipeline::plugin::mail::{Message, Security, Server, send};
}

/// Snapshot plugins: a [`snapshot::Source`] reports entities as they are now, a
/// [`snapshot::Sink`] (a [`Sink`] too) commits the files it stored.
pub mod snapshot {
    pub use crate::snapshot_bindings::imports::pipeline::plugin::git;
    pub use crate::snapshot_bindings::imports::pipeline::plugin::postgres;
    pub use crate::snapshot_bindings::sink::exports::pipeline::plugin::snapshot_sink::{
        ChangeSet, Guest as Sink,
    };
    pub use crate::snapshot_bindings::source::exports::pipeline::plugin::snapshot_source::{
        Entity, Guest as Source, Inventory,
    };
}

/// Export `$ty` as a snapshot source: `$ty` implements [`Plugin`] and
/// [`snapshot::Source`].
#[macro_export]
macro_rules! export_snapshot_source {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::plugin::export_plugin!($ty with_types_in $crate::bindings::plugin);
        #[cfg(target_arch = "wasm32")]
        $crate::snapshot_bindings::source::export_snapshot_source!($ty with_types_in $crate::snapshot_bindings::source);
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_exports() {
            let _ = <$ty as $crate::Plugin>::describe;
            let _ = <$ty as $crate::Plugin>::plan;
            let _ = <$ty as $crate::snapshot::Source>::entities;
        }
    };
}

/// Export `$ty` as a snapshot sink: `$ty` implements [`Plugin`], [`Sink`] and
/// [`snapshot::Sink`].
#[macro_export]
macro_rules! export_snapshot_sink {
    ($ty:ident) => {
        $crate::export_sink!($ty);
        #[cfg(target_arch = "wasm32")]
        $crate::snapshot_bindings::sink::export_snapshot_sink!($ty with_types_in $crate::snapshot_bindings::sink);
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_snapshot_exports() {
            let _ = <$ty as $crate::snapshot::Sink>::commit;
        }
    };
}

/// The WIT `types` interface: every record, enum and variant plugins exchange with the
/// host. (The plugin worlds' bindings use this module for it, so [`PluginError`] is the
/// SDK's own type, with a readable `Display`.)
pub mod types {
    pub use crate::bindings::host::pipeline::plugin::types::*;
    pub use crate::error::PluginError;
}

pub use types::{
    ArtifactMeta, ConfigKey, DirectoryGrant, Grant, PluginError, PluginInfo, PluginKind, StagePlan,
    Stored, ValueType,
};

/// Starting granted programs (`pg_dump`, …): [`process::spawn`], [`process::Command`],
/// [`process::Child`], [`process::ExitStatus`].
pub mod process {
    pub use crate::bindings::host::pipeline::plugin::process::{Child, Command, ExitStatus, spawn};

    /// `exited with code N`, or `was ended by a signal`.
    pub fn describe_exit(status: &ExitStatus) -> String {
        match status.code {
            Some(code) => format!("exited with code {code}"),
            None => "was ended by a signal".into(),
        }
    }

    /// `: <the program's last stderr lines>`, or nothing when it wrote none: for the end
    /// of an error message.
    pub fn stderr_tail(status: &ExitStatus) -> String {
        let tail = status.stderr_tail.trim();
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    }
}

/// 64 random bits for temporary names: std's `RandomState` is seeded from the platform's
/// random source (`wasi:random` in a plugin) and differs per instance; the time is mixed in.
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::time::{SystemTime, UNIX_EPOCH};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// The WASI stream types plugins receive, re-exported from the generated bindings.
pub mod streams {
    pub use crate::bindings::host::wasi::io::error::Error;
    pub use crate::bindings::host::wasi::io::poll::Pollable;
    pub use crate::bindings::host::wasi::io::streams::{InputStream, OutputStream, StreamError};
}
pub use streams::{InputStream, OutputStream, StreamError};

/// A source that can also restore what it dumped: `plan_restore`, `restore`,
/// `source_target`.
pub use bindings::restore::exports::pipeline::plugin::restore::{
    Guest as Restore, Report, RestoreOptions,
};
/// A sink plugin: `put`, `list`, `get`, `delete`.
pub use bindings::sink::exports::pipeline::plugin::sink::Guest as Sink;
/// A source plugin: writes one artifact per run (`dump`).
pub use bindings::source::exports::pipeline::plugin::source::Guest as Source;
/// A transform plugin: `encode` and its inverse `decode`.
pub use bindings::transform::exports::pipeline::plugin::transform::Guest as Transform;

/// What every plugin exports, whatever its kind: `describe` and `plan`.
pub use bindings::plugin::exports::pipeline::plugin::plugin::Guest as Plugin;

/// Export `$ty` as a source component: `$ty` implements [`Plugin`] and [`Source`].
///
/// Outside `wasm32` it exports nothing (so a plugin crate's unit tests build natively)
/// but still checks that `$ty` implements the traits.
#[macro_export]
macro_rules! export_source {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::plugin::export_plugin!($ty with_types_in $crate::bindings::plugin);
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::source::export_source!($ty with_types_in $crate::bindings::source);
        // Elsewhere, keep the plugin's code from counting as dead.
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_exports() {
            let _ = <$ty as $crate::Plugin>::describe;
            let _ = <$ty as $crate::Plugin>::plan;
            let _ = <$ty as $crate::Source>::dump;
        }
    };
}

/// Export `$ty` as a source that can restore what it dumps: `$ty` implements [`Plugin`],
/// [`Source`] and [`Restore`] (the host then offers `pipeline restore` and `verify
/// --restore-into` for it).
#[macro_export]
macro_rules! export_restorable_source {
    ($ty:ident) => {
        $crate::export_source!($ty);
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::restore::export_restore!($ty with_types_in $crate::bindings::restore);
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_restore_exports() {
            let _ = <$ty as $crate::Restore>::plan_restore;
            let _ = <$ty as $crate::Restore>::restore;
            let _ = <$ty as $crate::Restore>::source_target;
        }
    };
}

/// Export `$ty` as a transform component: `$ty` implements [`Plugin`] and [`Transform`].
///
/// Outside `wasm32` it exports nothing.
#[macro_export]
macro_rules! export_transform {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::plugin::export_plugin!($ty with_types_in $crate::bindings::plugin);
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::transform::export_transform!($ty with_types_in $crate::bindings::transform);
        // Elsewhere, keep the plugin's code from counting as dead.
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_exports() {
            let _ = <$ty as $crate::Plugin>::describe;
            let _ = <$ty as $crate::Plugin>::plan;
            let _ = <$ty as $crate::Transform>::encode;
            let _ = <$ty as $crate::Transform>::decode;
        }
    };
}

/// Export `$ty` as a sink component: `$ty` implements [`Plugin`] and [`Sink`].
///
/// Outside `wasm32` it exports nothing.
#[macro_export]
macro_rules! export_sink {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::plugin::export_plugin!($ty with_types_in $crate::bindings::plugin);
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::sink::export_sink!($ty with_types_in $crate::bindings::sink);
        // Elsewhere, keep the plugin's code from counting as dead.
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        fn __pipeline_plugin_exports() {
            let _ = <$ty as $crate::Plugin>::describe;
            let _ = <$ty as $crate::Plugin>::plan;
            let _ = <$ty as $crate::Sink>::put;
            let _ = <$ty as $crate::Sink>::list;
            let _ = <$ty as $crate::Sink>::get;
            let _ = <$ty as $crate::Sink>::delete;
        }
    };
}

/// Restores into a file or a directory: `restore.plan-restore` cannot see the target, so a
/// plan asks for a [`DirectoryGrant`] whose `path` is one of these markers, and the host
/// puts the target the user typed (`pipeline restore --to PATH`, made absolute and
/// normalized; `options.target` is that same path) in its place, for the restore call
/// only. See "Restoring into a file or a directory" in docs/plugins.md.
pub mod restore_target {
    /// The target itself (a directory to restore into): granted to any plugin, since the
    /// user named it.
    pub const PATH: &str = "{restore-target}";
    /// The directory holding the target (to write a temporary file beside it and rename
    /// it into place): granted to a built-in; a plugin file needs it in `allow.directories`.
    pub const PARENT: &str = "{restore-target-parent}";
}

/// Shorthand for a [`ConfigKey`].
pub fn config_key(
    name: &str,
    value_type: ValueType,
    required: bool,
    description: &str,
) -> ConfigKey {
    ConfigKey {
        name: name.to_owned(),
        value_type,
        required,
        description: description.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::WIT_VERSION;

    #[test]
    fn wit_version_is_the_wit_package_version() {
        let wit = include_str!("../wit/plugin.wit");
        assert!(wit.contains(&format!("\npackage pipeline:plugin@{WIT_VERSION};\n")));
        let parts: Vec<&str> = WIT_VERSION.split('.').collect();
        assert_eq!(parts.len(), 3, "{WIT_VERSION}");
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
            "{WIT_VERSION}"
        );
    }

    /// `contract_bindings!` spells the version in literals; they must all be this one.
    #[test]
    fn every_contract_name_in_the_sdk_is_at_wit_version() {
        let source = include_str!("lib.rs");
        let mut names = 0;
        for (at, _) in source.match_indices("pipeline:plugin/") {
            let rest = &source[at..];
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-:/@.".contains(c)))
                .unwrap_or(rest.len());
            let name = rest[..name_end].trim_end_matches('.');
            let Some((_, version)) = name.split_once('@') else {
                continue;
            };
            let version = version.split('/').next().unwrap_or(version);
            assert_eq!(version, WIT_VERSION, "{name} in plugins/sdk/src/lib.rs");
            names += 1;
        }
        assert!(names >= 10, "found only {names} versioned names");
    }
}
