//! `pipeline restore` and `pipeline verify` against real PostgreSQL servers: round trips
//! equal to the source (awkward schema included), corruption caught before anything is
//! committed, and the guards against overwriting a database by accident.

mod support;

use std::path::PathBuf;

use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, nightly, stderr};

/// Everything pg_dump must carry faithfully: an extension, an enum, a domain, a partitioned
/// table, a generated column, identity columns, a large object, non-ASCII identifiers.
const AWKWARD: &str = r#"
SET ROLE app;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN email AS text CHECK (VALUE ~ '@');
CREATE TABLE "Ünïcode Tàble" ("naïve column" text PRIMARY KEY, "日本語" int);
INSERT INTO "Ünïcode Tàble" VALUES ('café', 1), ('crème brûlée', 2), ('🙂', 3);
CREATE TABLE people (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mail email NOT NULL,
    m mood,
    first text,
    last text,
    full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED,
    token bytea DEFAULT gen_random_bytes(8)
);
INSERT INTO people (mail, m, first, last)
    SELECT 'p' || g || '@example.org', (ARRAY['sad', 'ok', 'happy']::mood[])[1 + g % 3], 'F' || g, 'L' || g
    FROM generate_series(1, 500) g;
CREATE TABLE events (id bigint, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events SELECT g, DATE '2024-06-01' + (g % 400), jsonb_build_object('n', g) FROM generate_series(1, 1000) g;
SELECT lo_from_bytea(0, convert_to('a large object', 'UTF8'));
"#;

fn source(pg: &PgCluster) {
    pg.create_db("app");
    pg.psql("app", AWKWARD);
}

fn count_relations(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
         AND c.relkind IN ('r', 'p', 'v', 'S')",
    )
    .trim()
    .to_string()
}

fn backup(s: &Scratch, pg: &PgCluster, file: &str) {
    let out = s.run(&["run", file], &[("DATABASE_URL", &pg.url("app"))]);
    assert!(out.status.success(), "backup failed:\n{}", stderr(&out));
}

/// A cluster holding the awkward `app` and the sample `crm`, for `scope = "cluster"`.
fn cluster_of_two_databases() -> PgCluster {
    let pg = PgCluster::start();
    // pg_dumpall reads every role's attributes: the connecting role is a superuser.
    pg.psql("postgres", "ALTER ROLE app SUPERUSER;");
    source(&pg);
    pg.create_db("crm");
    support::load_sample(&pg, "crm");
    pg
}

fn the_backup(s: &Scratch, suffix: &str) -> PathBuf {
    let name = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(suffix))
        .expect("a backup");
    s.backups().join(name)
}

#[test]
fn restore_from_local_gives_an_equal_database_and_verify_reports_it() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().unwrap();
    backup(&s, &pg, file);

    pg.create_db("restored");
    let env = [("DATABASE_URL", pg.url("app"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = s.run(&["restore", file, "--to", &pg.url("restored")], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "restore failed:\n{err}");
    assert_no_secret(&pg, &err);
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
    assert!(err.contains("rows 1503"), "reports what came back: {err}");
    assert!(err.contains("large objects 1"), "{err}");

    pg.create_db("scratch");
    let out = s.run(
        &["verify", file, "--restore-into", &pg.url("scratch")],
        &env,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("ok      sink local: backup-") && text.contains("matches its manifest"),
        "{text}"
    );
    assert!(
        text.contains("ok      restore of backup-") && text.contains("tables 5"),
        "{text}"
    );
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("scratch"));
}

#[test]
fn a_corrupted_byte_fails_verify_and_restore_restores_nothing() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().unwrap();
    backup(&s, &pg, file);
    let path = the_backup(&s, ".sql.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();

    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str())];
    let out = s.run(&["verify", file], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED  sink local")
            && text.contains("checksum mismatch")
            && text.contains(&name),
        "{text}"
    );

    pg.create_db("target");
    let out = s.run(&["restore", file, "--to", &pg.url("target")], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&name), "names the backup: {err}");
    assert!(
        err.contains("nothing was committed"),
        "says what became of the target: {err}"
    );
    assert_eq!(
        count_relations(&pg, "target"),
        "0",
        "nothing may be committed"
    );
}

