//! Signed manifests against a real PostgreSQL and the real `ssh-keygen`: a signed backup
//! checks by hand with `ssh-keygen -Y verify` and `sha256sum -c`; `verify` and `restore`
//! accept it and refuse, naming why, a backup whose manifest was rewritten, whose
//! signature was removed, forged with another key or broken, or whose bytes were altered
//! — and restore commits nothing then. Retention removes a signature with its backup, and
//! neither the private key nor its passphrase is ever printed. The signature goes through
//! every sink (a local directory and a real S3-compatible server), each checked on its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use support::PgCluster;
use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use support::scratch::{Scratch, assert_no_secret, logs};

const PRINCIPAL: &str = "backups@example.com";
const NAMESPACE: &str = "pipeline-manifest";
const PASSPHRASE: &str = "correct-horse-battery-staple";

fn ssh_keygen(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut c = Command::new("ssh-keygen");
    c.args(args);
    c.stdin(match stdin {
        Some(f) => Stdio::from(std::fs::File::open(f).expect("open stdin file")),
        None => Stdio::null(),
    });
    c.output()
        .expect("ssh-keygen (install it: apt-get install openssh-client)")
}

/// A new ed25519 key `dir/name` (+ `.pub`), encrypted with `passphrase` (empty: none).
fn new_key(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let out = ssh_keygen(
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "ssh-keygen: {}", logs(&out));
    path
}

fn public(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub"))
        .expect("the .pub")
        .trim()
        .to_string()
}

/// A scratch place with a source database, two keys, an allowed-signers file that allows
/// only the first, and a pipeline file that signs with it and checks against the file.
struct Fixture {
    pg: PgCluster,
    s: Scratch,
    file: String,
    keys: PathBuf,
    signer: PathBuf,
    allowed: PathBuf,
}

impl Fixture {
    /// `extra`: more tables for the pipeline file (a sink, `[retention]`).
    fn new(extra: &str) -> Fixture {
        let pg = PgCluster::start();
        pg.create_db("app");
        pg.psql(
            "app",
            "SET ROLE app; CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
        );
        let s = Scratch::new();
        let keys = s.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let signer = new_key(&keys, "signer", PASSPHRASE);
        new_key(&keys, "intruder", "");
        let allowed = keys.join("allowed_signers");
        std::fs::write(&allowed, format!("{PRINCIPAL} {}\n", public(&signer))).unwrap();
        let toml = format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n\n\
             [signing]\nkey = \"{}\"\npassphrase = \"${{env:PIPELINE_SIGNING_PASSPHRASE}}\"\n\
             allowed_signers = \"{}\"\nprincipal = \"{PRINCIPAL}\"\n{extra}",
            s.backups().display(),
            signer.display(),
            allowed.display()
        );
        let file = s.path().join("signed.toml");
        std::fs::write(&file, toml).unwrap();
        Fixture {
            file: file.to_str().unwrap().to_string(),
            pg,
            s,
            keys,
            signer,
            allowed,
        }
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let url = self.pg.url("app");
        let mut env = vec![
            ("DATABASE_URL", url.as_str()),
            ("PIPELINE_SIGNING_PASSPHRASE", PASSPHRASE),
        ];
        env.extend_from_slice(extra);
        let out = self.s.run(args, &env);
        self.assert_no_key(&logs(&out));
        out
    }

    /// Neither the private key (any line of its body), nor its passphrase, nor the
    /// database password is in `text`.
    fn assert_no_key(&self, text: &str) {
        assert_no_secret(&self.pg, text);
        assert!(!text.contains(PASSPHRASE), "the passphrase leaked:\n{text}");
        let key = std::fs::read_to_string(&self.signer).unwrap();
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "the private key leaked:\n{text}");
        }
    }

    fn backup(&self, at: Option<&str>) -> String {
        let env: Vec<(&str, &str)> = at.map(|t| ("PIPELINE_TEST_NOW", t)).into_iter().collect();
        let out = self.run(&["run", &self.file], &env);
        assert!(out.status.success(), "backup failed:\n{}", logs(&out));
        let files = self.s.files();
        let mut names: Vec<String> = files
            .into_iter()
            .filter(|f| f.ends_with(".sql.zst"))
            .collect();
        names.sort();
        names.pop().expect("a backup")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.s.backups().join(name)
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn tables(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')",
    )
    .trim()
    .to_string()
}

