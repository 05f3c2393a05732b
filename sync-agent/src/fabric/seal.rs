//! Sealing and opening fabric messages: every body signed with its
//! sender's Ed25519 key and checked against the roster ([`super::identity`]);
//! optionally encrypted with XChaCha20-Poly1305 under a pre-shared key
//! (SPEC 4.6), with a set of accepted key ids so the key can be rotated;
//! and replay rejection.
//!
//! The header's counter is the sender's microsecond clock, forced to
//! increase, and is covered by the signature; [`super::replay`] judges it
//! for every message, retained or not.

use std::path::Path;

/// Default age limit when no config says (simulated members, tests).
pub const DEFAULT_MAX_AGE_MS: u64 = 60_000;
/// Default clock skew tolerated when no config says.
pub const DEFAULT_SKEW_MS: u64 = 5_000;

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};

use super::{
    config::{EncryptionMode, FabricConfig},
    identity::{Identity, Roster, SIGNATURE_LEN, Untrusted},
    replay::{Domain, Refusal, ReplayGuard},
    wire::{self, Channel, FLAG_SEALED, FLAG_WILL, Message, NONCE_LEN, WireError},
};

/// Why a received message was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Header or body problem.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Clear body while encryption is required.
    #[error("clear body from {sender} refused: encryption is required")]
    Unsealed {
        /// Sender.
        sender: String,
    },
    /// Sealed body while this member has no key.
    #[error("sealed body from {sender} but no key is configured")]
    NoKey {
        /// Sender.
        sender: String,
    },
    /// A key id we do not hold.
    #[error("key id {key_id} from {sender} is not one we accept")]
    WrongKey {
        /// Sender.
        sender: String,
        /// Its key id.
        key_id: u8,
    },
    /// Authentication failed: tampered or wrongly keyed.
    #[error("body from {sender} failed authentication (tampered or wrong key)")]
    Tampered {
        /// Sender.
        sender: String,
    },
    /// The sender is not in the roster.
    #[error("sender {sender} is not in the fabric roster")]
    UnknownSender {
        /// Sender.
        sender: String,
    },
    /// The signature is not the sender's.
    #[error("signature of {sender} does not verify with its roster key")]
    BadSignature {
        /// Sender.
        sender: String,
    },
    /// A server-only kind from a key not marked as a server.
    #[error("{kind} from {sender} refused: only a server may send it")]
    NotServer {
        /// Sender.
        sender: String,
        /// The kind.
        kind: &'static str,
    },
    /// Seen before (or older than the sender's newest snapshot).
    #[error("replayed message from {sender} (counter {counter})")]
    Replayed {
        /// Sender.
        sender: String,
        /// Its counter.
        counter: u64,
    },
    /// Older than the age limit, or sent before this receiver started.
    #[error("stale message from {sender} (counter {counter}, its clock in µs)")]
    Stale {
        /// Sender.
        sender: String,
        /// Its counter.
        counter: u64,
    },
    /// From further in the future than the clock skew allows.
    #[error("message from {sender} is from the future (counter {counter}); check its clock")]
    Future {
        /// Sender.
        sender: String,
        /// Its counter.
        counter: u64,
    },
    /// The body speaks for someone else than the header's sender.
    #[error("header sender {sender} carries a body authored by {author}")]
    Impersonation {
        /// Header sender.
        sender: String,
        /// Body author.
        author: String,
    },
}

impl Rejection {
    /// Counter name.
    pub fn counter(&self) -> &'static str {
        match self {
            Rejection::Wire(WireError::Oversized(_)) => "oversized",
            Rejection::Wire(WireError::UnknownVersion(_)) => "unknown_version",
            Rejection::Wire(_) => "malformed",
            Rejection::Unsealed { .. } => "unsealed",
            Rejection::NoKey { .. } | Rejection::WrongKey { .. } => "wrong_key",
            Rejection::Tampered { .. } => "tampered",
            Rejection::UnknownSender { .. } => "unknown_sender",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::NotServer { .. } => "not_server",
            Rejection::Replayed { .. } => "replayed",
            Rejection::Stale { .. } => "stale",
            Rejection::Future { .. } => "future",
            Rejection::Impersonation { .. } => "impersonation",
        }
    }
}

