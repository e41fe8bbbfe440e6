//! A small Server-Sent Events reader for the client's `--follow` and
//! `--wait`: splits the byte stream into events (`id`, `event`, `data`).

use futures::stream::BoxStream;
use futures::StreamExt;

type ByteStream = BoxStream<'static, reqwest::Result<bytes::Bytes>>;

/// One event.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

pub struct SseReader {
    stream: ByteStream,
    buf: Vec<u8>,
    current: SseEvent,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader { stream: response.bytes_stream().boxed(), buf: Vec::new(), current: SseEvent::default() }
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    let event = std::mem::take(&mut self.current);
                    if !event.data.is_empty() || !event.event.is_empty() {
                        return Ok(Some(event));
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) =
                    line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                match field {
                    "id" => self.current.id = Some(value.to_owned()),
                    "event" => self.current.event = value.to_owned(),
                    "data" => {
                        if !self.current.data.is_empty() {
                            self.current.data.push('\n');
                        }
                        self.current.data.push_str(value);
                    }
                    _ => {}
                }
            }
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }
}
