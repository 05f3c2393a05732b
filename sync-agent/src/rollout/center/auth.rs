//! Who may do what at the config center (SPEC 8.3): bearer tokens, their
//! roles, and the checks every API request goes through.
//!
//! A token is a random secret (`mlag_` and 64 hex digits, 256 bits) minted by
//! `sync-agent config token new`. The center's config holds only its SHA-256
//! (`[[rollout.center.tokens]]`): a plain hash is enough for a secret of that
//! entropy (nothing to brute-force, unlike a password), and the config file
//! can be read without handing out the tokens. A presented token is hashed
//! and compared with every configured hash in constant time.
//!
//! A token is either
//! - an operator token: a name and roles per namespace, `NS:read`,
//!   `NS:publish` or `NS:admin` (`*` for every namespace); `publish`
//!   includes `read`, `admin` includes both; or
//! - a device token: a name bound to one device, which may only register,
//!   poll and acknowledge as that device and read the configs of its own
//!   registered services.
//!
//! The verified token name is the author of every write; a client's own
//! claim is ignored once tokens are configured.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::rollout::wire::check_name;
use crate::validate::Problems;

/// Every token starts with this, so a leaked one is recognisable (secret
/// scanners, logs).
pub const TOKEN_PREFIX: &str = "mlag_";
/// Random bytes in a token (hex-encoded after the prefix).
const TOKEN_BYTES: usize = 32;

/// One `[[rollout.center.tokens]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token; recorded as the author of its writes.
    pub name: String,
    /// Lower-case hex SHA-256 of the token (printed by `config token new`).
    pub sha256: String,
    /// Operator roles, `NAMESPACE:ROLE` (`read`, `publish`, `admin`;
    /// namespace `*`: all). Empty for a device token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The device a device token acts for (then `roles` stays empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// What an operator role allows in a namespace; each includes the ones
/// before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read configs, history, diffs, listeners and rollouts.
    Read,
    /// Also put, roll back and clone into the namespace.
    Publish,
    /// Also resume, continue, abort and skip the namespace's rollouts.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Publish => "publish",
            Role::Admin => "admin",
        }
    }
}

/// A role in one namespace (`None`: every namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub namespace: Option<String>,
    pub role: Role,
}

impl FromStr for Grant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ns, role) = text.split_once(':').ok_or_else(|| {
            format!("role {text:?} is not NAMESPACE:ROLE (e.g. prod:publish, *:read)")
        })?;
        let role = match role {
            "read" => Role::Read,
            "publish" => Role::Publish,
            "admin" => Role::Admin,
            other => {
                return Err(format!(
                    "role {text:?}: {other:?} is not one of read, publish, admin"
                ));
            }
        };
        let namespace = match ns {
            "*" => None,
            ns => {
                check_name("namespace", ns).map_err(|e| format!("role {text:?}: {e}"))?;
                Some(ns.to_string())
            }
        };
        Ok(Grant { namespace, role })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.namespace.as_deref().unwrap_or("*");
        write!(f, "{ns}:{}", self.role.name())
    }
}

/// What a verified token may act as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An operator with roles per namespace.
    Operator(Vec<Grant>),
    /// The device of this name, and nothing else.
    Device(String),
}

/// A verified caller: the token's name and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub kind: Kind,
}

/// What a request needs of its caller.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// `role` (or more) in `namespace`.
    Role(&'a str, Role),
    /// `admin` in every namespace (device removal: a device's services span
    /// namespaces).
    AdminEverywhere,
    /// Any operator token (stats, the device list).
    Operator,
    /// Acting as this device (register, poll, acknowledge).
    Device(&'a str),
}

/// Why an identity was refused; [`Denied::reason`] is its refusal counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token lacks the role.
    #[error("{0}")]
    Forbidden(String),
    /// A device token acting for another device.
    #[error("{0}")]
    WrongDevice(String),
}

impl Denied {
    /// The refusal counter (`GET /v1/stats`) this goes under.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Forbidden(_) => "forbidden",
            Denied::WrongDevice(_) => "wrong_device",
        }
    }
}

impl Identity {
    /// Whether this identity has `role` in `namespace`.
    pub fn has(&self, namespace: &str, role: Role) -> bool {
        match &self.kind {
            Kind::Operator(grants) => grants
                .iter()
                .any(|g| g.role >= role && g.namespace.as_deref().is_none_or(|ns| ns == namespace)),
            Kind::Device(_) => false,
        }
    }