/// The codec `[fabric]` describes, for member `name`: its signing key
/// (created when missing), the roster (which must list it with that key),
/// and the encryption keys. Errors name the field or file.
pub fn codec_from_config(config: &FabricConfig, name: &str) -> anyhow::Result<Codec> {
    let identity = Identity::load_or_create(name, &config.trust.key_file)?;
    let roster = Roster::from_config(&config.trust.roster).map_err(|e| anyhow::anyhow!("{e}"))?;
    match roster.lists(&identity) {
        Some(true) => {}
        Some(false) => anyhow::bail!(
            "fabric.trust.roster.{name}.public_key is not the key in fabric.trust.key_file {} (whose public key is {})",
            config.trust.key_file.display(),
            identity.public_hex()
        ),
        None => anyhow::bail!(
            "fabric.trust.roster does not list this switch ({name}); add {name} = {{ public_key = \"{}\" }}",
            identity.public_hex()
        ),
    }
    let mut codec = match config.encryption.mode {
        EncryptionMode::None => Codec::new(identity, roster, None),
        EncryptionMode::Aead => {
            let path = config.encryption.key_file.as_ref().ok_or_else(|| {
                anyhow::anyhow!("fabric.encryption.key_file: needed with mode = \"aead\"")
            })?;
            Codec::new(
                identity,
                roster,
                Some((config.encryption.key_id, read_key(path)?)),
            )
        }
    };
    for accepted in &config.encryption.also_accept {
        codec.accept_key(accepted.key_id, read_key(&accepted.key_file)?);
    }
    let trust = &config.trust;
    Ok(codec.with_replay(ReplayGuard::load(
        &trust.counters_file,
        trust.max_age_ms,
        trust.max_skew_ms,
    )?))
}

/// Reads a 32-byte key written as 64 hex digits.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("fabric.encryption.key_file {}: {e}", path.display()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "fabric.encryption.key_file {}: not hex: {e}",
            path.display()
        )
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "fabric.encryption.key_file {}: {} bytes, need 32 (64 hex digits)",
            path.display(),
            b.len()
        )
    })
}

/// Seals outgoing and opens incoming messages for one member.
pub struct Codec {
    identity: Identity,
    roster: Roster,
    /// Sending key first, then the others accepted.
    keys: Vec<(u8, XChaCha20Poly1305)>,
    last_counter: u64,
    replay: ReplayGuard,
}

/// A message accepted for application.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The sender in the header (its signature checked).
    pub sender: String,
    /// The sender's counter (its clock, µs).
    pub counter: u64,
    /// The body.
    pub message: Message,
    /// It was sealed.
    pub sealed: bool,
}

/// What [`Codec::open_unless`] made of a message.
// Moved once per message, as `Opened` alone was; boxing it would cost an
// allocation per message received.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// Accepted for application.
    Opened(Opened),
    /// Its body would change nothing, so it was dropped unverified.
    Needless,
}

impl Codec {
    /// A codec signing as `identity`, trusting `roster`, and sealing with
    /// `key` (id, key) when given.
    pub fn new(identity: Identity, roster: Roster, key: Option<(u8, [u8; 32])>) -> Self {
        Self {
            identity,
            roster,
            keys: key
                .map(|(id, k)| (id, XChaCha20Poly1305::new(&k.into())))
                .into_iter()
                .collect(),
            last_counter: 0,
            replay: ReplayGuard::new(DEFAULT_MAX_AGE_MS, DEFAULT_SKEW_MS),
        }
    }

    /// Judges replays with `replay` (e.g. one loaded from the counters
    /// file) instead of a fresh in-memory guard.
    pub fn with_replay(mut self, replay: ReplayGuard) -> Self {
        self.replay = replay;
        self
    }

