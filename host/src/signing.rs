//! Signed manifests: each backup's checksum manifest (`NAME.sha256`) signed with an SSH key
//! in the format of `ssh-keygen -Y sign` (an armored SSHSIG, `NAME.sha256.sig`), and the
//! check `verify` and `restore` make before they trust a manifest's SHA-256.
//!
//! The signature covers the whole manifest: the backup's SHA-256, its name and the pipeline
//! that made it. So a backup replaced and its manifest recomputed, an older backup renamed
//! to look newer, or a manifest moved to another pipeline all fail the check. Anyone can
//! check it without this tool:
//! `ssh-keygen -Y verify -f allowed_signers -I PRINCIPAL -n pipeline-manifest -s X.sha256.sig < X.sha256`.
//!
//! Signing happens in-process (RustCrypto's `ssh-key`); the private key and its passphrase
//! never leave this module, and no message quotes them.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig, public::KeyData};

use crate::config::{ConfigError, Pipeline};

/// The SSHSIG namespace of manifest signatures. A signature made for another purpose (a
/// git commit, `-n file`) with the same key never passes as a manifest's.
pub const NAMESPACE: &str = "pipeline-manifest";

/// Appended to the manifest's name: `backup-….sql.zst.sha256.sig`.
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// A signature is a few hundred bytes; more than this is not one.
pub const MAX_SIGNATURE_LEN: usize = 16 * 1024;

/// The key that signs manifests, loaded and decrypted.
pub struct Signer {
    key: PrivateKey,
    file: PathBuf,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, {})", self.file.display(), self.fingerprint())
    }
}

impl Signer {
    /// The signer `[signing] key` configures, or `None`. Errors name the file, line and key.
    pub fn load(p: &Pipeline) -> Result<Option<Signer>, ConfigError> {
        let Some(settings) = &p.signing else {
            return Ok(None);
        };
        let Some(key) = &settings.key else {
            return Ok(None);
        };
        let err = |m: String| p.error_at(Some(key.loc), "signing.key", m);
        let signer = Signer::from_file(&key.value, settings.passphrase.as_deref()).map_err(err)?;
        Ok(Some(signer))
    }

    /// Reads an OpenSSH private key file, decrypting it with `passphrase` if it is encrypted.
    /// Like ssh, refuses a key file that others may read.
    pub fn from_file(file: &Path, passphrase: Option<&str>) -> Result<Signer, String> {
        let shown = file.display();
        let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is readable by other users (mode {mode:04o}): a private key must be \
                 yours alone; run `chmod 600 {shown}`"
            ));
        }
        let text = std::fs::read(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
        // ssh-key's errors describe the encoding, never the bytes.
        let mut key = PrivateKey::from_openssh(&text).map_err(|e| {
            format!(
                "{shown} is not an OpenSSH private key ({e}); make one with \
                 `ssh-keygen -t ed25519 -f {shown}`"
            )
        })?;
        if key.is_encrypted() {
            let Some(pass) = passphrase.filter(|p| !p.is_empty()) else {
                return Err(format!(
                    "{shown} is encrypted: give its passphrase in `signing.passphrase`, from the \
                     environment (passphrase = \"${{env:PIPELINE_SIGNING_PASSPHRASE}}\")"
                ));
            };
            key = key.decrypt(pass).map_err(|_| {
                format!("cannot decrypt {shown} with the passphrase given: is it the right one?")
            })?;
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(format!(
                "{shown} is a {} key; manifests are signed with ed25519 keys only: make one with \
                 `ssh-keygen -t ed25519 -f FILE`",
                key.algorithm()
            ));
        }
        Ok(Signer {
            key,
            file: file.to_path_buf(),
        })
    }

    /// The armored signature of `manifest`, exactly what `ssh-keygen -Y sign -n
    /// pipeline-manifest` writes (SHA-512 of the message, as it does by default).
    pub fn sign(&self, manifest: &[u8]) -> Result<String, String> {
        self.key
            .sign(NAMESPACE, HashAlg::Sha512, manifest)
            .and_then(|s| s.to_pem(LineEnding::LF))
            .map_err(|e| format!("cannot sign with {}: {e}", self.file.display()))
    }

    /// `SHA256:…`, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }
}

/// The signer a run uses: loaded, and checked against the allowed signers when both are
/// configured, so a run never signs with a key whose signatures `verify` would refuse.
pub fn run_signer(p: &Pipeline) -> Result<Option<Signer>, ConfigError> {
    let signer = Signer::load(p)?;
    if let Some(s) = &signer
        && let Some(checker) = Checker::load(p)?
    {
        checker.require_allowed(s, p)?;
    }
    Ok(signer)
}

