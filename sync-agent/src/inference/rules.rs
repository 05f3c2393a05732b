//! Information -> state normalisation (SPEC 5.3).
//!
//! Every incoming piece of [`Info`] names its source (`netlink`, `fabric`,
//! `peer`, `agent`, ...) and a message (`link-down`, `port-down`, ...). A
//! [`RuleTable`] maps the pair to one of three outcomes:
//!
//! - a [`State`] with a fault level (0 = normal, higher = worse), possibly a
//!   lost-contact state;
//! - "clears": the source's previous state on that object goes away;
//! - nothing: the information is unknown (the caller counts it).
//!
//! Equivalent messages from different sources map to one state by giving
//! their rules the same state name and level (`netlink link-down`,
//! `netlink carrier-lost` and `fabric port-down` are all `down`, level 3).
//!
//! Lookup order: the configured rules first, then the built-in ones; within
//! each, an exact `(source, message)` rule before a wildcard (`source = "*"`)
//! rule for the message. Among configured rules for the same pair the first
//! one wins. A lost-contact rule always yields a level-0 state (lost contact
//! is not a fault); a clearing rule ignores its state and level.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::bus::Info;

/// Name of the state of an object without any fault.
pub const NORMAL: &str = "normal";
/// Name of the built-in lost-contact state.
pub const LOST_CONTACT: &str = "lost-contact";
/// Source of a rule that applies to information from any source.
pub const ANY_SOURCE: &str = "*";

/// A normalised state: a name and a fault level (0 = normal, higher = worse).
/// A lost-contact state is level 0 and never a cause for inference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct State {
    /// Name, e.g. `down`.
    pub name: String,
    /// Fault level: 0 = normal, higher = worse.
    pub level: u8,
    /// True for "lost contact": not a fault, not propagated to dependents.
    pub lost_contact: bool,
}

impl State {
    /// The normal state (level 0).
    pub fn normal() -> Self {
        Self {
            name: NORMAL.to_string(),
            level: 0,
            lost_contact: false,
        }
    }

    /// The lost-contact state (level 0, `lost_contact`).
    pub fn lost_contact() -> Self {
        Self {
            name: LOST_CONTACT.to_string(),
            level: 0,
            lost_contact: true,
        }
    }

    /// A fault (or, with level 0, a named normal state).
    pub fn fault(name: &str, level: u8) -> Self {
        Self {
            name: name.to_string(),
            level,
            lost_contact: false,
        }
    }

    /// True for a state that is a cause for inference: level above 0 and not
    /// lost contact.
    pub fn is_fault(&self) -> bool {
        self.level > 0 && !self.lost_contact
    }
}

/// One rule of the table (also the config form, `[[inference.rules]]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Source the rule applies to; `*` = any source.
    pub source: String,
    /// Message the rule applies to.
    pub message: String,
    /// State name (ignored when `clears`; defaults to `lost-contact` for a
    /// lost-contact rule without a name).
    #[serde(default)]
    pub state: String,
    /// Fault level (ignored when `clears` or `lost_contact`).
    #[serde(default)]
    pub level: u8,
    /// The state is lost contact (level 0, never a cause for inference).
    #[serde(default)]
    pub lost_contact: bool,
    /// Information that clears this source's state (a non-alarm).
    #[serde(default)]
    pub clears: bool,
}

impl Rule {
    /// A rule mapping information to a fault state.
    pub fn fault(source: &str, message: &str, state: &str, level: u8) -> Self {
        Self {
            source: source.into(),
            message: message.into(),
            state: state.into(),
            level,
            lost_contact: false,
            clears: false,
        }
    }

    /// A rule for information that clears the source's state.
    pub fn clears(source: &str, message: &str) -> Self {
        Self {
            source: source.into(),
            message: message.into(),
            state: String::new(),
            level: 0,
            lost_contact: false,
            clears: true,
        }
    }

    /// A rule mapping information to lost contact.
    pub fn lost_contact(source: &str, message: &str) -> Self {
        Self {
            source: source.into(),
            message: message.into(),
            state: LOST_CONTACT.into(),
            level: 0,
            lost_contact: true,
            clears: false,
        }
    }

    /// What the rule turns its information into: `None` = clears.
    fn outcome(&self) -> Option<State> {
        if self.clears {
            None
        } else if self.lost_contact {
            let name = if self.state.is_empty() {
                LOST_CONTACT
            } else {
                self.state.as_str()
            };
            Some(State {
                name: name.to_string(),
                level: 0,
                lost_contact: true,
            })
        } else {
            Some(State::fault(&self.state, self.level))
        }
    }
}

