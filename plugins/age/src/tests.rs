use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use age::secrecy::ExposeSecret;

use super::*;

fn sample() -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..100_000u32 {
        data.extend_from_slice(format!("INSERT INTO t VALUES ({i}, 'row {i}');\n").as_bytes());
    }
    data
}

/// A fresh X25519 key pair: (identity text, recipient text).
fn x25519() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_owned(),
        id.to_public().to_string(),
    )
}

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pipeline-age-test-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An SSH key pair made by the real `ssh-keygen`: (private key text, public key line).
fn ssh_key(kind: &str, dir: &TempDir) -> (String, String) {
    let key = dir.0.join(format!("id_{kind}"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "backup@test", "-f"])
        .arg(&key);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let status = cmd
        .status()
        .expect("ssh-keygen is needed for these tests (apt-get install openssh-client)");
    assert!(status.success(), "ssh-keygen -t {kind} failed");
    let private = std::fs::read_to_string(&key).expect("read private key");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("read public key");
    (private, public.trim().to_owned())
}

fn json(value: serde_json::Value) -> String {
    value.to_string()
}

fn config(value: serde_json::Value) -> Config {
    Config::parse(&json(value)).expect("valid config")
}

fn config_err(value: serde_json::Value) -> String {
    match Config::parse(&json(value)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(PluginError::Config(m)) => m,
        Err(other) => panic!("expected a config error, got {other:?}"),
    }
}

fn encrypt_with(config: &Config, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = encrypt(encryptor(config).expect("encryptor"), data, &mut out).expect("encrypt");
    assert_eq!(n, data.len() as u64);
    out
}

fn decrypt_with(config: &Config, data: &[u8]) -> Result<Vec<u8>, PluginError> {
    let mut out = Vec::new();
    decrypt(config, data, &mut out).map(|_| out)
}

#[test]
fn round_trip_to_an_age_recipient() {
    let (identity, recipient) = x25519();
    let data = sample();
    let enc = config(serde_json::json!({ "recipients": [recipient] }));
    let encrypted = encrypt_with(&enc, &data);
    assert!(encrypted.starts_with(b"age-encryption.org/v1\n"));
    assert!(!encrypted.windows(12).any(|w| w == b"INSERT INTO "));
    let dec = config(serde_json::json!({ "recipients": [recipient], "identity": identity }));
    assert_eq!(decrypt_with(&dec, &encrypted).expect("decrypt"), data);
}

#[test]
fn round_trip_of_empty_and_chunk_sized_inputs() {
    let (identity, recipient) = x25519();
    let c = config(serde_json::json!({ "recipients": [recipient], "identity": identity }));
    for len in [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 3 * 64 * 1024] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let back = decrypt_with(&c, &encrypt_with(&c, &data)).expect("decrypt");
        assert_eq!(back, data, "length {len}");
    }
}

#[test]
fn several_recipients_each_decrypt() {
    let dir = TempDir::new("several");
    let (id1, r1) = x25519();
    let (id2, r2) = x25519();
    let (ssh_private, ssh_public) = ssh_key("ed25519", &dir);
    let file = dir.0.join("recipients.txt");
    std::fs::write(&file, format!("# team\n{r2}\n\n{ssh_public}\n")).expect("write");
    let enc = config(serde_json::json!({
        "recipients": [r1],
        "recipients_file": file.to_str().expect("utf-8"),
    }));
    assert_eq!(enc.recipients().expect("recipients").len(), 3);
    let data = sample();
    let encrypted = encrypt_with(&enc, &data);
    for identity in [id1, id2, ssh_private] {
        let dec = config(serde_json::json!({ "recipients": [r1], "identity": identity }));
        assert_eq!(decrypt_with(&dec, &encrypted).expect("decrypt"), data);
    }
}

#[test]
fn ssh_rsa_recipient_and_identity_file() {
    let dir = TempDir::new("rsa");
    let (_, public) = ssh_key("rsa", &dir);
    let private = dir.0.join("id_rsa");
    let c = config(serde_json::json!({
        "recipients": [public],
        "identity_file": private.to_str().expect("utf-8"),
    }));
    let data = sample();
    assert_eq!(
        decrypt_with(&c, &encrypt_with(&c, &data)).expect("decrypt"),
        data
    );
}

