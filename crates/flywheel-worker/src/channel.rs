//! The worker's end of the channel to the agent, and bounded line reading
//! of everything a sandbox writes.
//!
//! The worker listens on a unix socket in the execution's run dir (bound
//! read-only into the sandbox at `/run/flywheel`), takes the first
//! connection, which is the agent's (it connects before any step runs),
//! and closes the listener: no later process of the sandbox can connect.
//!
//! [`BoundedLines`] reads lines without ever holding more than a cap: a
//! longer line is cut (the rest read and dropped), and the line says how
//! long it was. It is cancel-safe, so it can sit in a `select!`.

use flywheel_model::protocol::{may_be_large, AGENT_SOCKET, MAX_EVENT_LINE, MAX_LARGE_EVENT_LINE};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

/// Binds a unix socket at `path`. A path longer than the kernel's limit
/// (108 bytes) is reached through `/proc/self/fd` and its directory.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if path.as_os_str().len() < 100 {
        return UnixListener::bind(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    UnixListener::bind(short)
}

/// Makes a socket file connectable by the sandbox's user (the run dir
/// around it is the sandbox's alone).
pub fn open_to_sandbox(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
}

/// Waits for the agent's connection.
pub struct AgentListener {
    listener: UnixListener,
    path: PathBuf,
}

impl AgentListener {
    /// Listens at `run_dir/agent.sock`.
    pub fn bind(run_dir: &Path) -> std::io::Result<AgentListener> {
        let path = run_dir.join(AGENT_SOCKET);
        let listener = bind_unix(&path)?;
        open_to_sandbox(&path)?;
        Ok(AgentListener { listener, path })
    }

    /// Takes the first connection and stops listening. Cancel-safe: the
    /// listener goes when this is dropped.
    pub async fn accept(self) -> std::io::Result<(BoundedLines<OwnedReadHalf>, OwnedWriteHalf)> {
        let (stream, _) = self.listener.accept().await?;
        let (events, answers) = stream.into_split();
        Ok((BoundedLines::events(events), answers))
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A line read with a cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The line (invalid UTF-8 replaced), without its newline; at most the cap.
    pub text: String,
    /// The line's whole length in bytes, when it was longer than the cap.
    pub cut_from: Option<usize>,
}

/// Reads lines, holding at most a cap of each.
pub struct BoundedLines<R> {
    reader: BufReader<R>,
    /// The current line so far (at most the cap).
    line: Vec<u8>,
    /// Its whole length so far.
    len: usize,
    /// Cap of an ordinary line, and of one that [`may_be_large`].
    cap: usize,
    large_cap: usize,
    /// The cap that applies to the current line, once known.
    line_cap: Option<usize>,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    /// Lines of at most `cap` bytes.
    pub fn new(reader: R, cap: usize) -> BoundedLines<R> {
        BoundedLines { reader: BufReader::new(reader), line: Vec::new(), len: 0, cap, large_cap: cap, line_cap: None }
    }

    /// The agent's events: [`MAX_EVENT_LINE`] a line, [`MAX_LARGE_EVENT_LINE`]
    /// for model requests and outputs.
    pub fn events(reader: R) -> BoundedLines<R> {
        BoundedLines { large_cap: MAX_LARGE_EVENT_LINE, ..BoundedLines::new(reader, MAX_EVENT_LINE) }
    }

    /// The next line; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if self.len == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let newline = buf.iter().position(|b| *b == b'\n');
            let used = newline.map_or(buf.len(), |at| at + 1);
            let content = newline.unwrap_or(buf.len());
            if self.line_cap.is_none() && self.line.len() + content > self.cap {
                let mut prefix = self.line.clone();
                prefix.extend_from_slice(&buf[..content.min(64)]);
                self.line_cap = Some(if may_be_large(&prefix) { self.large_cap } else { self.cap });
            }
            let cap = self.line_cap.unwrap_or(self.cap);
            let room = cap.saturating_sub(self.line.len());
            self.line.extend_from_slice(&buf[..content.min(room)]);
            self.len += content;
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Line {
        let cap = self.line_cap.take().unwrap_or(self.cap);
        let cut_from = (self.len > cap).then_some(self.len);
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        self.len = 0;
        Line { text, cut_from }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_measured() {
        let mut input = b"short\n".to_vec();
        input.extend(vec![b'x'; 100]);
        input.extend(b"\n{\"type\":\"output\",");
        input.extend(vec![b'y'; 60]);
        input.extend(b"\nlast");
        let mut lines = BoundedLines { large_cap: 200, ..BoundedLines::new(&input[..], 20) };
        assert_eq!(lines.next_line().await.unwrap().unwrap(), Line { text: "short".into(), cut_from: None });
        assert_eq!(lines.next_line().await.unwrap().unwrap(), Line { text: "x".repeat(20), cut_from: Some(100) });
        let large = lines.next_line().await.unwrap().unwrap();
        assert_eq!((large.text.len(), large.cut_from), (77, None), "outputs may be longer");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), Line { text: "last".into(), cut_from: None });
        assert_eq!(lines.next_line().await.unwrap(), None);
    }
}
