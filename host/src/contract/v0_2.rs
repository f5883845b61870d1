//! Contract 0.2.0, as it shipped (`wit/since/v0.2.0`): its bindings, its imports served by
//! the current capabilities, and conversions of its types to the current ones.
//!
//! What a 0.2 plugin cannot say, it does not get: `get`/`delete` receive only the name,
//! `source-target` is none, no grant asks for `aws-credentials` (the host still serves the
//! import to a stage it granted them to), `stored.locked-until-ms` is none.

use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use crate::bindings as now;
use crate::capabilities::StoreState;
use crate::capabilities::process::Child;

/// The imports every 0.2 plugin may use (log, process) and the shared types.
pub mod host {
    wasmtime::component::bindgen!({
        path: "../wit/since/v0.2.0",
        world: "pipeline:plugin/host",
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::sync::io,
            "pipeline:plugin/process.child": crate::capabilities::process::Child,
        },
        require_store_data_send: true,
    });
}

macro_rules! plugin_world {
    ($module:ident, $world:literal) => {
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit/since/v0.2.0",
                world: $world,
                with: {
                    "wasi:io": wasmtime_wasi::p2::bindings::sync::io,
                    "pipeline:plugin/types": crate::contract::v0_2::host::pipeline::plugin::types,
                    "pipeline:plugin/log": crate::contract::v0_2::host::pipeline::plugin::log,
                    "pipeline:plugin/process": crate::contract::v0_2::host::pipeline::plugin::process,
                },
                require_store_data_send: true,
            });
        }
    };
}

plugin_world!(source, "pipeline:plugin/source-plugin");
plugin_world!(transform, "pipeline:plugin/transform-plugin");
plugin_world!(sink, "pipeline:plugin/sink-plugin");
plugin_world!(restorable, "pipeline:plugin/restorable-source-plugin");
plugin_world!(snapshot_source, "pipeline:plugin/snapshot-source-plugin");
plugin_world!(snapshot_sink, "pipeline:plugin/snapshot-sink-plugin");
plugin_world!(aws_sink, "pipeline:plugin/aws-sink-plugin");

use host::pipeline::plugin::{log as old_log, process as old_process, types as old};
use snapshot_sink::pipeline::plugin::git as old_git;
use snapshot_source::pipeline::plugin::postgres as old_postgres;

/// Links the 0.2.0 imports (`types`, `log`, `process`, `postgres`, `git`,
/// `aws-credentials`), each served by the current capability.
pub fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    old::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    old_log::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    old_process::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    old_postgres::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    old_git::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    aws_sink::pipeline::plugin::aws_credentials::add_to_linker::<StoreState, HasSelf<StoreState>>(
        linker,
        |s| s,
    )?;
    Ok(())
}

// ---- imports: 0.2 calls served by the current Host implementations ----

impl old::Host for StoreState {}

impl old_log::Host for StoreState {
    fn log(&mut self, level: old_log::Level, message: String) {
        use now::host::pipeline::plugin::log::{Host, Level};
        let level = match level {
            old_log::Level::Error => Level::Error,
            old_log::Level::Warn => Level::Warn,
            old_log::Level::Info => Level::Info,
            old_log::Level::Debug => Level::Debug,
        };
        Host::log(self, level, message)
    }
}

fn exit_status(s: now::host::pipeline::plugin::process::ExitStatus) -> old_process::ExitStatus {
    old_process::ExitStatus {
        code: s.code,
        stderr_tail: s.stderr_tail,
    }
}

impl old_process::Host for StoreState {
    fn spawn(
        &mut self,
        command: old_process::Command,
    ) -> Result<Resource<Child>, old::PluginError> {
        use now::host::pipeline::plugin::process::{Command, Host};
        let command = Command {
            program: command.program,
            args: command.args,
            env: command.env,
            stdin: command.stdin,
        };
        Host::spawn(self, command).map_err(error_back)
    }
}

// `child` is the same Rust type in both versions: a 0.2 handle is a current one.
impl old_process::HostChild for StoreState {
    fn take_stdout(&mut self, child: Resource<Child>) -> Option<Resource<DynInputStream>> {
        now::host::pipeline::plugin::process::HostChild::take_stdout(self, child)
    }

    fn take_stdin(&mut self, child: Resource<Child>) -> Option<Resource<DynOutputStream>> {
        now::host::pipeline::plugin::process::HostChild::take_stdin(self, child)
    }

    fn wait(&mut self, child: Resource<Child>) -> old_process::ExitStatus {
        exit_status(now::host::pipeline::plugin::process::HostChild::wait(
            self, child,
        ))
    }

    fn kill(&mut self, child: Resource<Child>) -> old_process::ExitStatus {
        exit_status(now::host::pipeline::plugin::process::HostChild::kill(
            self, child,
        ))
    }

    fn drop(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        now::host::pipeline::plugin::process::HostChild::drop(self, child)
    }
}

impl old_postgres::Host for StoreState {
    fn query(&mut self, sql: String) -> Result<Vec<Vec<Option<String>>>, old::PluginError> {
        now::snapshot_source::pipeline::plugin::postgres::Host::query(self, sql).map_err(error_back)
    }
}