/// Rules of one origin (configured or built-in), indexed for lookup.
#[derive(Clone, Debug, Default)]
struct Table {
    /// source -> message -> outcome (`None` = clears).
    exact: HashMap<String, HashMap<String, Option<State>>>,
    /// message -> outcome for rules with source `*`.
    wildcard: HashMap<String, Option<State>>,
}

impl Table {
    /// Indexes `rules`; the first rule for a `(source, message)` pair wins.
    fn new(rules: &[Rule]) -> Self {
        let mut table = Self::default();
        for rule in rules {
            let slot = if rule.source == ANY_SOURCE {
                table.wildcard.entry(rule.message.clone())
            } else {
                table
                    .exact
                    .entry(rule.source.clone())
                    .or_default()
                    .entry(rule.message.clone())
            };
            slot.or_insert_with(|| rule.outcome());
        }
        table
    }

    fn lookup(&self, source: &str, message: &str) -> Option<Option<&State>> {
        self.exact
            .get(source)
            .and_then(|messages| messages.get(message))
            .or_else(|| self.wildcard.get(message))
            .map(Option::as_ref)
    }
}

/// The rules that normalise information into states: built-in defaults plus
/// configured rules (which take precedence).
#[derive(Clone, Debug)]
pub struct RuleTable {
    configured: Table,
    builtin: Table,
    /// Every rule, configured first, for listing.
    rules: Vec<Rule>,
}

impl Default for RuleTable {
    fn default() -> Self {
        Self::builtin()
    }
}

/// The built-in rules.
pub fn builtin_rules() -> Vec<Rule> {
    vec![
        // Interfaces, from netlink. Administrative state and carrier are
        // equivalent causes of one state, `down`.
        Rule::fault("netlink", "link-down", "down", 3),
        Rule::clears("netlink", "link-up"),
        Rule::fault("netlink", "carrier-lost", "down", 3),
        Rule::clears("netlink", "carrier-ok"),
        Rule::fault("netlink", "link-removed", "down", 3),
        Rule::fault("netlink-carrier", "carrier-lost", "down", 3),
        Rule::clears("netlink-carrier", "carrier-ok"),
        Rule::fault("netlink", "neighbour-failed", "unreachable", 2),
        Rule::clears("netlink", "neighbour-reachable"),
        // Remote ports, from the fabric view: the same `down` as netlink's.
        Rule::fault("fabric", "port-down", "down", 3),
        Rule::clears("fabric", "port-up"),
        // Fabric members, from the fabric's view: a member departed (or
        // silent, which the server announces as departed) is lost contact,
        // and so are its ports; present again clears it.
        Rule::lost_contact("fabric-membership", "member-departed"),
        Rule::clears("fabric-membership", "member-up"),
        // The MLAG peer session.
        Rule::fault("peer", "session-lost", "peer-down", 2),
        Rule::clears("peer", "session-up"),
        Rule::lost_contact("peer", "liveness-lost"),
        Rule::clears("peer", "liveness-ok"),
        // The peer's member ports (`twin:<mlag id>`), as peer sync learns
        // them: one source, so the latest word on a twin wins; unknown (at
        // start, or once the session is gone) is lost contact.
        Rule::fault("peer", "twin-down", "down", 3),
        Rule::clears("peer", "twin-up"),
        Rule::lost_contact("peer", "twin-unknown"),
        // The agent's own health.
        Rule::fault("agent", "unhealthy", "degraded", 1),
        Rule::clears("agent", "healthy"),
    ]
}

impl RuleTable {
    /// The built-in rules only.
    pub fn builtin() -> Self {
        Self::with_rules(Vec::new())
    }

    /// The built-in rules plus `extra` (configured rules), which take
    /// precedence over the built-in ones.
    pub fn with_rules(extra: Vec<Rule>) -> Self {
        let builtin = builtin_rules();
        let configured = Table::new(&extra);
        let builtin_table = Table::new(&builtin);
        let mut rules = extra;
        rules.extend(builtin);
        Self {
            configured,
            builtin: builtin_table,
            rules,
        }
    }

    /// Every rule, configured ones first (shadowed ones included).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Looks up `(source, message)` without allocating: `None` = unknown
    /// information; `Some(None)` = clears the source's state;
    /// `Some(Some(state))` = a state.
    pub fn lookup(&self, source: &str, message: &str) -> Option<Option<&State>> {
        self.configured
            .lookup(source, message)
            .or_else(|| self.builtin.lookup(source, message))
    }

