//! The disk limit of a sandbox's work dir.
//!
//! `/work` is a directory of the host's disk, which no cgroup limits. Two
//! things bound it: every process of the sandbox has `RLIMIT_FSIZE` set to
//! the limit (no single file can grow past it; the write fails), and
//! [`watch`] measures the work dir (blocks in use, links not followed) a
//! few times a second and reports when it holds more than the limit, so
//! that the worker ends the run with a `sandbox_error` that names it.
//! (`/tmp` is a tmpfs of the limit's size, which the kernel enforces.)

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the work dir is measured.
const EVERY: Duration = Duration::from_millis(250);

/// Bytes in use under `dir` (and entries seen), not following links;
/// stops counting once past `limit`.
pub fn usage(dir: &Path, limit: u64) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(list) = std::fs::read_dir(&dir) else { continue };
        for entry in list.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            entries += 1;
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
            if bytes > limit {
                return (bytes, entries);
            }
        }
    }
    (bytes, entries)
}

/// A sentence when `dir` holds as much as `limit` bytes or more (a file
/// stopped at the limit by `RLIMIT_FSIZE` counts as reaching it).
pub async fn check(dir: PathBuf, limit: u64) -> Option<String> {
    if limit == 0 {
        return None;
    }
    let (bytes, _) = tokio::task::spawn_blocking(move || usage(&dir, limit)).await.unwrap_or((0, 0));
    (bytes >= limit).then(|| {
        format!("the sandbox filled its disk limit of {} MiB in /work (--sandbox-disk)", limit / (1024 * 1024))
    })
}

/// Resolves with a sentence once `dir` reaches `limit` bytes. Never
/// resolves when `limit` is 0 (no limit).
pub async fn watch(dir: PathBuf, limit: u64) -> String {
    loop {
        if limit == 0 {
            return std::future::pending().await;
        }
        tokio::time::sleep(EVERY).await;
        if let Some(hit) = check(dir.clone(), limit).await {
            return hit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_blocks_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let (bytes, entries) = usage(dir.path(), u64::MAX);
        assert!((64 * 1024..1024 * 1024).contains(&bytes), "{bytes}");
        assert_eq!(entries, 3);
        assert!(usage(dir.path(), 1000).0 > 1000, "stops early past the limit");
    }
}
