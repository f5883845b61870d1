//! `age`: a transform that encrypts the stream with [age](https://age-encryption.org/v1)
//! (`encode`) and decrypts it (`decode`, for restore and verify).
//!
//! Written like a third party's plugin: the SDK, the `age` crate (RustCrypto), nothing
//! from the host beyond the transform contract. The output is a standard age file, so
//! `age -d -i key.txt backup-….sql.zst.age | zstd -d | psql …` restores it by hand.
//!
//! * Encrypting needs only public keys: age X25519 recipients (`age1…`) and SSH public
//!   keys (`ssh-ed25519 …`, `ssh-rsa …`) from `recipients` and/or `recipients_file`, or a
//!   passphrase. A backup host never holds a private key.
//! * Decrypting takes an identity from `identity_file` (an age identity file or an
//!   unencrypted SSH private key) or `identity` (its text, usually
//!   `"${env:AGE_IDENTITY:-}"`, empty when the variable is unset so backups run without it).
//! * Files are read through the read-only directory grants `plan` asks for.
//! * Streaming: age's STREAM cuts the payload into 64 KiB chunks; this plugin holds one
//!   read buffer and one chunk, whatever the size of the dump.

use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;

use age::secrecy::SecretString;
use age::{DecryptError, Decryptor, Encryptor, Identity, IdentityFile, Recipient};
use pipeline_plugin_sdk::io::{InputReader, OutputWriter, pump};
use pipeline_plugin_sdk::{
    DirectoryGrant, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    StagePlan, Transform, config,
};

/// Bytes moved per read of the input (and buffered before each write to the output):
/// four age chunks, so the host sees few large writes rather than many small ones.
const CHUNK: usize = 256 * 1024;

/// The scrypt work factor (log2 N) for passphrase encryption: the `age` tool's own
/// (`age -p`), so a passphrase backup costs the same to open by hand, and fixed rather
/// than measured so every run (and every machine) writes the same kind of file.
const SCRYPT_LOG_N: u8 = 18;
/// The largest work factor `decode` accepts: the `age` tool's limit.
const SCRYPT_MAX_LOG_N: u8 = 22;

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug, Default)]
    struct Config {
        #[key(TextList, optional, "Public keys to encrypt to: age recipients (age1…) and SSH public keys (ssh-ed25519 …, ssh-rsa …)")]
        recipients: Vec<String>,
        #[key(Path, optional, "A file of recipients, one per line, `#` comments (as `age -R` reads)")]
        recipients_file: Option<String>,
        #[key(Secret, optional, "Encrypt to this passphrase instead of recipients (and decrypt with it); e.g. \"${env:BACKUP_PASSPHRASE}\"")]
        passphrase: Option<String>,
        #[key(Path, optional, "For restore and verify: an age identity file (age-keygen) or an unencrypted SSH private key; never needed to back up")]
        identity_file: Option<String>,
        #[key(Secret, optional, "For restore and verify: an identity's text, e.g. \"${env:AGE_IDENTITY:-}\" (empty: none); never needed to back up")]
        identity: Option<String>,
    }
}

