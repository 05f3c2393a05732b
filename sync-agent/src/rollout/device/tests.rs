//! The device task against a fake center: a minimal HTTP/1.1 server on
//! 127.0.0.1 that serves the four endpoints the device uses and records
//! every request.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    store::{Backup, BackupStore},
    *,
};
use crate::rollout::wire::{
    Ack, ApiError, Assignment, ConfigKey, ConfigRecord, Format, Register, WatchAnswer, md5_hex,
};

// ---------------------------------------------------------------- fake center

#[derive(Default)]
struct CenterState {
    /// (key "ns/group/name", version) -> record.
    records: HashMap<(String, u64), ConfigRecord>,
    /// What the center wants the device to run, in order.
    assignments: Vec<Assignment>,
    /// Leave out assignments whose MD5 is in the device's `have`.
    honor_have: bool,
    /// Leave out assignments once acknowledged.
    drop_acked: bool,
    /// Withdraw an assignment once acknowledged as failed (as the real
    /// center does: it releases what the device had before).
    withdraw_failed: bool,
    /// Answer fetches with this status.
    fail_fetch: Option<u16>,
    /// File whose content is recorded at every registration.
    probe: Option<PathBuf>,

    registers: Vec<Register>,
    probed: Vec<Option<String>>,
    /// The `have` of every poll.
    watches: Vec<String>,
    fetches: Vec<String>,
    acks: Vec<Ack>,
}

#[derive(Clone)]
struct FakeCenter {
    addr: SocketAddr,
    state: Arc<Mutex<CenterState>>,
}