#[test]
fn restore_guards_against_overwriting_by_accident() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().unwrap();
    backup(&s, &pg, file);
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str())];

    // Into the pipeline's own database only with --yes.
    let out = s.run(&["restore", file], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--yes"), "{err}");

    // Into a database that holds tables only with --allow-non-empty.
    pg.create_db("busy");
    pg.psql(
        "busy",
        "SET ROLE app; CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42);",
    );
    let out = s.run(&["restore", file, "--to", &pg.url("busy")], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(pg.psql("busy", "SELECT x FROM keep_me").trim(), "42");

    let out = s.run(
        &[
            "restore",
            file,
            "--to",
            &pg.url("busy"),
            "--allow-non-empty",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.psql("busy", "SELECT count(*) FROM people").trim(), "500");
    assert_eq!(
        pg.psql("busy", "SELECT x FROM keep_me").trim(),
        "42",
        "objects not in the backup stay"
    );

    // A backup that does not exist is a clear failure.
    let out = s.run(
        &[
            "restore",
            file,
            "--to",
            &pg.url("busy"),
            "--at",
            "2001-01-01",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no sink has a backup made at or before"),
        "{}",
        stderr(&out)
    );
}

/// gzip (a component transform, decoded by the component) and the custom format
/// (restored by pg_restore).
#[test]
fn gzip_and_custom_format_round_trips() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    for (format, transform, suffix) in [
        ("plain", "gzip", ".sql.gz"),
        ("custom", "zstd", ".dump.zst"),
    ] {
        let file = s.path().join(format!("{format}.toml"));
        std::fs::write(
            &file,
            format!(
                "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\nformat = \"{format}\"\n\n\
                 [[transform]]\nplugin = \"{transform}\"\n\n[[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
                s.backups().join(format).display()
            ),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        backup(&s, &pg, file);
        let stored = support::scratch::list(&s.backups().join(format));
        assert!(stored.iter().any(|f| f.ends_with(suffix)), "{stored:?}");
        let db = format!("restored_{format}");
        pg.create_db(&db);
        let out = s.run(
            &["restore", file, "--to", &pg.url(&db)],
            &[("DATABASE_URL", &pg.url("app"))],
        );
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        assert_eq!(pg.canonical_dump("app"), pg.canonical_dump(&db), "{format}");
    }
}

/// From the S3 sink: `--from s3` restores the object in the bucket, and verify checks every
/// sink separately (a corrupt S3 copy does not hide behind a good local one).
#[test]
fn restore_and_verify_from_the_s3_sink() {
    use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
    let pg = PgCluster::start();
    source(&pg);
    let s3 = S3Server::start();
    let s = Scratch::new();
    let file = support::scratch::repo().join("pipelines/nightly-s3.toml");
    let file = file.to_str().unwrap();
    let (url, endpoint) = (pg.url("app"), s3.endpoint());
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("S3_BUCKET", BUCKET),
        ("S3_ENDPOINT", endpoint.as_str()),
        ("S3_ACCESS_KEY", ACCESS_KEY),
        ("S3_SECRET_KEY", SECRET_KEY),
        ("S3_PREFIX", "nightly/"),
    ];
    let out = s.run(&["run", file], &env);
    assert!(out.status.success(), "backup failed:\n{}", stderr(&out));

    pg.create_db("from_s3");
    let out = s.run(
        &["restore", file, "--from", "s3", "--to", &pg.url("from_s3")],
        &env,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("from sink `s3`"), "{err}");
    assert!(!err.contains(SECRET_KEY), "the S3 secret leaked: {err}");
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("from_s3"));

    let out = s.run(&["verify", file], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("ok      sink local") && text.contains("ok      sink s3"),
        "{text}"
    );

    // Corrupt the S3 copy only.
    let objects = s3.objects("nightly");
    let object = objects
        .iter()
        .find(|o| o.ends_with(".sql.zst"))
        .expect("an object in the bucket");
    let path = s3.bucket().join("nightly").join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let out = s.run(&["verify", file], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ok      sink local") && text.contains("FAILED  sink s3"),
        "{text}"
    );
    assert!(text.contains("checksum mismatch"), "{text}");
}

/// The README's "Restore by hand" recipe, run as written: `{ echo 'BEGIN;'; zstd -dc FILE &&
/// echo 'COMMIT;'; } | psql -X -v ON_ERROR_STOP=1 URL`. A good backup restores equal to its
/// source; a truncated one commits nothing (zstd fails, so COMMIT is never sent and the
/// server rolls back when psql reaches the end of its input).
#[test]
fn the_restore_by_hand_recipe_commits_all_or_nothing() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().unwrap();
    backup(&s, &pg, file);
    let name = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sql.zst"))
        .expect("a backup");
    let good = s.backups().join(&name);
    let bytes = std::fs::read(&good).unwrap();
    let cut = s.path().join("cut.sql.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let by_hand = |backup: &std::path::Path, db: &str| {
        let path = format!(
            "{}:{}",
            pg.bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::process::Command::new("bash")
            .arg("-c")
            .arg(
                "{ echo 'BEGIN;'; zstd -dc \"$BACKUP\" && echo 'COMMIT;'; } \
                 | psql -X -v ON_ERROR_STOP=1 \"$DATABASE_URL\"",
            )
            .env("PATH", path)
            .env("BACKUP", backup)
            .env("DATABASE_URL", pg.url(db))
            .output()
            .expect("run the recipe")
    };

    pg.create_db("from_cut");
    let out = by_hand(&cut, "from_cut");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cut.sql.zst"),
        "zstd reports the truncated file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = pg.psql(
        "from_cut",
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r', 'v', 'S');",
    );
    assert_eq!(tables.trim(), "0", "a truncated backup committed nothing");

    pg.create_db("from_good");
    let out = by_hand(&good, "from_good");
    assert!(
        out.status.success(),
        "the recipe restores a good backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.canonical_dump("from_good"), pg.canonical_dump("app"));
}

/// `scope = "cluster"` (the shipped `pipelines/cluster.toml`): pg_dumpall backs up the roles
/// and every database, including one created after the pipeline file was written; a restore into a fresh cluster gives the
/// same roles and databases; a second restore over the now busy cluster is refused.
#[test]
fn a_whole_cluster_round_trips_into_a_fresh_one() {
    let pg = cluster_of_two_databases();
    let s = Scratch::new();
    // The shipped example, as a user copies it.
    let file = support::scratch::repo().join("pipelines/cluster.toml");
    let file = file.to_str().unwrap();
    // Created after the pipeline file was written, with a role of its own.
    pg.psql(
        "postgres",
        "CREATE ROLE reader LOGIN PASSWORD 'r34der-pw'; CREATE DATABASE late OWNER reader;",
    );
    pg.psql(
        "late",
        "SET ROLE reader; CREATE TABLE notes (id int PRIMARY KEY, body text); \
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g;",
    );
    let backups = s.backups().display().to_string();
    let env = [("CLUSTER_URL", pg.url("postgres")), ("BACKUP_DIR", backups)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = s.run(&["run", file], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("running pg_dumpall"), "{err}");
    assert_no_secret(&pg, &err);
    let backup = the_backup(&s, ".sql.zst");

    let fresh = PgCluster::start();
    fresh.psql("postgres", "ALTER ROLE app SUPERUSER;");
    let to = fresh.url("postgres");
    let out = s.run(&["restore", file, "--to", &to], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "restore failed:\n{err}");
    assert!(err.contains("databases 3"), "reports what came back: {err}");
    assert_no_secret(&pg, &err);
    for db in ["app", "crm", "late"] {
        assert_eq!(
            pg.canonical_dump(db),
            fresh.canonical_dump(db),
            "database {db} restored equal"
        );
    }
    assert_eq!(
        fresh
            .psql(
                "postgres",
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'reader'"
            )
            .trim(),
        "t",
        "the role came back"
    );
    assert_eq!(
        fresh
            .psql(
                "late",
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'notes'"
            )
            .trim(),
        "reader",
        "owners are kept"
    );

    // Over a cluster that now holds databases: refused, nothing run.
    let out = s.run(&["restore", file, "--to", &to], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the target cluster is not empty"), "{err}");
    assert!(backup.exists());
}

/// A cluster restore cannot be one transaction: fed a corrupted or a truncated backup, it
/// stops, says the target cluster is incomplete and must be discarded, and leaves the
/// backup as it was.
#[test]
fn a_damaged_cluster_backup_fails_and_says_the_target_is_incomplete() {
    let pg = cluster_of_two_databases();
    let s = Scratch::new();
    let file = support::scratch::repo().join("pipelines/cluster.toml");
    let file = file.to_str().unwrap();
    let backups = s.backups().display().to_string();
    let env = [("CLUSTER_URL", pg.url("postgres")), ("BACKUP_DIR", backups)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = s.run(&["run", file], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = the_backup(&s, ".sql.zst");
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let good = std::fs::read(&path).unwrap();

    let mut corrupted = good.clone();
    let at = corrupted.len() * 3 / 4;
    corrupted[at] ^= 0x01;
    let truncated = good[..good.len() * 3 / 4].to_vec();
    for (damage, bytes) in [("a corrupted byte", corrupted), ("truncated", truncated)] {
        std::fs::write(&path, &bytes).unwrap();
        let fresh = PgCluster::start();
        fresh.psql("postgres", "ALTER ROLE app SUPERUSER;");
        let out = s.run(&["restore", file, "--to", &fresh.url("postgres")], &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{damage}: {err}");
        assert!(err.contains(&name), "{damage}: names the backup: {err}");
        assert!(
            err.contains("checksum mismatch"),
            "{damage}: says why: {err}"
        );
        assert!(
            err.contains("the target cluster is incomplete: discard it"),
            "{damage}: says what to do with the target: {err}"
        );
        assert_no_secret(&pg, &err);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{damage}: the backup is left as it was"
        );
    }
    std::fs::write(&path, &good).unwrap();
    let out = s.run(&["verify", file], &env);
    assert!(out.status.success(), "{}", stderr(&out));
}
