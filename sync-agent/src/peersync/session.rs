//! The session's transport: one TCP connection on the peer-link addresses
//! (reliable and ordered, as ICCP uses). The switch with the lower address
//! connects, the other accepts, so the two never race to open two sessions.
//! Each connection gets a reader task (frames in) and a writer task (frames
//! out); both report to the peer-sync task, which owns the session state
//! ([`Session`], opened and closed by the `Task` methods at the end).

use std::{
    collections::VecDeque,
    io::IoSlice,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{Buf as _, Bytes, BytesMut};
use sync_common::wire::{self, DecodeError, HEADER_LEN};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
};

use super::{events::Event, hello::Hello, task::Task};
use crate::mac::MacAddr;

/// Accepts connections on `listen`; only the peer's address may connect.
pub async fn accept(listen: SocketAddr, peer: SocketAddr, events: mpsc::Sender<Event>) {
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
            Event::Connected { stream }
        } else {
            Event::Rejected {
                reason: "connection_from_stranger",
                count: 1,
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
    events: mpsc::Sender<Event>,
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
                    if events.send(Event::Connected { stream }).await.is_err() {
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

/// Bytes the session reader asks the socket for at least (one read takes
/// whatever has arrived, many frames at once under load).
const READ_BYTES: usize = 64 * 1024;
/// Frames the writer hands the socket in one vectored write, at most.
const WRITE_BATCH: usize = 64;

/// Splits a connection into a reader and a writer task. Frames to send go
/// into the returned sender; frames received come back as
/// [`Event::Inbound`], and the end of the connection as
/// [`Event::Closed`].
pub fn start(
    conn: u64,
    stream: TcpStream,
    max_frame: usize,
    events: mpsc::Sender<Event>,
) -> (mpsc::Sender<Bytes>, [tokio::task::JoinHandle<()>; 2]) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let reader_events = events.clone();
    let reader = tokio::spawn(async move {
        if let Some(why) = read_frames(read, conn, max_frame, &reader_events).await {
            let _ = reader_events.send(Event::Closed { conn, why }).await;
        }
    });
    let writer = tokio::spawn(async move {
        if let Err(err) = write_frames(write, rx).await {
            let _ = events
                .send(Event::Closed {
                    conn,
                    why: format!("write: {err}"),
                })
                .await;
        }
    });
    (tx, [reader, writer])
}

/// The session reader: frames off the stream, each as an
/// [`Event::Inbound`] (a frame of an unknown type is skipped and reported
/// as a non-fatal [`Event::Malformed`]). Returns why the stream ended, or
/// None when the task stopped listening.
///
/// One buffer takes whatever the socket has at each wakeup, and frames are
/// carved off it as `Bytes` that share its memory; once the task has
/// dropped them, `reserve` takes the same memory back. In the steady state
/// a frame costs neither a heap allocation nor a read call of its own.
pub(super) async fn read_frames<R: AsyncRead + Unpin>(
    mut read: R,
    conn: u64,
    max_frame: usize,
    events: &mpsc::Sender<Event>,
) -> Option<String> {
    let mut buf = BytesMut::with_capacity(READ_BYTES.max(max_frame));
    loop {
        // Every whole frame read so far; `wanted` is how many bytes the
        // next one needs in the buffer.
        let wanted = loop {
            let Some(header) = buf.get(..HEADER_LEN) else {
                break HEADER_LEN;
            };
            let header: &[u8; HEADER_LEN] = header.try_into().expect("HEADER_LEN bytes");
            // A header we cannot trust loses the framing of the stream: the
            // connection has to go.
            match wire::decode_header(header, max_frame) {
                Ok(h) => {
                    let length = h.length as usize;
                    if buf.len() < length {
                        break length;
                    }
                    let frame = buf.split_to(length).freeze();
                    let inbound = Event::Inbound {
                        conn,
                        frame,
                        read_at: Instant::now(),
                    };
                    if events.send(inbound).await.is_err() {
                        return None;
                    }
                }
                Err(err) => match skippable_length(header, &err, max_frame) {
                    // Our framing, a type we do not know: skip it, keep the session.
                    Some(length) => {
                        if buf.len() < length {
                            break length;
                        }
                        buf.advance(length);
                        let _ = events
                            .send(Event::Malformed {
                                conn,
                                error: err,
                                fatal: false,
                            })
                            .await;
                    }
                    None => {
                        let _ = events
                            .send(Event::Malformed {
                                conn,
                                error: err,
                                fatal: true,
                            })
                            .await;
                        return Some(format!("unusable frame header: {err}"));
                    }
                },
            }
        };
        // Room for the rest of that frame and a good read besides. Once the
        // frames carved before are gone (the task drops each as it handles
        // it), the same memory is taken back (what is left of a frame moves
        // to its start). The frames just carved are usually still queued
        // for the task, which runs on this thread: it gets one turn to
        // handle them first; only if some are still held then is a new
        // buffer allocated (of the first one's size).
        let room = (wanted - buf.len()).max(MIN_READ);
        if buf.capacity() - buf.len() < room && !buf.try_reclaim(room) {
            tokio::task::yield_now().await;
            buf.reserve(room);
        }
        match read.read_buf(&mut buf).await {
            // The peer closed (mid-frame or not): as `read_exact` says it.
            Ok(0) => return Some("read: early eof".into()),
            Ok(_) => {}
            Err(err) => return Some(format!("read: {err}")),
        }
    }
}

/// Least room the reader offers the socket (below it, the buffer is
/// reclaimed or grown first).
const MIN_READ: usize = 4 * 1024;

/// The session writer: frames in queue order; whatever is queued when the
/// socket takes more goes in one vectored write. Ok when the queue closed
/// (the session ended: the stream is shut down).
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    mut write: W,
    mut frames: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    let mut queued: VecDeque<Bytes> = VecDeque::with_capacity(WRITE_BATCH);
    loop {
        if queued.is_empty() {
            match frames.recv().await {
                Some(frame) => queued.push_back(frame),
                None => {
                    let _ = write.shutdown().await;
                    return Ok(());
                }
            }
        }
        while queued.len() < WRITE_BATCH {
            match frames.try_recv() {
                Ok(frame) => queued.push_back(frame),
                Err(_) => break,
            }
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            for (slice, frame) in slices.iter_mut().zip(&queued) {
                *slice = IoSlice::new(frame);
            }
            write
                .write_vectored(&slices[..queued.len().min(WRITE_BATCH)])
                .await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Drop what went out; a frame written in part keeps its rest.
        let mut left = written;
        while left > 0 {
            let Some(front) = queued.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queued.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
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

/// What we know of the peer from its hello.
#[derive(Clone, Debug)]
pub(super) struct PeerInfo {
    pub(super) name: String,
    pub(super) system_id: Option<MacAddr>,
    pub(super) boot_id: u64,
    /// The peer's own minor version.
    pub(super) peer_minor: u8,
    /// The minor version in use: the lower of the two.
    pub(super) minor: u8,
    pub(super) capabilities: u32,
    /// Largest frame we send: the lower of the two limits.
    pub(super) max_frame: usize,
    pub(super) hello_at: Instant,
}

/// One connection to the peer: opened on connect/accept, established by
/// the peer's hello.
pub(super) struct Session {
    /// Connection number: events of older connections are ignored.
    pub(super) conn: u64,
    /// Frames to send (the writer task, or a test's receiver).
    pub(super) writer: mpsc::Sender<Bytes>,
    /// Reader and writer tasks, aborted with the session.
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Set by the peer's hello.
    pub(super) peer: Option<PeerInfo>,
    pub(super) opened: Instant,
    /// When a frame last arrived on it (or it opened).
    pub(super) last_heard: Instant,
    /// The end of our bulk resync (SYNC_DONE) went out on it.
    pub(super) sync_done_sent: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Task {
    /// Whether the current session may give way to a new connection from
    /// the peer: it never got its hello, or nothing was heard on it for the
    /// dead interval and the keepalives do not vouch for the run that opened
    /// it (they name another boot id). An idle but healthy session is quiet
    /// for long stretches (nothing to sync), so silence alone is not enough:
    /// while keepalives carry the session's boot id, the peer that opened it
    /// is alive and a second connection is refused.
    pub(super) fn session_is_stale(&self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let Some(peer) = &session.peer else {
            return true;
        };
        let silent = session.last_heard.elapsed()
            > std::time::Duration::from_millis(self.config.dead_interval_ms);
        silent && self.peer_alive != Some(peer.boot_id)
    }

    /// Takes a new connection: starts its reader and writer and says hello.
    /// While a session exists, a stale one is replaced (`sessions_replaced`);
    /// otherwise the new connection is refused.
    pub(super) async fn open_connection(&mut self, stream: TcpStream) {
        if self.session.is_some() {
            if !self.session_is_stale() {
                if self.we_connect {
                    // Our own connection (asked for on a keepalive boot
                    // change) while the session is healthy: not the peer's
                    // doing, nothing to count.
                    tracing::debug!("a session exists and is healthy; dropping the new connection");
                } else {
                    self.reject(
                        "duplicate_connection",
                        "a second connection while a session exists",
                    );
                }
                return;
            }
            self.stats.sessions_replaced += 1;
            self.end_session("replaced by a new connection from the peer");
        }
        let conn = self.next_conn;
        let (writer, tasks) = start(
            conn,
            stream,
            self.config.max_frame_bytes,
            self.internal.clone(),
        );
        self.open_session(writer, tasks.into()).await;
    }

    /// Opens a session over `writer` (the connection's, or a test's) and
    /// sends our hello. Returns the connection number.
    pub(super) async fn open_session(
        &mut self,
        writer: mpsc::Sender<Bytes>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut tasks = tasks;
        // The hello deadline: a child task (aborted with the session) so the
        // loop needs no timer of its own; a late event of an older
        // connection is ignored by its number.
        let internal = self.internal.clone();
        let timeout = Duration::from_millis(self.config.hello_timeout_ms);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = internal.send(Event::HelloTimeout { conn }).await;
        }));
        self.session = Some(Session {
            conn,
            writer,
            tasks,
            peer: None,
            opened: Instant::now(),
            last_heard: Instant::now(),
            sync_done_sent: false,
        });
        let hello = self.our_hello().encode();
        self.send(hello.into());
        conn
    }

    /// No hello on connection `conn` within `hello_timeout_ms`: it goes.
    pub(super) fn process_hello_timeout(&mut self, conn: u64) {
        if !self.is_current(conn) || self.established() {
            return;
        }
        self.stats.hello_timeouts += 1;
        if self.log.admit("hello_timeout").is_some() {
            tracing::warn!(
                peer = %self.config.peer_address,
                timeout_ms = self.config.hello_timeout_ms,
                total = self.stats.hello_timeouts,
                "no hello on the peer connection in time; closing it"
            );
        }
        self.close_session("no hello in time");
    }

    /// The hello this side sends: identity, limits, member ports, and what
    /// was already applied from the peer's current run.
    pub(super) fn our_hello(&self) -> Hello {
        Hello {
            name: self.identity.name.clone(),
            system_id: Some(self.identity.system_id),
            capabilities: wire::capability::ALL,
            boot_id: self.identity.boot_id,
            max_frame: Some(self.config.max_frame_bytes as u32),
            ports: self
                .ports
                .iter()
                .map(|p| (p.mlag_id, p.mac.unwrap_or(MacAddr([0; 6]))))
                .collect(),
            port_mtus: self
                .ports
                .iter()
                .filter_map(|p| Some((p.mlag_id, p.mtu?)))
                .collect(),
            port_vlans: {
                let mut map = self.config.vlan_map();
                self.ports
                    .iter()
                    .map(|p| (p.mlag_id, map.remove(&p.mlag_id).unwrap_or_default()))
                    .collect()
            },
            mclag_address: self.identity.mclag_address,
            resume: self.rx_from_boot.map(|boot| (boot, self.rx_applied)),
        }
    }

    /// Whether `conn` is the current connection (events of older ones are
    /// stale).
    pub(super) fn is_current(&self, conn: u64) -> bool {
        self.session.as_ref().is_some_and(|s| s.conn == conn)
    }

    /// Whether the peer's hello arrived on the current session.
    pub(super) fn established(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.peer.is_some())
    }

    /// Asks `connect` for a new connection (only the connecting side).
    pub(super) fn request_connection(&mut self) {
        if self.we_connect {
            self.want_connection
                .send_modify(|generation| *generation += 1);
        }
    }

    /// Ends the session; while the peer is alive, a new one is wanted.
    pub(super) fn close_session(&mut self, why: &str) {
        self.end_session(why);
        if self.peer_alive.is_some() {
            self.request_connection();
        }
    }

    /// Drops the session (its tasks are aborted, the connection closes),
    /// without asking for another one.
    pub(super) fn end_session(&mut self, why: &str) {
        self.writer_blocked_since = None;
        if let Some(session) = self.session.take() {
            if session.peer.is_some() {
                self.stats.sessions_lost += 1;
                tracing::warn!(peer = %self.config.peer_address, why, up_s = session.opened.elapsed().as_secs(), "peer session closed");
                self.tell_peer_lost();
            } else {
                tracing::info!(peer = %self.config.peer_address, why, "peer connection closed before its hello");
            }
        }
    }
}
