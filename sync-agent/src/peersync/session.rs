//! The session's transport: one TCP connection on the peer-link addresses
//! (reliable and ordered, as ICCP uses). The switch with the lower address
//! connects, the other accepts, so the two never race to open two sessions.
//! Each connection gets a reader task (frames in) and a writer task (frames
//! out); both report to the peer-sync task, which owns the session state.

use std::{net::SocketAddr, time::Duration};

use sync_common::wire::{self, DecodeError, HEADER_LEN};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
};

use super::PeerEvent;

/// Accepts connections on `listen`; only the peer's address may connect.
pub async fn accept(listen: SocketAddr, peer: SocketAddr, events: mpsc::Sender<PeerEvent>) {
    let listener = loop {
        match bind_listener(listen) {
            Ok(listener) => break listener,
            Err(err) => {
                tracing::warn!(%listen, error = %err, "cannot listen for the peer session yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if events.is_closed() {
                    return;
                }
            }
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = events.closed() => return,
        };
        let Ok((stream, from)) = accepted else {
            continue;
        };
        let event = if from.ip() == peer.ip() {
            PeerEvent::Connected { stream }
        } else {
            PeerEvent::Rejected {
                reason: "connection_from_stranger",
                detail: format!("connection from {from}"),
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

fn bind_listener(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(16)
}

/// Connects to the peer each time `wanted` moves to a new generation, retrying
/// until it succeeds or a newer generation arrives.
pub async fn connect(
    local: SocketAddr,
    peer: SocketAddr,
    mut wanted: watch::Receiver<u64>,
    events: mpsc::Sender<PeerEvent>,
) {
    let mut handled = 0u64;
    loop {
        while *wanted.borrow_and_update() == handled {
            if wanted.changed().await.is_err() {
                return;
            }
        }
        handled = *wanted.borrow();
        loop {
            let attempt = async {
                let socket = if local.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(local.ip(), 0))?;
                socket.connect(peer).await
            };
            match tokio::time::timeout(Duration::from_secs(1), attempt).await {
                Ok(Ok(stream)) => {
                    if events.send(PeerEvent::Connected { stream }).await.is_err() {
                        return;
                    }
                    break;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "connect"),
                Err(_) => tracing::debug!(%peer, "connect timed out"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if *wanted.borrow() != handled || events.is_closed() {
                break;
            }
        }
    }
}

/// Splits a connection into a reader and a writer task. Frames to send go
/// into the returned sender; frames received come back as
/// [`PeerEvent::Inbound`], and the end of the connection as
/// [`PeerEvent::Closed`].
pub fn start(
    conn: u64,
    stream: TcpStream,
    max_frame: usize,
    events: mpsc::Sender<PeerEvent>,
) -> (mpsc::Sender<Vec<u8>>, [tokio::task::JoinHandle<()>; 2]) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let reader_events = events.clone();
    let reader = tokio::spawn(async move {
        let why = loop {
            let mut header = [0u8; HEADER_LEN];
            if let Err(err) = read.read_exact(&mut header).await {
                break format!("read: {err}");
            }
            // A header we cannot trust loses the framing of the stream: the
            // connection has to go.
            let length = match wire::decode_header(&header, max_frame) {
                Ok(h) => h.length as usize,
                Err(err) => match skippable_length(&header, &err, max_frame) {
                    // Our framing, a type we do not know: skip it, keep the session.
                    Some(length) => {
                        let mut rest = vec![0u8; length - HEADER_LEN];
                        if let Err(e) = read.read_exact(&mut rest).await {
                            break format!("read: {e}");
                        }
                        let _ = reader_events
                            .send(PeerEvent::Malformed {
                                conn,
                                error: err,
                                fatal: false,
                            })
                            .await;
                        continue;
                    }
                    None => {
                        let _ = reader_events
                            .send(PeerEvent::Malformed {
                                conn,
                                error: err,
                                fatal: true,
                            })
                            .await;
                        break format!("unusable frame header: {err}");
                    }
                },
            };
            let mut frame = vec![0u8; length];
            frame[..HEADER_LEN].copy_from_slice(&header);
            if let Err(err) = read.read_exact(&mut frame[HEADER_LEN..]).await {
                break format!("read: {err}");
            }
            if reader_events
                .send(PeerEvent::Inbound { conn, frame })
                .await
                .is_err()
            {
                return;
            }
        };
        let _ = reader_events.send(PeerEvent::Closed { conn, why }).await;
    });
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(err) = write.write_all(&frame).await {
                let _ = events
                    .send(PeerEvent::Closed {
                        conn,
                        why: format!("write: {err}"),
                    })
                    .await;
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    (tx, [reader, writer])
}

/// For a header that is ours (magic, major version, sane length) but names a
/// type, sub-type or flags we do not accept: its length, so the frame can be
/// skipped without losing the stream's framing.
fn skippable_length(
    header: &[u8; HEADER_LEN],
    error: &DecodeError,
    max_frame: usize,
) -> Option<usize> {
    let ours = header[0..2] == wire::MAGIC && header[2] == wire::VERSION_MAJOR;
    let skippable = matches!(
        error,
        DecodeError::UnknownType(_)
            | DecodeError::UnknownSubType(_)
            | DecodeError::SubTypeMismatch { .. }
            | DecodeError::BadFlags(_)
    );
    let length = u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize;
    (ours && skippable && (HEADER_LEN..=max_frame).contains(&length)).then_some(length)
}

/// Whether a decode error is the peer speaking another major version.
pub fn is_version_mismatch(error: &DecodeError) -> bool {
    matches!(error, DecodeError::IncompatibleVersion { .. })
}
