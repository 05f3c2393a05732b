//! What every config section's validation reports: one [`Problem`] per
//! thing wrong, each naming its field by dotted path, all collected at once
//! so an operator fixes a file in one pass.

use std::fmt;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// True for a name the kernel could give an interface.
pub fn is_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_IFNAME && !name.contains(['/', ' ', '\0'])
}

/// One thing wrong with the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `dataplane.member_ports[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects the problems of a whole config, in the order found.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Everything recorded.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}