    /// The device a device token is bound to.
    pub fn device(&self) -> Option<&str> {
        match &self.kind {
            Kind::Device(d) => Some(d),
            Kind::Operator(_) => None,
        }
    }

    /// Checks `need`; the error names the token and what it lacks.
    pub fn allows(&self, need: Need<'_>) -> Result<(), Denied> {
        let name = &self.name;
        match (need, &self.kind) {
            (Need::Device(want), Kind::Device(own)) if want == own => Ok(()),
            (Need::Device(want), Kind::Device(own)) => Err(Denied::WrongDevice(format!(
                "token {name:?} is the device token of {own:?}; it cannot act for device {want:?}"
            ))),
            (Need::Device(want), Kind::Operator(_)) => Err(Denied::Forbidden(format!(
                "token {name:?} is an operator token; registering, polling and acknowledging as device {want:?} needs that device's token"
            ))),
            (_, Kind::Device(own)) => Err(Denied::Forbidden(format!(
                "token {name:?} is the device token of {own:?}; it may only register, poll, acknowledge and read its own configs"
            ))),
            (Need::Operator, Kind::Operator(_)) => Ok(()),
            (Need::Role(ns, role), Kind::Operator(_)) => {
                if self.has(ns, role) {
                    Ok(())
                } else {
                    Err(Denied::Forbidden(format!(
                        "token {name:?} lacks role {ns}:{} (or higher)",
                        role.name()
                    )))
                }
            }
            (Need::AdminEverywhere, Kind::Operator(grants)) => {
                if grants
                    .iter()
                    .any(|g| g.namespace.is_none() && g.role == Role::Admin)
                {
                    Ok(())
                } else {
                    Err(Denied::Forbidden(format!(
                        "token {name:?} lacks role *:admin"
                    )))
                }
            }
        }
    }
}

/// Why a presented token was not accepted (401); [`Unverified::reason`] is
/// its refusal counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("authentication required: send Authorization: Bearer TOKEN")]
    Missing,
    #[error("the Authorization header is not \"Bearer TOKEN\"")]
    NotBearer,
    #[error(
        "the token is malformed: expected {TOKEN_PREFIX} and {} hex digits",
        TOKEN_BYTES * 2
    )]
    Malformed,
    #[error("unknown token")]
    Unknown,
}

impl Unverified {
    /// The refusal counter (`GET /v1/stats`) this goes under.
    pub fn reason(&self) -> &'static str {
        match self {
            Unverified::Missing => "unauthenticated",
            Unverified::NotBearer | Unverified::Malformed | Unverified::Unknown => "bad_token",
        }
    }
}

/// The SHA-256 of a token, as configured.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token (to be shown once and never stored).
pub fn mint() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    crate::random::fill(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == TOKEN_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The configured tokens, ready to verify. Empty: the center is open (no
/// authentication).
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Arc<Identity>)>,
}

impl Tokens {
    /// The tokens of `[[rollout.center.tokens]]`; every problem is reported
    /// at its field (`rollout.center.tokens[N].roles[M]`).
    pub fn from_config(tokens: &[TokenConfig], problems: &mut Problems) -> Tokens {
        let mut entries: Vec<([u8; 32], Arc<Identity>)> = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in tokens.iter().enumerate() {
            let at = format!("rollout.center.tokens[{i}]");
            // This entry's problems: a faulty entry is left out entirely.
            let mut mine = Problems::default();
            let out = &mut mine;
            if let Err(e) = check_name("token name", &t.name) {
                out.add(format!("{at}.name"), e);
            } else if !names.insert(t.name.as_str()) {
                out.add(
                    format!("{at}.name"),
                    format!("token name {:?} is used twice", t.name),
                );
            }
            let mut hash = [0u8; 32];
            let hex_ok = t.sha256.len() == 64
                && t.sha256.bytes().all(|b| b.is_ascii_hexdigit())
                && hex::decode_to_slice(&t.sha256, &mut hash).is_ok();
            if !hex_ok {
                out.add(
                    format!("{at}.sha256"),
                    format!(
                        "token {:?}: sha256 must be 64 hex digits (from `sync-agent config token new`)",
                        t.name
                    ),
                );
            } else if entries.iter().any(|(h, _)| *h == hash) {
                out.add(
                    format!("{at}.sha256"),
                    format!("token {:?}: the same token is configured twice", t.name),
                );
            }
            let kind = match (&t.device, t.roles.is_empty()) {
                (Some(device), true) => {
                    if let Err(e) = check_name("device", device) {
                        out.add(format!("{at}.device"), e);
                    }
                    Kind::Device(device.clone())
                }
                (Some(_), false) => {
                    out.add(
                        format!("{at}.roles"),
                        format!(
                            "token {:?}: a device token has no roles (give device or roles, not both)",
                            t.name
                        ),
                    );
                    Kind::Operator(Vec::new())
                }
                (None, true) => {
                    out.add(
                        format!("{at}.roles"),
                        format!(
                            "token {:?}: give roles (e.g. [\"prod:publish\"]) or a device",
                            t.name
                        ),
                    );
                    Kind::Operator(Vec::new())
                }
                (None, false) => {
                    let mut grants = Vec::new();
                    for (j, role) in t.roles.iter().enumerate() {
                        match role.parse::<Grant>() {
                            Ok(g) => grants.push(g),
                            Err(e) => out.add(format!("{at}.roles[{j}]"), e),
                        }
                    }
                    Kind::Operator(grants)
                }
            };
            let mine = mine.into_vec();
            if mine.is_empty() {
                let identity = Identity {
                    name: t.name.clone(),
                    kind,
                };
                entries.push((hash, Arc::new(identity)));
            }
            for p in mine {
                problems.add(p.field, p.message);
            }
        }
        Tokens { entries }
    }