#[test]
fn passphrase_round_trip_and_wrong_passphrase() {
    let c = config(serde_json::json!({ "passphrase": "correct horse battery staple" }));
    let encrypted = encrypt_with(&c, b"secret rows\n");
    assert_eq!(
        decrypt_with(&c, &encrypted).expect("decrypt"),
        b"secret rows\n"
    );
    let wrong = config(serde_json::json!({ "passphrase": "incorrect horse" }));
    let err = decrypt_with(&wrong, &encrypted).expect_err("wrong passphrase");
    assert!(err.message().contains("wrong passphrase"), "{err}");
    assert!(!err.message().contains("incorrect horse"), "{err}");
    // An identity cannot open a passphrase file: the message says what it needs.
    let (identity, recipient) = x25519();
    let other = config(serde_json::json!({ "recipients": [recipient], "identity": identity }));
    let err = decrypt_with(&other, &encrypted).expect_err("needs the passphrase");
    assert!(err.message().contains("set `passphrase`"), "{err}");
}

#[test]
fn wrong_identity_names_the_problem_and_never_the_key() {
    let (_, recipient) = x25519();
    let (other_identity, _) = x25519();
    let encrypted = encrypt_with(
        &config(serde_json::json!({ "recipients": [recipient] })),
        &sample(),
    );
    let c = config(serde_json::json!({ "recipients": [recipient], "identity": other_identity }));
    let err = decrypt_with(&c, &encrypted).expect_err("wrong identity");
    assert!(
        err.message()
            .contains("no identity matches the backup's recipients"),
        "{err}"
    );
    assert!(err.message().contains("`identity`"), "{err}");
    assert!(!err.message().contains(&other_identity), "{err}");
}

#[test]
fn decoding_without_any_identity_is_a_config_error() {
    let (_, recipient) = x25519();
    let c = config(serde_json::json!({ "recipients": [recipient], "identity": "" }));
    let encrypted = encrypt_with(&c, b"x");
    let err = decrypt_with(&c, &encrypted).expect_err("no identity");
    assert!(
        matches!(&err, PluginError::Config(m) if m.contains("no identity to decrypt with")),
        "{err}"
    );
}

#[test]
fn truncated_altered_and_foreign_input_are_errors() {
    let (identity, recipient) = x25519();
    let c = config(serde_json::json!({ "recipients": [recipient], "identity": identity }));
    let encrypted = encrypt_with(&c, &sample());
    // Cut inside the header, at a chunk boundary, and just before the end.
    let header = encrypted
        .windows(4)
        .position(|w| w == b"--- ")
        .expect("header end");
    for cut in [
        0,
        10,
        header,
        header + 100,
        64 * 1024 + 200,
        encrypted.len() - 1,
    ] {
        let err = decrypt_with(&c, &encrypted[..cut]).expect_err("truncated");
        assert!(matches!(err, PluginError::Io(_)), "cut {cut}: {err}");
    }
    let mut altered = encrypted.clone();
    let at = altered.len() - 100;
    altered[at] ^= 1;
    let err = decrypt_with(&c, &altered).expect_err("altered");
    assert!(err.message().contains("altered or damaged"), "{err}");
    let err = decrypt_with(&c, b"-- not age at all --\n").expect_err("foreign");
    assert!(err.message().contains("not an age file"), "{err}");
}

/// Encrypting streams: with a 4 MiB input, the output has received everything but the
/// last chunk and a buffer by the time the input ends. Nothing holds the whole dump.
#[test]
fn encryption_streams_with_bounded_buffering() {
    struct Watch<'a> {
        data: &'a [u8],
        pos: usize,
        out: std::rc::Rc<std::cell::Cell<usize>>,
        lag: usize,
    }
    impl Read for Watch<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let lag = self.pos.saturating_sub(self.out.get());
            self.lag = self.lag.max(lag);
            let n = (self.data.len() - self.pos).min(buf.len()).min(64 * 1024);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    struct Count(std::rc::Rc<std::cell::Cell<usize>>);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.set(self.0.get() + buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (_, recipient) = x25519();
    let c = config(serde_json::json!({ "recipients": [recipient] }));
    let data = vec![7u8; 4 << 20];
    let written = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut watch = Watch {
        data: &data,
        pos: 0,
        out: written.clone(),
        lag: 0,
    };
    let reader = io::BufReader::with_capacity(CHUNK, &mut watch);
    encrypt(
        encryptor(&c).expect("encryptor"),
        reader,
        Count(written.clone()),
    )
    .expect("encrypt");
    assert!(written.get() > data.len());
    // The read buffer, the output buffer and one age chunk, with room for the header.
    assert!(
        watch.lag <= 3 * CHUNK + 64 * 1024,
        "the output lagged the input by {} bytes",
        watch.lag
    );
}