    /// Saves the replay counters when due (see [`ReplayGuard::save`]).
    pub fn save_counters(&mut self) -> std::io::Result<()> {
        self.replay.save()
    }

    /// Replay slots forgotten to stay bounded.
    pub fn replay_evicted(&self) -> u64 {
        self.replay.evicted()
    }

    /// Also opens bodies sealed with this key (rotation); the sending key
    /// stays the one given to [`Codec::new`].
    /// Without a sending key this makes the codec seal with `key`.
    pub fn accept_key(&mut self, id: u8, key: [u8; 32]) {
        if !self.keys.iter().any(|(i, _)| *i == id) {
            self.keys.push((id, XChaCha20Poly1305::new(&key.into())));
        }
    }

    /// This member's name.
    pub fn sender(&self) -> &str {
        self.identity.name()
    }

    fn next_counter(&mut self) -> u64 {
        self.last_counter = crate::clock::now_us().max(self.last_counter + 1);
        self.last_counter
    }

    /// Signs and encodes (and seals, when keyed) a message.
    pub fn seal(&mut self, message: &Message) -> Vec<u8> {
        self.seal_flagged(message, 0)
    }

    /// Encodes a last will.
    pub fn seal_will(&mut self, message: &Message) -> Vec<u8> {
        self.seal_flagged(message, FLAG_WILL)
    }