#[test]
fn a_signed_backup_checks_by_hand_and_verify_and_restore_refuse_every_tampering() {
    let fx = Fixture::new("");
    let name = fx.backup(None);
    let manifest = format!("{name}.sha256");
    let sig = format!("{manifest}.sig");
    assert_eq!(
        fx.s.files(),
        vec![name.clone(), manifest.clone(), sig.clone()]
    );
    let sig_text = std::fs::read_to_string(fx.path(&sig)).unwrap();
    assert!(
        sig_text.starts_with("-----BEGIN SSH SIGNATURE-----"),
        "{sig_text}"
    );

    // By hand, as the README says: ssh-keygen proves the manifest, sha256sum the backup.
    let by_hand = ssh_keygen(
        &[
            "-Y",
            "verify",
            "-f",
            fx.allowed.to_str().unwrap(),
            "-I",
            PRINCIPAL,
            "-n",
            NAMESPACE,
            "-s",
            fx.path(&sig).to_str().unwrap(),
        ],
        Some(&fx.path(&manifest)),
    );
    assert!(
        by_hand.status.success(),
        "ssh-keygen -Y verify: {}",
        logs(&by_hand)
    );
    assert!(
        logs(&by_hand).contains(&format!("Good \"{NAMESPACE}\" signature for {PRINCIPAL}")),
        "{}",
        logs(&by_hand)
    );
    let sum = Command::new("sha256sum")
        .args(["-c", &manifest])
        .current_dir(fx.s.backups())
        .output()
        .expect("sha256sum");
    assert!(sum.status.success(), "sha256sum -c: {}", logs(&sum));

    // verify and restore accept it.
    let out = fx.run(&["verify", &fx.file], &[]);
    assert!(out.status.success(), "verify: {}", logs(&out));
    let fingerprint = String::from_utf8_lossy(
        &ssh_keygen(
            &[
                "-l",
                "-f",
                fx.signer.with_extension("pub").to_str().unwrap(),
            ],
            None,
        )
        .stdout,
    )
    .split_whitespace()
    .nth(1)
    .expect("a fingerprint")
    .to_string();
    assert!(
        logs(&out).contains(&format!("signed by {fingerprint} (principal {PRINCIPAL})")),
        "{}",
        logs(&out)
    );
    fx.pg.create_db("good");
    let good = fx.pg.url("good");
    let out = fx.run(&["restore", &fx.file, "--to", &good], &[]);
    assert!(out.status.success(), "restore: {}", logs(&out));
    assert_eq!(fx.pg.psql("good", "SELECT count(*) FROM t").trim(), "1000");

    // Each tampering, undone after its check. Restore goes into an empty database that
    // must stay empty.
    fx.pg.create_db("target");
    let target = fx.pg.url("target");
    let originals: Vec<(PathBuf, Vec<u8>)> = [&name, &manifest, &sig]
        .iter()
        .map(|n| (fx.path(n), std::fs::read(fx.path(n)).unwrap()))
        .collect();
    let reset = || {
        for (p, b) in &originals {
            std::fs::write(p, b).unwrap();
        }
    };
    let refused = |case: &str, why: &str| {
        for args in [
            vec!["verify", &fx.file],
            vec!["restore", &fx.file, "--to", &target],
        ] {
            let out = fx.run(&args, &[]);
            let text = logs(&out);
            assert_eq!(out.status.code(), Some(1), "{case}: {args:?}:\n{text}");
            assert!(
                text.contains(why),
                "{case}: {args:?} should say `{why}`:\n{text}"
            );
            assert!(
                text.contains(&name),
                "{case}: {args:?} names the backup:\n{text}"
            );
        }
        assert_eq!(
            tables(&fx.pg, "target"),
            "0",
            "{case}: restore committed something"
        );
        reset();
    };

    // An attacker replaces the backup with their own SQL and recomputes the manifest.
    let evil = Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"CREATE TABLE evil (x int);\n")?;
            c.wait_with_output()
        })
        .expect("zstd");
    std::fs::write(fx.path(&name), &evil.stdout).unwrap();
    let rewritten = std::fs::read_to_string(fx.path(&manifest))
        .unwrap()
        .replacen(&sha256(&originals[0].1), &sha256(&evil.stdout), 1);
    std::fs::write(fx.path(&manifest), &rewritten).unwrap();
    refused("manifest rewritten", "does not match the manifest");

    // ... and signs it with a key of their own.
    std::fs::write(fx.path(&name), &evil.stdout).unwrap();
    std::fs::write(fx.path(&manifest), &rewritten).unwrap();
    std::fs::remove_file(fx.path(&sig)).unwrap();
    let forged = ssh_keygen(
        &[
            "-Y",
            "sign",
            "-n",
            NAMESPACE,
            "-f",
            fx.keys.join("intruder").to_str().unwrap(),
            fx.path(&manifest).to_str().unwrap(),
        ],
        None,
    );
    assert!(
        forged.status.success(),
        "ssh-keygen -Y sign: {}",
        logs(&forged)
    );
    refused("signed by another key", "another key signed it");

    std::fs::remove_file(fx.path(&sig)).unwrap();
    refused("signature removed", "has no signature");

    std::fs::write(fx.path(&sig), "-----BEGIN SSH SIGNATURE-----\nnope\n").unwrap();
    refused("signature broken", "not an SSH signature");

    // The bytes altered, manifest and signature untouched.
    let mut altered = originals[0].1.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0x55;
    std::fs::write(fx.path(&name), &altered).unwrap();
    refused("backup altered", "checksum mismatch");

    // A good backup, manifest and signature copied under another backup's name (an old
    // backup made to look like a newer one): the signature checks, the name does not.
    let renamed = "backup-2026-01-01T00-00-00-000Z.sql.zst";
    for (from, to) in [
        (name.clone(), renamed.to_string()),
        (manifest.clone(), format!("{renamed}.sha256")),
        (sig.clone(), format!("{renamed}.sha256.sig")),
    ] {
        std::fs::copy(fx.path(&from), fx.path(&to)).unwrap();
    }
    for args in [
        vec!["verify", &fx.file, "--backup", renamed],
        vec!["restore", &fx.file, "--backup", renamed, "--to", &target],
    ] {
        let out = fx.run(&args, &[]);
        let text = logs(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}:\n{text}");
        assert!(
            text.contains(&format!(
                "the signed manifest is for {name}, not for this backup"
            )),
            "{args:?}:\n{text}"
        );
    }
    assert_eq!(
        tables(&fx.pg, "target"),
        "0",
        "renamed: restore committed something"
    );

    // After all that, the untouched backup still verifies.
    let out = fx.run(&["verify", &fx.file], &[]);
    assert!(out.status.success(), "verify after reset: {}", logs(&out));
}