#[test]
fn input_errors_propagate() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("input stream failed: upstream died"))
        }
    }
    let (identity, recipient) = x25519();
    let c = config(serde_json::json!({ "recipients": [recipient], "identity": identity }));
    let err = encrypt(
        encryptor(&c).expect("encryptor"),
        io::BufReader::new(Failing),
        Vec::new(),
    )
    .expect_err("must fail");
    assert!(err.message().contains("upstream died"), "{err}");
    let encrypted = encrypt_with(&c, &sample());
    let mut out = Vec::new();
    let err = decrypt(
        &c,
        io::BufReader::new((&encrypted[..100_000]).chain(Failing)),
        &mut out,
    )
    .expect_err("must fail");
    assert!(err.message().contains("upstream died"), "{err}");
}

#[test]
fn recipients_file_lines_comments_and_errors() {
    let (_, r1) = x25519();
    let (_, r2) = x25519();
    let parsed = parse_recipients_file(&format!(
        "# backups for acme\n\n{r1}\n   \n  # indented comment\n{r2}  \r\n"
    ))
    .map_err(|(l, w)| format!("{l}: {w}"))
    .expect("valid");
    assert_eq!(parsed.len(), 2);

    let err = parse_recipients_file(&format!("# ok\n{r1}\nage1notakey\n"))
        .err()
        .expect("bad line");
    assert_eq!(err.0, 3);
    assert!(err.1.contains("not a valid age recipient"), "{}", err.1);

    let err = parse_recipients_file("# comment\nhello world\n")
        .err()
        .expect("bad line");
    assert_eq!(err.0, 2);
    assert!(err.1.contains("expected an age recipient"), "{}", err.1);
    assert!(
        parse_recipients_file("# only a comment\n\n")
            .map_err(|(l, w)| format!("{l}: {w}"))
            .expect("valid")
            .is_empty()
    );
}