impl FakeCenter {
    async fn start(state: CenterState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let center = FakeCenter {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(state)),
        };
        let server = center.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let _ = server.serve(stream).await;
                });
            }
        });
        center
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut CenterState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn acks(&self) -> Vec<Ack> {
        self.with(|s| s.acks.clone())
    }

    async fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let target = request_line.next().unwrap_or("").to_string();
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: HashMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let (status, answer) = self.handle(&method, path, &query, &body).await;
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    }

    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &HashMap<String, String>,
        body: &[u8],
    ) -> (u16, String) {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let error = |status: u16, text: &str| {
            (
                status,
                serde_json::to_string(&ApiError { error: text.into() }).unwrap(),
            )
        };
        match (method, parts.as_slice()) {
            ("POST", ["v1", "devices", _, "register"]) => {
                let Ok(register) = serde_json::from_slice::<Register>(body) else {
                    return error(400, "bad register body");
                };
                self.with(|s| {
                    let probed = s
                        .probe
                        .as_ref()
                        .map(|p| std::fs::read_to_string(p).ok())
                        .unwrap_or(None);
                    s.probed.push(probed);
                    s.registers.push(register);
                });
                (200, "{}".into())
            }
            ("GET", ["v1", "devices", _, "watch"]) => {
                let have_text = query.get("have").cloned().unwrap_or_default();
                let have: HashMap<String, String> = have_text
                    .split(',')
                    .filter_map(|e| e.split_once(':'))
                    .map(|(s, m)| (s.to_string(), m.to_string()))
                    .collect();
                let timeout = query
                    .get("timeout_ms")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(30_000u64)
                    .min(2_000);
                self.with(|s| s.watches.push(have_text.clone()));
                let deadline = Instant::now() + Duration::from_millis(timeout);
                loop {
                    let due: Vec<Assignment> = self.with(|s| {
                        s.assignments
                            .iter()
                            .filter(|a| !(s.honor_have && have.get(&a.service) == Some(&a.md5)))
                            .filter(|a| {
                                !(s.drop_acked
                                    && s.acks.iter().any(|k| {
                                        k.rollout_id == a.rollout_id && k.service == a.service
                                    }))
                            })
                            .cloned()
                            .collect()
                    });
                    if !due.is_empty() || Instant::now() >= deadline {
                        let answer = WatchAnswer { assignments: due };
                        return (200, serde_json::to_string(&answer).unwrap());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            ("GET", ["v1", "configs", ns, group, name]) => {
                let key = format!("{ns}/{group}/{name}");
                let version: u64 = query
                    .get("version")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (fail, record) = self.with(|s| {
                    s.fetches.push(format!("{key}?version={version}"));
                    (
                        s.fail_fetch,
                        s.records.get(&(key.clone(), version)).cloned(),
                    )
                });
                if let Some(status) = fail {
                    return error(status, "center is having a bad day");
                }
                match record {
                    Some(r) => (200, serde_json::to_string(&r).unwrap()),
                    None => error(404, "no such config version"),
                }
            }
            ("POST", ["v1", "devices", _, "ack"]) => {
                let Ok(ack) = serde_json::from_slice::<Ack>(body) else {
                    return error(400, "bad ack body");
                };
                let assigned = self.with(|s| {
                    s.acks.push(ack.clone());
                    let matches =
                        |a: &Assignment| a.rollout_id == ack.rollout_id && a.service == ack.service;
                    let assigned = s.assignments.iter().any(matches);
                    if !ack.ok && s.withdraw_failed {
                        s.assignments.retain(|a| !matches(a));
                    }
                    assigned
                });
                if assigned {
                    (200, "{}".into())
                } else {
                    error(409, "not assigned")
                }
            }
            _ => error(404, "no such endpoint"),
        }
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

// ------------------------------------------------------------------- helpers

fn key(text: &str) -> ConfigKey {
    text.parse().unwrap()
}

fn record(key_text: &str, version: u64, content: &str) -> ConfigRecord {
    ConfigRecord {
        key: key(key_text),
        format: Format::Text,
        content: content.into(),
        description: String::new(),
        version,
        md5: md5_hex(content.as_bytes()),
        updated_ms: 1,
        author: "test".into(),
    }
}

fn assignment(rollout_id: u64, service: &str, r: &ConfigRecord) -> Assignment {
    Assignment {
        rollout_id,
        service: service.into(),
        key: r.key.clone(),
        version: r.version,
        md5: r.md5.clone(),
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A reload command that appends "<service> <phase> <version> <content>" to
/// `log`.
fn logging_reload(log: &Path) -> Vec<String> {
    argv(&[
        "sh",
        "-c",
        &format!(
            "echo \"$SYNC_SERVICE $SYNC_PHASE $SYNC_CONFIG_VERSION $(cat \"$SYNC_CONFIG_PATH\" 2>/dev/null || echo '<none>')\" >> {}",
            log.display()
        ),
    ])
}

fn read_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn service(dir: &Path, name: &str, key_text: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        config: key(key_text),
        path: dir.join("etc").join(format!("{name}.conf")),
        reload: logging_reload(&dir.join("reload.log")),
        health: argv(&["true"]),
        health_timeout_ms: 2_000,
        depends_on: Vec::new(),
    }
}

fn device_config(center: &str, dir: &Path, services: Vec<ServiceConfig>) -> DeviceConfig {
    DeviceConfig {
        center: center.into(),
        device: "leaf1".into(),
        backup_dir: dir.join("backup"),
        services,
        watch_timeout_ms: 300,
        long_poll: true,
        recheck_s: DEFAULT_RECHECK_S,
        labels: vec![],
        token_file: None,
        ca_file: None,
    }
}

fn seed_backup(dir: &Path, service: &str, r: &ConfigRecord) {
    let store = BackupStore::open(&dir.join("backup")).unwrap();
    store
        .save(&Backup {
            service: service.into(),
            current: r.clone(),
            previous: None,
            applied_ms: 7,
        })
        .unwrap();
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_report(
    handle: &DeviceHandle,
    what: &str,
    cond: impl Fn(&DeviceReport) -> bool,
) -> DeviceReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = handle.report().await;
        if cond(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port nothing listens on.
async fn dead_center() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// --------------------------------------------------------------------- tests

#[tokio::test]
async fn apply_succeeds_acks_ok_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "listen 80;\n");
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 1), v1.clone())]),
        assignments: vec![assignment(11, "web", &v1)],
        honor_have: true,
        ..Default::default()
    })
    .await;
    let mut web = service(dir.path(), "web", "prod/web/nginx");
    web.depends_on = vec![];
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![web.clone()]))
        .await
        .unwrap();

    wait_until("the ack", || !center.acks().is_empty()).await;
    let ack = &center.acks()[0];
    assert_eq!(
        (ack.rollout_id, ack.service.as_str(), ack.version, ack.ok),
        (11, "web", 1, true),
        "{ack:?}"
    );
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "listen 80;\n");
    assert_eq!(
        read_log(&dir.path().join("reload.log")),
        vec!["web apply 1 listen 80;"]
    );
    let backup = BackupStore::open(&dir.path().join("backup"))
        .unwrap()
        .load("web")
        .unwrap()
        .unwrap();
    assert_eq!(backup.current, v1);

    // The next poll says what the device now has, and gets nothing more.
    let have = format!("web:{}", v1.md5);
    wait_until("a poll with the new md5", || {
        center.with(|s| s.watches.contains(&have))
    })
    .await;
    let report = wait_report(&handle, "applied", |r| r.counters.applied == 1).await;
    assert_eq!(report.device, "leaf1");
    assert!(report.connected);
    assert_eq!(report.counters.fetched, 1);
    assert_eq!(report.counters.failed, 0);
    assert_eq!(report.services[0].version, Some(1));
    assert_eq!(report.services[0].md5.as_deref(), Some(v1.md5.as_str()));
    assert_eq!(report.services[0].last_result, "applied v1");
    assert!(report.services[0].last_applied_ms.is_some());
    center.with(|s| {
        assert_eq!(s.registers.len(), 1);
        assert_eq!(s.registers[0].services[0].name, "web");
        assert_eq!(s.registers[0].services[0].config, key("prod/web/nginx"));
        assert_eq!(
            s.watches[0], "",
            "nothing to declare before the first apply"
        );
        assert_eq!(s.fetches, vec!["prod/web/nginx?version=1"]);
    });
    // The report survives a JSON round trip (it goes over the control socket).
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<DeviceReport>(&json).unwrap(), report);
    handle.shutdown().await;
}

