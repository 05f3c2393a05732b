//! SPEC 3.3: the IPv6 link-local address a MAC implies (modified EUI-64,
//! RFC 4291 appendix A): flip the universal/local bit of the first octet and
//! put ff:fe in the middle.

use std::net::Ipv6Addr;

use crate::mac::MacAddr;

/// `fe80::/64` with the modified EUI-64 interface id of `mac`.
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(mac: &str) -> String {
        link_local(mac.parse().unwrap()).to_string()
    }

    #[test]
    fn the_seed_example() {
        assert_eq!(ll("00:21:2f:b5:6e:10"), "fe80::221:2fff:feb5:6e10");
    }

    #[test]
    fn a_locally_administered_mac_clears_the_bit() {
        assert_eq!(ll("02:00:00:00:0b:01"), "fe80::ff:fe00:b01");
        assert_eq!(ll("06:11:22:33:44:55"), "fe80::411:22ff:fe33:4455");
    }

    #[test]
    fn the_multicast_bit_is_left_alone() {
        assert_eq!(ll("01:00:5e:00:00:01"), "fe80::300:5eff:fe00:1");
    }

    #[test]
    fn all_ones_and_all_zeros() {
        assert_eq!(ll("ff:ff:ff:ff:ff:ff"), "fe80::fdff:ffff:feff:ffff");
        assert_eq!(ll("00:00:00:00:00:00"), "fe80::200:ff:fe00:0");
    }
}
