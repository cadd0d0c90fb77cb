//! Encryption at rest and signed manifests.
//!
//! Archives are encrypted after compression with the age format to X25519 recipients, so
//! the host that backs up holds only public keys and the standard `age` tool can decrypt a
//! stored archive. Manifests are signed with ed25519: the verifying key can be handed to a
//! host that restores or audits without letting it sign (an HMAC key would let every
//! verifier forge manifests too).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;
use ed25519_dalek::Signer;

/// How a secret signing key is written: this prefix and 64 hex digits (the seed).
const SIGNING_PREFIX: &str = "DBKEEP-SIGNING-KEY-";
/// How a verifying key is written: this prefix and 64 hex digits.
const VERIFY_PREFIX: &str = "dbkeep-verify-";
/// An identity file larger than this is not read (a few keys and comments fit many times).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;
/// The one signature scheme a manifest may carry.
pub const SIGNATURE_ALG: &str = "ed25519";

/// A value as an error shows it: quoted, cut when long.
fn shown(s: &str) -> String {
    let s = s.trim();
    match s.chars().count() > 80 {
        true => format!("{:?}...", s.chars().take(80).collect::<String>()),
        false => format!("{s:?}"),
    }
}

/// Parse one age X25519 recipient (`age1...`).
pub fn parse_recipient(s: &str) -> Result<x25519::Recipient, String> {
    if s.trim().to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echoed: it is a secret.
        return Err("holds a private key (AGE-SECRET-KEY-...), not a recipient: put its recipient here (`age-keygen -y FILE` prints it), keep the private key in `identity_file` only, and consider it exposed".into());
    }
    x25519::Recipient::from_str(s.trim()).map_err(|e| {
        format!(
            "{} is not an age X25519 recipient ({e}); a recipient looks like age1... (print one with `dbkeep key new --out FILE`)",
            shown(s)
        )
    })
}

/// The lines of a key file that hold something, trimmed, with their 1-based numbers:
/// `#` comments and blank lines are skipped (the format of age's files).
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n + 1, l))
}

/// The recipients of a recipients file (the format of `age -R`), one per line.
pub fn parse_recipients_file(text: &str) -> Result<Vec<x25519::Recipient>, String> {
    key_lines(text)
        .map(|(n, line)| parse_recipient(line).map_err(|e| format!("line {n}: {e}")))
        .collect()
}

/// The private keys that decrypt archives, read from an age identity file.
pub struct Identities {
    keys: Vec<x25519::Identity>,
    path: PathBuf,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({}: {:?})",
            self.path.display(),
            self.recipients()
        )
    }
}

impl Identities {
    /// Read `path` (an age identity file: `AGE-SECRET-KEY-1...` lines, `#` comments).
    pub fn load(path: &Path) -> Result<Identities, String> {
        let cannot = |e: String| {
            format!(
                "cannot read the identity file {}: {e}; without the private key no encrypted backup can be restored",
                path.display()
            )
        };
        let mut f = std::fs::File::open(path).map_err(|e| cannot(e.to_string()))?;
        let meta = f.metadata().map_err(|e| cannot(e.to_string()))?;
        if !meta.is_file() {
            return Err(cannot("it is not a regular file".into()));
        }
        if meta.len() > MAX_IDENTITY_FILE {
            return Err(cannot(format!(
                "it has {} bytes, more than an identity file's {MAX_IDENTITY_FILE}",
                meta.len()
            )));
        }
        let mut text = String::new();
        Read::by_ref(&mut f)
            .take(MAX_IDENTITY_FILE)
            .read_to_string(&mut text)
            .map_err(|e| cannot(e.to_string()))?;
        let keys = key_lines(&text)
            .map(|(n, line)| {
                x25519::Identity::from_str(line).map_err(|_| {
                    format!(
                        "the identity file {} line {n}: not an age secret key (AGE-SECRET-KEY-1...)",
                        path.display()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(format!(
                "the identity file {} holds no age secret key",
                path.display()
            ));
        }
        Ok(Identities {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// The recipients (public keys) these identities decrypt for.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The stored side of an archive being written: the compressed stream goes through age
/// when the target encrypts.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    /// Encrypt to `recipients`, or pass through when there are none.
    pub fn new(out: W, recipients: &[x25519::Recipient]) -> io::Result<Sealed<W>> {
        if recipients.is_empty() {
            return Ok(Sealed::Plain(out));
        }
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("cannot encrypt: {e}")))?;
        Ok(Sealed::Age(encryptor.wrap_output(out)?))
    }

    /// End the stream (age writes its last, authenticated chunk) and hand back the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// The readable side of a stored archive: decrypted when it was encrypted.
pub enum Opened<R: Read> {
    Plain(R),
    Age(Box<age::stream::StreamReader<R>>),
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Opened::Plain(r) => r.read(buf),
            Opened::Age(r) => r.read(buf),
        }
    }
}

/// Open stored bytes: pass them through when `made_for` is empty (not encrypted), else
/// decrypt with `identities`. The error names the recipients the archive was made for.
pub fn open<R: Read>(
    stored: R,
    made_for: &[String],
    identities: Option<&Identities>,
) -> Result<Opened<R>, String> {
    if made_for.is_empty() {
        return Ok(Opened::Plain(stored));
    }
    let for_whom = made_for.join(", ");
    let Some(ids) = identities else {
        return Err(no_key(made_for));
    };
    let decryptor = age::Decryptor::new(stored).map_err(|e| match e {
        age::DecryptError::Io(e) => format!("reading the encrypted archive: {e}"),
        other => format!("the archive is not a readable age file ({other})"),
    })?;
    match decryptor.decrypt(ids.keys.iter().map(|k| k as &dyn age::Identity)) {
        Ok(r) => Ok(Opened::Age(Box::new(r))),
        Err(age::DecryptError::NoMatchingKeys) => Err(wrong_key(made_for, ids)),
        Err(age::DecryptError::Io(e)) => Err(format!("reading the encrypted archive: {e}")),
        Err(e) => Err(format!(
            "the encrypted archive cannot be decrypted ({e}); it was made for {for_whom}"
        )),
    }
}

/// What is wrong when an archive encrypted to `made_for` is read without a key.
pub fn no_key(made_for: &[String]) -> String {
    format!(
        "the archive is encrypted (to {}) and no private key is configured: set `identity_file` for the target, or pass --identity FILE",
        made_for.join(", ")
    )
}

/// What is wrong when `ids` hold no key of the recipients an archive was made for.
pub fn wrong_key(made_for: &[String], ids: &Identities) -> String {
    format!(
        "the archive was encrypted to {}; the identity file {} holds the key of {}, which does not decrypt it: use the identity of one of those recipients",
        made_for.join(", "),
        ids.path.display(),
        ids.recipients().join(", ")
    )
}

/// A new age key pair: the identity file's text (as `age-keygen` writes it) and the
/// recipient.
pub fn new_identity() -> (String, String) {
    let key = x25519::Identity::generate();
    let recipient = key.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        key.to_string().expose_secret()
    );
    (text, recipient)
}

/// A key that signs manifests.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifying().text())
    }
}

impl SigningKey {
    /// Parse the text of a signing key file (`#` comments and blank lines skipped).
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let (_, line) = key_lines(text).next().ok_or("holds no signing key")?;
        let hex_part = line
            .strip_prefix(SIGNING_PREFIX)
            .ok_or(format!("is not a dbkeep signing key ({SIGNING_PREFIX}...); make one with `dbkeep key new --signing --out FILE`"))?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("holds a signing key that is not 64 hex digits")?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }

    pub fn verifying(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Sign `msg`: hex of the 64-byte signature.
    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.0.sign(msg).to_bytes())
    }

    /// A new key: the key file's text and the verifying key's.
    pub fn generate() -> (String, String) {
        let seed: [u8; 32] = rand::random();
        let key = SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed));
        let verify = key.verifying().text();
        let text = format!(
            "# dbkeep manifest signing key (ed25519), created {}\n# verify key: {verify}\n{SIGNING_PREFIX}{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            hex::encode(seed)
        );
        (text, verify)
    }
}

/// A key that checks manifest signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl VerifyingKey {
    pub fn parse(s: &str) -> Result<VerifyingKey, String> {
        let bytes: [u8; 32] = s
            .trim()
            .strip_prefix(VERIFY_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "{} is not a dbkeep verify key ({VERIFY_PREFIX} and 64 hex digits, as `dbkeep key new --signing` prints)",
                    shown(s)
                )
            })?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(VerifyingKey)
            .map_err(|_| format!("{} is not a valid ed25519 public key", s.trim()))
    }

    pub fn text(&self) -> String {
        format!("{VERIFY_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }

    /// Whether `sig` (hex) is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &str) -> bool {
        let Some(bytes) = hex::decode(sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_identity_and_only_with_it() {
        let (text, recipient) = new_identity();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(&path, &text).unwrap();
        let ids = Identities::load(&path).unwrap();
        assert_eq!(ids.recipients(), vec![recipient.clone()]);
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut sealed = Sealed::new(Vec::new(), &[parse_recipient(&recipient).unwrap()]).unwrap();
        sealed.write_all(&data).unwrap();
        let stored = sealed.finish().unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1"));
        let mut back = Vec::new();
        open(&stored[..], std::slice::from_ref(&recipient), Some(&ids))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);

        let (other, _) = new_identity();
        std::fs::write(dir.path().join("other.txt"), other).unwrap();
        let wrong = Identities::load(&dir.path().join("other.txt")).unwrap();
        let err = open(&stored[..], std::slice::from_ref(&recipient), Some(&wrong))
            .err()
            .unwrap();
        assert!(err.contains(&recipient), "{err}");
        // Cut short: the last chunk is missing, which age refuses.
        let mut cut = Vec::new();
        let r = open(
            &stored[..stored.len() - 100],
            std::slice::from_ref(&recipient),
            Some(&ids),
        )
        .unwrap()
        .read_to_end(&mut cut);
        assert!(r.is_err());
    }

    #[test]
    fn signatures_verify_only_with_their_key_and_message() {
        let (text, verify) = SigningKey::generate();
        let key = SigningKey::parse(&text).unwrap();
        assert_eq!(key.verifying().text(), verify);
        let vk = VerifyingKey::parse(&verify).unwrap();
        let sig = key.sign(b"manifest");
        assert!(vk.verify(b"manifest", &sig));
        assert!(!vk.verify(b"manifesT", &sig));
        assert!(!vk.verify(b"manifest", "00"));
        let (other, _) = SigningKey::generate();
        let other = SigningKey::parse(&other).unwrap();
        assert!(!vk.verify(b"manifest", &other.sign(b"manifest")));
        assert!(SigningKey::parse("nonsense").is_err());
        assert!(VerifyingKey::parse("dbkeep-verify-00").is_err());
    }

    #[test]
    fn a_bad_recipient_is_named() {
        let e = parse_recipient("age1nope").unwrap_err();
        assert!(e.contains("age1nope"), "{e}");
    }
}
