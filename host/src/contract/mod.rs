//! Every version of the plugin contract this host runs, and one type per world that calls a
//! plugin of any of them in the current version's terms.
//!
//! The current contract (`wit/`) is bound in [`crate::bindings`]; each version shipped
//! before it is frozen under `wit/since/vX.Y.Z/` and bound here ([`v0_2`]), with its
//! imports served by the current capabilities. A plugin's version is read from the names of
//! the `pipeline:plugin` interfaces it imports and exports; the world types below
//! ([`Sink`], [`Source`], …) instantiate it with that version's bindings and convert what
//! crosses, so the rest of the host sees only current types. The model is Zed's extension
//! host (`crates/extension_host/src/wasm_host/wit.rs`).

pub mod v0_2;

use wasmtime::Store;
use wasmtime::component::{Component, Linker, Resource};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use crate::bindings as now;
pub use crate::bindings::notifier::exports::pipeline::plugin::notifier::{Event, RunReport};
use crate::bindings::restorable::exports::pipeline::plugin::restore::{Report, RestoreOptions};
use crate::bindings::snapshot_sink::exports::pipeline::plugin::snapshot_sink::ChangeSet;
use crate::bindings::snapshot_source::exports::pipeline::plugin::snapshot_source::{
    Entity, Inventory,
};
use crate::bindings::{ArtifactMeta, Plan, PluginError, PluginInfo, Stored};
use crate::capabilities::StoreState;

/// A contract version this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V0_2,
    V0_3,
}

/// What `check` names when it refuses a version.
pub const SUPPORTED: &str = "0.2.x and 0.3.x";

impl Version {
    /// The version of a `X.Y.Z` string, if this host runs it: 0.x versions are
    /// compatible within a minor version (semver), so 0.2.5 is run as 0.2.
    pub fn parse(version: &str) -> Option<Version> {
        let mut it = version.split('.');
        let major: u64 = it.next()?.parse().ok()?;
        let minor: u64 = it.next()?.parse().ok()?;
        // A patch, if given, must be a number too.
        if let Some(patch) = it.next() {
            patch.parse::<u64>().ok()?;
        }
        match (major, minor) {
            (0, 2) => Some(Version::V0_2),
            (0, 3) => Some(Version::V0_3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_2 => "0.2",
            Version::V0_3 => "0.3",
        }
    }
}

/// The version of `pipeline:plugin` a component was built against, as its import and
/// export names carry it (`pipeline:plugin/sink@0.2.0`): one version, run by this host.
/// The error names what the component was built for and what this host runs.
pub fn version_of(engine: &wasmtime::Engine, component: &Component) -> Result<Version, String> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.imports(engine).map(|(n, _)| n.to_string()))
        .collect();
    detect(names.iter().map(String::as_str))
}

/// [`version_of`] over interface names.
pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Version, String> {
    let mut versions: Vec<&str> = names
        .into_iter()
        .filter_map(|n| n.strip_prefix("pipeline:plugin/"))
        .map(|rest| rest.split_once('@').map_or("", |(_, v)| v))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.as_slice() {
        [] => Err("it imports and exports no pipeline:plugin interface".into()),
        [v] => Version::parse(v).ok_or_else(|| {
            format!(
                "the plugin was built against pipeline:plugin@{v}, which this host (pipeline:plugin@{}) cannot run: it runs plugins built for {SUPPORTED}",
                now::WIT_VERSION
            )
        }),
        several => Err(format!(
            "the plugin mixes versions of pipeline:plugin ({}); it must be built against one",
            several.join(", ")
        )),
    }
}

fn version(store: &Store<StoreState>, component: &Component) -> wasmtime::Result<Version> {
    version_of(store.engine(), component).map_err(wasmtime::Error::msg)
}

type Call<T> = wasmtime::Result<Result<T, PluginError>>;

