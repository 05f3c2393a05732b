//! SPEC 7.2: the operator's side. A unix socket per instance answers one JSON
//! request per line with one JSON response line; the CLI is its client.

pub mod client;
pub mod protocol;
pub mod router;
pub mod server;

/// Directory of the control sockets.
pub const SOCKET_DIR: &str = "/run/mlag-sync";

/// Path of the control socket of an agent instance.
pub fn socket_path_for(instance: &str) -> std::path::PathBuf {
    std::path::Path::new(SOCKET_DIR).join(format!("{instance}.sock"))
}
