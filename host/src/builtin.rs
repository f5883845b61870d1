//! The first-party plugins embedded in the binary, by the name a pipeline file uses.

/// `name => file`: a built-in's name in pipeline files and its component, built by
/// `build.rs` into `PIPELINE_BUILTIN_WASM_DIR`.
macro_rules! components {
    ($($name:literal => $file:literal),* $(,)?) => {
        &[$((
            $name,
            include_bytes!(concat!(env!("PIPELINE_BUILTIN_WASM_DIR"), "/", $file, ".wasm")),
        )),*]
    };
}

/// WebAssembly components built by `build.rs`.
const COMPONENTS: &[(&str, &[u8])] = components! {
    "postgres" => "pipeline_postgres",
    "mysql" => "pipeline_mysql",
    "redis" => "pipeline_redis",
    "local" => "pipeline_local",
    "gzip" => "pipeline_gzip",
    "age" => "pipeline_age",
    "s3" => "pipeline_s3",
    "pg-snapshot" => "pipeline_pg_snapshot",
    "git" => "pipeline_git",
    "webhook" => "pipeline_webhook",
    "healthchecks" => "pipeline_healthchecks",
    "slack" => "pipeline_slack",
    "sqlite" => "pipeline_sqlite",
    "files" => "pipeline_files",
    "email" => "pipeline_email",
};

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
        "mariadb-dump" | "mariadb" | "mysqldump" | "mysql" => {
            " (install the MariaDB client, which serves MySQL too: apt-get install mariadb-client)"
        }
        "redis-cli" => " (install the Redis tools: apt-get install redis-tools)",
        "sqlite3" => " (install the SQLite shell, 3.37 or later: apt-get install sqlite3)",
        "tar" => " (install GNU tar: apt-get install tar)",
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
