//! What a plugin can reach, one module per capability. Every plugin instance gets its own
//! [`StoreState`], built from its stage's grants: nothing is shared between stages.

pub mod aws;
pub mod filesystem;
pub mod git;
pub mod http;
pub mod log;
pub mod postgres;
pub mod process;
pub mod sockets;

use std::collections::BTreeMap;
use std::path::PathBuf;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The grants of one stage, resolved: absolute directories, programs found on PATH.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// (absolute host path, writable)
    pub directories: Vec<(PathBuf, bool)>,
    /// program name as the plugin asks for it → resolved executable
    pub programs: BTreeMap<String, PathBuf>,
    /// outbound hosts (`host` or `host:port`, `*.domain` for subdomains)
    pub hosts: Vec<String>,
    /// git repositories (absolute working-tree paths)
    pub repositories: Vec<PathBuf>,
    /// database URLs for read-only queries
    pub databases: Vec<String>,
    /// keys the `git` capability may sign commits with
    pub signing: Vec<git::SigningKey>,
    /// AWS credentials the host resolved and refreshes for this stage (`aws-credentials`)
    pub aws_credentials: Option<std::sync::Arc<aws::HostCredentials>>,
}

/// The state of one plugin instance.
pub struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: crate::engine::MemoryLimiter,
    /// "sink local": how this stage is named in logs and errors.
    pub(crate) stage: String,
    /// The stage's `plugin` as the pipeline file gives it, when known: limit messages
    /// name it.
    pub(crate) plugin: Option<String>,
    pub(crate) grants: Grants,
    /// What the plugin wrote to its own stdout/stderr (panics); logged when it finishes.
    pub(crate) stderr: MemoryOutputPipe,
    /// `wasi:http`, limited to `grants.hosts`.
    pub(crate) http: http::HttpState,
    /// The connection of the `postgres` capability, limited to `grants.databases`.
    pub(crate) postgres: postgres::PostgresState,
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