    fn seal_flagged(&mut self, message: &Message, flags: u8) -> Vec<u8> {
        let mut body = serde_json::to_vec(message).expect("fabric messages serialize");
        let channel = message.channel();
        let counter = self.next_counter();
        let sending = self.keys.first().map(|(id, _)| *id);
        let nonce = sending.map(|_| {
            let mut nonce = [0u8; NONCE_LEN];
            crate::random::fill(&mut nonce);
            nonce
        });
        let flags = if nonce.is_some() {
            flags | FLAG_SEALED
        } else {
            flags
        };
        let mut out = wire::encode_header(
            channel,
            flags,
            sending.unwrap_or(0),
            self.identity.name(),
            counter,
            nonce.as_ref(),
        );
        let mut signed = out.clone();
        signed.extend_from_slice(&body);
        body.extend_from_slice(&self.identity.sign(&signed));
        match (nonce, self.keys.first()) {
            (Some(nonce), Some((_, cipher))) => {
                let sealed = cipher
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &body,
                            aad: &out,
                        },
                    )
                    .expect("XChaCha20-Poly1305 sealing does not fail for bounded input");
                out.extend_from_slice(&sealed);
            }
            _ => out.extend_from_slice(&body),
        }
        out
    }

    /// Decodes, authenticates and checks a received message: the key id
    /// and AEAD (when sealing), the sender's signature against the roster,
    /// server-only kinds, the author, and replays. Retained deliveries go
    /// through exactly the same checks (`retained` is kept for callers
    /// that route by it).
    pub fn open(&mut self, bytes: &[u8], retained: bool) -> Result<Opened, Rejection> {
        match self.open_unless(bytes, retained, |_| false)? {
            Opening::Opened(opened) => Ok(opened),
            Opening::Needless => unreachable!("nothing is needless to a caller that wants all"),
        }
    }

    /// As [`Codec::open`], but a body that `needless` says would change
    /// nothing is dropped before its signature is checked: the signature
    /// is most of the cost of opening (an Ed25519 verification, ~40 us),
    /// and a fabric of a thousand members hears every config change twice,
    /// once from its origin and once as the server's retained setting
    /// record. Dropping an unverified body that would have no effect is
    /// what the checks would lead to anyway for a forged one, and for a
    /// genuine one the same as applying it; a needless body takes no part
    /// in replay judgement (its counter is not recorded), so it cannot
    /// hold back a later genuine message. The AEAD (when sealing) is still
    /// checked first, so only holders of the fabric key get this far.
    pub fn open_unless(
        &mut self,
        bytes: &[u8],
        _retained: bool,
        needless: impl FnOnce(&Message) -> bool,
    ) -> Result<Opening, Rejection> {
        let envelope = wire::decode(bytes)?;
        let sender = envelope.sender.to_string();
        let body = match (self.keys.is_empty(), envelope.sealed()) {
            (false, false) => return Err(Rejection::Unsealed { sender }),
            (true, true) => return Err(Rejection::NoKey { sender }),
            (true, false) => envelope.body.to_vec(),
            (false, true) => {
                let Some((_, cipher)) = self.keys.iter().find(|(id, _)| *id == envelope.key_id)
                else {
                    return Err(Rejection::WrongKey {
                        sender,
                        key_id: envelope.key_id,
                    });
                };
                let nonce = envelope.nonce.expect("sealed envelopes carry a nonce");
                cipher
                    .decrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: envelope.body,
                            aad: envelope.header,
                        },
                    )
                    .map_err(|_| Rejection::Tampered {
                        sender: sender.clone(),
                    })?
            }
        };
        let Some(split) = body.len().checked_sub(SIGNATURE_LEN) else {
            return Err(WireError::Malformed("body shorter than its signature").into());
        };
        let (json, signature) = body.split_at(split);
        // Parsed before the signature is checked only to ask `needless`; a
        // body that does not parse is judged in the usual order below
        // (signature first), so its rejection reads as before.
        let parsed = wire::parse_body(envelope.channel, json);
        if let Ok(message) = &parsed
            && needless(message)
        {
            return Ok(Opening::Needless);
        }
        let signature: &[u8; SIGNATURE_LEN] = signature.try_into().expect("64 bytes");
        let mut signed = envelope.header.to_vec();
        signed.extend_from_slice(json);
        let trusted = match self.roster.verify(&sender, &signed, signature) {
            Ok(trusted) => trusted.clone(),
            Err(Untrusted::UnknownSender) => return Err(Rejection::UnknownSender { sender }),
            Err(Untrusted::BadSignature) => return Err(Rejection::BadSignature { sender }),
        };
        let message = parsed?;
        let author = message.author();
        if !author.is_empty() && author != sender {
            return Err(Rejection::Impersonation {
                sender,
                author: author.to_string(),
            });
        }
        if message.server_only() && !trusted.server {
            return Err(Rejection::NotServer {
                sender,
                kind: message.kind(),
            });
        }
        let domain = Domain::of(&message, envelope.flags & FLAG_WILL != 0);
        let counter = envelope.counter;
        self.replay
            .admit(&sender, &domain, counter, crate::clock::now_us())
            .map_err(|refusal| match refusal {
                Refusal::Replayed => Rejection::Replayed {
                    sender: sender.clone(),
                    counter,
                },
                Refusal::Stale => Rejection::Stale {
                    sender: sender.clone(),
                    counter,
                },
                Refusal::Future => Rejection::Future {
                    sender: sender.clone(),
                    counter,
                },
            })?;
        Ok(Opening::Opened(Opened {
            sender,
            counter: envelope.counter,
            message,
            sealed: envelope.sealed(),
        }))
    }

    /// Channel of a raw message without opening it (for routing and counters).
    pub fn peek_channel(bytes: &[u8]) -> Option<Channel> {
        wire::decode(bytes).ok().map(|e| e.channel)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::fabric::wire::{Fault, ServerStatus};

    /// Members sw1..sw6 and the server srv, one key pair each.
    fn identities() -> &'static Vec<Identity> {
        static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
        IDS.get_or_init(|| {
            let mut ids: Vec<Identity> = (1..=6)
                .map(|n| Identity::generate(&format!("sw{n}")))
                .collect();
            ids.push(Identity::generate("srv"));
            ids
        })
    }

    fn roster() -> Roster {
        Roster::generated(identities(), &["srv"])
    }

    fn identity(name: &str) -> Identity {
        identities()
            .iter()
            .find(|i| i.name() == name)
            .cloned()
            .unwrap()
    }

    fn codec(name: &str, key: Option<(u8, [u8; 32])>) -> Codec {
        Codec::new(identity(name), roster(), key)
    }

    fn fault(member: &str) -> Message {
        Message::Fault(Fault {
            member: member.into(),
            boot: 1,
            seq: 1,
            port: "eth0".into(),
            kind: "port-down".into(),
            at_ms: 5,
        })
    }

    fn keyed(name: &str, key: u8) -> Codec {
        codec(name, Some((1, [key; 32])))
    }

    #[test]
    fn sealed_bodies_open_and_hide_their_text() {
        let mut a = keyed("sw1", 9);
        let mut b = keyed("sw2", 9);
        let bytes = a.seal(&fault("sw1"));
        assert!(
            !bytes.windows(4).any(|w| w == b"eth0"),
            "body must not be readable"
        );
        let opened = b.open(&bytes, false).unwrap();
        assert_eq!(opened.message, fault("sw1"));
        assert!(opened.sealed);
    }

    #[test]
    fn tampered_replayed_and_wrongly_keyed_are_rejected() {
        let mut a = keyed("sw1", 9);
        let mut b = keyed("sw2", 9);
        let bytes = a.seal(&fault("sw1"));
        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(b.open(&tampered, false).unwrap_err().counter(), "tampered");
        // Moving the body under another sender breaks the associated data.
        let mut c = keyed("sw3", 9);
        let other = c.seal(&fault("sw3"));
        let mut spliced = bytes[..bytes.len() - 10].to_vec();
        spliced.extend_from_slice(&other[other.len() - 10..]);
        assert_eq!(b.open(&spliced, false).unwrap_err().counter(), "tampered");
        // A stream kind is accepted once, retained or not.
        let departed = a.seal(&Message::Departed {
            member: "sw1".into(),
            reason: "bye".into(),
        });
        b.open(&departed, false).unwrap();
        assert_eq!(b.open(&departed, false).unwrap_err().counter(), "replayed");
        assert_eq!(
            b.open(&departed, true).unwrap_err().counter(),
            "replayed",
            "a retained copy is no exception"
        );
        let mut wrong = keyed("sw4", 8);
        assert_eq!(
            wrong
                .open(&a.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "tampered"
        );
        let mut other_id = codec("sw5", Some((2, [9; 32])));
        assert_eq!(
            other_id
                .open(&a.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "wrong_key"
        );
        let mut clear = codec("sw6", None);
        assert_eq!(
            clear
                .open(&a.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "wrong_key"
        );
        assert_eq!(
            b.open(&clear.seal(&fault("sw6")), false)
                .unwrap_err()
                .counter(),
            "unsealed"
        );
    }

    #[test]
    fn a_body_cannot_speak_for_another_member() {
        let mut a = codec("sw1", None);
        let mut b = codec("sw2", None);
        let err = b.open(&a.seal(&fault("sw2")), false).unwrap_err();
        assert_eq!(err.counter(), "impersonation");
    }

    #[test]
    fn only_roster_keys_are_believed() {
        let mut b = codec("sw2", None);
        // A name not in the roster.
        let mut stranger = Codec::new(Identity::generate("sw9"), roster(), None);
        assert_eq!(
            b.open(&stranger.seal(&fault("sw9")), false)
                .unwrap_err()
                .counter(),
            "unknown_sender"
        );
        // A listed name, signed with another key.
        let mut forger = Codec::new(Identity::generate("sw1"), roster(), None);
        assert_eq!(
            b.open(&forger.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "bad_signature"
        );
        // The signature covers the header: another counter breaks it.
        let mut a = codec("sw1", None);
        let mut bytes = a.seal(&fault("sw1"));
        bytes[7 + 3 + 7] ^= 1;
        assert_eq!(
            b.open(&bytes, false).unwrap_err().counter(),
            "bad_signature"
        );
        // Stripped signature.
        let bytes = a.seal(&fault("sw1"));
        let header = wire::decode(&bytes).unwrap().header.len();
        assert_eq!(
            b.open(&bytes[..header + 10], false).unwrap_err().counter(),
            "malformed"
        );
    }

    #[test]
    fn a_needless_body_is_dropped_unverified_and_a_needed_one_is_still_checked() {
        let setting = |value: &str| {
            Message::Setting(crate::fabric::wire::SettingRecord {
                server: "srv".into(),
                change: crate::fabric::wire::ConfigChange {
                    origin: "sw1".into(),
                    seq: 1,
                    key: "site.ntp".into(),
                    value: value.into(),
                    at_ms: 5,
                },
            })
        };
        let held = |m: &Message| matches!(m, Message::Setting(r) if r.change.value == "held");
        let mut b = keyed("sw2", 9);
        // A member forging the server's record: what it repeats is held, so
        // it is dropped before the signature check that would refuse it...
        let mut forger = keyed("sw1", 9);
        assert_eq!(
            b.open_unless(&forger.seal(&setting("held")), true, held),
            Ok(Opening::Needless)
        );
        // ...and one that would change something is checked as ever.
        let err = b
            .open_unless(&forger.seal(&setting("new")), true, held)
            .unwrap_err();
        assert_eq!(err.counter(), "impersonation", "{err}");
        // A dropped body leaves the replay window alone: the server's
        // record sealed first still opens after a later one was dropped.
        let mut server = keyed("srv", 9);
        let first = server.seal(&setting("new"));
        let later = server.seal(&setting("held"));
        assert_eq!(b.open_unless(&later, true, held), Ok(Opening::Needless));
        assert!(matches!(
            b.open_unless(&first, true, held),
            Ok(Opening::Opened(Opened { message, .. })) if message == setting("new")
        ));
        // The key still guards the door: a body sealed under another key is
        // refused, never asked about.
        let mut outsider = keyed("srv", 7);
        let err = b
            .open_unless(&outsider.seal(&setting("held")), true, |_| true)
            .unwrap_err();
        assert_eq!(err.counter(), "tampered", "{err}");
    }

    #[test]
    fn server_only_kinds_need_a_server_key() {
        let status = |server: &str| {
            Message::Server(ServerStatus {
                server: server.into(),
                rank: 0,
                active: true,
            })
        };
        let mut b = keyed("sw2", 9);
        let mut member = keyed("sw1", 9);
        let err = b.open(&member.seal(&status("sw1")), false).unwrap_err();
        assert_eq!(err.counter(), "not_server", "{err}");
        let mut server = keyed("srv", 9);
        b.open(&server.seal(&status("srv")), false).unwrap();
    }

    #[test]
    fn a_rotated_key_is_accepted_alongside_the_old_one() {
        let mut old = keyed("sw1", 1);
        let mut new = codec("sw3", Some((2, [2; 32])));
        let mut both = keyed("sw2", 1);
        both.accept_key(2, [2; 32]);
        both.open(&old.seal(&fault("sw1")), false).unwrap();
        both.open(&new.seal(&fault("sw3")), false).unwrap();
        let sent = both.seal(&fault("sw2"));
        assert_eq!(
            wire::decode(&sent).unwrap().key_id,
            1,
            "sends with its own key"
        );
        old.open(&sent, false).unwrap();
        assert_eq!(
            keyed("sw4", 1)
                .open(&new.seal(&fault("sw3")), false)
                .unwrap_err()
                .counter(),
            "wrong_key"
        );
    }

    #[test]
    fn wills_have_their_own_replay_domain() {
        let mut a = keyed("sw1", 9);
        let mut b = keyed("sw2", 9);
        let will = a.seal_will(&Message::Departed {
            member: "sw1".into(),
            reason: "lost".into(),
        });
        for _ in 0..3 {
            b.open(&a.seal(&fault("sw1")), false).unwrap();
        }
        b.open(&will, false).unwrap();
        assert_eq!(b.open(&will, false).unwrap_err().counter(), "replayed");
    }
}
