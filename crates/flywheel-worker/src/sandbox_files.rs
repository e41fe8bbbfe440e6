//! Reading files out of a sandbox's work dir without ever leaving it.
//!
//! Whatever a run leaves in `/work/artifacts` is hostile: a symlink to
//! `/etc/shadow` or to another execution's work dir, `artifacts` itself
//! replaced by a link, a FIFO that would block a reader forever, a device,
//! a hard link, a file swapped for a link between a check and a read. So
//! nothing here goes by path twice: the work dir, then `artifacts`, then
//! each file are opened relative to the directory handle before them, with
//! `O_NOFOLLOW` (a link is refused, not followed) and `O_NONBLOCK` (a FIFO
//! does not block the open), and what was opened is checked on the handle
//! itself (`fstat`): a regular file with one link, or nothing.

use nix::dir::Dir;
use nix::fcntl::{fcntl, openat, FcntlArg, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An open handle on a work dir's `artifacts` directory.
pub struct ArtifactsDir {
    dir: OwnedFd,
}

/// Flags of every open here.
fn no_follow() -> OFlag {
    OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

fn open_at(dir: Option<&OwnedFd>, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let dir = dir.map_or(nix::libc::AT_FDCWD, AsRawFd::as_raw_fd);
    let fd = openat(Some(dir), path, flags | no_follow(), Mode::empty())?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why a file of the sandbox is not read.
fn refusal(name: &str, err: nix::Error) -> String {
    match err {
        nix::Error::ELOOP => format!("{name} is a symbolic link; only regular files are stored"),
        nix::Error::ENOENT => format!("no file {name} in the artifacts dir"),
        nix::Error::ENOTDIR => format!("{name} is a symbolic link or not a directory"),
        other => format!("could not open {name}: {other}"),
    }
}

impl ArtifactsDir {
    /// Opens `work_dir/artifacts`, refusing a link at either step.
    pub fn open(work_dir: &Path) -> Result<ArtifactsDir, String> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let work = open_at(None, work_dir, flags).map_err(|e| refusal("the work dir", e))?;
        let dir = open_at(Some(&work), Path::new("artifacts"), flags).map_err(|e| refusal("artifacts", e))?;
        Ok(ArtifactsDir { dir })
    }

    /// Opens the regular file `name` in it for reading; returns it and its size.
    pub fn open_file(&self, name: &str) -> Result<(std::fs::File, u64), String> {
        if name.contains('/') || name == "." || name == ".." {
            return Err(format!("{name:?} is not a file name"));
        }
        let fd = open_at(Some(&self.dir), Path::new(name), OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .map_err(|e| refusal(name, e))?;
        let stat = fstat(fd.as_raw_fd()).map_err(|e| refusal(name, e))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            let what = match kind {
                SFlag::S_IFDIR => "a directory",
                SFlag::S_IFIFO => "a FIFO",
                SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
                SFlag::S_IFSOCK => "a socket",
                _ => "not a regular file",
            };
            return Err(format!("{name} is {what}; only regular files are stored"));
        }
        if stat.st_nlink != 1 {
            return Err(format!(
                "{name} is a hard link ({} names); only files with one name are stored",
                stat.st_nlink
            ));
        }
        // Reads of a regular file never block; the flag only mattered for the open.
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| refusal(name, e))?;
        Ok((std::fs::File::from(fd), u64::try_from(stat.st_size).unwrap_or(0)))
    }

    /// The names in it (whatever they are: [`ArtifactsDir::open_file`] decides).
    pub fn names(&self) -> Result<Vec<String>, String> {
        let mut dir = Dir::openat(
            Some(self.dir.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | no_follow(),
            Mode::empty(),
        )
        .map_err(|e| format!("could not list the artifacts dir: {e}"))?;
        let names = dir
            .iter()
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "." && name != "..")
            .collect();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn work_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_read_and_nothing_else() {
        let work = work_dir();
        let artifacts = work.path().join("artifacts");
        std::fs::write(artifacts.join("report.csv"), "a,b\n").unwrap();
        symlink("/etc/passwd", artifacts.join("passwd")).unwrap();
        symlink("..", artifacts.join("up")).unwrap();
        std::fs::create_dir(artifacts.join("sub")).unwrap();
        nix::unistd::mkfifo(&artifacts.join("fifo"), Mode::S_IRWXU).unwrap();
        std::fs::write(artifacts.join("linked"), "x").unwrap();
        std::fs::hard_link(artifacts.join("linked"), work.path().join("elsewhere")).unwrap();

        let dir = ArtifactsDir::open(work.path()).unwrap();
        let (file, size) = dir.open_file("report.csv").unwrap();
        assert_eq!(size, 4);
        assert_eq!(std::io::read_to_string(file).unwrap(), "a,b\n");
        assert!(dir.open_file("passwd").unwrap_err().contains("symbolic link"));
        assert!(dir.open_file("up").unwrap_err().contains("symbolic link"));
        assert!(dir.open_file("sub").unwrap_err().contains("directory"));
        assert!(dir.open_file("fifo").unwrap_err().contains("FIFO"), "refused at once, not blocked");
        assert!(dir.open_file("linked").unwrap_err().contains("hard link"));
        assert!(dir.open_file("../artifacts/report.csv").is_err());
        let mut names = dir.names().unwrap();
        names.sort();
        assert_eq!(names, ["fifo", "linked", "passwd", "report.csv", "sub", "up"]);
    }

    #[test]
    fn an_artifacts_dir_replaced_by_a_link_is_refused() {
        let work = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("secrets.key"), "k").unwrap();
        symlink(elsewhere.path(), work.path().join("artifacts")).unwrap();
        assert!(ArtifactsDir::open(work.path()).err().unwrap().contains("symbolic link"));
        // Nor is a work dir that is a link.
        let link = elsewhere.path().join("work");
        symlink(work.path(), &link).unwrap();
        assert!(ArtifactsDir::open(&link).err().unwrap().contains("symbolic link"));
    }
}
