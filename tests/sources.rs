//! The `mysql` and `redis` sources end to end, against real servers started by the harness
//! (MariaDB from Debian's `mariadb-server`, Redis from `redis-server`): back up with zstd to
//! a local directory, restore into a fresh server, compare contents; the password never on
//! a command line; a dump failing midway leaves no backup; a restore failing midway leaves
//! an empty target empty.

mod support;

use std::path::{Path, PathBuf};

use support::mariadb::{self, MariaDb};
use support::redis::RedisServer;
use support::scratch::{Scratch, logs, repo, stderr};

fn mysql_pipeline() -> String {
    repo().join("pipelines/mysql.toml").display().to_string()
}

/// The password, raw or percent-encoded, appears nowhere in `text`.
fn assert_no_password(password: &str, text: &str) {
    assert!(!text.contains(password), "the password leaked:\n{text}");
    let encoded = support::percent_encode(password);
    assert!(
        !text.contains(&encoded),
        "the encoded password leaked:\n{text}"
    );
}

/// Backup files (not manifests) in the scratch's backup directory.
fn backups(s: &Scratch) -> Vec<PathBuf> {
    s.files()
        .into_iter()
        .filter(|f| !f.ends_with(".sha256"))
        .map(|f| s.backups().join(f))
        .collect()
}

fn mysql_backup(s: &Scratch, file: &str, url: &str) -> String {
    let out = s.run(&["run", file], &[("MYSQL_URL", url)]);
    let text = logs(&out);
    assert!(out.status.success(), "backup failed:\n{text}");
    text
}

#[test]
fn mysql_round_trip_restores_an_equal_database_and_guards_the_target() {
    let db = MariaDb::start();
    db.create_db("app");
    db.sql("app", mariadb::SAMPLE);
    let s = Scratch::new();
    let file = mysql_pipeline();
    let url = db.url("app");
    let mut all = mysql_backup(&s, &file, &url);
    let files = backups(&s);
    assert_eq!(files.len(), 1, "{:?}", s.files());
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mysql-") && name.ends_with(".sql.zst"),
        "{name}"
    );

    // Into an empty database, over the socket this time, the target in the environment.
    db.create_db("restored");
    let env = [
        ("MYSQL_URL", url.as_str()),
        ("PIPELINE_RESTORE_TO", &db.socket_url("restored")),
    ];
    let out = s.run(&["restore", &file], &env);
    let text = logs(&out);
    all += &text;
    assert!(out.status.success(), "restore failed:\n{text}");
    assert!(
        text.contains("tables 2, views 1, routines 2, triggers 1, events 1"),
        "the report counts what was restored:\n{text}"
    );
    let source = db.canonical_dump("app");
    assert!(source.contains("Zoë Ünïcødé 日本語 🐘"), "{source}");
    assert!(source.contains("CREATE DEFINER=`app`@`%` PROCEDURE `add_order`"));
    assert_eq!(source, db.canonical_dump("restored"));

    // Again: the target now holds tables.
    let out = s.run(&["restore", &file], &env);
    let err = stderr(&out);
    all += &err;
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not empty") && err.contains("--allow-non-empty"),
        "{err}"
    );
    db.sql(
        "restored",
        "INSERT INTO orders (id, customer_id, total) VALUES (99999, 1, 1);",
    );
    let out = s.run(&["restore", &file, "--allow-non-empty"], &env);
    all += &logs(&out);
    assert!(out.status.success(), "{}", logs(&out));
    assert_eq!(
        source,
        db.canonical_dump("restored"),
        "the dump replaced the tables"
    );

    // The pipeline's own database, however it is spelled, only with --yes.
    for own in [db.url("app"), db.socket_url("app")] {
        let out = s.run(
            &["restore", &file],
            &[("MYSQL_URL", &url), ("PIPELINE_RESTORE_TO", &own)],
        );
        let err = stderr(&out);
        all += &err;
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("pipeline's own database"), "{err}");
    }

    // verify restores into a scratch database too.
    db.create_db("check");
    let out = s.run(
        &["verify", &file],
        &[
            ("MYSQL_URL", &url),
            ("PIPELINE_VERIFY_INTO", &db.url("check")),
        ],
    );
    all += &logs(&out);
    assert!(out.status.success(), "{}", logs(&out));
    assert_eq!(source, db.canonical_dump("check"));

    assert_no_password(MariaDb::PASSWORD, &all);
}

