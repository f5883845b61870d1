//! The built-in `age` transform against real tools: backups a pipeline encrypts open with
//! the standard `age` CLI (Debian's `age` package) and restore equal to their source through
//! `zstd -d | psql`; `pipeline restore` and `verify` decrypt with an identity from a file or
//! the environment; a wrong identity restores nothing and keeps the backup; the backup run
//! needs no private key, and no key or passphrase reaches a log, a report or a manifest.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, logs, stderr};

/// A program the tests run, or a panic saying how to install it.
fn tool(name: &str, package: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not on PATH: the encryption tests need it (apt-get install {package}, \
         or run scripts/install-prerequisites.sh --tests)"
    );
    name.to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `age-keygen -o FILE`: the identity file and its recipient (`age1…`).
fn age_keygen(file: &Path) -> (String, String) {
    std::fs::create_dir_all(file.parent().expect("parent")).expect("key dir");
    run(Command::new(tool("age-keygen", "age")).arg("-o").arg(file));
    let recipient = run(Command::new("age-keygen").arg("-y").arg(file));
    let identity = std::fs::read_to_string(file).expect("read identity");
    (
        identity,
        String::from_utf8_lossy(&recipient.stdout).trim().to_owned(),
    )
}

/// `ssh-keygen -t ed25519` without a passphrase: the private key file and its public line.
fn ssh_keygen(file: &Path) -> String {
    std::fs::create_dir_all(file.parent().expect("parent")).expect("key dir");
    run(Command::new(tool("ssh-keygen", "openssh-client"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dba@example", "-f"])
        .arg(file));
    std::fs::read_to_string(file.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_owned()
}

/// The database the backups are made of: the shared sample plus enough random rows that
/// the ciphertext spans many 64 KiB age chunks.
fn source(pg: &PgCluster) {
    pg.create_db("app");
    support::load_sample(pg, "app");
    support::load_noise(pg, "app", 20_000);
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

/// A pipeline file `NAME.toml` in the scratch directory: postgres → zstd → age with the
/// given keys → the scratch backups directory. Every variant has the pipeline name
/// `encrypted`, so they all see the same backups as theirs.
fn pipeline(s: &Scratch, name: &str, age_keys: &str) -> String {
    let file = s.path().join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"encrypted\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[transform]]\nplugin = \"age\"\n{age_keys}\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
            s.backups().display()
        ),
    )
    .expect("write pipeline file");
    file.to_str().expect("utf-8").to_owned()
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn backup(s: &Scratch, pg: &PgCluster, file: &str, env: &[(&str, &str)]) -> Output {
    let url = pg.url("app");
    let mut all = vec![("DATABASE_URL", url.as_str())];
    all.extend_from_slice(env);
    let out = s.run(&["-v", "run", file], &all);
    assert!(out.status.success(), "backup failed:\n{}", stderr(&out));
    out
}

/// The one backup in the scratch backups directory, and its manifest's text.
fn the_backup(s: &Scratch) -> (PathBuf, String) {
    let files = s.files();
    let name = files
        .iter()
        .find(|f| f.ends_with(".sql.zst.age"))
        .unwrap_or_else(|| panic!("a backup-….sql.zst.age among {files:?}"));
    let path = s.backups().join(name);
    let manifest = std::fs::read_to_string(s.backups().join(format!("{name}.sha256")))
        .expect("the backup's manifest");
    (path, manifest)
}

/// Text that may never appear in what a run prints or writes beside a backup.
fn assert_absent(what: &str, secret: &str, text: &str) {
    for line in secret.lines().map(str::trim).filter(|l| l.len() >= 8) {
        if line.starts_with('#') || line.starts_with("-----") {
            continue;
        }
        assert!(!text.contains(line), "the {what} leaked:\n{text}");
    }
}

/// The README's by-hand recipe with the standard tools: `age -d -i KEY FILE | zstd -dc`
/// into `psql`, committed only if both succeeded.
fn restore_by_hand(pg: &PgCluster, identity: &Path, backup: &Path, db: &str) -> Output {
    tool("age", "age");
    tool("zstd", "zstd");
    let path = format!(
        "{}:{}",
        pg.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg("-c")
        .arg(
            "set -o pipefail; { echo 'BEGIN;'; age -d -i \"$IDENTITY\" \"$BACKUP\" | zstd -dc \
             && echo 'COMMIT;'; } | psql -X -q -v ON_ERROR_STOP=1 \"$DATABASE_URL\"",
        )
        .env("PATH", path)
        .env("IDENTITY", identity)
        .env("BACKUP", backup)
        .env("DATABASE_URL", pg.url(db))
        .output()
        .expect("run the recipe")
}

/// A backup encrypted to an age recipient (from `age-keygen`) by a run that has no identity
/// anywhere: the standard `age -d -i key.txt` decrypts it and `zstd -d | psql` restores it
/// equal to its source. The manifest checks with `sha256sum -c`; neither the run's output
/// nor the manifest holds the identity.
#[test]
fn the_age_tool_decrypts_a_backup_made_without_any_private_key() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    // The identity lives elsewhere (a restore machine); the backup host sees only the
    // recipient, and `identity` reads a variable the backup run does not set.
    let keys = s.path().join("offline");
    let (identity, recipient) = age_keygen(&keys.join("key.txt"));
    let file = pipeline(
        &s,
        "nightly-age",
        &format!(
            "recipients = {}\nidentity = \"${{env:AGE_IDENTITY:-}}\"",
            toml_list(&[&recipient])
        ),
    );
    let out = backup(&s, &pg, &file, &[]);
    let printed = logs(&out);
    assert_no_secret(&pg, &printed);
    assert_absent("identity", &identity, &printed);

    let (path, manifest) = the_backup(&s);
    assert_absent("identity", &identity, &manifest);
    assert!(manifest.contains("# pipeline: encrypted"), "{manifest}");
    let head = std::fs::read(&path).expect("read backup");
    assert!(
        head.starts_with(b"age-encryption.org/v1\n-> X25519 "),
        "a standard age file to an X25519 recipient"
    );
    run(Command::new("sha256sum")
        .arg("-c")
        .arg(format!(
            "{}.sha256",
            path.file_name().unwrap().to_str().unwrap()
        ))
        .current_dir(s.backups()));

    pg.create_db("by_hand");
    let out = restore_by_hand(&pg, &keys.join("key.txt"), &path, "by_hand");
    assert!(
        out.status.success(),
        "age -d | zstd -d | psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("by_hand"));

    // The same recipe with a key that is not the backup's fails and commits nothing.
    let (_, _) = age_keygen(&s.path().join("other/key.txt"));
    pg.create_db("wrong_key");
    let out = restore_by_hand(&pg, &s.path().join("other/key.txt"), &path, "wrong_key");
    assert!(!out.status.success(), "a wrong key must fail");
    assert_eq!(count_relations(&pg, "wrong_key"), "0");
}

/// An SSH ed25519 public key (from `ssh-keygen`) given in a `recipients_file` with
/// comments: `age -d -i id_ed25519` decrypts the backup, which restores equal.
#[test]
fn an_ssh_ed25519_recipient_decrypts_with_the_ssh_key() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let key = s.path().join("ssh/id_ed25519");
    let public = ssh_keygen(&key);
    let recipients = s.path().join("etc/recipients.txt");
    std::fs::create_dir_all(recipients.parent().unwrap()).unwrap();
    std::fs::write(
        &recipients,
        format!("# the DBA's SSH key\n\n{public}\n# (add the next one below)\n"),
    )
    .unwrap();
    let file = pipeline(
        &s,
        "ssh",
        &format!("recipients_file = {:?}", recipients.to_str().unwrap()),
    );
    backup(&s, &pg, &file, &[]);
    let (path, _) = the_backup(&s);
    let head = std::fs::read(&path).expect("read backup");
    assert!(head.starts_with(b"age-encryption.org/v1\n-> ssh-ed25519 "));

    pg.create_db("restored");
    let out = restore_by_hand(&pg, &key, &path, "restored");
    assert!(
        out.status.success(),
        "age -d -i id_ed25519: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));

    // `pipeline restore` decrypts with the SSH private key too.
    let restore_file = pipeline(
        &s,
        "ssh-restore",
        &format!(
            "recipients_file = {:?}\nidentity_file = {:?}",
            recipients.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    );
    pg.create_db("restored2");
    let out = s.run(
        &["restore", &restore_file, "--to", &pg.url("restored2")],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored2"));
}

/// The shipped `pipelines/encrypted.toml` backs up with only a recipients file; `pipeline
/// restore` and `verify --restore-into` then decrypt with `identity_file` (a file in a
/// directory that did not exist when the backup ran) and with `AGE_IDENTITY` from the
/// environment; neither ever prints the identity.
#[test]
fn restore_and_verify_decrypt_with_an_identity_file_or_the_environment() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let keys = s.path().join("restore-keys");
    let key_file = keys.join("key.txt");
    // Made elsewhere; the backup run sees only the recipient and a missing key directory.
    let (identity, recipient) = age_keygen(&s.path().join("vault/key.txt"));
    let recipients = s.path().join("backup-recipients.txt");
    std::fs::write(
        &recipients,
        format!("# restore key, kept offline\n{recipient}\n"),
    )
    .unwrap();
    let shipped = support::scratch::repo().join("pipelines/encrypted.toml");
    let shipped = shipped.to_str().unwrap();
    let url = pg.url("app");
    let backup_dir = s.backups();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("BACKUP_DIR", backup_dir.to_str().unwrap()),
    ];
    // The default recipients file is ./backup-recipients.txt in the working directory.
    let out = s.run(&["-v", "run", shipped], &env);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    assert_absent("identity", &identity, &logs(&out));
    let (path, _) = the_backup(&s);
    assert!(!keys.exists());

    // The restore machine has the key in a file.
    let with_file = pipeline(
        &s,
        "with-file",
        &format!(
            "recipients = {}\nidentity_file = {:?}",
            toml_list(&[&recipient]),
            key_file.to_str().unwrap()
        ),
    );
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(s.path().join("vault/key.txt"), &key_file).unwrap();
    pg.create_db("from_file");
    let out = s.run(
        &["-v", "restore", &with_file, "--to", &pg.url("from_file")],
        &[("DATABASE_URL", &url)],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_absent("identity", &identity, &logs(&out));
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("from_file"));

    pg.create_db("scratch_file");
    let out = s.run(
        &[
            "verify",
            &with_file,
            "--restore-into",
            &pg.url("scratch_file"),
        ],
        &[("DATABASE_URL", &url)],
    );
    let text = logs(&out);
    assert!(out.status.success(), "verify: {text}");
    assert!(text.contains("ok      restore of backup-"), "{text}");
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("scratch_file"));

    // Or in the environment, with the shipped file as it is.
    let mut env_id = env.to_vec();
    env_id.push(("AGE_IDENTITY", identity.as_str()));
    pg.create_db("from_env");
    let out = s.run(
        &["-v", "restore", shipped, "--to", &pg.url("from_env")],
        &env_id,
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_absent("identity", &identity, &logs(&out));
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("from_env"));

    let out = s.run(&["-v", "verify", shipped], &env_id);
    let text = logs(&out);
    assert!(out.status.success(), "verify: {text}");
    assert!(text.contains("decodes"), "{text}");
    assert_absent("identity", &identity, &text);
    assert!(path.exists());
}

/// A wrong identity fails `restore` and `verify` with a message naming the stage and the
/// cause, commits nothing in the target and leaves the backup as it was; with no identity
/// at all, the message says which keys to set.
#[test]
fn a_wrong_identity_fails_naming_the_stage_restores_nothing_and_keeps_the_backup() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let (_, recipient) = age_keygen(&s.path().join("vault/key.txt"));
    let (wrong, _) = age_keygen(&s.path().join("other/key.txt"));
    let file = pipeline(
        &s,
        "enc",
        &format!(
            "recipients = {}\nidentity = \"${{env:AGE_IDENTITY:-}}\"",
            toml_list(&[&recipient])
        ),
    );
    backup(&s, &pg, &file, &[]);
    let (path, _) = the_backup(&s);
    let before = std::fs::read(&path).unwrap();

    let url = pg.url("app");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("AGE_IDENTITY", wrong.as_str()),
    ];
    pg.create_db("target");
    let out = s.run(&["-v", "restore", &file, "--to", &pg.url("target")], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("transform age"), "names the stage: {err}");
    assert!(
        err.contains("no identity matches the backup's recipients"),
        "names the cause: {err}"
    );
    assert_absent("identity", &wrong, &logs(&out));
    assert_eq!(count_relations(&pg, "target"), "0", "nothing committed");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the backup is kept as it was"
    );

    let out = s.run(&["verify", &file], &env);
    let text = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no identity matches the backup's recipients"),
        "{text}"
    );
    assert_absent("identity", &wrong, &text);

    let out = s.run(
        &["restore", &file, "--to", &pg.url("target")],
        &[("DATABASE_URL", url.as_str())],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no identity to decrypt with"), "{err}");
    assert_eq!(count_relations(&pg, "target"), "0", "nothing committed");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// A passphrase from the environment: the backup is a standard scrypt age file, restore
/// decrypts it with the same key, and the passphrase is in no output and no manifest.
#[test]
fn a_passphrase_backup_restores_and_the_passphrase_never_shows() {
    let pg = PgCluster::start();
    source(&pg);
    let s = Scratch::new();
    let passphrase = "tremble-oxygen-carpet-violin-42";
    let file = pipeline(&s, "pass", "passphrase = \"${env:BACKUP_PASSPHRASE}\"");
    let env_run = [("BACKUP_PASSPHRASE", passphrase)];
    let out = backup(&s, &pg, &file, &env_run);
    assert_absent("passphrase", passphrase, &logs(&out));
    let (path, manifest) = the_backup(&s);
    assert_absent("passphrase", passphrase, &manifest);
    let head = std::fs::read(&path).unwrap();
    assert!(head.starts_with(b"age-encryption.org/v1\n-> scrypt "));

    let url = pg.url("app");
    pg.create_db("restored");
    let out = s.run(
        &["-v", "restore", &file, "--to", &pg.url("restored")],
        &[("DATABASE_URL", &url), ("BACKUP_PASSPHRASE", passphrase)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_absent("passphrase", passphrase, &logs(&out));
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));

    pg.create_db("wrong");
    let out = s.run(
        &["restore", &file, "--to", &pg.url("wrong")],
        &[
            ("DATABASE_URL", &url),
            ("BACKUP_PASSPHRASE", "not-the-passphrase-at-all"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("not-the-passphrase-at-all"), "{err}");
    assert_eq!(count_relations(&pg, "wrong"), "0");
}

/// A bad recipient stops the run before anything is written, naming the key and the line
/// of the recipients file; `validate` catches an inline one.
#[test]
fn a_bad_recipient_is_named_and_nothing_is_written() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let (_, recipient) = age_keygen(&s.path().join("vault/key.txt"));
    let file = pipeline(
        &s,
        "inline",
        &format!("recipients = {}", toml_list(&[&recipient, "age1nope"])),
    );
    let out = s.run(&["validate", &file], &[("DATABASE_URL", &pg.url("app"))]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("recipients[1]") && err.contains("not a valid age recipient"),
        "{err}"
    );

    let list = s.path().join("etc/recipients.txt");
    std::fs::create_dir_all(list.parent().unwrap()).unwrap();
    std::fs::write(&list, format!("# ops\n{recipient}\nssh-dss AAAAB3Nza\n")).unwrap();
    let file = pipeline(
        &s,
        "listed",
        &format!("recipients_file = {:?}", list.to_str().unwrap()),
    );
    let out = s.run(&["run", &file], &[("DATABASE_URL", &pg.url("app"))]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("transform age") && err.contains("recipients_file") && err.contains("line 3"),
        "{err}"
    );
    assert!(s.files().is_empty(), "nothing written: {:?}", s.files());
}
