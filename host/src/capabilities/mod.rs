//! What a plugin can reach, one module per capability (Spin's "factors" are the model).
//!
//! A capability module owns everything the host does about it: the host interfaces it
//! links (its WIT binding), the `allow` keys of a stage it reads, how it admits what a
//! plugin's plan asks for, what it resolves into the stage's [`Grants`], the state each
//! plugin instance keeps, the WASI setup it needs, and the hint `plugins inspect` shows for
//! the interfaces it serves. Everything else (the engine's linker and stores, `stages`'
//! grant check, the config parser, `plugins inspect`) loops over the registry at the end
//! of this file: adding a capability is one module, one line there, and one WIT file.
//!
//! Every plugin instance gets its own [`StoreState`], built from its stage's grants:
//! nothing is shared between stages.

pub mod aws;
pub mod filesystem;
pub mod git;
pub mod http;
pub mod log;
pub mod mail;
pub mod postgres;
pub mod process;
pub mod sockets;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::Grant;
use crate::config::{ConfigError, Loc, Pipeline, PluginRef, Stage};
use crate::limits::MemoryLimiter;
use crate::redact::Redactor;

/// One capability. Every method has a default that does nothing, so a module implements
/// only the parts it has.
pub trait Capability {
    /// The keys of a stage's `allow` table this capability reads, each a list of strings.
    const ALLOW_KEYS: &'static [&'static str] = &[];
    /// The interfaces it serves (`pipeline:plugin/git`, `wasi:http/outgoing-handler`; a
    /// name ending in `/` is a prefix), each with what it means for the pipeline file.
    const IMPORTS: &'static [(&'static str, &'static str)] = &[];
    /// What a stage was granted, resolved (absolute paths, executables, credentials).
    type Granted: Default + Clone + std::fmt::Debug + Send + Sync;
    /// What one plugin instance keeps (a connection, a filter).
    type State: Send;

    /// Adds the host side of its interfaces to the linker (the current contract; older
    /// contracts are adapted onto it).
    fn link(_linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        Ok(())
    }

    /// Reads what the pipeline file grants the stage (its `allow` keys), checked.
    fn allowed(
        _cx: &mut GrantContext<'_>,
        _granted: &mut Self::Granted,
    ) -> Result<(), ConfigError> {
        Ok(())
    }

    /// A grant the stage's plan asks for: `Ok(true)` when it is this capability's and was
    /// admitted (a built-in gets what it asks; a plugin file only what the file allows),
    /// `Ok(false)` when it is another capability's.
    fn admit(
        _cx: &mut GrantContext<'_>,
        _asked: &Grant,
        _granted: &mut Self::Granted,
    ) -> Result<bool, ConfigError> {
        Ok(false)
    }

    /// After every ask was admitted: resolve what was granted (programs on `PATH`).
    fn finish(_cx: &mut GrantContext<'_>, _granted: &mut Self::Granted) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Sets up the WASI context of a new instance (preopens, socket checks).
    fn wasi(
        _builder: &mut WasiCtxBuilder,
        _stage: &str,
        _granted: &Self::Granted,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// The state of a new instance.
    fn state(stage: &str, granted: &Self::Granted) -> Self::State;
}

/// What a capability sees of the stage it grants.
pub struct GrantContext<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a Stage,
    /// The stage's configuration as the plugin receives it.
    pub config: &'a Map<String, Json>,
    /// Values found while granting that are secrets (credentials) are added here.
    pub secrets: &'a mut Redactor,
    /// How to install a program a built-in runs, for the message saying it is missing.
    pub install_hint: fn(&str) -> &'static str,
    /// Where pipeline keeps its own state (what, where): never granted read-write to a
    /// plugin file.
    pub protected: Vec<(&'static str, PathBuf)>,
}

impl GrantContext<'_> {
    /// Built-in plugins get what their plan asks for; a plugin file only what the file grants.
    pub fn builtin(&self) -> bool {
        matches!(self.stage.plugin, PluginRef::Builtin(_))
    }

    /// "sink local", as logs and errors name the stage.
    pub fn label(&self) -> String {
        self.stage.label()
    }

    /// An error at `loc` (the stage's table when none) about `key` under the stage.
    pub fn error(&self, loc: Option<Loc>, key: &str, message: String) -> ConfigError {
        let key = if key.is_empty() {
            self.stage.path.clone()
        } else {
            format!("{}.{key}", self.stage.path)
        };
        self.pipeline
            .error_at(Some(loc.unwrap_or(self.stage.loc)), &key, message)
    }

    /// The values of an `allow` key, with where each stands.
    pub fn allowed(&self, key: &str) -> impl Iterator<Item = &(String, Loc)> {
        self.stage.allow.values(key)
    }

    /// A plugin file's plan asks for something the pipeline file does not grant: say what,
    /// and the `allow` line that would grant it.
    pub fn refuse(&self, needs: &str, key: &str, value: &str) -> ConfigError {
        self.error(
            None,
            "allow",
            format!(
                "stage `{}` (plugin {}) needs {needs}, which the pipeline file does not grant; \
                 if you trust it with that, add to the stage: allow = {{ {key} = [\"{value}\"] }}",
                self.label(),
                self.stage.plugin
            ),
        )
    }

    /// `path` normalized ([`filesystem::normalize`]), or an error naming the stage, the
    /// key and why; an `allow` entry that is the whole file system is refused.
    pub fn normalize(
        &self,
        loc: Option<Loc>,
        key: &str,
        path: &str,
    ) -> Result<PathBuf, ConfigError> {
        let normal = filesystem::normalize(Path::new(path)).map_err(|e| {
            self.error(
                loc,
                key,
                format!(
                    "stage `{}`: cannot resolve the path {path}: {e}",
                    self.label()
                ),
            )
        })?;
        if normal.parent().is_none() && key.starts_with("allow.") {
            return Err(self.error(
                loc,
                key,
                format!(
                    "stage `{}`: {path} is the whole file system, which is never granted; \
                     name the directory the stage needs",
                    self.label()
                ),
            ));
        }
        Ok(normal)
    }
}