/// What `pipeline validate` reports about `[signing]`, after loading all it configures
/// (the key decrypted, the allowed signers parsed); `None` without the table.
pub fn describe(p: &Pipeline) -> Result<Option<String>, ConfigError> {
    let signer = run_signer(p)?;
    let checker = Checker::load(p)?;
    let mut parts = Vec::new();
    if let Some(s) = &signer {
        parts.push(format!(
            "manifests signed with {} ({}, namespace {NAMESPACE})",
            s.file.display(),
            s.fingerprint()
        ));
    }
    if let Some(c) = &checker {
        parts.push(format!(
            "verify and restore require a signature by a key {} allows for principal `{}` \
             ({} key(s))",
            c.file.display(),
            c.principal,
            c.allowed.len()
        ));
    }
    Ok((!parts.is_empty()).then(|| parts.join("; ")))
}

/// One key an allowed-signers file allows for the configured principal.
#[derive(Debug, Clone)]
struct Allowed {
    key: KeyData,
    line: usize,
    /// `namespaces="…"`: patterns the signature's namespace must match.
    namespaces: Option<Vec<String>>,
    valid_after: Option<jiff::Timestamp>,
    valid_before: Option<jiff::Timestamp>,
}

/// What `verify` and `restore` check signatures against: the keys an allowed-signers file
/// gives the configured principal.
#[derive(Debug)]
pub struct Checker {
    file: PathBuf,
    principal: String,
    allowed: Vec<Allowed>,
}

/// A signature that checked: who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Good {
    pub fingerprint: String,
    pub principal: String,
}

impl fmt::Display for Good {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "signed by {} (principal {})",
            self.fingerprint, self.principal
        )
    }
}

impl Checker {
    /// The checker `[signing] allowed_signers` and `principal` configure, or `None`.
    pub fn load(p: &Pipeline) -> Result<Option<Checker>, ConfigError> {
        let Some(settings) = &p.signing else {
            return Ok(None);
        };
        let (Some(file), Some(principal)) = (&settings.allowed_signers, &settings.principal) else {
            return Ok(None);
        };
        let err = |m: String| p.error_at(Some(file.loc), "signing.allowed_signers", m);
        let text = std::fs::read_to_string(&file.value)
            .map_err(|e| err(format!("cannot read {}: {e}", file.value.display())))?;
        let allowed = parse_allowed_signers(&text, &principal.value)
            .map_err(|m| err(format!("{}: {m}", file.value.display())))?;
        if allowed.is_empty() {
            return Err(err(format!(
                "{} allows no key for principal `{}`: add a line `{} ssh-ed25519 AAAA…` \
                 (the signing key's .pub)",
                file.value.display(),
                principal.value,
                principal.value
            )));
        }
        Ok(Some(Checker {
            file: file.value.clone(),
            principal: principal.value.clone(),
            allowed,
        }))
    }

    /// Whether a signature by `key` would pass: a run refuses to sign with a key that
    /// `verify` would then refuse.
    pub fn require_allowed(&self, signer: &Signer, p: &Pipeline) -> Result<(), ConfigError> {
        let now = jiff::Timestamp::now();
        if self
            .find(signer.public_key().key_data(), NAMESPACE, now)
            .is_some()
        {
            return Ok(());
        }
        let loc = p
            .signing
            .as_ref()
            .and_then(|s| s.key.as_ref())
            .map(|k| k.loc);
        Err(p.error_at(
            loc,
            "signing.key",
            format!(
                "the key {} signs with ({}) is not allowed for principal `{}` (namespace {NAMESPACE}) \
                 in {}: every backup it signed would fail `verify`; add its .pub to that file",
                signer.file.display(),
                signer.fingerprint(),
                self.principal,
                self.file.display()
            ),
        ))
    }

    fn find(&self, key: &KeyData, namespace: &str, now: jiff::Timestamp) -> Option<&Allowed> {
        self.allowed.iter().find(|a| {
            &a.key == key
                && a.namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|n| pattern_matches(n, namespace)))
                && a.valid_after.is_none_or(|t| now >= t)
                && a.valid_before.is_none_or(|t| now <= t)
        })
    }

    /// Checks `signature` (the `.sig` file's bytes, `None` when there is none) over
    /// `manifest`. The error says why, in words for the person reading the log.
    pub fn check(&self, manifest: &[u8], signature: Option<&[u8]>) -> Result<Good, String> {
        let Some(signature) = signature else {
            return Err(
                "it has no signature: it was made without `[signing] key`, by a run stopped \
                 before it signed, or the signature was removed"
                    .into(),
            );
        };
        let sig = SshSig::from_pem(signature)
            .map_err(|e| format!("its signature is not an SSH signature ({e})"))?;
        if sig.namespace() != NAMESPACE {
            return Err(format!(
                "its signature was made for namespace `{}`, not `{NAMESPACE}`: it is not a \
                 manifest signature",
                sig.namespace()
            ));
        }
        let key = sig.public_key();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let now = jiff::Timestamp::now();
        if self.find(key, NAMESPACE, now).is_none() {
            let why = match self.allowed.iter().find(|a| &a.key == key) {
                Some(a) => format!(
                    "allowed there (line {}), but not for this namespace or at this time",
                    a.line
                ),
                None => "not allowed there".to_string(),
            };
            return Err(format!(
                "its signature was made by key {fingerprint}, which is {why} for principal `{}` \
                 in {}: another key signed it",
                self.principal,
                self.file.display()
            ));
        }
        PublicKey::from(key.clone())
            .verify(NAMESPACE, manifest, &sig)
            .map_err(|_| {
                format!(
                    "its signature (by key {fingerprint}) does not match the manifest: the \
                     manifest or the signature was altered after the backup was made"
                )
            })?;
        Ok(Good {
            fingerprint,
            principal: self.principal.clone(),
        })
    }
}