#[tokio::test]
async fn failing_health_check_restores_the_old_file_and_acks_failure() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "old");
    let v2 = record("prod/web/nginx", 2, "new");
    let fixed = dir.path().join("fixed");
    let mut web = service(dir.path(), "web", "prod/web/nginx");
    web.health = argv(&[
        "sh",
        "-c",
        &format!(
            "[ -f {} ] && exit 0; if [ \"$(cat \"$SYNC_CONFIG_PATH\")\" = new ]; then echo broken config >&2; exit 3; fi",
            fixed.display()
        ),
    ]);
    std::fs::create_dir_all(web.path.parent().unwrap()).unwrap();
    std::fs::write(&web.path, "old").unwrap();
    seed_backup(dir.path(), "web", &v1);
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 2), v2.clone())]),
        assignments: vec![assignment(5, "web", &v2)],
        honor_have: true,
        withdraw_failed: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![web.clone()]))
        .await
        .unwrap();

    wait_until("the ack", || !center.acks().is_empty()).await;
    let ack = center.acks()[0].clone();
    assert!(!ack.ok);
    assert_eq!((ack.rollout_id, ack.version), (5, 2));
    assert!(
        ack.reason.contains("health check failed")
            && ack.reason.contains("exit code 3")
            && ack.reason.contains("broken config")
            && ack.reason.contains("previous file restored"),
        "{}",
        ack.reason
    );
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "old");
    let log = dir.path().join("reload.log");
    assert_eq!(
        read_log(&log),
        vec!["web apply 2 new", "web rollback 1 old"]
    );
    // The backup still holds v1.
    let backups = BackupStore::open(&dir.path().join("backup")).unwrap();
    assert_eq!(backups.load("web").unwrap().unwrap().current, v1);
    let report = wait_report(&handle, "the failure", |r| r.counters.failed == 1).await;
    assert_eq!(report.counters.applied, 0);
    assert_eq!(report.services[0].version, Some(1));
    assert!(
        report.services[0]
            .last_result
            .starts_with("failed v2: health check failed"),
        "{}",
        report.services[0].last_result
    );
    wait_until("two more polls", || center.with(|s| s.watches.len() >= 3)).await;
    assert_eq!(
        center.with(|s| s.watches[1].clone()),
        format!("web:{}", v1.md5)
    );

    // The operator fixes the cause and resumes: the same assignment again.
    std::fs::write(&fixed, "").unwrap();
    center.with(|s| s.assignments.push(assignment(5, "web", &v2)));
    wait_until("the second ack", || center.acks().len() == 2).await;
    assert!(center.acks()[1].ok, "{:?}", center.acks()[1]);
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "new");
    let backup = backups.load("web").unwrap().unwrap();
    assert_eq!((backup.current.clone(), backup.previous), (v2, Some(v1)));
    assert_eq!(
        read_log(&log),
        vec!["web apply 2 new", "web rollback 1 old", "web apply 2 new"]
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_center_repeating_a_failed_assignment_does_not_make_it_flap() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = record("prod/web/nginx", 2, "new");
    let mut web = service(dir.path(), "web", "prod/web/nginx");
    web.health = argv(&["false"]);
    // Keeps offering it after the failure.
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 2), v2.clone())]),
        assignments: vec![assignment(5, "web", &v2)],
        honor_have: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![web.clone()]))
        .await
        .unwrap();
    wait_until("the ack", || !center.acks().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Tried at 0 s, again at once (it might have been a resume), after 1 s,
    // and not before 3 s again; polls went on meanwhile.
    let applies = read_log(&dir.path().join("reload.log"))
        .iter()
        .filter(|l| l.contains("apply"))
        .count();
    assert!((2..=3).contains(&applies), "{applies} applies");
    assert_eq!(center.acks().len(), applies);
    assert!(center.acks().iter().all(|a| !a.ok));
    assert!(center.with(|s| s.watches.len()) >= 4);
    assert!(!web.path.exists());
    handle.shutdown().await;
}