    /// Normalises `info`: `None` = unknown information (caller counts it);
    /// `Some(None)` = clears the source's state; `Some(Some(state))` = a state.
    pub fn normalise(&self, info: &Info) -> Option<Option<State>> {
        self.lookup(&info.source, &info.message)
            .map(|outcome| outcome.cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(source: &str, message: &str) -> Info {
        Info::new(source, message, "port:a-c")
    }

    fn state_of(table: &RuleTable, source: &str, message: &str) -> State {
        table
            .normalise(&info(source, message))
            .unwrap_or_else(|| panic!("{source} {message} is unknown"))
            .unwrap_or_else(|| panic!("{source} {message} clears"))
    }

    #[test]
    fn builtin_rules_map_the_required_messages_to_their_states() {
        let t = RuleTable::builtin();
        assert_eq!(
            state_of(&t, "netlink", "link-down"),
            State::fault("down", 3)
        );
        assert_eq!(
            state_of(&t, "netlink", "carrier-lost"),
            State::fault("down", 3)
        );
        assert_eq!(state_of(&t, "fabric", "port-down"), State::fault("down", 3));
        assert_eq!(
            state_of(&t, "peer", "session-lost"),
            State::fault("peer-down", 2)
        );
        assert_eq!(state_of(&t, "peer", "liveness-lost"), State::lost_contact());
        assert_eq!(
            state_of(&t, "agent", "unhealthy"),
            State::fault("degraded", 1)
        );
        assert_eq!(
            state_of(&t, "netlink", "neighbour-failed"),
            State::fault("unreachable", 2)
        );
    }

    #[test]
    fn builtin_non_alarms_clear_the_sources_state() {
        let t = RuleTable::builtin();
        for (source, message) in [
            ("netlink", "link-up"),
            ("fabric", "port-up"),
            ("peer", "session-up"),
            ("agent", "healthy"),
            ("netlink", "neighbour-reachable"),
        ] {
            assert_eq!(
                t.normalise(&info(source, message)),
                Some(None),
                "{source} {message}"
            );
        }
    }

    #[test]
    fn equivalent_messages_from_different_sources_map_to_one_state() {
        let t = RuleTable::builtin();
        let netlink = state_of(&t, "netlink", "link-down");
        let fabric = state_of(&t, "fabric", "port-down");
        let carrier = state_of(&t, "netlink", "carrier-lost");
        assert_eq!(netlink, fabric);
        assert_eq!(netlink, carrier);
        assert_eq!(netlink.name, "down");
    }

    #[test]
    fn unknown_information_normalises_to_none() {
        let t = RuleTable::builtin();
        assert_eq!(t.normalise(&info("netlink", "frobnicated")), None);
        assert_eq!(
            t.normalise(&info("nobody", "link-down")),
            None,
            "rules are per source unless `*`"
        );
    }

    #[test]
    fn configured_rules_take_precedence_over_builtin_ones() {
        let t = RuleTable::with_rules(vec![
            Rule::fault("netlink", "link-down", "shut", 5),
            Rule::fault("netlink", "link-down", "ignored-second", 1),
        ]);
        assert_eq!(
            state_of(&t, "netlink", "link-down"),
            State::fault("shut", 5),
            "first configured wins"
        );
        assert_eq!(
            state_of(&t, "fabric", "port-down"),
            State::fault("down", 3),
            "builtin still there"
        );
    }

    #[test]
    fn a_wildcard_rule_matches_any_source_after_exact_rules() {
        let t = RuleTable::with_rules(vec![
            Rule::fault("*", "overheated", "hot", 2),
            Rule::fault("sensor", "overheated", "very-hot", 4),
        ]);
        assert_eq!(
            state_of(&t, "anything", "overheated"),
            State::fault("hot", 2)
        );
        assert_eq!(
            state_of(&t, "sensor", "overheated"),
            State::fault("very-hot", 4)
        );
    }

    #[test]
    fn a_configured_wildcard_overrides_a_builtin_exact_rule() {
        let t = RuleTable::with_rules(vec![Rule::clears("*", "link-down")]);
        assert_eq!(t.normalise(&info("netlink", "link-down")), Some(None));
    }

    #[test]
    fn a_lost_contact_rule_is_level_zero_whatever_its_configured_level() {
        let mut rule = Rule::lost_contact("bfd", "timeout");
        rule.level = 7;
        rule.state = String::new();
        let t = RuleTable::with_rules(vec![rule]);
        let s = state_of(&t, "bfd", "timeout");
        assert_eq!(s, State::lost_contact());
        assert!(!s.is_fault());
    }

    #[test]
    fn rules_deserialise_from_config_with_defaults() {
        let rule: Rule =
            toml::from_str("source = \"x\"\nmessage = \"ok\"\nclears = true\n").unwrap();
        assert_eq!(rule, Rule::clears("x", "ok"));
        let rule: Rule =
            toml::from_str("source = \"x\"\nmessage = \"bad\"\nstate = \"down\"\nlevel = 3\n")
                .unwrap();
        assert_eq!(rule, Rule::fault("x", "bad", "down", 3));
        assert!(toml::from_str::<Rule>("source = \"x\"\nmessage = \"bad\"\nlevle = 3\n").is_err());
    }
}