impl Config {
    /// Parses and checks what can be checked without reading files.
    fn parse(json: &str) -> Result<Self, PluginError> {
        let mut config: Config = config::parse(json)?;
        // `${env:VAR:-}` of an unset variable is an empty string: the key is not given.
        for value in [
            &mut config.recipients_file,
            &mut config.passphrase,
            &mut config.identity_file,
            &mut config.identity,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        let has_recipients = !config.recipients.is_empty() || config.recipients_file.is_some();
        if config.passphrase.is_some() && has_recipients {
            return Err(PluginError::Config(
                "`passphrase` and `recipients`/`recipients_file` cannot be combined: age \
                 encrypts to a passphrase alone; choose one"
                    .into(),
            ));
        }
        if config.passphrase.is_none() && !has_recipients {
            return Err(PluginError::Config(
                "nothing to encrypt to: set `recipients` (e.g. [\"age1…\"], from age-keygen), \
                 `recipients_file`, or `passphrase`"
                    .into(),
            ));
        }
        for (i, line) in config.recipients.iter().enumerate() {
            parse_recipient(line)
                .map_err(|why| PluginError::Config(format!("key `recipients[{i}]`: {why}")))?;
        }
        Ok(config)
    }

    /// Every recipient, from `recipients` then `recipients_file`.
    fn recipients(&self) -> Result<Vec<Box<dyn Recipient + Send>>, PluginError> {
        let mut out = Vec::new();
        for (i, line) in self.recipients.iter().enumerate() {
            out.push(
                parse_recipient(line)
                    .map_err(|why| PluginError::Config(format!("key `recipients[{i}]`: {why}")))?,
            );
        }
        if let Some(path) = &self.recipients_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                PluginError::from_io(format!("key `recipients_file`: cannot read {path}"), &err)
            })?;
            let from_file = parse_recipients_file(&text).map_err(|(line, why)| {
                PluginError::Config(format!("key `recipients_file`: {path} line {line}: {why}"))
            })?;
            if from_file.is_empty() {
                return Err(PluginError::Config(format!(
                    "key `recipients_file`: {path} holds no recipient (only comments or blank \
                     lines)"
                )));
            }
            out.extend(from_file);
        }
        Ok(out)
    }

    /// The identities to decrypt with, from `identity_file` and `identity`.
    fn identities(&self) -> Result<Vec<Box<dyn Identity>>, PluginError> {
        let mut out = Vec::new();
        if let Some(path) = &self.identity_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                PluginError::from_io(format!("key `identity_file`: cannot read {path}"), &err)
            })?;
            out.extend(parse_identities(&text).map_err(|why| {
                PluginError::Config(format!("key `identity_file`: {path}: {why}"))
            })?);
        }
        if let Some(text) = &self.identity {
            out.extend(
                parse_identities(text)
                    .map_err(|why| PluginError::Config(format!("key `identity`: {why}")))?,
            );
        }
        if out.is_empty() {
            return Err(PluginError::Config(
                "no identity to decrypt with: set `identity_file` (an age identity file or SSH \
                 private key) or `identity` (e.g. identity = \"${env:AGE_IDENTITY:-}\" and the \
                 identity's text in AGE_IDENTITY)"
                    .into(),
            ));
        }
        Ok(out)
    }

    /// Where the identities were to come from, for messages.
    fn identity_origin(&self) -> String {
        let mut from = Vec::new();
        if let Some(path) = &self.identity_file {
            from.push(format!("`identity_file` ({path})"));
        }
        if self.identity.is_some() {
            from.push("`identity`".to_owned());
        }
        from.join(" and ")
    }
}

/// One recipient: `age1…` or an SSH public key (its comment, if any, ignored). The error
/// never repeats the value: a private key pasted here by mistake must not reach a log.
fn parse_recipient(text: &str) -> Result<Box<dyn Recipient + Send>, String> {
    let text = text.trim();
    if text.starts_with("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY") {
        return Err(
            "this is a private key (an identity), not a recipient: give its public \
                    key instead (`age-keygen -y key.txt`, or the `.pub` file of an SSH key); \
                    and treat the private key as exposed"
                .into(),
        );
    }
    if text.is_empty() {
        return Err("empty recipient".into());
    }
    if text.starts_with("age1") {
        return text
            .parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Box<dyn Recipient + Send>)
            .map_err(|why| format!("not a valid age recipient: {why}"));
    }
    if text.starts_with("ssh-") || text.starts_with("sk-") || text.starts_with("ecdsa-") {
        use age::ssh::ParseRecipientKeyError as E;
        return match text.parse::<age::ssh::Recipient>() {
            Ok(r) => Ok(Box::new(r)),
            Err(E::Unsupported(kind)) => Err(format!(
                "SSH keys of type {kind} are not supported by age (use ssh-ed25519 or ssh-rsa)"
            )),
            Err(E::RsaModulusTooSmall) => {
                Err("the ssh-rsa key is too short for age (at least 2048 bits)".into())
            }
            Err(E::RsaModulusTooLarge) => Err("the ssh-rsa key is larger than age supports".into()),
            Err(_) => Err("not a valid SSH public key".into()),
        };
    }
    Err(
        "not a recipient: expected an age recipient (age1…) or an SSH public key \
         (ssh-ed25519 …, ssh-rsa …)"
            .into(),
    )
}

/// A recipients file as `age -R` reads it: one recipient per line; blank lines and lines
/// starting with `#` skipped. The error carries the 1-based line number.
fn parse_recipients_file(text: &str) -> Result<Vec<Box<dyn Recipient + Send>>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_recipient(line).map_err(|why| (i + 1, why))?);
    }
    Ok(out)
}