/// The keys `text` (an `ssh-keygen` allowed-signers file) allows for `principal`, with
/// their restrictions. Lines are `principals [options] keytype base64 [comment]`; the
/// options understood are `namespaces`, `valid-after`, `valid-before` and
/// `cert-authority` (whose lines are skipped: manifests are signed with plain keys). An
/// option this parser does not know is an error rather than a restriction ignored.
fn parse_allowed_signers(text: &str, principal: &str) -> Result<Vec<Allowed>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        let Some(principals) = fields.first() else {
            continue;
        };
        let mut rest = &fields[1..];
        let mut options: Vec<(String, Option<String>)> = Vec::new();
        if let Some(first) = rest.first()
            && !is_key_type(first)
        {
            options = parse_options(first).map_err(|m| format!("line {n}: {m}"))?;
            rest = &rest[1..];
        }
        if rest.len() < 2 {
            return Err(format!(
                "line {n}: expected `principals [options] keytype base64-key`"
            ));
        }
        let mut a = Allowed {
            key: PublicKey::from_openssh(&format!("{} {}", rest[0], rest[1]))
                .map_err(|e| format!("line {n}: not a public key ({e})"))?
                .key_data()
                .clone(),
            line: n,
            namespaces: None,
            valid_after: None,
            valid_before: None,
        };
        let mut cert_authority = false;
        for (name, value) in options {
            let value_of = |v: Option<String>| {
                v.ok_or_else(|| format!("line {n}: option `{name}` needs a value"))
            };
            match name.to_ascii_lowercase().as_str() {
                "cert-authority" => cert_authority = true,
                "namespaces" => {
                    a.namespaces = Some(
                        value_of(value)?
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .collect(),
                    )
                }
                "valid-after" => a.valid_after = Some(parse_time(&value_of(value)?, n)?),
                "valid-before" => a.valid_before = Some(parse_time(&value_of(value)?, n)?),
                other => {
                    return Err(format!(
                        "line {n}: option `{other}` is not understood here (known: \
                         namespaces, valid-after, valid-before, cert-authority)"
                    ));
                }
            }
        }
        let unquoted = principals.trim_matches('"');
        if !cert_authority && principal_matches(unquoted, principal) {
            out.push(a);
        }
    }
    Ok(out)
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// Splits on whitespace outside double quotes.
fn split_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `a,b="x,y",c` → [(a, None), (b, Some("x,y")), (c, None)].
fn parse_options(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut items = Vec::new();
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("an option's value has no closing quote".into());
    }
    items.push(cur);
    for item in items {
        match item.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((item, None)),
        }
    }
    Ok(out)
}

/// `YYYYMMDD[HHMM[SS]][Z]`, as ssh-keygen reads it: UTC with `Z`, else local time.
fn parse_time(s: &str, line: usize) -> Result<jiff::Timestamp, String> {
    let bad = || format!("line {line}: `{s}` is not a time like 20260101 or 202601011200Z");
    let (digits, utc) = match s.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (s, false),
    };
    let padded = match digits.len() {
        8 => format!("{digits}000000"),
        12 => format!("{digits}00"),
        14 => digits.to_string(),
        _ => return Err(bad()),
    };
    let dt = jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", &padded).map_err(|_| bad())?;
    let tz = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    tz.to_timestamp(dt).map_err(|_| bad())
}

/// ssh's pattern lists: comma-separated, `*` and `?` wildcards, `!` negates; a principal
/// matches when a positive pattern does and no negated one does.
fn principal_matches(list: &str, principal: &str) -> bool {
    let mut matched = false;
    for p in list.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if pattern_matches(neg, principal) {
                return false;
            }
        } else if pattern_matches(p, principal) {
            matched = true;
        }
    }
    matched
}

fn pattern_matches(pattern: &str, s: &str) -> bool {
    fn rec(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| rec(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && rec(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && rec(rest, &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    rec(&p, &s)
}

/// The file name a manifest's first line records (`<sha256>  NAME`, or `*NAME` in binary
/// mode), as `sha256sum -c` reads it.
pub fn manifest_file_name(manifest: &str) -> Option<&str> {
    let first = manifest.lines().next()?;
    let (_, rest) = first.split_once(' ')?;
    let rest = rest.strip_prefix([' ', '*']).unwrap_or(rest);
    Some(rest.trim_end_matches('\r'))
}

#[cfg(test)]
mod tests;
