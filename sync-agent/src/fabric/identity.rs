//! Who may say what in the fabric: each switch's own Ed25519 key pair
//! (`ed25519-dalek`) and the roster of every member's public key, with the
//! servers' keys marked.
//!
//! The roster travels with the config (`[fabric.trust.roster]`): every
//! switch lists the same names and public keys, so no message has to be
//! trusted to learn who to trust. A switch's private key lives in its own
//! file (`fabric.trust.key_file`, created at first start, mode 0600);
//! `sync-agent fabric key --config FILE` creates it if needed and prints
//! the public key for the roster.
//!
//! Simulated members (benchmarks) use the same pieces:
//! [`Identity::generate`] for a key pair and [`Roster::generated`] for the
//! roster naming them, then [`super::seal::Codec`] signs and checks exactly
//! as the agent does.

use std::{collections::HashMap, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::config::RosterMember;

/// Length of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;

/// This switch's name and private key.
#[derive(Clone)]
pub struct Identity {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("public_key", &self.public_hex())
            .finish()
    }
}

impl Identity {
    /// A fresh key pair from the kernel's random source.
    pub fn generate(name: &str) -> Self {
        let mut secret = [0u8; 32];
        crate::random::fill(&mut secret);
        Self::from_secret(name, secret)
    }

    /// The key pair of a 32-byte secret.
    pub fn from_secret(name: &str, secret: [u8; 32]) -> Self {
        Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// Reads the secret (64 hex digits) from `path`, or creates the file
    /// (mode 0600, its directory if needed) with a new one. Errors name
    /// the file.
    pub fn load_or_create(name: &str, path: &Path) -> anyhow::Result<Self> {
        let field = "fabric.trust.key_file";
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|e| anyhow::anyhow!("{field} {}: not hex: {e}", path.display()))?;
                let secret: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    anyhow::anyhow!(
                        "{field} {}: {} bytes, need 32 (64 hex digits)",
                        path.display(),
                        b.len()
                    )
                })?;
                Ok(Self::from_secret(name, secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate(name);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "{field} {}: creating {}: {e}",
                            path.display(),
                            dir.display()
                        )
                    })?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("{field} {}: {e}", path.display()))?;
                file.write_all(hex::encode(identity.key.to_bytes()).as_bytes())
                    .and_then(|()| file.write_all(b"\n"))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| anyhow::anyhow!("{field} {}: {e}", path.display()))?;
                tracing::info!(file = %path.display(), public_key = identity.public_hex(), "fabric identity key created");
                Ok(identity)
            }
            Err(e) => Err(anyhow::anyhow!("{field} {}: {e}", path.display())),
        }
    }

    /// The member name it signs as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key as 64 hex digits (what the roster lists).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(data).to_bytes()
    }
}

/// One member in the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    key: VerifyingKey,
    /// May send server-only messages.
    pub server: bool,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// The name is not in the roster.
    UnknownSender,
    /// The signature does not verify with the name's key.
    BadSignature,
}

/// The fabric roster: member name -> public key and whether it is a server.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    members: HashMap<String, Trusted>,
}

impl Roster {
    /// The roster of `[fabric.trust.roster]`; the error names the member
    /// whose key does not parse.
    pub fn from_config<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a RosterMember)>,
    ) -> Result<Self, String> {
        let mut members = HashMap::new();
        for (name, entry) in entries {
            let key = parse_public_key(&entry.public_key)
                .map_err(|e| format!("fabric.trust.roster.{name}.public_key: {e}"))?;
            members.insert(
                name.clone(),
                Trusted {
                    key,
                    server: entry.server,
                },
            );
        }
        Ok(Self { members })
    }

    /// A roster naming these identities; `servers` are the names marked as
    /// servers (for simulated members and tests).
    pub fn generated<'a>(
        identities: impl IntoIterator<Item = &'a Identity>,
        servers: &[&str],
    ) -> Self {
        let mut roster = Self::default();
        for identity in identities {
            roster.insert(identity, servers.contains(&identity.name()));
        }
        roster
    }

    /// Adds (or replaces) a member.
    pub fn insert(&mut self, identity: &Identity, server: bool) {
        self.members.insert(
            identity.name().to_string(),
            Trusted {
                key: identity.key.verifying_key(),
                server,
            },
        );
    }

    /// The member, if listed.
    pub fn get(&self, name: &str) -> Option<&Trusted> {
        self.members.get(name)
    }

    /// Number of members listed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is listed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Checks that `signature` over `data` is `sender`'s.
    pub fn verify(
        &self,
        sender: &str,
        data: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<&Trusted, Untrusted> {
        let trusted = self.members.get(sender).ok_or(Untrusted::UnknownSender)?;
        trusted
            .key
            .verify(data, &Signature::from_bytes(signature))
            .map_err(|_| Untrusted::BadSignature)?;
        Ok(trusted)
    }

    /// Whether `identity`'s key is the one listed under its name: None when
    /// it is not listed at all.
    pub fn lists(&self, identity: &Identity) -> Option<bool> {
        self.members
            .get(identity.name())
            .map(|t| t.key == identity.key.verifying_key())
    }
}

/// Parses a public key written as 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("'{text}' is not hex: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, need 32 (64 hex digits)", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| format!("'{text}' is not an Ed25519 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_senders_key() {
        let a = Identity::generate("a");
        let b = Identity::generate("b");
        let roster = Roster::generated([&a, &b], &["a"]);
        let sig = a.sign(b"hello");
        assert!(roster.verify("a", b"hello", &sig).unwrap().server);
        assert_eq!(
            roster.verify("b", b"hello", &sig),
            Err(Untrusted::BadSignature)
        );
        assert_eq!(
            roster.verify("a", b"hellO", &sig),
            Err(Untrusted::BadSignature)
        );
        assert_eq!(
            roster.verify("c", b"hello", &sig),
            Err(Untrusted::UnknownSender)
        );
        assert!(!roster.get("b").unwrap().server);
    }

    #[test]
    fn key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/id.key");
        let first = Identity::load_or_create("sw1", &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create("sw1", &path).unwrap();
        assert_eq!(first.public_hex(), again.public_hex());
        std::fs::write(&path, "zz").unwrap();
        let err = Identity::load_or_create("sw1", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fabric.trust.key_file") && err.contains("not hex"),
            "{err}"
        );
    }

    #[test]
    fn roster_keys_are_checked_and_named() {
        let a = Identity::generate("a");
        let good = RosterMember {
            public_key: a.public_hex(),
            server: true,
        };
        let bad = RosterMember {
            public_key: "abcd".into(),
            server: false,
        };
        let entries = [("a".to_string(), good), ("b".to_string(), bad)];
        let err = Roster::from_config(entries.iter().map(|(n, e)| (n, e))).unwrap_err();
        assert!(err.starts_with("fabric.trust.roster.b.public_key"), "{err}");
        let roster = Roster::from_config(entries[..1].iter().map(|(n, e)| (n, e))).unwrap();
        assert_eq!(roster.lists(&a), Some(true));
        assert_eq!(roster.lists(&Identity::generate("a")), Some(false));
        assert_eq!(roster.lists(&Identity::generate("z")), None);
    }
}