    /// No token configured: every request is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of an `Authorization` header's value.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Arc<Identity>, Unverified> {
        let header = authorization.ok_or(Unverified::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| Unverified::NotBearer)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Unverified::NotBearer),
        };
        if !well_formed(token) {
            return Err(Unverified::Malformed);
        }
        let hash = hash_token(token);
        // Every entry is compared, each in constant time, so the answer's
        // timing says nothing about how close a guess came.
        let mut found = None;
        for (h, identity) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(identity);
            }
        }
        found.cloned().ok_or(Unverified::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(name: &str, token: &str, roles: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hex::encode(hash_token(token)),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            device: None,
        }
    }

    fn device(name: &str, token: &str, device: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hex::encode(hash_token(token)),
            roles: Vec::new(),
            device: Some(device.into()),
        }
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    fn tokens(config: &[TokenConfig]) -> Tokens {
        let mut problems = Problems::default();
        let t = Tokens::from_config(config, &mut problems);
        let problems = problems.into_vec();
        assert!(problems.is_empty(), "{problems:?}");
        t
    }

    #[test]
    fn minted_tokens_are_well_formed_and_differ() {
        let a = mint();
        let b = mint();
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(!well_formed(&a[..a.len() - 1]));
        assert!(!well_formed(&a.replace(TOKEN_PREFIX, "xxxx_")));
        assert!(!well_formed(&format!("{}g", &a[..a.len() - 1])));
    }

    #[test]
    fn the_hash_is_sha256_of_the_token_text() {
        // Known answer: SHA-256("abc").
        assert_eq!(
            hex::encode(hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn grants_parse_and_print_back() {
        for text in ["prod:read", "prod:publish", "*:admin", "a.b-c_d:read"] {
            assert_eq!(text.parse::<Grant>().unwrap().to_string(), text);
        }
        let g: Grant = "*:publish".parse().unwrap();
        assert_eq!((g.namespace, g.role), (None, Role::Publish));
        for (bad, says) in [
            ("prod", "NAMESPACE:ROLE"),
            ("prod:write", "not one of read, publish, admin"),
            ("pr od:read", "namespace"),
            (":read", "namespace is empty"),
        ] {
            let e = bad.parse::<Grant>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn verify_finds_the_token_and_refuses_the_rest_by_reason() {
        let (alice, sw1) = (mint(), mint());
        let t = tokens(&[
            operator("alice", &alice, &["prod:publish"]),
            device("sw1-token", &sw1, "sw1"),
        ]);
        assert!(!t.is_empty());
        assert_eq!(t.verify(Some(&bearer(&alice))).unwrap().name, "alice");
        assert_eq!(
            t.verify(Some(format!("bearer  {sw1} ").as_bytes()))
                .unwrap()
                .device(),
            Some("sw1")
        );
        let cases: [(Option<Vec<u8>>, Unverified, &str); 5] = [
            (None, Unverified::Missing, "unauthenticated"),
            (
                Some(alice.clone().into_bytes()),
                Unverified::NotBearer,
                "bad_token",
            ),
            (
                Some(format!("Basic {alice}").into_bytes()),
                Unverified::NotBearer,
                "bad_token",
            ),
            (Some(bearer("secret")), Unverified::Malformed, "bad_token"),
            (Some(bearer(&mint())), Unverified::Unknown, "bad_token"),
        ];
        for (header, want, reason) in cases {
            let got = t.verify(header.as_deref()).unwrap_err();
            assert_eq!((&got, got.reason()), (&want, reason));
        }
    }

    #[test]
    fn roles_are_per_namespace_and_include_the_lower_ones() {
        let t = tokens(&[
            operator("ops", &mint(), &["prod:publish", "staging:admin", "*:read"]),
            operator("root", &mint(), &["*:admin"]),
        ]);
        let ops = &t.entries[0].1;
        let root = &t.entries[1].1;
        assert!(ops.allows(Need::Role("prod", Role::Read)).is_ok());
        assert!(ops.allows(Need::Role("prod", Role::Publish)).is_ok());
        let e = ops.allows(Need::Role("prod", Role::Admin)).unwrap_err();
        assert_eq!(e.reason(), "forbidden");
        assert!(e.to_string().contains("lacks role prod:admin"), "{e}");
        assert!(ops.allows(Need::Role("staging", Role::Admin)).is_ok());
        assert!(ops.allows(Need::Role("other", Role::Read)).is_ok());
        assert!(ops.allows(Need::Role("other", Role::Publish)).is_err());
        assert!(ops.allows(Need::AdminEverywhere).is_err());
        assert!(ops.allows(Need::Operator).is_ok());
        assert!(root.allows(Need::AdminEverywhere).is_ok());
        assert!(root.allows(Need::Role("any", Role::Admin)).is_ok());
        // Operators never act as devices, whatever their roles.
        let e = root.allows(Need::Device("sw1")).unwrap_err();
        assert_eq!(e.reason(), "forbidden");
    }

    #[test]
    fn a_device_token_acts_only_as_its_device() {
        let t = tokens(&[device("sw1-token", &mint(), "sw1")]);
        let id = &t.entries[0].1;
        assert!(id.allows(Need::Device("sw1")).is_ok());
        let e = id.allows(Need::Device("sw2")).unwrap_err();
        assert_eq!(e.reason(), "wrong_device");
        assert!(
            e.to_string().contains("cannot act for device \"sw2\""),
            "{e}"
        );
        for need in [
            Need::Role("prod", Role::Read),
            Need::Operator,
            Need::AdminEverywhere,
        ] {
            assert_eq!(id.allows(need).unwrap_err().reason(), "forbidden");
        }
    }

    #[test]
    fn every_token_problem_is_reported_at_its_field() {
        let good = mint();
        let mut bad_hash = operator("x", &mint(), &["prod:read"]);
        bad_hash.sha256 = "abc".into();
        let mut both = device("both", &mint(), "sw1");
        both.roles = vec!["prod:read".into()];
        let config = [
            operator("ok", &good, &["prod:read"]),
            operator("ok", &mint(), &["prod:read"]),
            operator("dup-secret", &good, &["prod:read"]),
            bad_hash,
            operator("nothing", &mint(), &[]),
            both,
            operator("badrole", &mint(), &["prod:read", "prod:owner"]),
            device("baddev", &mint(), "sw 1"),
            operator("bad name", &mint(), &["prod:read"]),
        ];
        let mut problems = Problems::default();
        let t = Tokens::from_config(&config, &mut problems);
        let fields: Vec<String> = problems.into_vec().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "rollout.center.tokens[1].name",
                "rollout.center.tokens[2].sha256",
                "rollout.center.tokens[3].sha256",
                "rollout.center.tokens[4].roles",
                "rollout.center.tokens[5].roles",
                "rollout.center.tokens[6].roles[1]",
                "rollout.center.tokens[7].device",
                "rollout.center.tokens[8].name",
            ]
        );
        // Only the first, faultless entry is usable.
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn a_token_entry_reads_from_toml() {
        let entry: TokenConfig = toml::from_str(
            "name = \"sw1\"\nsha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\ndevice = \"sw1\"\n",
        )
        .unwrap();
        assert_eq!(entry.device.as_deref(), Some("sw1"));
        assert!(toml::from_str::<TokenConfig>("name = \"a\"\nsha256 = \"\"\nrole = []\n").is_err());
    }
}
