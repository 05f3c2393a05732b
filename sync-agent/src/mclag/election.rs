//! SPEC 3.1: who is master. Pure functions, so every edge case is a unit test.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// This switch's role in the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not decided yet (no peer seen) or a configuration error.
    Undecided,
    /// Master: keeps its own MACs.
    Master,
    /// Slave: aligns its member ports to the master's MACs.
    Slave,
}

/// Why no role can be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// Both switches are configured with the same address.
    #[error("both switches use election address {0}: fix mclag.address on one of them")]
    EqualAddresses(IpAddr),
    /// One uses IPv4, the other IPv6.
    #[error("election addresses of different families ({own} here, {peer} on the peer)")]
    MixedFamilies {
        /// This switch's.
        own: IpAddr,
        /// The peer's.
        peer: IpAddr,
    },
}

/// The numerically larger address is master (IPv4 and IPv6 alike).
pub fn elect(own: IpAddr, peer: IpAddr) -> Result<Role, ElectionError> {
    let (own_n, peer_n) = match (own, peer) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => return Err(ElectionError::MixedFamilies { own, peer }),
    };
    match own_n.cmp(&peer_n) {
        std::cmp::Ordering::Greater => Ok(Role::Master),
        std::cmp::Ordering::Less => Ok(Role::Slave),
        std::cmp::Ordering::Equal => Err(ElectionError::EqualAddresses(own)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_larger_ipv4_address_is_master() {
        assert_eq!(elect(ip("10.0.0.2"), ip("10.0.0.1")), Ok(Role::Master));
        assert_eq!(elect(ip("10.0.0.1"), ip("10.0.0.2")), Ok(Role::Slave));
    }

    #[test]
    fn comparison_is_numeric_not_textual() {
        // "9.0.0.1" > "10.0.0.1" as text, but not as numbers.
        assert_eq!(elect(ip("9.0.0.1"), ip("10.0.0.1")), Ok(Role::Slave));
        assert_eq!(elect(ip("10.0.0.10"), ip("10.0.0.9")), Ok(Role::Master));
    }

    #[test]
    fn the_larger_ipv6_address_is_master() {
        assert_eq!(
            elect(ip("2001:db8::2"), ip("2001:db8::1")),
            Ok(Role::Master)
        );
        assert_eq!(
            elect(ip("2001:db8::1"), ip("2001:db8:0:1::")),
            Ok(Role::Slave)
        );
    }

    #[test]
    fn equal_addresses_are_a_configuration_error() {
        assert_eq!(
            elect(ip("10.0.0.1"), ip("10.0.0.1")),
            Err(ElectionError::EqualAddresses(ip("10.0.0.1")))
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        assert!(matches!(
            elect(ip("10.0.0.1"), ip("::1")),
            Err(ElectionError::MixedFamilies { .. })
        ));
    }

    #[test]
    fn both_sides_reach_opposite_roles() {
        let (a, b) = (ip("192.0.2.7"), ip("192.0.2.70"));
        assert_eq!(
            (elect(a, b), elect(b, a)),
            (Ok(Role::Slave), Ok(Role::Master))
        );
    }
}
