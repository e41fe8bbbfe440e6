//! The disk limit of a sandbox's work dir.
//!
//! `/work` is a directory of the host's disk, which no cgroup limits. Two
//! things bound it: every process of the sandbox has `RLIMIT_FSIZE` set to
//! the limit (no single file can grow past it; the write fails), and
//! [`watch`] measures the work dir a few times a second and reports when it
//! holds the limit or more, so that the worker ends the run with a
//! `sandbox_error` that names it. The measure counts blocks in use (links
//! not followed), files a process of the sandbox deleted but still holds
//! open (they take disk until closed), and entries (at most
//! [`MAX_ENTRIES`]: inodes are disk too). (`/tmp` is a tmpfs of the
//! limit's size, which the kernel enforces.)

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the work dir is measured.
const EVERY: Duration = Duration::from_millis(250);
/// Most files and directories a work dir may hold.
pub const MAX_ENTRIES: u64 = 100_000;

/// Bytes in use under `dir` (and entries seen), not following links;
/// stops counting once past `limit` bytes or [`MAX_ENTRIES`] entries.
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
            if bytes > limit || entries > MAX_ENTRIES {
                return (bytes, entries);
            }
        }
    }
    (bytes, entries)
}

/// Bytes of files on `dir`'s file system that the processes `pids` hold
/// open after deleting them (each file counted once).
pub fn deleted_but_open(dir: &Path, pids: &[i32]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(device) = std::fs::metadata(dir).map(|m| m.dev()) else { return 0 };
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            // Following the descriptor's link reaches the open file itself.
            let Ok(meta) = std::fs::metadata(fd.path()) else { continue };
            if meta.is_file() && meta.nlink() == 0 && meta.dev() == device && seen.insert(meta.ino()) {
                bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    bytes
}

/// A sentence when `dir` (with what the processes `pids` hold open in it)
/// holds as much as `limit` bytes or more (a file stopped at the limit by
/// `RLIMIT_FSIZE` counts as reaching it), or more than [`MAX_ENTRIES`].
pub async fn check(dir: PathBuf, limit: u64, pids: Vec<i32>) -> Option<String> {
    if limit == 0 {
        return None;
    }
    let ((bytes, entries), held) =
        tokio::task::spawn_blocking(move || (usage(&dir, limit), deleted_but_open(&dir, &pids)))
            .await
            .unwrap_or(((0, 0), 0));
    let mib = limit / (1024 * 1024);
    if bytes.saturating_add(held) >= limit {
        return Some(format!("the sandbox filled its disk limit of {mib} MiB in /work (--sandbox-disk)"));
    }
    (entries > MAX_ENTRIES).then(|| {
        format!(
            "the sandbox made more than {MAX_ENTRIES} files in /work, the most its disk limit allows (--sandbox-disk)"
        )
    })
}

/// Resolves with a sentence once `dir` reaches `limit` bytes. Never
/// resolves when `limit` is 0 (no limit). `pids` lists the sandbox's
/// processes when asked.
pub async fn watch(dir: PathBuf, limit: u64, pids: impl Fn() -> Vec<i32>) -> String {
    loop {
        if limit == 0 {
            return std::future::pending().await;
        }
        tokio::time::sleep(EVERY).await;
        if let Some(hit) = check(dir.clone(), limit, pids()).await {
            return hit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_deleted_but_held_open_count() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&vec![7u8; 256 * 1024]).unwrap();
        file.sync_all().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(usage(dir.path(), u64::MAX).0 < 64 * 1024, "the walk no longer sees it");
        let held = deleted_but_open(dir.path(), &[std::process::id() as i32]);
        assert!(held >= 256 * 1024, "{held}");
        drop(file);
    }

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