#[test]
fn retention_deletes_the_signature_with_its_backup_and_listing_never_shows_one() {
    let fx = Fixture::new("\n[retention]\ndays = 0\nkeep_last = 1\n");
    let first = fx.backup(Some("2026-11-01T02:00:00Z"));
    assert!(fx.path(&format!("{first}.sha256.sig")).exists());
    let list = fx.run(
        &["list", &fx.file],
        &[("PIPELINE_TEST_NOW", "2026-11-01T03:00:00Z")],
    );
    assert!(list.status.success(), "list: {}", logs(&list));
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(stdout.contains(&first), "{stdout}");
    assert!(
        !stdout.contains(".sig"),
        "a signature listed as a backup:\n{stdout}"
    );

    // A run whose signature cannot be stored (a file is in the way: sinks never overwrite)
    // fails, prunes nothing, and leaves a backup that verify refuses.
    let failed = "backup-2026-11-02T02-00-00-000Z.sql.zst";
    std::fs::write(fx.path(&format!("{failed}.sha256.sig")), "in the way\n").unwrap();
    let out = fx.run(
        &["run", &fx.file],
        &[("PIPELINE_TEST_NOW", "2026-11-02T02:00:00Z")],
    );
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("were stored but the manifest's signature was not")
            && text.contains("nothing was pruned"),
        "{text}"
    );
    assert!(fx.path(&first).exists(), "pruned after a failed run");
    let out = fx.run(
        &["verify", &fx.file],
        &[("PIPELINE_TEST_NOW", "2026-11-02T03:00:00Z")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", logs(&out));
    assert!(
        logs(&out).contains("not an SSH signature"),
        "{}",
        logs(&out)
    );

    let third = fx.backup(Some("2026-11-03T02:00:00Z"));
    assert_eq!(
        fx.s.files(),
        vec![
            third.clone(),
            format!("{third}.sha256"),
            format!("{third}.sha256.sig")
        ],
        "the earlier backups, their manifests and their signatures are pruned together"
    );
}

#[test]
fn a_key_that_verify_would_refuse_or_cannot_be_opened_is_a_configuration_error() {
    let fx = Fixture::new("");
    let out = fx.run(&["validate", &fx.file], &[]);
    let text = logs(&out);
    assert!(out.status.success(), "validate: {text}");
    assert!(
        text.contains("signing: manifests signed with")
            && text.contains(&format!("namespace {NAMESPACE}"))
            && text.contains(&format!("for principal `{PRINCIPAL}`")),
        "{text}"
    );
    // The example pipeline file of the repository, as its comment says to run it.
    let example = support::scratch::repo().join("pipelines/nightly-signed.toml");
    let (key, allowed) = (fx.signer.to_str().unwrap(), fx.allowed.to_str().unwrap());
    let out = fx.run(
        &["validate", example.to_str().unwrap()],
        &[
            ("PIPELINE_SIGNING_KEY", key),
            ("PIPELINE_ALLOWED_SIGNERS", allowed),
        ],
    );
    let text = logs(&out);
    assert!(out.status.success(), "validate nightly-signed: {text}");
    assert!(text.contains("signing: manifests signed with"), "{text}");
    // The allowed signers no longer allow the signing key: every backup it signed would
    // fail verify, so the run does not start.
    std::fs::write(
        &fx.allowed,
        format!("{PRINCIPAL} {}\n", public(&fx.keys.join("intruder"))),
    )
    .unwrap();
    let out = fx.run(&["run", &fx.file], &[]);
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("signing.key") && text.contains("is not allowed for principal"),
        "{text}"
    );
    assert!(
        fx.s.files().is_empty(),
        "nothing is written: {:?}",
        fx.s.files()
    );

    // A wrong passphrase: exit 2 naming the key and the file's line, the passphrase masked.
    let out = fx.run(
        &["-v", "run", &fx.file],
        &[("PIPELINE_SIGNING_PASSPHRASE", "a-wrong-passphrase-here")],
    );
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("signed.toml:14:7: signing.key: cannot decrypt"),
        "{text}"
    );
    assert!(!text.contains("a-wrong-passphrase-here"), "{text}");
}

