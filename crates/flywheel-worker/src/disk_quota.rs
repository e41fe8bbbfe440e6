//! The disk limit of a sandbox's work dir.
//!
//! `/work` is a directory of the host's disk, which no cgroup limits. Two
//! things bound it: every process of the sandbox has `RLIMIT_FSIZE` set to
//! the limit (no single file can grow past it; the write fails), and
//! [`watch`] measures the work dir a few times a second and reports when it
//! holds the limit or more, so that the worker ends the run with a
//! `sandbox_error` that names it. The measure counts blocks in use (links
//! not followed, paths of any length), files a process of the sandbox
//! deleted but still holds open or mapped (they take disk until closed),
//! and entries (at most [`MAX_ENTRIES`], and nested at most [`MAX_DEPTH`]
//! deep: inodes are disk too). A deleted file whose only descriptor is in
//! flight in a unix socket is not seen. (`/tmp` is a tmpfs of the
//! limit's size, which the kernel enforces.)

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the work dir is measured.
const EVERY: Duration = Duration::from_millis(250);
/// Most files and directories a work dir may hold.
pub const MAX_ENTRIES: u64 = 100_000;

/// Deepest nesting of directories measured; deeper counts as the limit hit.
const MAX_DEPTH: usize = 128;

/// What a work dir holds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    /// Directories nest deeper than [`MAX_DEPTH`].
    pub too_deep: bool,
    /// A directory could not be opened, even after giving its owner
    /// read and search rights back: what it holds is unknown.
    pub unreadable: bool,
}

/// What is under `dir`, not following links and relative to directory
/// handles (a path longer than the system's limit is measured too); stops
/// once past `limit` bytes, [`MAX_ENTRIES`] entries or [`MAX_DEPTH`] levels.
pub fn usage(dir: &Path, limit: u64) -> Usage {
    let mut found = Usage::default();
    if let Ok(root) = Dir::open(dir, dir_flags(), Mode::empty()) {
        walk(root, 0, limit, &mut found);
    }
    found
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Adds what `dir` holds to `found`; true once a bound is passed.
fn walk(mut dir: Dir, depth: usize, limit: u64, found: &mut Usage) -> bool {
    let fd = dir.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in dir.iter().flatten() {
        let name = entry.file_name().to_owned();
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            continue;
        }
        let Ok(stat) = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        found.entries += 1;
        found.bytes = found.bytes.saturating_add((stat.st_blocks as u64).saturating_mul(512));
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            subdirs.push(name);
        }
        if found.bytes > limit || found.entries > MAX_ENTRIES {
            return true;
        }
    }
    if !subdirs.is_empty() && depth >= MAX_DEPTH {
        found.too_deep = true;
        return true;
    }
    for name in subdirs {
        let mut opened = Dir::openat(Some(fd), name.as_c_str(), dir_flags(), Mode::empty());
        if opened.is_err() {
            // A directory the sandbox closed to its own user (`chmod 300`)
            // would hide what it holds: it is opened up (the worker's user
            // owns it, or is root), and counted as the limit if it still
            // cannot be read.
            let _ = nix::sys::stat::fchmodat(
                Some(fd),
                name.as_c_str(),
                Mode::from_bits_truncate(0o700),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            );
            opened = Dir::openat(Some(fd), name.as_c_str(), dir_flags(), Mode::empty());
        }
        match opened {
            Ok(sub) => {
                if walk(sub, depth + 1, limit, found) {
                    return true;
                }
            }
            // Gone, or no longer a directory, since it was listed.
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => {}
            Err(_) => {
                found.unreadable = true;
                return true;
            }
        }
    }
    false
}

/// Bytes of files on `dir`'s file system that the processes `pids` hold
/// open or mapped after deleting them (each file counted once).
pub fn deleted_but_open(dir: &Path, pids: &[i32]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(device) = std::fs::metadata(dir).map(|m| m.dev()) else { return 0 };
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for pid in pids {
        for held in ["fd", "map_files"] {
            let Ok(links) = std::fs::read_dir(format!("/proc/{pid}/{held}")) else { continue };
            for link in links.flatten() {
                // Following the link reaches the open (or mapped) file itself.
                let Ok(meta) = std::fs::metadata(link.path()) else { continue };
                if meta.is_file() && meta.nlink() == 0 && meta.dev() == device && seen.insert(meta.ino()) {
                    bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
                }
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
    let (found, held) = tokio::task::spawn_blocking(move || (usage(&dir, limit), deleted_but_open(&dir, &pids)))
        .await
        .unwrap_or_default();
    let mib = limit / (1024 * 1024);
    if found.bytes.saturating_add(held) >= limit {
        return Some(format!("the sandbox filled its disk limit of {mib} MiB in /work (--sandbox-disk)"));
    }
    if found.unreadable {
        return Some(
            "the sandbox made a directory in /work that cannot be measured, past what its disk limit allows (--sandbox-disk)"
                .to_owned(),
        );
    }
    if found.too_deep {
        return Some(format!(
            "the sandbox nested directories more than {MAX_DEPTH} deep in /work, past what its disk limit allows (--sandbox-disk)"
        ));
    }
    (found.entries > MAX_ENTRIES).then(|| {
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
        assert!(usage(dir.path(), u64::MAX).bytes < 64 * 1024, "the walk no longer sees it");
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
        let found = usage(dir.path(), u64::MAX);
        assert!((64 * 1024..1024 * 1024).contains(&found.bytes), "{found:?}");
        assert_eq!(found.entries, 3);
        assert!(usage(dir.path(), 1000).bytes > 1000, "stops early past the limit");
        // Paths longer than the system allows, and too deep a tree, are seen.
        let name = "d".repeat(250);
        let mut at = std::fs::File::open(dir.path()).unwrap();
        for _ in 0..20 {
            nix::sys::stat::mkdirat(Some(at.as_raw_fd()), name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
            let sub = nix::fcntl::openat(Some(at.as_raw_fd()), name.as_str(), dir_flags(), Mode::empty()).unwrap();
            at = unsafe { std::os::fd::FromRawFd::from_raw_fd(sub) };
        }
        let file = nix::fcntl::openat(
            Some(at.as_raw_fd()),
            "f",
            OFlag::O_WRONLY | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let mut file: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(file) };
        std::io::Write::write_all(&mut file, &vec![0u8; 300_000]).unwrap();
        assert!(usage(dir.path(), u64::MAX).bytes > 300_000, "a file past PATH_MAX counts");
        let tree = tempfile::tempdir().unwrap();
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("cd {} && for i in $(seq 140); do mkdir d && cd d; done", tree.path().display()))
            .status()
            .unwrap();
        assert!(usage(tree.path(), u64::MAX).too_deep);
        // A directory closed to its owner is opened up and measured.
        let closed = tempfile::tempdir().unwrap();
        std::fs::create_dir(closed.path().join("h")).unwrap();
        std::fs::write(closed.path().join("h/f"), vec![1u8; 200_000]).unwrap();
        std::fs::set_permissions(closed.path().join("h"), std::os::unix::fs::PermissionsExt::from_mode(0o300)).unwrap();
        let found = usage(closed.path(), u64::MAX);
        assert!(found.bytes > 200_000 && !found.unreadable, "{found:?}");
    }
}
