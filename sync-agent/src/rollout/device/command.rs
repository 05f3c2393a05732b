//! Runs a service's reload or health-check command: argv form (no shell),
//! stdin from /dev/null, stdout and stderr captured up to a bound, a deadline
//! after which the command's whole process group is killed.
//!
//! The agent's tokio build has no `process` feature, so this uses
//! `std::process` with the pipes handed to tokio's non-blocking pipe reader
//! and `try_wait` polling; a reader is never left blocking on a pipe that a
//! daemonised grandchild keeps open.

use std::{
    fmt,
    os::{fd::OwnedFd, unix::process::CommandExt as _},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{io::AsyncReadExt as _, net::unix::pipe, task::JoinHandle};

/// How much of stdout and of stderr is kept.
pub const OUTPUT_LIMIT: usize = 8 * 1024;

/// How long the readers may go on after the command exited (a background
/// child may hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// What a command did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status, `None` if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Whether the deadline passed.
    pub timed_out: bool,
    /// Start of stdout (lossy UTF-8, at most [`OUTPUT_LIMIT`] bytes).
    pub stdout: String,
    /// Start of stderr (lossy UTF-8, at most [`OUTPUT_LIMIT`] bytes).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// Exited with status 0 before the deadline.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }
}

impl fmt::Display for Outcome {
    /// A one-line summary for acks and logs: how it ended plus the end of
    /// stderr (or stdout if stderr is empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timed_out {
            write!(f, "timed out after {} ms", self.elapsed.as_millis())?;
        } else {
            match self.status {
                Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => write!(f, "exit code {code}")?,
                    (None, Some(sig)) => write!(f, "killed by signal {sig}")?,
                    _ => write!(f, "{s}")?,
                },
                None => write!(f, "no exit status")?,
            }
        }
        let text = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        if !text.is_empty() {
            const SHOWN: usize = 512;
            let text = if text.len() > SHOWN {
                let mut start = text.len() - SHOWN;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                &text[start..]
            } else {
                text
            };
            write!(f, ": {}", text.replace('\n', " | "))?;
        }
        Ok(())
    }
}

/// Reads a child's pipe in the background, keeping the first
/// [`OUTPUT_LIMIT`] bytes (and draining the rest so the child never blocks).
struct Reader {
    kept: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

fn reader(fd: Option<OwnedFd>) -> anyhow::Result<Option<Reader>> {
    let Some(fd) = fd else { return Ok(None) };
    let mut rx = pipe::Receiver::from_owned_fd(fd).context("registering a child pipe")?;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = kept.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    });
    Ok(Some(Reader { kept, task }))
}

/// What `reader` kept, waiting for the end of the pipe until `until` (a
/// background child may hold it open; then what was read so far).
async fn collect(reader: Option<Reader>, until: Instant) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    let left = until.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, &mut reader.task).await.is_err() {
        reader.task.abort();
    }
    let kept = reader.kept.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&kept).into_owned()
}

/// Runs `argv` with `envs` added to the environment, for at most `timeout`.
/// An error means it could not be started at all.
pub async fn run(
    argv: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let Some((program, args)) = argv.split_first() else {
        bail!("empty command");
    };
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0);
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program:?}"))?;
    let pid = child.id() as libc::pid_t;
    let stdout = reader(child.stdout.take().map(OwnedFd::from));
    let stderr = reader(child.stderr.take().map(OwnedFd::from));
    let (stdout, stderr) = match (stdout, stderr) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(err), _) | (_, Err(err)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
    };

    let deadline = started + timeout;
    let mut poll = Duration::from_millis(2);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, program, "waiting for a command failed");
            }
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            // SAFETY: kill(2) on our own child's process group; the child is
            // not reaped yet, so the group id cannot have been reused.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.kill();
            // SIGKILL cannot be ignored; reaping is immediate.
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            break None;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
        poll = (poll * 2).min(Duration::from_millis(25));
    };
    let until = Instant::now() + DRAIN_GRACE;
    let stdout = collect(stdout, until).await;
    let stderr = collect(stderr, until).await;
    Ok(Outcome {
        status,
        timed_out,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn success_exit_code_and_output() {
        let ok = run(
            &argv(&["sh", "-c", "echo out; echo \"$FOO\" >&2"]),
            &[("FOO", "bar")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(ok.success(), "{ok}");
        assert_eq!(ok.stdout, "out\n");
        assert_eq!(ok.stderr, "bar\n");

        let bad = run(
            &argv(&["sh", "-c", "echo broken >&2; exit 3"]),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(!bad.success());
        assert_eq!(bad.status.and_then(|s| s.code()), Some(3));
        assert_eq!(bad.to_string(), "exit code 3: broken");

        assert!(
            run(
                &argv(&["/nonexistent/program"]),
                &[],
                Duration::from_secs(5)
            )
            .await
            .is_err()
        );
        assert!(run(&[], &[], Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let out = run(
            &argv(&["sh", "-c", &script]),
            &[],
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(out.timed_out);
        assert!(!out.success());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(out.to_string().starts_with("timed out after"), "{out}");
        // The background child was in the group and died with it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn output_is_bounded_and_open_pipes_do_not_hang() {
        let out = run(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.len(), OUTPUT_LIMIT);

        // A daemon left behind keeps stdout open; run returns anyway.
        let started = Instant::now();
        let out = run(
            &argv(&["sh", "-c", "sleep 3 & echo started"]),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "started\n");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