#[tokio::test]
async fn failing_reload_without_a_previous_file_removes_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/db/pg", 1, "max_connections=10");
    let mut db = service(dir.path(), "db", "prod/db/pg");
    let log = dir.path().join("reload.log");
    db.reload = argv(&[
        "sh",
        "-c",
        &format!(
            "echo \"$SYNC_PHASE\" >> {}; [ \"$SYNC_PHASE\" != apply ] || {{ echo cannot reload; exit 1; }}",
            log.display()
        ),
    ]);
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/db/pg".into(), 1), v1.clone())]),
        assignments: vec![assignment(1, "db", &v1)],
        drop_acked: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![db.clone()]))
        .await
        .unwrap();
    wait_until("the ack", || !center.acks().is_empty()).await;
    let ack = center.acks()[0].clone();
    assert!(!ack.ok);
    assert!(
        ack.reason
            .starts_with("reload failed: exit code 1: cannot reload")
            && ack.reason.contains("new file removed"),
        "{}",
        ack.reason
    );
    assert!(!db.path.exists());
    assert_eq!(read_log(&log), vec!["apply", "rollback"]);
    let report = handle.report().await;
    assert_eq!(report.services[0].version, None);
    assert!(
        !BackupStore::open(&dir.path().join("backup"))
            .unwrap()
            .path("db")
            .exists()
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn same_md5_is_acknowledged_without_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "same");
    // Version 3 has the same content (say, a rollback to it).
    let v3 = record("prod/web/nginx", 3, "same");
    let web = service(dir.path(), "web", "prod/web/nginx");
    std::fs::create_dir_all(web.path.parent().unwrap()).unwrap();
    std::fs::write(&web.path, "same").unwrap();
    seed_backup(dir.path(), "web", &v1);
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 3), v3.clone())]),
        assignments: vec![assignment(9, "web", &v3)],
        // Hands it out even though the device has it.
        honor_have: false,
        drop_acked: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![web]))
        .await
        .unwrap();
    wait_until("the ack", || !center.acks().is_empty()).await;
    let ack = center.acks()[0].clone();
    assert!(ack.ok, "{ack:?}");
    assert_eq!((ack.rollout_id, ack.version), (9, 3));
    let report = wait_report(&handle, "the skip", |r| r.counters.skipped_same_md5 == 1).await;
    assert_eq!(report.counters.fetched, 0);
    assert_eq!(report.counters.applied, 0);
    assert_eq!(report.counters.restored_from_backup, 0);
    center.with(|s| {
        assert!(s.fetches.is_empty());
        assert_eq!(s.watches[0], format!("web:{}", v1.md5));
    });
    assert!(read_log(&dir.path().join("reload.log")).is_empty());
    handle.shutdown().await;
}

