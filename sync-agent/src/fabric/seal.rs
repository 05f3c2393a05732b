//! Sealing and opening fabric messages: XChaCha20-Poly1305 with a pre-shared
//! key (SPEC 4.6), and replay rejection.
//!
//! The nonce's first 8 bytes are a per-sender counter (microseconds since the
//! epoch, forced to increase), the other 16 random. Receivers remember, per
//! sender, the highest counter and every counter of the last minute; anything
//! seen before or older than that window is a replay. Last wills are sealed at
//! connect time, so they have a domain of their own.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};

use super::wire::{self, Channel, Envelope, FLAG_SEALED, FLAG_WILL, Message, NONCE_LEN, WireError};

/// How far back (µs) a sealed message may be behind the sender's newest.
pub const REPLAY_WINDOW_US: u64 = 60_000_000;

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
    #[error("key id {key_id} from {sender} is not ours")]
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
    /// Seen before or too old.
    #[error("replayed message from {sender} (counter {counter})")]
    Replayed {
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
            Rejection::Replayed { .. } => "replayed",
            Rejection::Impersonation { .. } => "impersonation",
        }
    }
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

#[derive(Default)]
struct SenderWindow {
    highest: u64,
    seen: BTreeSet<u64>,
}

impl SenderWindow {
    /// Records the counter; false when it is a replay.
    fn admit(&mut self, counter: u64) -> bool {
        if self.highest > REPLAY_WINDOW_US && counter < self.highest - REPLAY_WINDOW_US {
            return false;
        }
        if !self.seen.insert(counter) {
            return false;
        }
        if counter > self.highest {
            self.highest = counter;
            let floor = self.highest.saturating_sub(REPLAY_WINDOW_US);
            self.seen = self.seen.split_off(&floor);
        }
        true
    }
}

/// Seals outgoing and opens incoming messages for one member.
pub struct Codec {
    sender: String,
    key: Option<(u8, XChaCha20Poly1305)>,
    last_counter: u64,
    windows: HashMap<(String, bool), SenderWindow>,
}

/// A message accepted for application.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The sender in the header.
    pub sender: String,
    /// The body.
    pub message: Message,
    /// It was sealed.
    pub sealed: bool,
}

impl Codec {
    /// A codec sending as `sender`, sealing with `key` when given.
    pub fn new(sender: &str, key: Option<(u8, [u8; 32])>) -> Self {
        Self {
            sender: sender.to_string(),
            key: key.map(|(id, k)| (id, XChaCha20Poly1305::new(&k.into()))),
            last_counter: 0,
            windows: HashMap::new(),
        }
    }