/// The state of one plugin instance.
pub struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: MemoryLimiter,
    /// "sink local": how this stage is named in logs and errors.
    pub(crate) stage: String,
    /// The stage's `plugin` as the pipeline file gives it, when known: limit messages
    /// name it.
    pub(crate) plugin: Option<String>,
    pub(crate) grants: Grants,
    /// What the plugin wrote to its own stdout/stderr (panics); logged when it finishes.
    pub(crate) stderr: MemoryOutputPipe,
    /// Each capability's state for this instance.
    pub(crate) caps: States,
}

impl StoreState {
    /// The state of a new instance of `stage` with `grants`; `wasi` was set up by [`wasi`].
    pub fn new(
        stage: &str,
        grants: &Grants,
        wasi: WasiCtx,
        limits: MemoryLimiter,
        stderr: MemoryOutputPipe,
    ) -> StoreState {
        StoreState {
            wasi,
            table: Default::default(),
            limits,
            stage: stage.to_string(),
            plugin: None,
            grants: grants.clone(),
            stderr,
            caps: States::new(stage, grants),
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::host::pipeline::plugin::types::Host for StoreState {}

/// Interfaces no capability serves but a plugin may import, and what they give.
const WASI_HINTS: &[(&str, &str)] = &[(
    "wasi:cli/environment",
    "environment variables: always empty",
)];

/// Whether an import `name@version` is the interface (or prefix) `served`.
fn serves(served: &str, import: &str) -> bool {
    let iface = import.split('@').next().unwrap_or(import);
    match served.strip_suffix('/') {
        Some(prefix) => iface.starts_with(prefix) && iface[prefix.len()..].starts_with('/'),
        None => iface == served,
    }
}

/// Refuses an `allow` key that no capability reads (a typo would otherwise grant nothing,
/// silently), naming where it stands and the keys that exist. Every stage is checked,
/// native codecs included.
pub fn check_allow_keys(pipeline: &Pipeline, stage: &Stage) -> Result<(), ConfigError> {
    let known = allow_keys();
    match stage
        .allow
        .keys
        .iter()
        .find(|(k, _)| !known.contains(&k.as_str()))
    {
        Some((key, at)) => Err(pipeline.error_at(
            Some(at.loc),
            &format!("{}.allow.{key}", stage.path),
            format!("unknown key (expected one of: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Declares the registry: the [`Grants`] and [`States`] with one field per capability, and
/// the loops over every capability that the rest of the host calls.
macro_rules! registry {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// The grants of one stage, resolved: one field per capability.
        #[derive(Debug, Clone, Default)]
        pub struct Grants {
            $(pub $field: <$cap as Capability>::Granted,)*
        }

        /// The per-instance state of every capability.
        pub struct States {
            $(pub $field: <$cap as Capability>::State,)*
        }

        impl States {
            fn new(stage: &str, grants: &Grants) -> States {
                States { $($field: <$cap as Capability>::state(stage, &grants.$field),)* }
            }
        }

        /// Links every capability's host interfaces.
        pub fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
            $(<$cap as Capability>::link(linker)?;)*
            Ok(())
        }

        /// Sets up the WASI context of a new instance of `stage`.
        pub fn wasi(builder: &mut WasiCtxBuilder, stage: &str, grants: &Grants) -> anyhow::Result<()> {
            $(<$cap as Capability>::wasi(builder, stage, &grants.$field)?;)*
            Ok(())
        }

        /// Every `allow` key some capability reads.
        pub fn allow_keys() -> Vec<&'static str> {
            let mut keys = Vec::new();
            $(keys.extend_from_slice(<$cap as Capability>::ALLOW_KEYS);)*
            keys
        }

        /// The grants of a stage: what the file allows, then every ask of its plan admitted
        /// by the capability it belongs to, or refused before anything runs.
        pub fn grant(cx: &mut GrantContext<'_>, asks: &[Grant]) -> Result<Grants, ConfigError> {
            check_allow_keys(cx.pipeline, cx.stage)?;
            let mut grants = Grants::default();
            $(<$cap as Capability>::allowed(cx, &mut grants.$field)?;)*
            'asks: for asked in asks {
                $(if <$cap as Capability>::admit(cx, asked, &mut grants.$field)? {
                    continue 'asks;
                })*
                return Err(cx.error(
                    None,
                    "",
                    format!("stage `{}`: the plugin asks for {asked:?}, which no capability of this host serves", cx.label()),
                ));
            }
            $(<$cap as Capability>::finish(cx, &mut grants.$field)?;)*
            Ok(grants)
        }

        /// What an imported interface means for the pipeline file (`plugins inspect`).
        pub fn hint(import: &str) -> Option<&'static str> {
            let served = [$(<$cap as Capability>::IMPORTS,)* WASI_HINTS];
            served
                .iter()
                .flat_map(|list| list.iter())
                .find(|(name, _)| serves(name, import))
                .map(|(_, hint)| *hint)
        }
    };
}

registry! {
    filesystem: filesystem::Filesystem,
    sockets: sockets::Sockets,
    log: log::Log,
    process: process::Process,
    http: http::Http,
    postgres: postgres::Postgres,
    git: git::Git,
    aws: aws::Aws,
    mail: mail::Mail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_is_served_by_name_or_prefix_whatever_its_version() {
        assert!(serves("pipeline:plugin/git", "pipeline:plugin/git@0.2.0"));
        assert!(!serves("pipeline:plugin/git", "pipeline:plugin/gitx@0.2.0"));
        assert!(serves("wasi:sockets/", "wasi:sockets/tcp@0.2.6"));
        assert!(!serves("wasi:sockets/", "wasi:socketsx/tcp@0.2.6"));
    }

    #[test]
    fn every_capability_interface_has_a_hint_and_allow_keys_are_unique() {
        for import in [
            "pipeline:plugin/process@0.2.0",
            "pipeline:plugin/postgres@0.2.0",
            "pipeline:plugin/git@0.2.0",
            "pipeline:plugin/aws-credentials@0.2.0",
            "pipeline:plugin/mail@0.3.0",
            "pipeline:plugin/log@0.2.0",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:cli/environment@0.2.6",
        ] {
            assert!(hint(import).is_some(), "{import} has no hint");
        }
        let keys = allow_keys();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "{keys:?}");
    }
}
