//! Files on the device: atomic replacement of a service's config file and the
//! local backup store (SPEC 6.4). All of it is blocking `std::fs` work; the
//! device task runs it on the blocking pool.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::rollout::wire::{ConfigRecord, md5_hex};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `path`, `None` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `content` atomically: a temp file in the same
/// directory is written and fsynced, renamed over `path`, and the directory
/// is fsynced. Readers see either the old file or the new one, never a mix,
/// also across a crash. A missing parent directory is created; an existing
/// file's permission bits are kept.
pub fn write_atomic(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let dir = parent_of(path);
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Best effort: make the new directory's entry durable too.
        if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = sync_dir(up);
        }
    }
    let mode = match fs::metadata(path) {
        Ok(meta) => Some(meta.permissions().mode() & 0o7777),
        Err(_) => None,
    };
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(0o644);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(content)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir).with_context(|| format!("fsync {}", dir.display()))?;
    Ok(())
}

/// Removes `path` (if present) durably.
pub fn remove_durable(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let dir = parent_of(path);
    sync_dir(dir).with_context(|| format!("fsync {}", dir.display()))?;
    Ok(())
}

/// Puts back what a file held before an apply: the old bytes, or no file.
pub fn restore_previous(path: &Path, previous: Option<&[u8]>) -> anyhow::Result<()> {
    match previous {
        Some(bytes) => write_atomic(path, bytes),
        None => remove_durable(path),
    }
}

/// One service's entry in the local backup store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The service.
    pub service: String,
    /// The config applied last, successfully.
    pub current: ConfigRecord,
    /// The one applied before it.
    #[serde(default)]
    pub previous: Option<ConfigRecord>,
    /// When `current` was applied (ms since the epoch).
    pub applied_ms: u64,
}

/// The local backup store: one JSON file per service under a directory.
#[derive(Clone, Debug)]
pub struct BackupStore {
    dir: PathBuf,
}

impl BackupStore {
    /// A store under `dir` (created if missing).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where `service`'s backup lives. Service names are validated to be
    /// plain file names before they get here.
    pub fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.json"))
    }

    /// Loads `service`'s backup. A missing file is `Ok(None)`; a file that
    /// does not parse, names another service or whose content does not match
    /// its MD5 is an error (the caller decides to ignore it).
    pub fn load(&self, service: &str) -> anyhow::Result<Option<Backup>> {
        let path = self.path(service);
        let Some(bytes) =
            read_optional(&path).with_context(|| format!("reading {}", path.display()))?
        else {
            return Ok(None);
        };
        let backup: Backup = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        if backup.service != service {
            bail!(
                "{} belongs to service {:?}, not {service:?}",
                path.display(),
                backup.service
            );
        }
        let actual = md5_hex(backup.current.content.as_bytes());
        if !actual.eq_ignore_ascii_case(&backup.current.md5) {
            bail!(
                "{}: content has MD5 {actual}, the record says {}",
                path.display(),
                backup.current.md5
            );
        }
        Ok(Some(backup))
    }

    /// Saves `backup` atomically.
    pub fn save(&self, backup: &Backup) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(backup).context("encoding the backup")?;
        write_atomic(&self.path(&backup.service), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::wire::{ConfigKey, Format};

    fn record(content: &str, version: u64) -> ConfigRecord {
        ConfigRecord {
            key: ConfigKey {
                namespace: "prod".into(),
                group: "web".into(),
                name: "nginx".into(),
            },
            format: Format::Text,
            content: content.into(),
            description: String::new(),
            version,
            md5: md5_hex(content.as_bytes()),
            updated_ms: 1,
            author: "test".into(),
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect()
    }

    #[test]
    fn atomic_write_creates_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/app.conf");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(leftovers(path.parent().unwrap()).is_empty());
    }

    #[test]
    fn atomic_write_failure_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert!(path.is_dir());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn restore_previous_content_or_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.conf");
        write_atomic(&path, b"new").unwrap();
        restore_previous(&path, Some(b"old")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        restore_previous(&path, None).unwrap();
        assert!(!path.exists());
        // Removing what is not there is fine.
        restore_previous(&path, None).unwrap();
        assert_eq!(read_optional(&path).unwrap(), None);
    }

    #[test]
    fn backup_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackupStore::open(&dir.path().join("backups")).unwrap();
        assert_eq!(store.load("web").unwrap(), None);
        let backup = Backup {
            service: "web".into(),
            current: record("v2", 2),
            previous: Some(record("v1", 1)),
            applied_ms: 42,
        };
        store.save(&backup).unwrap();
        assert_eq!(store.load("web").unwrap(), Some(backup.clone()));

        // Content not matching its MD5 is refused.
        let mut bad = backup.clone();
        bad.current.content = "tampered".into();
        fs::write(store.path("web"), serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(store.load("web").is_err());
        // So is garbage.
        fs::write(store.path("web"), b"{not json").unwrap();
        assert!(store.load("web").is_err());
        // And a file naming another service.
        fs::write(store.path("db"), serde_json::to_vec(&backup).unwrap()).unwrap();
        assert!(store.load("db").is_err());
    }
}
