//! Host-side bindings of the plugin contract in `wit/`, one world per plugin kind, all
//! sharing the generated types of the `host` world and wasmtime-wasi's stream types.

/// The imports every plugin may use (log, process) and the shared types.
pub mod host {
    wasmtime::component::bindgen!({
        path: "../wit",
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
                path: "../wit",
                world: $world,
                with: {
                    "wasi:io": wasmtime_wasi::p2::bindings::sync::io,
                    "pipeline:plugin/types": crate::bindings::host::pipeline::plugin::types,
                    "pipeline:plugin/log": crate::bindings::host::pipeline::plugin::log,
                    "pipeline:plugin/process": crate::bindings::host::pipeline::plugin::process,
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
plugin_world!(notifier, "pipeline:plugin/notifier-plugin");
// Only for the `aws-credentials` import: the host runs such a plugin as a sink.
plugin_world!(aws_sink, "pipeline:plugin/aws-sink-plugin");
// Only for the `mail` import: the host runs such a plugin as a notifier.
plugin_world!(mail_notifier, "pipeline:plugin/mail-notifier-plugin");

pub use host::pipeline::plugin::types::{
    ArtifactMeta, ConfigKey, DirectoryGrant, Grant, PluginError, PluginInfo, PluginKind,
    StagePlan as Plan, Stored, ValueType,
};

/// A plugin error as a user reads it (the generated `Display` shows the Rust variant).
pub fn describe_error(e: &PluginError) -> String {
    match e {
        PluginError::Config(m) => format!("configuration: {m}"),
        PluginError::NotFound(m) => format!("not found: {m}"),
        PluginError::Denied(m) => format!("denied: {m}"),
        PluginError::Locked(m) => format!("locked: {m}"),
        PluginError::Io(m) => format!("i/o error: {m}"),
        PluginError::Other(m) => m.clone(),
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Source => "source",
            PluginKind::Transform => "transform",
            PluginKind::Sink => "sink",
            PluginKind::Notifier => "notifier",
        })
    }
}

impl ValueType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ValueType::Text => "text",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Path => "path",
            ValueType::Secret => "secret",
            ValueType::TextList => "text list",
            ValueType::Table => "table",
        }
    }
}

/// The version of the `pipeline:plugin` WIT package this host implements, read from the
/// `package` line of `wit/plugin.wit` when the host compiles: the WIT is the one source of
/// truth (the guest SDK reads its `WIT_VERSION` the same way).
pub const WIT_VERSION: &str = wit_package_version(include_str!("../../wit/plugin.wit"));

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
            match std::str::from_utf8(version) {
                Ok(version) => return version,
                Err(_) => panic!("the version in wit/plugin.wit is not UTF-8"),
            }
        }
        start += 1;
    }
    panic!("wit/plugin.wit has no `package pipeline:plugin@X.Y.Z;` line")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wit_version_matches_the_wit_package() {
        let wit = include_str!("../../wit/plugin.wit");
        assert!(wit.contains(&format!(
            "\npackage pipeline:plugin@{};\n",
            super::WIT_VERSION
        )));
        let parts: Vec<&str> = super::WIT_VERSION.split('.').collect();
        assert_eq!(parts.len(), 3, "{}", super::WIT_VERSION);
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
            "{}",
            super::WIT_VERSION
        );
    }

    #[test]
    fn the_package_version_is_read_from_its_own_line() {
        let wit =
            "/// package pipeline:plugin@9.9.9; in a comment\npackage pipeline:plugin@1.2.3;\n";
        assert_eq!(super::wit_package_version(wit), "1.2.3");
    }
}
