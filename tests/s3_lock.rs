//! S3 Object Lock end to end: `pipeline run` with the `s3` sink's `object_lock` against a
//! real PostgreSQL server and moto's S3 server, which enforces Object Lock (started by the
//! harness, `support::moto`; what moto does not implement is listed there). The bucket is
//! looked at with boto3, the way an operator — or an attacker holding the host's
//! credentials — would.
//!
//! moto must be importable by python3: `python3 -m pip install 'moto[server]==5.2.1'`
//! (scripts/install-prerequisites.sh --tests does it).

mod support;

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp, ToSpan};

use support::PgCluster;
use support::moto::{ACCESS_KEY, MotoServer, SECRET_KEY};
use support::scratch::{Scratch, logs};

const LOCKED: &str = "locked";

/// A pipeline named `name` backing up `DATABASE_URL` into `bucket` under `prefix`, with
/// `sink` lines added to the s3 sink's table and `retention` as the `[retention]` table's body
/// (none when empty).
fn pipeline(
    s: &Scratch,
    name: &str,
    moto: &MotoServer,
    bucket: &str,
    prefix: &str,
    sink: &str,
    retention: &str,
) -> String {
    let file = s.path().join(format!("{name}.toml"));
    let retention = if retention.is_empty() {
        String::new()
    } else {
        format!("\n[retention]\n{retention}\n")
    };
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"{name}\"\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\n\
             endpoint = \"{endpoint}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"${{env:S3_SECRET_KEY}}\"\n{sink}\n{retention}",
            endpoint = moto.endpoint()
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

fn run(s: &Scratch, file: &str, url: &str, now: Option<&str>) -> std::process::Output {
    let mut env = vec![("DATABASE_URL", url), ("S3_SECRET_KEY", SECRET_KEY)];
    if let Some(now) = now {
        env.push(("PIPELINE_TEST_NOW", now));
    }
    let out = s.run(&["--verbose", "run", file], &env);
    let log = logs(&out);
    assert!(
        !log.contains(SECRET_KEY),
        "the S3 secret key leaked:\n{log}"
    );
    out
}

/// The backups (not manifests) among `keys`, oldest first.
fn backups(keys: &[String]) -> Vec<String> {
    let mut b: Vec<String> = keys
        .iter()
        .filter(|k| k.ends_with(".sql.zst"))
        .cloned()
        .collect();
    b.sort();
    b
}

/// The UTC day in a backup's name (`…/backup-2026-12-01T17-30-00-000Z.sql.zst`).
fn day_of(key: &str) -> Date {
    let at = key.find("backup-").expect("a backup name") + "backup-".len();
    key[at..at + 10].parse().expect("a date in the name")
}

fn midnight(d: Date) -> Timestamp {
    d.to_zoned(jiff::tz::TimeZone::UTC)
        .expect("in range")
        .timestamp()
}

#[test]
fn every_object_is_locked_until_retention_lets_it_go_and_a_monthly_copy_longer() {
    let pg = PgCluster::start();
    pg.create_db("small");
    support::load_sample(&pg, "small");
    pg.create_db("big");
    // About 7.6 MiB compressed: two parts of 5 MiB.
    support::load_noise(&pg, "big", 200_000);
    let moto = MotoServer::start();
    moto.create_bucket(LOCKED, true);
    let s = Scratch::new();

    // Kept 3 days by `daily`, governance, one PutObject per object.
    let daily = pipeline(
        &s,
        "daily",
        &moto,
        LOCKED,
        "daily/",
        "object_lock = \"governance\"",
        "daily = 3",
    );
    let out = run(&s, &daily, &pg.url("small"), None);
    assert!(out.status.success(), "{}", logs(&out));

    // Kept 2 months by `monthly`, compliance, a multipart upload.
    let monthly = pipeline(
        &s,
        "monthly",
        &moto,
        LOCKED,
        "monthly/",
        "object_lock = \"compliance\"\npart_size = \"5MiB\"",
        "monthly = 2",
    );
    let out = run(&s, &monthly, &pg.url("big"), None);
    let log = logs(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(" in 2 parts ("), "a multipart upload: {log}");

    let mut until = Vec::new();
    for (prefix, mode, expected) in [
        (
            "daily/",
            "GOVERNANCE",
            (|d: Date| midnight(d) + SignedDuration::from_hours(72)) as fn(Date) -> Timestamp,
        ),
        ("monthly/", "COMPLIANCE", |d: Date| {
            midnight(
                d.first_of_month()
                    .checked_add(2.months())
                    .expect("in range"),
            )
        }),
    ] {
        let keys = moto.keys(LOCKED, prefix);
        let backup = backups(&keys);
        assert_eq!(backup.len(), 1, "{keys:?}");
        // The backup and its manifest, nothing else (no upload marker left).
        assert_eq!(keys, [backup[0].clone(), format!("{}.sha256", backup[0])]);
        let want = expected(day_of(&backup[0]));
        for key in &keys {
            let (got_mode, got_until, _) = moto.lock_of(LOCKED, key);
            assert_eq!(got_mode.as_deref(), Some(mode), "{key}");
            assert_eq!(got_until, Some(want), "{key}");
        }
        until.push(want);
    }
    assert!(
        until[1] > until[0],
        "a monthly copy is locked longer: {until:?}"
    );
    assert_eq!(moto.pending_uploads(LOCKED), 0);
}

#[test]
fn prune_keeps_a_locked_backup_reports_it_and_deletes_it_once_unlocked() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let moto = MotoServer::start();
    moto.create_bucket(LOCKED, true);
    let s = Scratch::new();
    let url = pg.url("app");
    // Retention wants backups older than a day gone; each is locked 30 days anyway.
    let file = pipeline(
        &s,
        "nightly",
        &moto,
        LOCKED,
        "db/",
        "object_lock = \"governance\"\nlock_days = 30",
        "days = 1\nkeep_last = 1",
    );
    let now = Timestamp::now();
    for ago in [15, 10, 5] {
        let at = (now - SignedDuration::from_hours(24 * ago)).to_string();
        let out = run(&s, &file, &url, Some(&at));
        assert!(out.status.success(), "{}", logs(&out));
    }
    // Ages are measured from the newest earlier backup, so this run is the first to prune
    // the two oldest: the store refuses, the run reports them and succeeds.
    let out = run(&s, &file, &url, None);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let first = backups(&moto.keys(LOCKED, "db/"));
    assert_eq!(first.len(), 4, "{first:?}");
    let oldest = first[0].strip_prefix("db/").expect("under the prefix");
    let second = first[1].strip_prefix("db/").expect("under the prefix");
    assert!(
        log.contains("kept 2 backups that no retention rule keeps")
            && log.contains(&format!("the oldest: {oldest}: ")),
        "{log}"
    );
    for name in [oldest, second] {
        assert!(log.contains(&format!("kept {name} (created")), "{log}");
        assert!(!log.contains(&format!("pruned {name}")), "{log}");
    }
    assert!(log.contains("is locked (governance) until"), "{log}");
    // Nothing was hidden behind a delete marker either.
    assert_eq!(moto.keys(LOCKED, "db/").len(), 8);
    assert!(
        moto.versions(LOCKED, "db/")
            .iter()
            .all(|(_, _, marker)| !marker),
        "{:?}",
        moto.versions(LOCKED, "db/")
    );

    // Once its lock ends (shortened here with the governance bypass an administrator has
    // and the host must not), the next run prunes it, every version of it.
    moto.boto(&format!(
        "until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)\n\
         for k in [{k:?}, {k:?} + '.sha256']:\n    \
             v = s3.head_object(Bucket={LOCKED:?}, Key=k)['VersionId']\n    \
             s3.put_object_retention(Bucket={LOCKED:?}, Key=k, VersionId=v, BypassGovernanceRetention=True, \
             Retention={{'Mode': 'GOVERNANCE', 'RetainUntilDate': until}})\n\
         out(None)",
        k = first[0]
    ));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = run(&s, &file, &url, None);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains(&format!("pruned {oldest}")), "{log}");
    assert!(log.contains(&format!("kept {second} (created")), "{log}");
    let versions = moto.versions(LOCKED, "db/");
    assert!(
        versions.iter().all(|(k, _, _)| !k.starts_with(&first[0])),
        "no version and no delete marker of {} is left: {versions:?}",
        first[0]
    );
    assert_eq!(backups(&moto.keys(LOCKED, "db/")).len(), 4);
}