#[tokio::test]
async fn unknown_service_key_mismatch_and_md5_mismatch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "real content");
    let mut lying = assignment(3, "web", &v1);
    lying.md5 = md5_hex(b"something else");
    let ghost = assignment(3, "ghost", &v1);
    let mut other_key = assignment(4, "api", &v1);
    other_key.key = key("prod/api/other");
    let web = service(dir.path(), "web", "prod/web/nginx");
    let api = service(dir.path(), "api", "prod/api/gw");
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 1), v1.clone())]),
        assignments: vec![ghost, other_key, lying],
        withdraw_failed: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(
        &center.url(),
        dir.path(),
        vec![web.clone(), api],
    ))
    .await
    .unwrap();
    wait_until("three acks", || center.acks().len() >= 3).await;
    let acks = center.acks();
    assert_eq!(
        acks.iter()
            .map(|a| (a.service.as_str(), a.ok))
            .collect::<Vec<_>>(),
        vec![("ghost", false), ("api", false), ("web", false)]
    );
    assert_eq!(acks[0].reason, "unknown service");
    assert!(
        acks[1].reason.starts_with("config mismatch"),
        "{}",
        acks[1].reason
    );
    assert!(
        acks[2].reason.starts_with("md5 mismatch"),
        "{}",
        acks[2].reason
    );
    // Nothing written, nothing reloaded, nothing backed up.
    assert!(!web.path.exists());
    assert!(read_log(&dir.path().join("reload.log")).is_empty());
    let report = handle.report().await;
    assert_eq!(report.counters.failed, 3);
    assert_eq!(report.counters.fetched, 1);
    assert!(report.services.iter().all(|s| s.version.is_none()));
    // Each refused once; withdrawn, they are not offered again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(center.acks().len(), 3);
    handle.shutdown().await;
}

#[tokio::test]
async fn center_errors_are_counted_and_retried_without_half_applying() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "content");
    let web = service(dir.path(), "web", "prod/web/nginx");
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 1), v1.clone())]),
        assignments: vec![assignment(2, "web", &v1)],
        honor_have: true,
        fail_fetch: Some(503),
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(&center.url(), dir.path(), vec![web.clone()]))
        .await
        .unwrap();
    let report = wait_report(&handle, "center errors", |r| r.counters.center_errors >= 2).await;
    assert!(report.connected, "the center answers, with errors");
    assert!(
        report.services[0].last_result.contains("503"),
        "{}",
        report.services[0].last_result
    );
    assert!(center.acks().is_empty());
    assert!(!web.path.exists());
    assert!(read_log(&dir.path().join("reload.log")).is_empty());

    center.with(|s| s.fail_fetch = None);
    wait_until("the ack", || !center.acks().is_empty()).await;
    assert!(center.acks()[0].ok);
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "content");
    handle.shutdown().await;
}

#[tokio::test]
async fn dependent_services_are_applied_in_the_given_order() {
    let dir = tempfile::tempdir().unwrap();
    let base = record("prod/infra/base", 4, "base v4");
    let app = record("prod/app/main", 2, "app v2");
    let mut s_base = service(dir.path(), "base", "prod/infra/base");
    let mut s_app = service(dir.path(), "app", "prod/app/main");
    s_app.depends_on = vec!["base".into()];
    // Declared app first: the order is the center's (dependency) order.
    s_base.health = argv(&["test", "-f", &s_base.path.display().to_string()]);
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([
            (("prod/infra/base".into(), 4), base.clone()),
            (("prod/app/main".into(), 2), app.clone()),
        ]),
        assignments: vec![assignment(1, "base", &base), assignment(1, "app", &app)],
        honor_have: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(
        &center.url(),
        dir.path(),
        vec![s_app.clone(), s_base.clone()],
    ))
    .await
    .unwrap();
    wait_until("two acks", || center.acks().len() >= 2).await;
    assert_eq!(
        center
            .acks()
            .iter()
            .map(|a| (a.service.clone(), a.ok))
            .collect::<Vec<_>>(),
        vec![("base".to_string(), true), ("app".to_string(), true)]
    );
    assert_eq!(
        read_log(&dir.path().join("reload.log")),
        vec!["base apply 4 base v4", "app apply 2 app v2"]
    );
    center.with(|s| {
        assert_eq!(s.registers[0].services[0].name, "app");
        assert_eq!(s.registers[0].services[0].depends_on, vec!["base"]);
    });
    handle.shutdown().await;
}