/// Defines a world's type: one variant per version, instantiated with the component's own
/// version, plus the `plugin` interface (`describe`, `plan`) every world exports.
macro_rules! world {
    ($(#[$doc:meta])* $name:ident, $now:ty, $old:ty) => {
        $(#[$doc])*
        pub enum $name {
            V0_2($old),
            V0_3($now),
        }

        impl $name {
            pub fn instantiate(
                store: &mut Store<StoreState>,
                component: &Component,
                linker: &Linker<StoreState>,
            ) -> wasmtime::Result<$name> {
                Ok(match version(store, component)? {
                    Version::V0_2 => {
                        $name::V0_2(<$old>::instantiate(&mut *store, component, linker)?)
                    }
                    Version::V0_3 => {
                        $name::V0_3(<$now>::instantiate(&mut *store, component, linker)?)
                    }
                })
            }

            pub fn version(&self) -> Version {
                match self {
                    $name::V0_2(_) => Version::V0_2,
                    $name::V0_3(_) => Version::V0_3,
                }
            }

            pub fn call_describe(
                &self,
                store: &mut Store<StoreState>,
            ) -> wasmtime::Result<PluginInfo> {
                match self {
                    $name::V0_2(p) => p.pipeline_plugin_plugin().call_describe(store).map(v0_2::info),
                    $name::V0_3(p) => p.pipeline_plugin_plugin().call_describe(store),
                }
            }

            pub fn call_plan(&self, store: &mut Store<StoreState>, config: &str) -> Call<Plan> {
                match self {
                    $name::V0_2(p) => v0_2::outcome(
                        p.pipeline_plugin_plugin().call_plan(store, config),
                        v0_2::plan,
                    ),
                    $name::V0_3(p) => p.pipeline_plugin_plugin().call_plan(store, config),
                }
            }
        }
    };
}

world!(
    /// A source (`dump`).
    Source,
    now::source::SourcePlugin,
    v0_2::source::SourcePlugin
);
world!(
    /// A source that can restore (`plan-restore`, `restore`, `source-target`).
    Restorable,
    now::restorable::RestorableSourcePlugin,
    v0_2::restorable::RestorableSourcePlugin
);
world!(
    /// A transform (`encode`, `decode`).
    Transform,
    now::transform::TransformPlugin,
    v0_2::transform::TransformPlugin
);
world!(
    /// A sink (`put`, `list`, `get`, `delete`).
    Sink,
    now::sink::SinkPlugin,
    v0_2::sink::SinkPlugin
);
world!(
    /// A snapshot source (`entities`).
    SnapshotSource,
    now::snapshot_source::SnapshotSourcePlugin,
    v0_2::snapshot_source::SnapshotSourcePlugin
);
world!(
    /// A snapshot sink (a sink, and `commit`).
    SnapshotSink,
    now::snapshot_sink::SnapshotSinkPlugin,
    v0_2::snapshot_sink::SnapshotSinkPlugin
);

/// A notifier (`notify`). Notifiers came with contract 0.3, so there is no earlier
/// version to adapt.
pub struct Notifier(now::notifier::NotifierPlugin);

impl Notifier {
    pub fn instantiate(
        store: &mut Store<StoreState>,
        component: &Component,
        linker: &Linker<StoreState>,
    ) -> wasmtime::Result<Notifier> {
        match version(store, component)? {
            Version::V0_3 => Ok(Notifier(now::notifier::NotifierPlugin::instantiate(
                &mut *store,
                component,
                linker,
            )?)),
            v => Err(wasmtime::Error::msg(format!(
                "notifiers came with pipeline:plugin@0.3; this plugin was built against {}",
                v.as_str()
            ))),
        }
    }

    pub fn call_describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<PluginInfo> {
        self.0.pipeline_plugin_plugin().call_describe(store)
    }

    pub fn call_plan(&self, store: &mut Store<StoreState>, config: &str) -> Call<Plan> {
        self.0.pipeline_plugin_plugin().call_plan(store, config)
    }

    pub fn call_notify(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        report: &RunReport,
    ) -> Call<()> {
        self.0
            .pipeline_plugin_notifier()
            .call_notify(store, config, report)
    }
}

impl Source {
    pub fn call_dump(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        meta: &ArtifactMeta,
        out: Resource<DynOutputStream>,
    ) -> Call<()> {
        match self {
            Source::V0_2(p) => v0_2::outcome(
                p.pipeline_plugin_source()
                    .call_dump(store, config, &v0_2::meta(meta), out),
                |()| (),
            ),
            Source::V0_3(p) => p
                .pipeline_plugin_source()
                .call_dump(store, config, meta, out),
        }
    }
}

impl Restorable {
    pub fn call_plan_restore(&self, store: &mut Store<StoreState>, config: &str) -> Call<Plan> {
        match self {
            Restorable::V0_2(p) => v0_2::outcome(
                p.pipeline_plugin_restore().call_plan_restore(store, config),
                v0_2::plan,
            ),
            Restorable::V0_3(p) => p.pipeline_plugin_restore().call_plan_restore(store, config),
        }
    }

    pub fn call_restore(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        options: &RestoreOptions,
        data: Resource<DynInputStream>,
    ) -> Call<Report> {
        match self {
            Restorable::V0_2(p) => {
                use v0_2::restorable::exports::pipeline::plugin::restore as old;
                let options = old::RestoreOptions {
                    target: options.target.clone(),
                    allow_non_empty: options.allow_non_empty,
                };
                v0_2::outcome(
                    p.pipeline_plugin_restore()
                        .call_restore(store, config, &options, data),
                    |r| Report { facts: r.facts },
                )
            }
            Restorable::V0_3(p) => p
                .pipeline_plugin_restore()
                .call_restore(store, config, options, data),
        }
    }

    /// What the configuration backs up; a 0.2 plugin cannot say (none).
    pub fn call_source_target(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
    ) -> Call<Option<String>> {
        match self {
            Restorable::V0_2(_) => Ok(Ok(None)),
            Restorable::V0_3(p) => p
                .pipeline_plugin_restore()
                .call_source_target(store, config),
        }
    }
}

impl Transform {
    pub fn call_encode(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        input: Resource<DynInputStream>,
        out: Resource<DynOutputStream>,
    ) -> Call<()> {
        match self {
            Transform::V0_2(p) => v0_2::outcome(
                p.pipeline_plugin_transform()
                    .call_encode(store, config, input, out),
                |()| (),
            ),
            Transform::V0_3(p) => p
                .pipeline_plugin_transform()
                .call_encode(store, config, input, out),
        }
    }

    pub fn call_decode(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        input: Resource<DynInputStream>,
        out: Resource<DynOutputStream>,
    ) -> Call<()> {
        match self {
            Transform::V0_2(p) => v0_2::outcome(
                p.pipeline_plugin_transform()
                    .call_decode(store, config, input, out),
                |()| (),
            ),
            Transform::V0_3(p) => p
                .pipeline_plugin_transform()
                .call_decode(store, config, input, out),
        }
    }
}

/// The `sink` interface of the sink worlds, whichever version.
macro_rules! sink_calls {
    ($name:ident) => {
        impl $name {
            pub fn call_put(
                &self,
                store: &mut Store<StoreState>,
                config: &str,
                meta: &ArtifactMeta,
                data: Resource<DynInputStream>,
            ) -> Call<Stored> {
                match self {
                    $name::V0_2(p) => v0_2::outcome(
                        p.pipeline_plugin_sink()
                            .call_put(store, config, &v0_2::meta(meta), data),
                        v0_2::stored,
                    ),
                    $name::V0_3(p) => p.pipeline_plugin_sink().call_put(store, config, meta, data),
                }
            }

            pub fn call_list(
                &self,
                store: &mut Store<StoreState>,
                config: &str,
                prefix: &str,
            ) -> Call<Vec<Stored>> {
                match self {
                    $name::V0_2(p) => v0_2::outcome(
                        p.pipeline_plugin_sink().call_list(store, config, prefix),
                        |l| l.into_iter().map(v0_2::stored).collect(),
                    ),
                    $name::V0_3(p) => p.pipeline_plugin_sink().call_list(store, config, prefix),
                }
            }

            /// A 0.2 sink is asked for the artifact by name only.
            pub fn call_get(
                &self,
                store: &mut Store<StoreState>,
                config: &str,
                artifact: &Stored,
                out: Resource<DynOutputStream>,
            ) -> Call<u64> {
                match self {
                    $name::V0_2(p) => v0_2::outcome(
                        p.pipeline_plugin_sink()
                            .call_get(store, config, &artifact.name, out),
                        |n| n,
                    ),
                    $name::V0_3(p) => p
                        .pipeline_plugin_sink()
                        .call_get(store, config, artifact, out),
                }
            }

            /// A 0.2 sink is asked to delete by name only.
            pub fn call_delete(
                &self,
                store: &mut Store<StoreState>,
                config: &str,
                artifact: &Stored,
            ) -> Call<()> {
                match self {
                    $name::V0_2(p) => v0_2::outcome(
                        p.pipeline_plugin_sink()
                            .call_delete(store, config, &artifact.name),
                        |()| (),
                    ),
                    $name::V0_3(p) => p
                        .pipeline_plugin_sink()
                        .call_delete(store, config, artifact),
                }
            }
        }
    };
}

sink_calls!(Sink);
sink_calls!(SnapshotSink);

impl SnapshotSink {
    pub fn call_commit(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        changes: &[ChangeSet],
    ) -> Call<Vec<String>> {
        match self {
            SnapshotSink::V0_2(p) => {
                use v0_2::snapshot_sink::exports::pipeline::plugin::snapshot_sink as old;
                let changes: Vec<old::ChangeSet> = changes
                    .iter()
                    .map(|c| old::ChangeSet {
                        files: c.files.clone(),
                        message: c.message.clone(),
                    })
                    .collect();
                v0_2::outcome(
                    p.pipeline_plugin_snapshot_sink()
                        .call_commit(store, config, &changes),
                    |ids| ids,
                )
            }
            SnapshotSink::V0_3(p) => p
                .pipeline_plugin_snapshot_sink()
                .call_commit(store, config, changes),
        }
    }
}

impl SnapshotSource {
    pub fn call_entities(&self, store: &mut Store<StoreState>, config: &str) -> Call<Inventory> {
        match self {
            SnapshotSource::V0_2(p) => v0_2::outcome(
                p.pipeline_plugin_snapshot_source()
                    .call_entities(store, config),
                |i| Inventory {
                    types: i.types,
                    entities: i
                        .entities
                        .into_iter()
                        .map(|e| Entity {
                            entity_type: e.entity_type,
                            entity_id: e.entity_id,
                            entity_name: e.entity_name,
                            data: e.data,
                            user: e.user,
                        })
                        .collect(),
                },
            ),
            SnapshotSource::V0_3(p) => p
                .pipeline_plugin_snapshot_source()
                .call_entities(store, config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Version, detect};

    #[test]
    fn versions_0_2_and_0_3_run_and_others_are_refused_by_name() {
        assert_eq!(
            detect(["pipeline:plugin/sink@0.2.0", "pipeline:plugin/log@0.2.0"]),
            Ok(Version::V0_2)
        );
        assert_eq!(
            detect(["wasi:io/streams@0.2.12", "pipeline:plugin/sink@0.2.7"]),
            Ok(Version::V0_2)
        );
        assert_eq!(detect(["pipeline:plugin/sink@0.3.0"]), Ok(Version::V0_3));
        assert_eq!(detect(["pipeline:plugin/sink@0.3.4"]), Ok(Version::V0_3));
        for refused in ["0.1.0", "1.0.0", "0.4.0", "", "0.x.0"] {
            let err = detect([format!("pipeline:plugin/sink@{refused}").as_str()]).unwrap_err();
            assert!(
                err.contains(&format!("pipeline:plugin@{refused},"))
                    && err.contains("0.2.x and 0.3.x"),
                "{refused}: {err}"
            );
        }
        let err = detect(["pipeline:plugin/sink@0.2.0", "pipeline:plugin/log@0.3.0"]).unwrap_err();
        assert!(err.contains("0.2.0, 0.3.0"), "{err}");
        let err = detect(["wasi:io/streams@0.2.12"]).unwrap_err();
        assert!(err.contains("no pipeline:plugin interface"), "{err}");
    }

    #[test]
    fn version_strings() {
        assert_eq!(Version::parse("0.2.0"), Some(Version::V0_2));
        assert_eq!(Version::parse("0.3"), Some(Version::V0_3));
        assert_eq!(Version::parse("0.3.x"), None);
        assert_eq!(Version::parse("0.1.3"), None);
        assert_eq!(Version::V0_2.as_str(), "0.2");
    }
}