#[test]
fn the_hosts_own_credentials_cannot_remove_a_locked_backup() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let moto = MotoServer::start();
    moto.create_bucket(LOCKED, true);
    let s = Scratch::new();
    for mode in ["compliance", "governance"] {
        let prefix = format!("{mode}/");
        let file = pipeline(
            &s,
            mode,
            &moto,
            LOCKED,
            &prefix,
            &format!("object_lock = \"{mode}\"\nlock_days = 1"),
            "",
        );
        let out = run(&s, &file, &pg.url("app"), None);
        assert!(out.status.success(), "{}", logs(&out));
        let keys = moto.keys(LOCKED, &prefix);
        assert_eq!(keys.len(), 2, "{keys:?}");
        let backup = &backups(&keys)[0];
        let (_, _, version) = moto.lock_of(LOCKED, backup);
        // With the host's credentials, as an attacker on the host would: deleting the
        // version is refused (compliance even with the governance bypass header)...
        let refused = moto.boto(&format!(
            "out([code(lambda: s3.delete_object(Bucket={LOCKED:?}, Key=k, VersionId=s3.head_object(Bucket={LOCKED:?}, Key=k)['VersionId'])) for k in {keys:?}])"
        ));
        assert_eq!(
            refused,
            serde_json::json!(["AccessDenied", "AccessDenied"]),
            "{mode}"
        );
        if mode == "compliance" {
            let bypass = moto.boto(&format!(
                "out(code(lambda: s3.delete_object(Bucket={LOCKED:?}, Key={backup:?}, VersionId={version:?}, BypassGovernanceRetention=True)))"
            ));
            assert_eq!(bypass, serde_json::json!("AccessDenied"));
        }
        // ...overwriting adds a version, and a delete without a version only hides it
        // behind a delete marker: the locked version is still there, byte for byte.
        let sum = moto.boto(&format!(
            "import hashlib\n\
             s3.put_object(Bucket={LOCKED:?}, Key={backup:?}, Body=b'ransom note')\n\
             s3.delete_object(Bucket={LOCKED:?}, Key={backup:?})\n\
             body = s3.get_object(Bucket={LOCKED:?}, Key={backup:?}, VersionId={version:?})['Body'].read()\n\
             out(hashlib.sha256(body).hexdigest())"
        ));
        let manifest = moto.boto(&format!(
            "out(s3.get_object(Bucket={LOCKED:?}, Key={backup:?} + '.sha256')['Body'].read().decode())"
        ));
        let manifest = manifest.as_str().expect("text");
        assert_eq!(
            Some(sum.as_str().expect("a checksum")),
            manifest.split_whitespace().next(),
            "{mode}: the locked version still holds the backup"
        );
        let versions = moto.versions(LOCKED, backup);
        assert!(
            versions
                .iter()
                .any(|(_, v, marker)| v == &version && !marker),
            "{versions:?}"
        );
    }
}

