//! Where exchanges go: one trait, and the JSONL, HAR and rfcap sinks that `extract` and the
//! live pipeline (`attach --rfcap/--jsonl/--har`) share.
//!
//! A sink names its file in every error. Standard output closed by its reader (`| head`)
//! is [`SinkError::Closed`], which ends the pipeline quietly; any other failure (a full disk)
//! ends it with one line and a non-zero exit.

use std::{
    io::{BufWriter, Write},
    path::Path,
    time::Duration,
};

use rf_tap_engine::{
    archive::ArchiveWriter,
    flow::RequestEvent,
    har::{self, HAR_PREFIX, HAR_SUFFIX},
    http::exchange::Exchange,
    redact::Redaction,
};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader of standard output went away.
    #[error("standard output was closed")]
    Closed,
    #[error("cannot write {file}: {error}")]
    Write { file: String, error: std::io::Error },
}

impl SinkError {
    fn io(file: &str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            SinkError::Closed
        } else {
            SinkError::Write {
                file: file.to_string(),
                error: e,
            }
        }
    }
}

fn archive_error(file: &str, e: rf_tap_engine::archive::ArchiveError) -> SinkError {
    match e {
        rf_tap_engine::archive::ArchiveError::Io(e) => SinkError::io(file, e),
        other => SinkError::Write {
            file: file.to_string(),
            error: std::io::Error::other(other.to_string()),
        },
    }
}

/// A destination of the exchange pipeline (the live pipeline's, on its writer thread, are
/// also `Send`).
pub trait Sink {
    /// Whether request events (before their responses) are wanted.
    fn wants_requests(&self) -> bool {
        false
    }
    fn request(&mut self, _r: &RequestEvent) -> Result<(), SinkError> {
        Ok(())
    }
    /// An exchange, numbered.
    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError>;
    /// Makes what was written so far visible to readers (called when the pipeline is idle
    /// and at least every second).
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Completes the output; returns the bytes written.
    fn finish(self: Box<Self>) -> Result<u64, SinkError>;
}

/// Counts what reaches the writer under the buffer.
struct Counted {
    inner: Box<dyn Write + Send>,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A byte stream a text sink writes to: a file or standard output.
pub struct Text {
    out: BufWriter<Counted>,
    name: String,
}

impl Text {
    /// `-` is standard output.
    pub fn open(path: &str) -> anyhow::Result<Self> {
        let (w, name): (Box<dyn Write + Send>, String) = if path == "-" {
            (Box::new(std::io::stdout()), "standard output".into())
        } else {
            let f = crate::output::create(Path::new(path))
                .map_err(|e| anyhow::anyhow!("cannot write {path}: {e}"))?;
            (Box::new(f), path.to_string())
        };
        Ok(Self {
            out: BufWriter::with_capacity(1 << 16, Counted { inner: w, bytes: 0 }),
            name,
        })
    }

    fn put(&mut self, b: &[u8]) -> Result<(), SinkError> {
        self.out
            .write_all(b)
            .map_err(|e| SinkError::io(&self.name, e))
    }

    fn json<T: serde::Serialize>(&mut self, v: &T) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.out, v).map_err(|e| {
            let e: std::io::Error = e.into();
            SinkError::io(&self.name, e)
        })
    }

    /// Flushes and returns every byte written.
    fn finish(&mut self) -> Result<u64, SinkError> {
        self.flush()?;
        Ok(self.out.get_ref().bytes)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(&self.name, e))
    }
}

/// JSON lines, the contract `extract` documents. With `events`, every line also has
/// `"event": "request"` or `"event": "exchange"`, and requests come as soon as they are
/// complete.
pub struct Jsonl {
    text: Text,
    events: bool,
    redaction: Redaction,
}

impl Jsonl {
    /// `redaction`: secret query parameters in `uri` are masked.
    pub fn new(text: Text, events: bool, redaction: Redaction) -> Self {
        Self {
            text,
            events,
            redaction,
        }
    }
}

/// A request event's JSON line.
#[derive(serde::Serialize)]
struct RequestLine<'a> {
    event: &'static str,
    conn: u64,
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    ts: f64,
    method: &'a str,
    uri: std::borrow::Cow<'a, str>,
    version: &'a str,
    host: Option<String>,
    request_body_len: u64,
    first_frame: u64,
    last_frame: u64,
}

#[derive(serde::Serialize)]
struct Tagged<T> {
    event: &'static str,
    #[serde(flatten)]
    record: T,
}