    /// This member's name.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        let now = crate::clock::now_us();
        self.last_counter = now.max(self.last_counter + 1);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.last_counter.to_be_bytes());
        crate::random::fill(&mut nonce[8..]);
        nonce
    }

    /// Encodes (and seals, when keyed) a message.
    pub fn seal(&mut self, message: &Message) -> Vec<u8> {
        self.seal_flagged(message, 0)
    }

    /// Encodes a last will.
    pub fn seal_will(&mut self, message: &Message) -> Vec<u8> {
        self.seal_flagged(message, FLAG_WILL)
    }

    fn seal_flagged(&mut self, message: &Message, flags: u8) -> Vec<u8> {
        let body = serde_json::to_vec(message).expect("fabric messages serialize");
        let channel = message.channel();
        match self.key.as_ref().map(|(id, _)| *id) {
            None => {
                let mut out = wire::encode_header(channel, flags, 0, &self.sender, None);
                out.extend_from_slice(&body);
                out
            }
            Some(key_id) => {
                let nonce = self.next_nonce();
                let mut out = wire::encode_header(
                    channel,
                    flags | FLAG_SEALED,
                    key_id,
                    &self.sender,
                    Some(&nonce),
                );
                let (_, cipher) = self.key.as_ref().expect("keyed");
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
                out
            }
        }
    }

    /// Decodes, authenticates and checks a received message. `retained`
    /// deliveries are snapshots the broker hands out again on every
    /// subscription, so they skip the replay window.
    pub fn open(&mut self, bytes: &[u8], retained: bool) -> Result<Opened, Rejection> {
        let envelope = wire::decode(bytes)?;
        let sender = envelope.sender.to_string();
        let body = match (&self.key, envelope.sealed()) {
            (Some(_), false) => return Err(Rejection::Unsealed { sender }),
            (None, true) => return Err(Rejection::NoKey { sender }),
            (None, false) => envelope.body.to_vec(),
            (Some((key_id, cipher)), true) => {
                if envelope.key_id != *key_id {
                    return Err(Rejection::WrongKey {
                        sender,
                        key_id: envelope.key_id,
                    });
                }
                let nonce = envelope.nonce.expect("sealed envelopes carry a nonce");
                let clear = cipher
                    .decrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: envelope.body,
                            aad: envelope.header,
                        },
                    )
                    .map_err(|_| Rejection::Tampered {
                        sender: sender.clone(),
                    })?;
                if !retained {
                    self.check_replay(&envelope, &nonce)?;
                }
                clear
            }
        };
        let message = wire::parse_body(envelope.channel, &body)?;
        let author = message.author();
        if !author.is_empty() && author != sender {
            return Err(Rejection::Impersonation {
                sender,
                author: author.to_string(),
            });
        }
        Ok(Opened {
            sender,
            message,
            sealed: envelope.sealed(),
        })
    }

    fn check_replay(
        &mut self,
        envelope: &Envelope<'_>,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<(), Rejection> {
        let counter = u64::from_be_bytes(nonce[..8].try_into().expect("8 bytes"));
        let will = envelope.flags & FLAG_WILL != 0;
        let window = self
            .windows
            .entry((envelope.sender.to_string(), will))
            .or_default();
        if window.admit(counter) {
            Ok(())
        } else {
            Err(Rejection::Replayed {
                sender: envelope.sender.to_string(),
                counter,
            })
        }
    }

    /// Channel of a raw message without opening it (for routing and counters).
    pub fn peek_channel(bytes: &[u8]) -> Option<Channel> {
        wire::decode(bytes).ok().map(|e| e.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::wire::Fault;

    fn fault(member: &str) -> Message {
        Message::Fault(Fault {
            member: member.into(),
            seq: 1,
            port: "eth0".into(),
            kind: "port-down".into(),
            at_ms: 5,
        })
    }

    fn keyed(name: &str, key: u8) -> Codec {
        Codec::new(name, Some((1, [key; 32])))
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
        b.open(&bytes, false).unwrap();
        assert_eq!(b.open(&bytes, false).unwrap_err().counter(), "replayed");
        // Retained snapshots are handed out again on each subscription.
        b.open(&bytes, true).unwrap();
        let mut wrong = keyed("sw4", 8);
        assert_eq!(
            wrong
                .open(&a.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "tampered"
        );
        let mut other_id = Codec::new("sw5", Some((2, [9; 32])));
        assert_eq!(
            other_id
                .open(&a.seal(&fault("sw1")), false)
                .unwrap_err()
                .counter(),
            "wrong_key"
        );
        let mut clear = Codec::new("sw6", None);
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
        let mut a = Codec::new("sw1", None);
        let mut b = Codec::new("sw2", None);
        let err = b.open(&a.seal(&fault("sw9")), false).unwrap_err();
        assert_eq!(err.counter(), "impersonation");
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

    #[test]
    fn window_refuses_old_counters() {
        let mut w = SenderWindow::default();
        assert!(w.admit(REPLAY_WINDOW_US * 3));
        assert!(!w.admit(REPLAY_WINDOW_US));
        assert!(
            w.admit(REPLAY_WINDOW_US * 3 - 5),
            "slightly reordered is fine"
        );
        assert!(!w.admit(REPLAY_WINDOW_US * 3 - 5));
    }
}