#[tokio::test]
async fn restores_from_backup_before_contacting_the_center() {
    let dir = tempfile::tempdir().unwrap();
    let v3 = record("prod/web/nginx", 3, "from backup");
    let v1 = record("prod/dns/zone", 1, "zone");
    let v2 = record("prod/ntp/conf", 2, "ntp");
    let web = service(dir.path(), "web", "prod/web/nginx");
    let dns = service(dir.path(), "dns", "prod/dns/zone");
    let ntp = service(dir.path(), "ntp", "prod/ntp/conf");
    let none = service(dir.path(), "none", "prod/none/x");
    seed_backup(dir.path(), "web", &v3);
    seed_backup(dir.path(), "dns", &v1);
    seed_backup(dir.path(), "ntp", &v2);
    // web: the config directory was wiped. dns: edited by hand. ntp: intact.
    std::fs::create_dir_all(dns.path.parent().unwrap()).unwrap();
    std::fs::write(&dns.path, "hand edit").unwrap();
    std::fs::write(&ntp.path, "ntp").unwrap();
    std::fs::remove_file(web.path.parent().unwrap().join("web.conf")).ok();

    let center = FakeCenter::start(CenterState {
        probe: Some(web.path.clone()),
        honor_have: true,
        ..Default::default()
    })
    .await;
    let handle = DeviceHandle::spawn(device_config(
        &center.url(),
        dir.path(),
        vec![web.clone(), dns.clone(), ntp.clone(), none],
    ))
    .await
    .unwrap();
    wait_until("a poll", || center.with(|s| !s.watches.is_empty())).await;
    // When the device registered, the file was already back.
    assert_eq!(
        center.with(|s| s.probed.clone()),
        vec![Some("from backup".to_string())]
    );
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "from backup");
    assert_eq!(std::fs::read_to_string(&dns.path).unwrap(), "zone");
    assert_eq!(std::fs::read_to_string(&ntp.path).unwrap(), "ntp");
    assert_eq!(
        read_log(&dir.path().join("reload.log")),
        vec!["web restore 3 from backup", "dns restore 1 zone"]
    );
    let have = center.with(|s| s.watches[0].clone());
    assert_eq!(
        have,
        format!("web:{},dns:{},ntp:{}", v3.md5, v1.md5, v2.md5)
    );
    let report = handle.report().await;
    assert_eq!(report.counters.restored_from_backup, 2);
    assert_eq!(
        report
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.version))
            .collect::<Vec<_>>(),
        vec![
            ("web", Some(3)),
            ("dns", Some(1)),
            ("ntp", Some(2)),
            ("none", None)
        ]
    );
    assert_eq!(report.services[0].last_result, "restored v3 from backup");
    assert_eq!(report.services[0].last_applied_ms, Some(7));
    handle.shutdown().await;
}