/// A program that records its command line and whether it got the password, then runs the
/// real one: what the process capability handed over, as the kernel shows it.
fn recording_wrapper(dir: &Path, name: &str, real: &str) {
    let script = format!(
        "#!/bin/sh\n\
         tr '\\0' ' ' < /proc/$$/cmdline >> '{dir}/cmdlines'\n\
         echo >> '{dir}/cmdlines'\n\
         printf '%s\\n' \"${{MYSQL_PWD:+MYSQL_PWD is set}}\" >> '{dir}/environment'\n\
         exec {real} \"$@\"\n",
        dir = dir.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, script).expect("write the wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn mysql_password_is_never_on_a_command_line() {
    let db = MariaDb::start();
    db.create_db("app");
    db.sql("app", mariadb::SAMPLE);
    db.create_db("restored");
    let s = Scratch::new();
    let bin = s.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    recording_wrapper(&bin, "mariadb-dump", "mariadb-dump");
    recording_wrapper(&bin, "mariadb", "mariadb");
    let file = s.path().join("mysql.toml");
    let pipeline = std::fs::read_to_string(mysql_pipeline()).expect("read pipelines/mysql.toml");
    std::fs::write(
        &file,
        pipeline.replace(
            "url = \"${env:MYSQL_URL}\"",
            &format!(
                "url = \"${{env:MYSQL_URL}}\"\nprogram = \"{}\"",
                bin.join("mariadb-dump").display()
            ),
        ),
    )
    .expect("write the pipeline");
    let file = file.display().to_string();
    let url = db.url("app");
    let mut all = mysql_backup(&s, &file, &url);
    let out = s.run(
        &["restore", &file],
        &[
            ("MYSQL_URL", &url),
            ("PIPELINE_RESTORE_TO", &db.url("restored")),
        ],
    );
    all += &logs(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(db.canonical_dump("app"), db.canonical_dump("restored"));

    let cmdlines = std::fs::read_to_string(bin.join("cmdlines")).expect("the wrapper ran");
    assert!(
        cmdlines.contains("--single-transaction") && cmdlines.contains("--binary-mode"),
        "both the dump and the restore ran through the wrappers:\n{cmdlines}"
    );
    assert!(cmdlines.contains("--user=app"), "{cmdlines}");
    assert_no_password(MariaDb::PASSWORD, &cmdlines);
    let environment = std::fs::read_to_string(bin.join("environment")).expect("env");
    let runs = cmdlines.lines().count();
    assert!(
        runs >= 3,
        "dump, the restore's emptiness check and restore: {cmdlines}"
    );
    assert_eq!(
        environment
            .lines()
            .filter(|l| *l == "MYSQL_PWD is set")
            .count(),
        runs,
        "every program got the password in its environment"
    );
    assert_no_password(MariaDb::PASSWORD, &all);
}

#[test]
fn mysql_dump_failing_midway_leaves_no_backup() {
    let db = MariaDb::start();
    db.create_db("app");
    mariadb::load_noise(&db, "app", 100_000);
    let s = Scratch::new();
    let file = mysql_pipeline();
    let url = db.url("app");
    mysql_backup(&s, &file, &url);
    let before = s.files();
    let earlier = std::fs::read(&backups(&s)[0]).expect("the earlier backup");

    mariadb::fail_late(&db, "app");
    let out = s.run(&["run", &file], &[("MYSQL_URL", &url)]);
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mariadb-dump exited with code 2") && text.contains("zz_broken"),
        "the cause is mariadb-dump's: {text}"
    );
    assert_eq!(s.files(), before, "nothing new, nothing lost:\n{text}");
    assert_eq!(std::fs::read(&backups(&s)[0]).expect("read"), earlier);
    assert_no_password(MariaDb::PASSWORD, &text);
}

#[test]
fn mysql_restore_failing_midway_leaves_an_empty_target_empty() {
    let db = MariaDb::start();
    db.create_db("app");
    db.sql("app", mariadb::SAMPLE);
    mariadb::load_noise(&db, "app", 100_000);
    let s = Scratch::new();
    let file = mysql_pipeline();
    let url = db.url("app");
    mysql_backup(&s, &file, &url);

    // A manifest that does not match: every byte streams into the client before the
    // mismatch shows at the end, so the restore has created tables by then.
    let manifest = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sha256"))
        .expect("a manifest");
    let manifest = s.backups().join(manifest);
    let text = std::fs::read_to_string(&manifest).expect("read the manifest");
    let first = text.chars().next().expect("a hash");
    let flipped = if first == '0' { '1' } else { '0' };
    std::fs::write(&manifest, format!("{flipped}{}", &text[1..])).expect("tamper");

    db.create_db("restored");
    let out = s.run(
        &["restore", &file],
        &[
            ("MYSQL_URL", &url),
            ("PIPELINE_RESTORE_TO", &db.url("restored")),
        ],
    );
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(
        text.contains("was emptied again"),
        "the plugin emptied the target again: {text}"
    );
    assert_eq!(db.count_objects("restored"), 0, "{text}");
    assert_no_password(MariaDb::PASSWORD, &text);
}

fn redis_pipeline(s: &Scratch, program: Option<&Path>) -> String {
    let text = std::fs::read_to_string(repo().join("pipelines/redis.toml"))
        .expect("read pipelines/redis.toml");
    let text = match program {
        Some(p) => text.replace(
            "url = \"${env:REDIS_URL}\"",
            &format!(
                "url = \"${{env:REDIS_URL}}\"\nprogram = \"{}\"",
                p.display()
            ),
        ),
        None => text,
    };
    let file = s.path().join("redis.toml");
    std::fs::write(&file, text).expect("write the pipeline");
    file.display().to_string()
}

/// A redis-cli that records its command line and whether it got the password.
fn recording_redis_cli(dir: &Path) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n\
         tr '\\0' ' ' < /proc/$$/cmdline >> '{dir}/cmdlines'\n\
         echo >> '{dir}/cmdlines'\n\
         printf '%s\\n' \"${{REDISCLI_AUTH:+REDISCLI_AUTH is set}}\" >> '{dir}/environment'\n\
         exec redis-cli \"$@\"\n",
        dir = dir.display()
    );
    let path = dir.join("redis-cli");
    std::fs::write(&path, script).expect("write the wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn redis_round_trip_restores_an_rdb_file_a_fresh_server_loads_equal() {
    let source = RedisServer::start();
    source.load_sample();
    let s = Scratch::new();
    let bin = s.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let file = redis_pipeline(&s, Some(&recording_redis_cli(&bin)));
    let url = source.url();
    let env = [("REDIS_URL", url.as_str())];
    let out = s.run(&["run", &file], &env);
    let mut all = logs(&out);
    assert!(out.status.success(), "backup failed:\n{all}");
    assert!(all.contains("CRC-64 matches"), "{all}");
    let files = backups(&s);
    assert_eq!(files.len(), 1, "{:?}", s.files());
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("redis-") && name.ends_with(".rdb.zst"),
        "{name}"
    );

    // Into a new file, which a fresh server then loads.
    let dir = s.path().join("restored");
    std::fs::create_dir(&dir).expect("mkdir");
    let target = dir.join("dump.rdb");
    let target_s = target.display().to_string();
    let out = s.run(&["restore", &file, "--to", &target_s], &env);
    all += &logs(&out);
    assert!(out.status.success(), "restore failed:\n{}", logs(&out));
    assert!(logs(&out).contains("CRC-64 matches"), "{}", logs(&out));
    let leftovers: Vec<_> = support::scratch::list(&dir);
    assert_eq!(leftovers, ["dump.rdb"], "no temporary file is left");

    let expected = source.contents();
    assert!(expected.contains("db5 other string"), "{expected}");
    assert!(expected.contains("session string (expires)"), "{expected}");
    assert_eq!(expected.lines().count(), 5011, "{expected}");
    let restored = RedisServer::start_from(&target);
    assert_eq!(expected, restored.contents(), "{}", restored.log());

    // Again into the same file: refused, unless allowed.
    let out = s.run(&["restore", &file, "--to", &target_s], &env);
    all += &logs(&out);
    assert_eq!(out.status.code(), Some(1), "{}", logs(&out));
    assert!(logs(&out).contains("not empty"), "{}", logs(&out));
    let out = s.run(
        &["restore", &file, "--to", &target_s, "--allow-non-empty"],
        &env,
    );
    all += &logs(&out);
    assert!(out.status.success(), "{}", logs(&out));

    // The server it backs up is refused as a target; a URL is not a file.
    let out = s.run(&["restore", &file, "--to", &url], &env);
    all += &logs(&out);
    assert_eq!(out.status.code(), Some(2), "{}", logs(&out));

    // The password reached redis-cli in its environment, never on its command line.
    let cmdlines = std::fs::read_to_string(bin.join("cmdlines")).expect("the wrapper ran");
    assert!(cmdlines.contains("--rdb -"), "{cmdlines}");
    assert_no_password(RedisServer::PASSWORD, &cmdlines);
    let environment = std::fs::read_to_string(bin.join("environment")).expect("env");
    assert!(
        environment.lines().any(|l| l == "REDISCLI_AUTH is set"),
        "{environment}"
    );
    assert_no_password(RedisServer::PASSWORD, &all);
}

#[test]
fn redis_snapshot_cut_short_leaves_no_backup() {
    let source = RedisServer::start();
    source.load_sample();
    let s = Scratch::new();
    // A redis-cli whose output stops after 20 kB (of about 60) but which exits 0, as a broken pipe or a
    // server dying mid-transfer could leave it: only the snapshot's own end tells.
    let bin = s.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let cut = bin.join("redis-cli");
    std::fs::write(
        &cut,
        "#!/bin/sh\n[ \"$1\" = --version ] && exec redis-cli --version\nredis-cli \"$@\" | head -c 20000\n",
    )
    .expect("write the wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = redis_pipeline(&s, Some(&cut));
    let out = s.run(&["run", &file], &[("REDIS_URL", &source.url())]);
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("not a whole RDB snapshot"), "{text}");
    assert_eq!(s.files(), Vec::<String>::new(), "no backup:\n{text}");
    assert_no_password(RedisServer::PASSWORD, &text);
}
