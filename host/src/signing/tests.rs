use std::os::unix::fs::PermissionsExt;

use ssh_key::rand_core::OsRng;

use super::*;

const MANIFEST: &str = "9f2c000000000000000000000000000000000000000000000000000000000000  \
                        backup-2025-12-10T02-00-00-000Z.sql.zst\n# pipeline: nightly\n";

fn key() -> PrivateKey {
    PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("a key")
}

fn write_key(dir: &Path, name: &str, key: &PrivateKey) -> PathBuf {
    let path = dir.join(name);
    key.write_openssh_file(&path, LineEnding::LF)
        .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn line(principals: &str, options: &str, key: &PrivateKey) -> String {
    let public = key.public_key().to_openssh().expect("public");
    if options.is_empty() {
        format!("{principals} {public}\n")
    } else {
        format!("{principals} {options} {public}\n")
    }
}

fn checker(text: &str, principal: &str) -> Checker {
    Checker {
        file: "allowed_signers".into(),
        principal: principal.into(),
        allowed: parse_allowed_signers(text, principal).expect("parses"),
    }
}

fn signer(key: PrivateKey) -> Signer {
    Signer {
        key,
        file: "key".into(),
    }
}

#[test]
fn signature_is_armored_sshsig_in_the_manifest_namespace_and_checks() {
    let k = key();
    let s = signer(k.clone());
    let sig = s.sign(MANIFEST.as_bytes()).unwrap();
    assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"), "{sig}");
    assert!(
        sig.trim_end().ends_with("-----END SSH SIGNATURE-----"),
        "{sig}"
    );
    let parsed = SshSig::from_pem(&sig).unwrap();
    assert_eq!(parsed.namespace(), NAMESPACE);
    assert_eq!(parsed.hash_alg(), HashAlg::Sha512);
    let c = checker(&line("backups@example.com", "", &k), "backups@example.com");
    let good = c.check(MANIFEST.as_bytes(), Some(sig.as_bytes())).unwrap();
    assert_eq!(good.fingerprint, s.fingerprint());
    assert!(good.fingerprint.starts_with("SHA256:"));
}

#[test]
fn check_refuses_missing_malformed_foreign_and_tampered_signatures_saying_why() {
    let k = key();
    let c = checker(&line("backups@example.com", "", &k), "backups@example.com");
    let sig = signer(k.clone()).sign(MANIFEST.as_bytes()).unwrap();

    let e = c.check(MANIFEST.as_bytes(), None).unwrap_err();
    assert!(e.contains("has no signature"), "{e}");

    let e = c
        .check(MANIFEST.as_bytes(), Some(b"not a signature"))
        .unwrap_err();
    assert!(e.contains("not an SSH signature"), "{e}");

    let other = signer(key()).sign(MANIFEST.as_bytes()).unwrap();
    let e = c
        .check(MANIFEST.as_bytes(), Some(other.as_bytes()))
        .unwrap_err();
    assert!(
        e.contains("not allowed there") && e.contains("another key"),
        "{e}"
    );

    let tampered = MANIFEST.replace("9f2c", "0000");
    let e = c
        .check(tampered.as_bytes(), Some(sig.as_bytes()))
        .unwrap_err();
    assert!(e.contains("does not match the manifest"), "{e}");

    // Same key, another namespace (say, a git commit's signature): not a manifest's.
    let git = k.sign("git", HashAlg::Sha512, MANIFEST.as_bytes()).unwrap();
    let git = git.to_pem(LineEnding::LF).unwrap();
    let e = c
        .check(MANIFEST.as_bytes(), Some(git.as_bytes()))
        .unwrap_err();
    assert!(e.contains("namespace `git`"), "{e}");
}

#[test]
fn allowed_signers_principals_patterns_and_options() {
    let (a, b, ca) = (key(), key(), key());
    let text = format!(
        "# comment\n\n{}{}{}{}",
        line("alice@example.com,*@backups.example", "", &a),
        line(
            "\"ops@backups.example\"",
            "namespaces=\"file,pipeline-*\",valid-after=20200101",
            &b
        ),
        line("*@backups.example", "cert-authority", &ca),
        line("*,!eve@backups.example", "namespaces=\"git\"", &ca),
    );
    let ops = parse_allowed_signers(&text, "ops@backups.example").unwrap();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert_eq!(ops[1].namespaces.as_deref().unwrap().len(), 2);
    assert!(ops[1].valid_after.is_some());
    let c = checker(&text, "ops@backups.example");
    let now = jiff::Timestamp::now();
    assert!(c.find(a.public_key().key_data(), NAMESPACE, now).is_some());
    assert!(c.find(b.public_key().key_data(), NAMESPACE, now).is_some());
    // The CA key is allowed for principal patterns, but only for the `git` namespace (its
    // cert-authority line is skipped: manifests are not signed with certificates).
    assert!(c.find(ca.public_key().key_data(), NAMESPACE, now).is_none());
    assert!(c.find(ca.public_key().key_data(), "git", now).is_some());
    // Negated principal.
    let eve = parse_allowed_signers(&text, "eve@backups.example").unwrap();
    assert_eq!(eve.len(), 1, "only alice's pattern line: {eve:?}");
    assert!(
        parse_allowed_signers(&text, "mallory@elsewhere")
            .unwrap()
            .iter()
            .all(|x| x.key == *ca.public_key().key_data())
    );
}

#[test]
fn expired_key_is_refused() {
    let k = key();
    let c = checker(&line("b@x", "valid-before=20200101Z", &k), "b@x");
    let sig = signer(k).sign(MANIFEST.as_bytes()).unwrap();
    let e = c
        .check(MANIFEST.as_bytes(), Some(sig.as_bytes()))
        .unwrap_err();
    assert!(e.contains("not for this namespace or at this time"), "{e}");
}

#[test]
fn allowed_signers_errors_name_the_line() {
    let k = key();
    let e = parse_allowed_signers(&format!("\n{}", line("a", "no-touch-required", &k)), "a")
        .unwrap_err();
    assert!(e.starts_with("line 2: option `no-touch-required`"), "{e}");
    let e = parse_allowed_signers("a ssh-ed25519\n", "a").unwrap_err();
    assert!(e.starts_with("line 1: expected"), "{e}");
    let e = parse_allowed_signers("a ssh-ed25519 AAAAnotbase64\n", "a").unwrap_err();
    assert!(e.starts_with("line 1: not a public key"), "{e}");
    let e = parse_allowed_signers(&line("a", "valid-after=yesterday", &k), "a").unwrap_err();
    assert!(e.contains("`yesterday` is not a time"), "{e}");
}

#[test]
fn key_files_plain_encrypted_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let plain = write_key(dir.path(), "plain", &k);
    let s = Signer::from_file(&plain, None).unwrap();
    assert_eq!(s.fingerprint(), k.fingerprint(HashAlg::Sha256).to_string());
    assert!(!format!("{s:?}").contains("PRIVATE"));

    let pass = "correct horse battery staple";
    let enc = k.encrypt(&mut OsRng, pass).unwrap();
    let enc = write_key(dir.path(), "enc", &enc);
    let e = Signer::from_file(&enc, None).unwrap_err();
    assert!(
        e.contains("is encrypted") && e.contains("signing.passphrase"),
        "{e}"
    );
    let e = Signer::from_file(&enc, Some("wrong")).unwrap_err();
    assert!(e.contains("cannot decrypt"), "{e}");
    assert!(!e.contains("wrong\""), "{e}");
    let s = Signer::from_file(&enc, Some(pass)).unwrap();
    assert_eq!(s.fingerprint(), k.fingerprint(HashAlg::Sha256).to_string());

    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Signer::from_file(&plain, None).unwrap_err();
    assert!(e.contains("chmod 600"), "{e}");

    let junk = dir.path().join("junk");
    std::fs::write(&junk, "hello").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Signer::from_file(&junk, None).unwrap_err();
    assert!(e.contains("not an OpenSSH private key"), "{e}");
    let e = Signer::from_file(&dir.path().join("absent"), None).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn manifest_file_name_reads_sha256sum_lines() {
    assert_eq!(
        manifest_file_name(MANIFEST),
        Some("backup-2025-12-10T02-00-00-000Z.sql.zst")
    );
    assert_eq!(manifest_file_name("abc *b.sql\n"), Some("b.sql"));
    assert_eq!(manifest_file_name("abc\n"), None);
}
