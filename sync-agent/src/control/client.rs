//! The CLI's side of the control socket.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{
    SOCKET_DIR,
    protocol::{Request, Response},
};

/// Sends one request and returns the answer's data, or the agent's error.
pub async fn request(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the agent on {} (is `sync-agent run` running for this instance?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    write.shutdown().await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("unreadable answer from the agent on {}", socket.display()))?;
    match (response.ok, response.data, response.error) {
        (true, Some(data), _) => Ok(data),
        (true, None, _) => Ok(serde_json::Value::Null),
        (false, _, error) => bail!(
            "agent on {}: {}",
            socket.display(),
            error.unwrap_or_default()
        ),
    }
}

/// The socket to talk to: `--socket`, else `--instance`, else the only agent
/// running on this host.
pub fn resolve_socket(socket: Option<&Path>, instance: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(socket) = socket {
        return Ok(socket.to_path_buf());
    }
    if let Some(instance) = instance {
        return Ok(super::socket_path_for(instance));
    }
    let sockets: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match sockets.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!(
            "no running agent found in {SOCKET_DIR}; start one with `sync-agent run --config FILE`"
        ),
        many => {
            let names: Vec<String> = many
                .iter()
                .filter_map(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            bail!(
                "several agents are running ({}); choose one with --instance NAME",
                names.join(", ")
            )
        }
    }
}
