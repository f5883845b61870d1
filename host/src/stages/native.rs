//! First-party codecs that run natively behind the transform contract.
//!
//! zstd is the default codec of every backup, and measured on 2 cores a single-threaded
//! zstd inside a component (~100 MB/s) cannot keep up with `pg_dump | zstd -3 -T0`. Native,
//! multi-threaded zstd can; it takes the same configuration, adds the same extension and
//! streams through the same pipes as a component transform would.

use std::io::{self, Write};

use serde::Deserialize;

use crate::bindings::{ConfigKey, Plan, PluginInfo, PluginKind, ValueType};
use crate::pipe::{PipeReader, PipeWriter};

/// Bytes each zstd worker compresses at a time.
const JOB_SIZE: u32 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstdConfig {
    #[serde(default = "default_level")]
    level: i32,
    #[serde(default)]
    threads: u32,
}

fn default_level() -> i32 {
    3
}

#[derive(Debug, Clone)]
pub struct Zstd {
    level: i32,
    threads: u32,
}

pub fn describe(name: &str) -> Option<PluginInfo> {
    (name == "zstd").then(|| PluginInfo {
        name: "zstd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kind: PluginKind::Transform,
        description:
            "Zstandard compression (native, multi-threaded); output decompresses with `zstd -d`"
                .into(),
        config_keys: vec![
            ConfigKey {
                name: "level".into(),
                value_type: ValueType::Integer,
                required: false,
                description: "compression level 1-19 (default 3, as `zstd -3`)".into(),
            },
            ConfigKey {
                name: "threads".into(),
                value_type: ValueType::Integer,
                required: false,
                description: "worker threads; 0 (default) uses every core, as `zstd -T0`".into(),
            },
        ],
    })
}

impl Zstd {
    /// Checks the stage's configuration (the plugin-owned keys as JSON).
    pub fn from_config(
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Zstd, String> {
        let c: ZstdConfig = serde_json::from_value(serde_json::Value::Object(config.clone()))
            .map_err(|e| e.to_string().replace("field", "key"))?;
        if !(1..=19).contains(&c.level) {
            return Err(format!("level {} is out of range: use 1 to 19", c.level));
        }
        Ok(Zstd {
            level: c.level,
            threads: c.threads,
        })
    }

    /// What a component transform's `plan` would say: the extension and content type it
    /// adds, and no grants.
    pub fn plan(&self) -> Plan {
        Plan {
            extension: Some("zst".into()),
            content_type: Some("application/zstd".into()),
            grants: vec![],
        }
    }

    fn workers(&self) -> u32 {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            n => n,
        }
    }

    pub fn encode(&self, mut input: PipeReader, output: PipeWriter) -> io::Result<()> {
        let mut enc = zstd::stream::write::Encoder::new(output, self.level)?;
        let workers = self.workers();
        if workers > 1 {
            enc.multithread(workers)?;
            // zstd's default job is 4 windows (8 MiB at -3), and it buffers several per
            // worker: ~55 MiB of RSS. 1 MiB jobs keep the whole run under ~30 MiB for a
            // ratio within 0.5% (measured with bench/nightly.sh).
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
        }
        enc.include_checksum(true)?;
        // Whole chunks straight from the pipe: no intermediate buffer, one call per chunk.
        while let Some(chunk) = input.recv_blocking()? {
            enc.write_all(&chunk)?;
        }
        enc.finish()?.finish()
    }

    pub fn decode(&self, input: PipeReader, mut output: PipeWriter) -> io::Result<()> {
        let mut dec = zstd::stream::read::Decoder::new(input)?;
        io::copy(&mut dec, &mut output)?;
        output.finish()
    }
}