/// The identities in `text`: an SSH private key (PEM, as `ssh-keygen` writes it) or an
/// age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments). Errors never quote it.
fn parse_identities(text: &str) -> Result<Vec<Box<dyn Identity>>, String> {
    if text.trim_start().starts_with("-----BEGIN") {
        use age::ssh::{Identity as Ssh, UnsupportedKey};
        let key = Ssh::from_buffer(text.as_bytes(), None)
            .map_err(|_| "not a valid SSH private key".to_owned())?;
        return match key {
            Ssh::Unencrypted(_) => Ok(vec![Box::new(key)]),
            Ssh::Encrypted(_) | Ssh::Unsupported(UnsupportedKey::EncryptedPem) => Err(
                "the SSH private key is protected by a passphrase, which pipeline cannot ask \
                 for: use an age identity (age-keygen) for restores, or decrypt by hand with \
                 `age -d -i KEY`"
                    .into(),
            ),
            Ssh::Unsupported(UnsupportedKey::Hardware(kind)) => Err(format!(
                "the SSH key ({kind}) lives on a hardware token, which this plugin cannot use"
            )),
            Ssh::Unsupported(UnsupportedKey::EncryptedSsh(cipher)) => Err(format!(
                "the SSH private key is encrypted with {cipher}, which age does not support"
            )),
            Ssh::Unsupported(UnsupportedKey::Type(kind)) => Err(format!(
                "SSH keys of type {kind} are not supported by age (use ssh-ed25519 or ssh-rsa)"
            )),
        };
    }
    let file = IdentityFile::from_buffer(text.as_bytes()).map_err(|err| {
        // The crate's message names the line, never its content.
        format!(
            "{err} (expected AGE-SECRET-KEY-1… lines, as age-keygen writes, or an SSH private key)"
        )
    })?;
    let identities = file
        .into_identities()
        .map_err(|err| format!("cannot use the identity: {err}"))?;
    if identities.is_empty() {
        return Err("holds no identity (only comments or blank lines)".into());
    }
    Ok(identities
        .into_iter()
        .map(|i| i as Box<dyn Identity>)
        .collect())
}

/// The directory holding `file`, for a read-only grant.
fn parent_grant(file: &str) -> Option<Grant> {
    let parent = Path::new(file).parent()?;
    Some(Grant::Directory(DirectoryGrant {
        path: parent.to_str()?.to_owned(),
        writable: false,
        create: false,
    }))
}

struct Age;

impl Plugin for Age {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "age".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Transform,
            description: "Encrypts with age to public keys or a passphrase (and decrypts for \
                          restore with an identity)"
                .into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        // Read-only, and only the directories of the files named: the plugin reads them
        // in `encode` (recipients) and `decode` (identity). A directory missing here (an
        // identity kept off the backup host) is simply not there for the plugin.
        let grants = [&config.recipients_file, &config.identity_file]
            .into_iter()
            .flatten()
            .filter_map(|f| parent_grant(f))
            .collect();
        Ok(StagePlan {
            extension: Some("age".into()),
            content_type: Some("application/octet-stream".into()),
            grants,
        })
    }
}

impl Transform for Age {
    fn encode(config: String, input: InputStream, out: OutputStream) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        let encryptor = encryptor(&config)?;
        encrypt(encryptor, InputReader::new(input), OutputWriter::new(out)).map(drop)
    }

    fn decode(config: String, input: InputStream, out: OutputStream) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        decrypt(&config, InputReader::new(input), OutputWriter::new(out)).map(drop)
    }
}

pipeline_plugin_sdk::export_transform!(Age);

fn encryptor(config: &Config) -> Result<Encryptor, PluginError> {
    if let Some(passphrase) = &config.passphrase {
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase.clone()));
        recipient.set_work_factor(SCRYPT_LOG_N);
        return Encryptor::with_recipients(std::iter::once(&recipient as &dyn Recipient))
            .map_err(|err| PluginError::Other(format!("encrypting: {err}")));
    }
    let recipients = config.recipients()?;
    Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn Recipient))
        .map_err(|err| PluginError::Config(format!("cannot encrypt to these recipients: {err}")))
}