#[tokio::test]
async fn restores_dependencies_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut services = Vec::new();
    for (name, deps) in [
        ("app", &["db", "cache"][..]),
        ("cache", &["db"][..]),
        ("db", &[][..]),
        ("log", &[][..]),
    ] {
        let mut s = service(dir.path(), name, &format!("prod/x/{name}"));
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        seed_backup(
            dir.path(),
            name,
            &record(&format!("prod/x/{name}"), 1, name),
        );
        services.push(s);
    }
    let handle = DeviceHandle::spawn(device_config(&dead_center().await, dir.path(), services))
        .await
        .unwrap();
    wait_report(&handle, "the restores", |r| {
        r.counters.restored_from_backup == 4
    })
    .await;
    assert_eq!(
        read_log(&dir.path().join("reload.log")),
        vec![
            "db restore 1 db",
            "cache restore 1 cache",
            "app restore 1 app",
            "log restore 1 log"
        ]
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn restores_while_the_center_is_down_and_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "saved");
    let web = service(dir.path(), "web", "prod/web/nginx");
    seed_backup(dir.path(), "web", &v1);
    let handle = DeviceHandle::spawn(device_config(
        &dead_center().await,
        dir.path(),
        vec![web.clone()],
    ))
    .await
    .unwrap();
    let report = wait_report(&handle, "two failed registrations", |r| {
        r.counters.center_errors >= 2
    })
    .await;
    assert!(!report.connected);
    assert_eq!(report.counters.restored_from_backup, 1);
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "saved");
    // shutdown works while backing off.
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_restarted_device_puts_back_what_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "first");
    let web = service(dir.path(), "web", "prod/web/nginx");
    let center = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 1), v1.clone())]),
        assignments: vec![assignment(1, "web", &v1)],
        honor_have: true,
        ..Default::default()
    })
    .await;
    let config = device_config(&center.url(), dir.path(), vec![web.clone()]);
    let first = DeviceHandle::spawn(config.clone()).await.unwrap();
    wait_report(&first, "applied", |r| r.counters.applied == 1).await;
    first.shutdown().await;

    // The config directory is wiped while the device is down.
    std::fs::remove_dir_all(web.path.parent().unwrap()).unwrap();
    let second = DeviceHandle::spawn(config).await.unwrap();
    let report = wait_report(&second, "the restore", |r| {
        r.counters.restored_from_backup == 1
    })
    .await;
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "first");
    assert_eq!(report.services[0].version, Some(1));
    // And the center does not send it again.
    wait_until("a poll of the second device", || {
        center.with(|s| s.registers.len() == 2 && s.watches.len() >= 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(center.with(|s| s.fetches.len()), 1);
    assert_eq!(center.acks().len(), 1);
    second.shutdown().await;
}

#[tokio::test]
async fn validation() {
    let dir = tempfile::tempdir().unwrap();
    let ok = || {
        let mut a = service(dir.path(), "a", "n/g/a");
        let b = service(dir.path(), "b", "n/g/b");
        a.depends_on = vec!["b".into()];
        device_config("http://127.0.0.1:1", dir.path(), vec![a, b])
    };
    ok().validate().unwrap();

    let mut c = ok();
    c.services[1].name = "a".into();
    assert!(c.validate().unwrap_err().to_string().contains("twice"));

    let mut c = ok();
    c.services[0].depends_on = vec!["zz".into()];
    assert!(c.validate().unwrap_err().to_string().contains("zz"));

    let mut c = ok();
    c.services[1].depends_on = vec!["a".into()];
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("cycle") && err.contains("a -> b -> a"),
        "{err}"
    );

    let mut c = ok();
    c.services[0].depends_on = vec!["a".into()];
    assert!(c.validate().unwrap_err().to_string().contains("itself"));

    let mut c = ok();
    c.services[0].name = "../etc".into();
    assert!(c.validate().is_err());

    let mut c = ok();
    c.services[1].path = c.services[0].path.clone();
    assert!(c.validate().unwrap_err().to_string().contains("both write"));

    let mut c = ok();
    c.center = "not a url".into();
    assert!(c.validate().is_err());

    let mut c = ok();
    c.device = "leaf 1".into();
    assert!(c.validate().is_err());

    // spawn refuses too, before starting anything.
    let mut c = ok();
    c.services[1].depends_on = vec!["a".into()];
    assert!(DeviceHandle::spawn(c).await.is_err());
}

#[tokio::test]
async fn a_device_fails_over_to_the_next_center_and_keeps_polling_it() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "listen 80;\n");
    let live = FakeCenter::start(CenterState {
        records: HashMap::from([(("prod/web/nginx".into(), 1), v1.clone())]),
        assignments: vec![assignment(11, "web", &v1)],
        honor_have: true,
        ..Default::default()
    })
    .await;
    let dead = dead_center().await;
    let web = service(dir.path(), "web", "prod/web/nginx");
    let mut config = device_config(&dead, dir.path(), vec![web.clone()]);
    config.center = config::Centers(vec![dead.clone(), live.url()]);
    let started = Instant::now();
    let handle = DeviceHandle::spawn(config).await.unwrap();
    wait_until("the ack at the second center", || !live.acks().is_empty()).await;
    // Straight on to the untried center, not after a back-off.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed over after {:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "listen 80;\n");
    let have = format!("web:{}", v1.md5);
    wait_until("two polls with the new md5 at the second center", || {
        live.with(|s| s.watches.iter().filter(|w| **w == have).count() >= 2)
    })
    .await;
    let report = handle.report().await;
    assert_eq!(
        report.center,
        live.url(),
        "the report names the center in use"
    );
    assert!(report.connected);
    assert!(report.counters.center_errors >= 1);
    handle.shutdown().await;
}

#[tokio::test]
async fn with_no_center_answering_the_backup_keeps_the_device_running() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = record("prod/web/nginx", 1, "saved");
    let web = service(dir.path(), "web", "prod/web/nginx");
    seed_backup(dir.path(), "web", &v1);
    let (one, two) = (dead_center().await, dead_center().await);
    let mut config = device_config(&one, dir.path(), vec![web.clone()]);
    config.center = config::Centers(vec![one.clone(), two.clone()]);
    let handle = DeviceHandle::spawn(config).await.unwrap();
    let report = wait_report(&handle, "both centers tried, then again", |r| {
        r.counters.center_errors >= 3
    })
    .await;
    assert!(!report.connected);
    assert!(report.center == one || report.center == two);
    assert_eq!(report.counters.restored_from_backup, 1);
    assert_eq!(std::fs::read_to_string(&web.path).unwrap(), "saved");
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .unwrap();
}
