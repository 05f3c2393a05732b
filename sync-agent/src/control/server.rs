//! The control socket listener. Each connection sends one request line and
//! gets one response line; each is served by its own task, which asks the
//! module that owns the answer through the [`Router`].

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    protocol::{MAX_REQUEST_BYTES, Request, Response},
    router::Router,
};

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another agent answers on this socket.
    #[error(
        "another agent is already running on control socket {0} (choose another instance name or --socket)"
    )]
    InUse(PathBuf),
    /// Creating the directory or binding failed.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A bound control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path`, replacing a stale socket file but never a live agent's.
    pub async fn bind(path: &Path) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves connections forever, answering through `router`.
    pub async fn serve(self, router: Arc<Router>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let router = router.clone();
                    tokio::spawn(async move {
                        if let Err(err) = handle(stream, &router).await {
                            tracing::debug!(error = %err, "control connection");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(stream: UnixStream, router: &Router) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim_end()) {
        Err(err) => {
            router.bad_requests.fetch_add(1, Ordering::Relaxed);
            Response::error(format!("bad request: {err}"))
        }
        Ok(request) => router.route(request).await,
    };
    let mut text = serde_json::to_string(&response)
        .unwrap_or_else(|_| r#"{"ok":false,"error":"encoding"}"#.into());
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

use tokio::io::AsyncReadExt as _;