impl Sink for Jsonl {
    fn wants_requests(&self) -> bool {
        self.events
    }

    fn request(&mut self, r: &RequestEvent) -> Result<(), SinkError> {
        let q = &r.request;
        let line = RequestLine {
            event: "request",
            conn: r.conn,
            client: r.client,
            server: r.server,
            ts: q.start.ts.as_secs_f64(),
            method: &q.method,
            uri: self.redaction.target(&q.target),
            version: &q.version,
            host: q.headers.get_str("host").map(|h| h.into_owned()),
            request_body_len: q.body.len,
            first_frame: q.start.frame,
            last_frame: q.end.frame,
        };
        self.text.json(&line)?;
        self.text.put(b"\n")
    }

    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError> {
        let record = x.to_json(&self.redaction);
        if self.events {
            self.text.json(&Tagged {
                event: "exchange",
                record,
            })?;
        } else {
            self.text.json(&record)?;
        }
        self.text.put(b"\n")
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.text.flush()
    }

    fn finish(mut self: Box<Self>) -> Result<u64, SinkError> {
        self.text.finish()
    }
}

/// One HAR 1.2 document, streamed: the prefix at the start, entries, the suffix at the end
/// (a live HAR file is a whole document only once the capture has stopped).
pub struct Har {
    text: Text,
    entries: u64,
    redaction: Redaction,
}

impl Har {
    /// `redaction`: applied to every entry (headers, cookies, query string, bodies).
    pub fn new(mut text: Text, redaction: Redaction) -> Result<Self, SinkError> {
        text.put(HAR_PREFIX.as_bytes())?;
        Ok(Self {
            text,
            entries: 0,
            redaction,
        })
    }
}

impl Sink for Har {
    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError> {
        if self.entries > 0 {
            self.text.put(b",")?;
        }
        self.entries += 1;
        self.text.json(&har::entry(&self.redaction.exchange(x)))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.text.flush()
    }

    fn finish(mut self: Box<Self>) -> Result<u64, SinkError> {
        self.text.put(HAR_SUFFIX.as_bytes())?;
        self.text.finish()
    }
}

/// An .rfcap archive. `Live` appends in place (readable while the capture runs, a block
/// flushed at least every second); `Whole` writes beside the destination and renames it
/// over it once complete.
pub enum Rfcap {
    Live {
        writer: Box<ArchiveWriter<std::fs::File>>,
        name: String,
        last_flush: std::time::Instant,
    },
    Whole {
        pending: Box<super::live::PendingArchive>,
        name: String,
    },
}

impl Rfcap {
    pub fn live(path: &Path) -> anyhow::Result<Self> {
        Ok(Rfcap::Live {
            writer: Box::new(super::live::create_archive(path)?),
            name: path.display().to_string(),
            last_flush: std::time::Instant::now(),
        })
    }

    pub fn whole(path: &Path) -> anyhow::Result<Self> {
        Ok(Rfcap::Whole {
            pending: Box::new(super::live::PendingArchive::create(path)?),
            name: path.display().to_string(),
        })
    }
}

impl Sink for Rfcap {
    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError> {
        match self {
            Rfcap::Live { writer, name, .. } => {
                writer.append(x.clone()).map_err(|e| archive_error(name, e))
            }
            Rfcap::Whole { pending, name } => pending
                .writer()
                .map_err(|e| SinkError::Write {
                    file: name.clone(),
                    error: std::io::Error::other(e.to_string()),
                })?
                .append(x.clone())
                .map_err(|e| archive_error(name, e)),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // A whole archive is only read once renamed: its blocks fill up to their size.
        if let Rfcap::Live {
            writer,
            name,
            last_flush,
        } = self
        {
            if last_flush.elapsed() >= Duration::from_secs(1) {
                *last_flush = std::time::Instant::now();
                writer.flush_block().map_err(|e| archive_error(name, e))?;
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64, SinkError> {
        match *self {
            Rfcap::Live { writer, name, .. } => {
                let file = writer.finish().map_err(|e| archive_error(&name, e))?;
                file.sync_all().map_err(|e| SinkError::io(&name, e))?;
                file.metadata()
                    .map(|m| m.len())
                    .map_err(|e| SinkError::io(&name, e))
            }
            Rfcap::Whole { pending, name } => pending.commit().map_err(|e| SinkError::Write {
                file: name,
                error: std::io::Error::other(e.root_cause().to_string()),
            }),
        }
    }
}
