//! The first-party plugins embedded in the binary, by the name a pipeline file uses.

/// WebAssembly components built by `build.rs`.
const COMPONENTS: &[(&str, &[u8])] = &[
    (
        "postgres",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_postgres.wasm"
        )),
    ),
    (
        "local",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_local.wasm"
        )),
    ),
    (
        "gzip",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_gzip.wasm"
        )),
    ),
    (
        "age",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_age.wasm"
        )),
    ),
    (
        "s3",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_s3.wasm"
        )),
    ),
    (
        "pg-snapshot",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_pg_snapshot.wasm"
        )),
    ),
    (
        "git",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_git.wasm"
        )),
    ),
    (
        "webhook",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_webhook.wasm"
        )),
    ),
    (
        "healthchecks",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_healthchecks.wasm"
        )),
    ),
    (
        "slack",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_slack.wasm"
        )),
    ),
    (
        "email",
        include_bytes!(concat!(
            env!("PIPELINE_BUILTIN_WASM_DIR"),
            "/pipeline_email.wasm"
        )),
    ),
];

/// Built-in transforms that run natively (`stages::native`), not as components.
pub const NATIVE: &[&str] = &["zstd"];

/// The component of a built-in plugin.
pub fn component(name: &str) -> Option<&'static [u8]> {
    COMPONENTS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Names of every built-in: components and native transforms.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&str> = COMPONENTS.iter().map(|(n, _)| *n).collect();
    v.extend(NATIVE);
    v.sort();
    v
}

/// How to install a program a built-in plugin runs, for the message saying it is missing.
pub fn install_hint(program: &str) -> &'static str {
    match program {
        "pg_dump" | "psql" | "pg_restore" => {
            " (install the PostgreSQL client: apt-get install postgresql-client)"
        }
        _ => "",
    }
}

/// What a built-in's own configuration (as the plugin receives it) grants it beyond its
/// plan: the git sink signs with the key its configuration names, and only that.
pub fn configured_grants(
    name: &str,
    config: &serde_json::Value,
    grants: &mut crate::capabilities::Grants,
) -> Result<(), String> {
    if name == "git" {
        grants
            .git
            .signing
            .extend(crate::capabilities::git::configured_signing(config)?);
    }
    Ok(())
}