#[test]
fn the_signature_goes_through_every_sink_and_each_sink_is_checked_on_its_own() {
    let s3 = S3Server::start();
    let fx = Fixture::new(&format!(
        "\n[[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"nightly/\"\n\
         endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
        s3.endpoint()
    ));
    let name = fx.backup(None);
    let sig = format!("{name}.sha256.sig");
    assert_eq!(
        s3.objects("nightly"),
        vec![name.clone(), format!("{name}.sha256"), sig.clone()]
    );
    assert_eq!(
        std::fs::read(s3.bucket().join("nightly").join(&sig)).unwrap(),
        std::fs::read(fx.path(&sig)).unwrap(),
        "one signature, the same in every sink"
    );
    let out = fx.run(&["verify", &fx.file], &[]);
    let text = logs(&out);
    assert!(out.status.success(), "verify: {text}");
    assert_eq!(
        text.matches("(principal backups@example.com)").count(),
        2,
        "{text}"
    );
    assert!(!text.contains(SECRET_KEY), "{text}");

    // The signature removed from the bucket only: that sink fails, the other passes.
    std::fs::remove_file(s3.bucket().join("nightly").join(&sig)).unwrap();
    let out = fx.run(&["verify", &fx.file], &[]);
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok      sink local"), "{text}");
    assert!(
        text.contains("FAILED  sink s3") && text.contains("has no signature"),
        "{text}"
    );
    fx.pg.create_db("target");
    let target = fx.pg.url("target");
    let out = fx.run(&["restore", &fx.file, "--from", "s3", "--to", &target], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", logs(&out));
    assert!(logs(&out).contains("has no signature"), "{}", logs(&out));
    assert_eq!(tables(&fx.pg, "target"), "0");
    let out = fx.run(
        &["restore", &fx.file, "--from", "local", "--to", &target],
        &[],
    );
    assert!(out.status.success(), "{}", logs(&out));
    assert_eq!(
        fx.pg.psql("target", "SELECT count(*) FROM t").trim(),
        "1000"
    );
}