#[test]
fn a_lock_that_cannot_be_applied_fails_before_anything_is_stored() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let moto = MotoServer::start();
    moto.create_bucket("plain", false);
    moto.create_bucket(LOCKED, true);
    let s = Scratch::new();
    let url = pg.url("app");

    // A bucket created without Object Lock.
    let file = pipeline(
        &s,
        "unlockable",
        &moto,
        "plain",
        "db/",
        "object_lock = \"compliance\"\nlock_days = 7",
        "days = 7",
    );
    let out = run(&s, &file, &url, None);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("stage `sink s3` failed"), "{log}");
    assert!(
        log.contains("bucket `plain` does not have Object Lock enabled"),
        "{log}"
    );
    assert!(log.contains("--object-lock-enabled-for-bucket"), "{log}");
    assert!(
        moto.versions("plain", "").is_empty(),
        "{:?}",
        moto.versions("plain", "")
    );
    assert_eq!(moto.pending_uploads("plain"), 0);

    // No length: no retention time rule and no lock_days.
    let file = pipeline(
        &s,
        "lengthless",
        &moto,
        LOCKED,
        "db/",
        "object_lock = \"governance\"",
        "keep_last = 5",
    );
    let out = run(&s, &file, &url, None);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("no lock length"), "{log}");
    assert!(log.contains("set lock_days"), "{log}");
    assert!(
        moto.versions(LOCKED, "").is_empty(),
        "{:?}",
        moto.versions(LOCKED, "")
    );

    // A mistyped mode is a configuration error naming the key, before any run.
    let file = pipeline(
        &s,
        "typo",
        &moto,
        LOCKED,
        "db/",
        "object_lock = \"complience\"",
        "days = 7",
    );
    let out = run(&s, &file, &url, None);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("object_lock"), "{log}");
}