impl old_git::Host for StoreState {
    fn commit(
        &mut self,
        repository: String,
        request: old_git::CommitRequest,
    ) -> Result<Option<String>, old::PluginError> {
        use now::snapshot_sink::pipeline::plugin::git::{CommitRequest, Host, Person, Signing};
        let person = |p: old_git::Person| Person {
            name: p.name,
            email: p.email,
        };
        let request = CommitRequest {
            paths: request.paths,
            message: request.message,
            author: person(request.author),
            committer: person(request.committer),
            signing: request.signing.map(|s| match s {
                old_git::Signing::Gpg(key) => Signing::Gpg(key),
                old_git::Signing::Ssh(key) => Signing::Ssh(key),
            }),
        };
        Host::commit(self, repository, request).map_err(error_back)
    }

    fn push(
        &mut self,
        repository: String,
        remote: String,
        branch: Option<String>,
    ) -> Result<(), old::PluginError> {
        now::snapshot_sink::pipeline::plugin::git::Host::push(self, repository, remote, branch)
            .map_err(error_back)
    }
}

impl aws_sink::pipeline::plugin::aws_credentials::Host for StoreState {
    fn get(
        &mut self,
    ) -> Result<aws_sink::pipeline::plugin::aws_credentials::Credentials, old::PluginError> {
        let c = now::aws_sink::pipeline::plugin::aws_credentials::Host::get(self)
            .map_err(error_back)?;
        Ok(aws_sink::pipeline::plugin::aws_credentials::Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
            expires_ms: c.expires_ms,
        })
    }
}

// ---- types: 0.2 ↔ current ----

/// A current error as a 0.2 plugin receives it (same cases).
fn error_back(e: now::PluginError) -> old::PluginError {
    match e {
        now::PluginError::Config(m) => old::PluginError::Config(m),
        now::PluginError::NotFound(m) => old::PluginError::NotFound(m),
        now::PluginError::Denied(m) => old::PluginError::Denied(m),
        // 0.2 has no `locked`; the host never returns it to a plugin, but if it did,
        // `denied` is the nearest.
        now::PluginError::Locked(m) => old::PluginError::Denied(m),
        now::PluginError::Io(m) => old::PluginError::Io(m),
        now::PluginError::Other(m) => old::PluginError::Other(m),
    }
}

/// A 0.2 plugin's error as the host handles it (same cases).
pub fn error(e: old::PluginError) -> now::PluginError {
    match e {
        old::PluginError::Config(m) => now::PluginError::Config(m),
        old::PluginError::NotFound(m) => now::PluginError::NotFound(m),
        old::PluginError::Denied(m) => now::PluginError::Denied(m),
        old::PluginError::Io(m) => now::PluginError::Io(m),
        old::PluginError::Other(m) => now::PluginError::Other(m),
    }
}

/// A 0.2 call's outcome in current types.
pub fn outcome<T, U>(
    r: wasmtime::Result<Result<T, old::PluginError>>,
    convert: impl FnOnce(T) -> U,
) -> wasmtime::Result<Result<U, now::PluginError>> {
    r.map(|r| r.map(convert).map_err(error))
}

/// `capabilities` is dropped: nothing used it.
pub fn info(i: old::PluginInfo) -> now::PluginInfo {
    now::PluginInfo {
        name: i.name,
        version: i.version,
        kind: match i.kind {
            old::PluginKind::Source => now::PluginKind::Source,
            old::PluginKind::Transform => now::PluginKind::Transform,
            old::PluginKind::Sink => now::PluginKind::Sink,
        },
        description: i.description,
        config_keys: i
            .config_keys
            .into_iter()
            .map(|k| now::ConfigKey {
                name: k.name,
                value_type: match k.value_type {
                    old::ValueType::Text => now::ValueType::Text,
                    old::ValueType::Integer => now::ValueType::Integer,
                    old::ValueType::Boolean => now::ValueType::Boolean,
                    old::ValueType::Path => now::ValueType::Path,
                    old::ValueType::Secret => now::ValueType::Secret,
                    old::ValueType::TextList => now::ValueType::TextList,
                    old::ValueType::Table => now::ValueType::Table,
                },
                required: k.required,
                description: k.description,
            })
            .collect(),
    }
}

pub fn plan(p: old::StagePlan) -> now::Plan {
    now::Plan {
        extension: p.extension,
        content_type: p.content_type,
        grants: p
            .grants
            .into_iter()
            .map(|g| match g {
                old::Grant::Directory(d) => now::Grant::Directory(now::DirectoryGrant {
                    path: d.path,
                    writable: d.writable,
                    create: d.create,
                }),
                old::Grant::Program(p) => now::Grant::Program(p),
                old::Grant::Host(h) => now::Grant::Host(h),
                old::Grant::Repository(r) => now::Grant::Repository(r),
                old::Grant::Database(d) => now::Grant::Database(d),
            })
            .collect(),
    }
}

/// `checksum` is dropped (nothing used it); a 0.2 sink locks nothing it can tell of.
pub fn stored(s: old::Stored) -> now::Stored {
    now::Stored {
        name: s.name,
        size: s.size,
        created_ms: s.created_ms,
        locked_until_ms: None,
    }
}

pub fn meta(m: &now::ArtifactMeta) -> old::ArtifactMeta {
    old::ArtifactMeta {
        name: m.name.clone(),
        content_type: m.content_type.clone(),
        created_ms: m.created_ms,
        size: m.size,
        labels: m.labels.clone(),
    }
}
