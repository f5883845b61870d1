//! `pipeline plugins new`: writes a plugin crate that builds outside this repository.
//!
//! The guest SDK is not on crates.io, so the new crate gets the copy of it (and of the
//! WIT) that this binary was built with: what it builds is exactly what this host runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::bindings::WIT_VERSION;

/// One file of a template: its path in the new crate and its text.
type File = (&'static str, &'static str);

/// The guest SDK, vendored into every new crate as `pipeline-plugin-sdk/`.
const SDK: &[File] = &[
    ("src/lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    (
        "src/artifact.rs",
        include_str!("../../plugins/sdk/src/artifact.rs"),
    ),
    (
        "src/config.rs",
        include_str!("../../plugins/sdk/src/config.rs"),
    ),
    ("src/date.rs", include_str!("../../plugins/sdk/src/date.rs")),
    (
        "src/error.rs",
        include_str!("../../plugins/sdk/src/error.rs"),
    ),
    ("src/io.rs", include_str!("../../plugins/sdk/src/io.rs")),
    ("src/log.rs", include_str!("../../plugins/sdk/src/log.rs")),
    // Every file of the current contract (not `wit/since/`: a plugin builds against one).
    ("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
    ("wit/types.wit", include_str!("../../wit/types.wit")),
    ("wit/log.wit", include_str!("../../wit/log.wit")),
    ("wit/process.wit", include_str!("../../wit/process.wit")),
    ("wit/postgres.wit", include_str!("../../wit/postgres.wit")),
    ("wit/git.wit", include_str!("../../wit/git.wit")),
    (
        "wit/aws-credentials.wit",
        include_str!("../../wit/aws-credentials.wit"),
    ),
    ("wit/notifier.wit", include_str!("../../wit/notifier.wit")),
    ("wit/mail.wit", include_str!("../../wit/mail.wit")),
    (
        "wit/deps/io/io.wit",
        include_str!("../../wit/deps/io/io.wit"),
    ),
];

/// The SDK's manifest without the plugins workspace's inherited keys.
const SDK_MANIFEST: &str = r#"[package]
name = "pipeline-plugin-sdk"
description = "Guest SDK for pipeline plugins (vendored by `pipeline plugins new`)"
version = "{{wit_version}}"
edition = "2024"
rust-version = "1.95"
license = "Apache-2.0"
publish = false

[lib]
name = "pipeline_plugin_sdk"

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "std"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"
serde_path_to_error = "0.1"
"#;

const SINK: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../templates/sink/Cargo.toml.in"),
    ),
    ("src/lib.rs", include_str!("../templates/sink/lib.rs.in")),
    ("README.md", include_str!("../templates/sink/README.md.in")),
    (".gitignore", include_str!("../templates/sink/gitignore.in")),
];

/// What `pipeline plugins new` can write.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Sink,
}

/// Writes a new `kind` plugin crate called `name` into `dir` (default `./<name>`), which
/// must not exist or be empty. Returns the directory.
pub fn new_plugin(kind: Kind, name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} exists and is not empty; choose another name or `--dir`",
                dir.display()
            );
        }
    }
    let template = match kind {
        Kind::Sink => SINK,
    };
    let vars = [
        ("{{name}}", name.to_string()),
        ("{{lib}}", name.replace('-', "_")),
        ("{{wit_version}}", WIT_VERSION.to_string()),
    ];
    let fill = |text: &str| {
        vars.iter()
            .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
    };
    for (path, text) in template {
        write(&dir.join(path), &fill(text))?;
    }
    let sdk = dir.join("pipeline-plugin-sdk");
    write(&sdk.join("Cargo.toml"), &fill(SDK_MANIFEST))?;
    for (path, text) in SDK {
        write(&sdk.join(path), text)?;
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A crate name cargo accepts and that is also a readable plugin name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "invalid plugin name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["webdav", "my-sink", "sftp_2"] {
            check_name(good).expect(good);
        }
        for bad in ["", "My", "2x", "a b", "../x", "a/b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_a_crate_with_the_sdk_and_refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("my-sink");
        new_plugin(Kind::Sink, "my-sink", Some(&dir)).expect("written");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        assert!(manifest.contains("name = \"my-sink\""), "{manifest}");
        assert!(!manifest.contains("{{"), "{manifest}");
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib");
        assert!(lib.contains("name: \"my-sink\""));
        let wit =
            std::fs::read_to_string(dir.join("pipeline-plugin-sdk/wit/plugin.wit")).expect("wit");
        assert!(wit.contains(&format!("package pipeline:plugin@{WIT_VERSION};")));
        let sdk = std::fs::read_to_string(dir.join("pipeline-plugin-sdk/src/lib.rs")).expect("sdk");
        assert!(sdk.contains("path: \"wit\""), "the SDK finds its own WIT");
        // Every file of the contract is vendored with it.
        let wit_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for entry in std::fs::read_dir(&wit_dir).expect("wit/") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wit") {
                let file = dir.join(format!("pipeline-plugin-sdk/wit/{name}"));
                assert!(file.is_file(), "{} is missing", file.display());
            }
        }
        // Every module the SDK declares is vendored with it.
        for line in sdk.lines() {
            let module = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "));
            if let Some(module) = module.and_then(|m| m.strip_suffix(';')) {
                let file = dir.join(format!("pipeline-plugin-sdk/src/{module}.rs"));
                assert!(file.is_file(), "{} is missing", file.display());
            }
        }

        let err = new_plugin(Kind::Sink, "my-sink", Some(&dir)).expect_err("not empty");
        assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    }
}
