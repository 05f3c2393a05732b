//! This switch's role in the fabric (SPEC 4.1), decided once at start from
//! the configured server list and the addresses assigned here: a switch
//! holding the first server address is the primary server, one holding the
//! second the backup, any other switch a plain member.

use std::net::IpAddr;

use super::wire::Role;

/// Decides this switch's role from the server list and its own addresses
/// (SPEC 4.1): the role, the server rank (0 primary, 1 backup; None for a
/// plain member) and a text saying why, for the log and `show fabric`.
pub fn decide_role(
    servers: &[IpAddr],
    own: &[IpAddr],
    member: bool,
) -> (Role, Option<usize>, String) {
    match servers.iter().position(|s| own.contains(s)) {
        Some(rank) => {
            let which = if rank == 0 { "primary" } else { "backup" };
            let role = if member { Role::Both } else { Role::Server };
            let why = format!(
                "{} is configured as the {which} server and is one of this switch's addresses{}",
                servers[rank],
                if member {
                    "; also a member (fabric.member = true)"
                } else {
                    ""
                }
            );
            (role, Some(rank), why)
        }
        None => (
            Role::Client,
            None,
            format!(
                "none of the server addresses ({}) is assigned here",
                servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_server_list() {
        let servers: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let own: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let (role, rank, why) = decide_role(&servers, &own, true);
        assert_eq!((role, rank), (Role::Both, Some(1)));
        assert!(why.contains("backup"), "{why}");
        assert_eq!(decide_role(&servers, &own, false).0, Role::Server);
        let (role, rank, _) = decide_role(&servers, &["10.0.0.9".parse().unwrap()], true);
        assert_eq!((role, rank), (Role::Client, None));
    }
}