#[test]
fn recipients_file_is_read_at_encode_and_names_its_line() {
    let dir = TempDir::new("rfile");
    let (_, r1) = x25519();
    let file = dir.0.join("recipients.txt");
    std::fs::write(
        &file,
        format!("{r1}\n# next one is wrong\nssh-ed25519 AAAAnotbase64!\n"),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let c = config(serde_json::json!({ "recipients_file": path }));
    let err = c.recipients().err().expect("bad line");
    assert_eq!(
        err.message(),
        format!("key `recipients_file`: {path} line 3: not a valid SSH public key")
    );
    std::fs::write(&file, "# nobody\n").expect("write");
    let err = c.recipients().err().expect("empty");
    assert!(err.message().contains("holds no recipient"), "{err}");
    let missing = config(serde_json::json!({ "recipients_file": dir.0.join("nope").to_str() }));
    let err = missing.recipients().err().expect("missing file");
    assert!(
        matches!(&err, PluginError::NotFound(m) if m.contains("key `recipients_file`")),
        "{err}"
    );
}

#[test]
fn bad_recipients_name_their_index_and_never_echo_a_private_key() {
    let (identity, recipient) = x25519();
    let m = config_err(serde_json::json!({ "recipients": [recipient, "age1qqqq"] }));
    assert!(
        m.starts_with("key `recipients[1]`: not a valid age recipient"),
        "{m}"
    );
    let m = config_err(serde_json::json!({ "recipients": [identity] }));
    assert!(
        m.starts_with("key `recipients[0]`: this is a private key"),
        "{m}"
    );
    assert!(!m.contains(&identity), "{m}");
    let dir = TempDir::new("ecdsa");
    let (private, ecdsa) = ssh_key("ecdsa", &dir);
    let m = config_err(serde_json::json!({ "recipients": [ecdsa] }));
    assert!(
        m.contains("ecdsa-sha2-nistp256 are not supported by age"),
        "{m}"
    );
    let m = config_err(serde_json::json!({ "recipients": [private] }));
    assert!(m.contains("this is a private key"), "{m}");
    let m = config_err(serde_json::json!({ "recipients": ["ssh-ed25519 AAAA"] }));
    assert!(m.contains("not a valid SSH public key"), "{m}");
    let m = config_err(serde_json::json!({ "recipients": [""] }));
    assert!(m.contains("empty recipient"), "{m}");
}

#[test]
fn config_choices() {
    let (_, recipient) = x25519();
    let m = config_err(serde_json::json!({}));
    assert!(m.starts_with("nothing to encrypt to"), "{m}");
    let m = config_err(
        serde_json::json!({ "recipients": [recipient], "passphrase": "long passphrase" }),
    );
    assert!(m.contains("cannot be combined"), "{m}");
    // `${env:VAR:-}` of unset variables gives empty strings: those keys are not given.
    let c = config(serde_json::json!({
        "recipients": [recipient],
        "passphrase": "",
        "identity": "",
        "identity_file": "",
        "recipients_file": " ",
    }));
    assert!(c.passphrase.is_none() && c.identity.is_none() && c.identity_file.is_none());
    assert!(c.recipients_file.is_none());
    let m = config_err(serde_json::json!({ "recipient": [recipient] }));
    assert_eq!(
        m,
        "unknown key `recipient` (this plugin accepts: recipients, recipients_file, passphrase, identity_file, identity)"
    );
}

#[test]
fn bad_identities_are_named_without_their_content() {
    let (_, recipient) = x25519();
    let with = |identity: &str| {
        config(serde_json::json!({ "recipients": [recipient], "identity": identity }))
    };
    let err = with("AGE-SECRET-KEY-1NOTAKEY")
        .identities()
        .err()
        .expect("bad");
    assert!(err.message().starts_with("key `identity`: "), "{err}");
    assert!(err.message().contains("line 1"), "{err}");
    assert!(!err.message().contains("NOTAKEY"), "{err}");
    let err = with("# just a comment\n")
        .identities()
        .err()
        .expect("empty");
    assert!(err.message().contains("holds no identity"), "{err}");

    let dir = TempDir::new("sshpass");
    let key = dir.0.join("id_locked");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen is needed for these tests (apt-get install openssh-client)");
    assert!(status.success());
    let c = config(serde_json::json!({
        "recipients": [recipient],
        "identity_file": key.to_str().expect("utf-8"),
    }));
    let err = c.identities().err().expect("locked key");
    assert!(err.message().contains("protected by a passphrase"), "{err}");
    assert!(err.message().starts_with("key `identity_file`: "), "{err}");
}

#[test]
fn plan_asks_read_only_access_to_the_files_directories() {
    let (_, recipient) = x25519();
    let plan = <Age as Plugin>::plan(json(serde_json::json!({
        "recipients_file": "/etc/backup/recipients.txt",
        "identity_file": "/root/restore/key.txt",
    })))
    .expect("plan");
    assert_eq!(plan.extension.as_deref(), Some("age"));
    let dirs: Vec<(String, bool)> = plan
        .grants
        .iter()
        .map(|g| match g {
            Grant::Directory(d) => (d.path.clone(), d.writable || d.create),
            other => panic!("unexpected grant {other:?}"),
        })
        .collect();
    assert_eq!(
        dirs,
        vec![
            ("/etc/backup".to_owned(), false),
            ("/root/restore".to_owned(), false)
        ]
    );
    let plan = <Age as Plugin>::plan(json(serde_json::json!({ "recipients": [recipient] })))
        .expect("plan");
    assert!(plan.grants.is_empty());
    assert_eq!(Age::describe().name, "age");
}

/// `describe()` lists exactly the keys `Config` accepts.
#[test]
fn described_keys_are_the_accepted_keys() {
    pipeline_plugin_sdk::config::check_described_keys::<Config>(
        &Age::describe().config_keys,
        &serde_json::json!({}),
    );
}