/// Encrypts `input` into `out`; returns the plaintext size.
fn encrypt(
    encryptor: Encryptor,
    mut input: impl BufRead,
    out: impl Write,
) -> Result<u64, PluginError> {
    let out = BufWriter::with_capacity(CHUNK, out);
    let mut writer = encryptor
        .wrap_output(out)
        .map_err(|err| PluginError::Io(format!("encrypting: writing the header: {err}")))?;
    let mut total: u64 = 0;
    loop {
        let buf = match input.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(PluginError::Io(format!("encrypting: {err}"))),
        };
        let n = buf.len();
        writer
            .write_all(buf)
            .map_err(|err| PluginError::Io(format!("encrypting: writing the output: {err}")))?;
        input.consume(n);
        total += n as u64;
    }
    // Without `finish` the last chunk (flagged as last) is never written and the file
    // would not decrypt: a clean end of input is what makes a complete age file.
    let mut out = writer
        .finish()
        .map_err(|err| PluginError::Io(format!("encrypting: writing the last chunk: {err}")))?;
    out.flush()
        .map_err(|err| PluginError::Io(format!("encrypting: flushing the output: {err}")))?;
    Ok(total)
}

/// Decrypts `input` into `out`; returns the plaintext size. A truncated or altered file
/// is an error (age authenticates every chunk and marks the last one), never a short
/// result.
fn decrypt(config: &Config, input: impl BufRead, out: impl Write) -> Result<u64, PluginError> {
    let decryptor = Decryptor::new_buffered(input).map_err(|err| match err {
        DecryptError::Io(err) if err.kind() == io::ErrorKind::UnexpectedEof => PluginError::Io(
            "decrypting: the input ends before the end of an age header: it is empty or \
             truncated, not an age file"
                .into(),
        ),
        DecryptError::Io(err) => PluginError::Io(format!("decrypting: {err}")),
        DecryptError::UnknownFormat | DecryptError::InvalidHeader => PluginError::Io(
            "decrypting: the input is not an age file (its header is not age's)".into(),
        ),
        other => PluginError::Io(format!("decrypting: {other}")),
    })?;
    let reader = if decryptor.is_scrypt() {
        let Some(passphrase) = &config.passphrase else {
            return Err(PluginError::Config(
                "the backup is encrypted to a passphrase: set `passphrase` to decrypt it".into(),
            ));
        };
        let mut identity = age::scrypt::Identity::new(SecretString::from(passphrase.clone()));
        identity.set_max_work_factor(SCRYPT_MAX_LOG_N);
        decryptor
            .decrypt(std::iter::once(&identity as &dyn Identity))
            .map_err(|err| match err {
                DecryptError::DecryptionFailed | DecryptError::NoMatchingKeys => {
                    PluginError::Other(
                        "decrypting: wrong passphrase: `passphrase` does not open this backup"
                            .into(),
                    )
                }
                other => header_error(other),
            })?
    } else {
        let identities = config.identities()?;
        decryptor
            .decrypt(identities.iter().map(|i| i.as_ref()))
            .map_err(|err| match err {
                DecryptError::NoMatchingKeys => PluginError::Other(format!(
                    "decrypting: no identity matches the backup's recipients: the identity \
                     from {} is not one the backup was encrypted to (a backup made before the \
                     recipients changed needs the identity it was made for)",
                    config.identity_origin()
                )),
                other => header_error(other),
            })?
    };
    pump(reader, out, "decrypting", describe)
}

fn header_error(err: DecryptError) -> PluginError {
    match err {
        DecryptError::InvalidMac | DecryptError::DecryptionFailed => PluginError::Io(
            "decrypting: the age header does not authenticate: the file was altered or \
             damaged"
                .into(),
        ),
        DecryptError::ExcessiveWork { required, .. } => PluginError::Other(format!(
            "decrypting: the passphrase's scrypt work factor is 2^{required}, above the limit \
             2^{SCRYPT_MAX_LOG_N}"
        )),
        other => PluginError::Io(format!("decrypting: {other}")),
    }
}

/// age's stream errors, in the words of someone restoring a backup.
fn describe(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => {
            format!("the backup is truncated: it ends before age's last chunk ({err})")
        }
        io::ErrorKind::InvalidData => {
            format!("a chunk does not authenticate: the backup was altered or damaged ({err})")
        }
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests;
