//! Writing pcap/pcapng files: whole records only, rotation by size or time, stdout.
//!
//! Records are encoded into a buffer and reach the file in `write_all` calls that hold only
//! whole records, flushed at least every `FLUSH_INTERVAL`; so a capture killed even with
//! SIGKILL leaves a readable file up to its last whole record.

use std::{
    fs::File,
    io::{self, Write},
    mem::ManuallyDrop,
    os::fd::FromRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rf_tap_engine::{packet::CapturedPacket, pcap::FrameEncoder};

const FLUSH_BYTES: usize = 1 << 16;
/// Records per `writev` (well under IOV_MAX, 1024).
const IOV_GROUP: usize = 512;
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Where the capture goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    Stdout,
    File(PathBuf),
}

/// When to start a new file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Rotation {
    pub fn enabled(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
/// The cause is part of the message (and not a `source` too, which would print it twice).
#[error("cannot write {path}: {error}")]
pub struct SinkError {
    pub path: String,
    pub error: io::Error,
}

enum Out {
    File(File),
    /// fd 1, written without Rust's line buffering (which would cut records at newline bytes).
    Stdout(ManuallyDrop<File>),
}

impl Out {
    fn writer(&mut self) -> &mut File {
        match self {
            Self::File(f) => f,
            Self::Stdout(f) => f,
        }
    }
}

pub struct CaptureFileSink {
    encoder: FrameEncoder,
    target: OutputTarget,
    rotation: Rotation,
    out: Out,
    current_path: String,
    buf: Vec<u8>,
    file_bytes: u64,
    file_packets: u64,
    file_started: Instant,
    last_flush: Instant,
    files: Vec<String>,
    pub bytes_written: u64,
}

/// `capture.pcap` → `capture-000.pcap`, `capture-001.pcap`, ... when rotating.
pub fn rotated_name(base: &Path, index: u32) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "capture".into());
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{index:03}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index:03}"),
    };
    base.with_file_name(name)
}

fn create(path: &Path) -> Result<File, SinkError> {
    crate::output::create(path).map_err(|error| SinkError {
        path: path.display().to_string(),
        error,
    })
}

impl CaptureFileSink {
    /// Opens the first output and writes its file header. Fails before any capture starts
    /// when the output cannot be written.
    pub fn open(
        encoder: FrameEncoder,
        target: OutputTarget,
        rotation: Rotation,
    ) -> Result<Self, SinkError> {
        let (out, current_path) = match &target {
            OutputTarget::Stdout => (
                // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never
                // closes it.
                Out::Stdout(ManuallyDrop::new(unsafe { File::from_raw_fd(1) })),
                "standard output".to_string(),
            ),
            OutputTarget::File(p) => {
                let path = if rotation.enabled() {
                    rotated_name(p, 0)
                } else {
                    p.clone()
                };
                (Out::File(create(&path)?), path.display().to_string())
            }
        };
        let now = Instant::now();
        let mut sink = Self {
            encoder,
            target,
            rotation,
            out,
            files: vec![current_path.clone()],
            current_path,
            buf: Vec::with_capacity(FLUSH_BYTES + (1 << 17)),
            file_bytes: 0,
            file_packets: 0,
            file_started: now,
            last_flush: now,
            bytes_written: 0,
        };
        sink.start_file()?;
        Ok(sink)
    }

    fn err(&self, error: io::Error) -> SinkError {
        SinkError {
            path: self.current_path.clone(),
            error,
        }
    }

    fn start_file(&mut self) -> Result<(), SinkError> {
        self.encoder
            .file_header(&mut self.buf)
            .map_err(|e| self.err(e))?;
        self.file_packets = 0;
        self.file_started = Instant::now();
        // Write the header right away, so that even an empty capture is a valid file.
        self.flush()
    }

    /// Files written so far (one unless rotating).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        let OutputTarget::File(base) = &self.target else {
            return Ok(());
        };
        let path = rotated_name(base, self.files.len() as u32);
        let file = create(&path)?;
        if let Out::File(old) = &mut self.out {
            old.sync_data().map_err(|e| SinkError {
                path: self.current_path.clone(),
                error: e,
            })?;
        }
        self.out = Out::File(file);
        self.current_path = path.display().to_string();
        self.files.push(self.current_path.clone());
        self.file_bytes = 0;
        self.start_file()
    }

    /// Whether the current file has reached its rotation limit.
    fn due_for_rotation(&self, next_record: usize) -> bool {
        if self.file_packets == 0 {
            return false;
        }
        let size = self.file_bytes + (self.buf.len() + next_record) as u64;
        self.rotation.max_bytes.is_some_and(|m| size > m)
            || self
                .rotation
                .max_age
                .is_some_and(|a| self.file_started.elapsed() >= a)
    }

    pub fn write(&mut self, pkt: &CapturedPacket<'_>) -> Result<(), SinkError> {
        if self.rotation.enabled() && self.due_for_rotation(pkt.data.len() + 32) {
            self.rotate()?;
        }
        self.encoder
            .encode(pkt, &mut self.buf)
            .map_err(|e| self.err(e))?;
        self.file_packets += 1;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// The snap length up to which [`Self::write_pcap_records`] may be used: classic pcap
    /// output without rotation (rotation decides per record, so it takes the encoding path).
    pub fn takes_pcap_records(&self) -> Option<u32> {
        if self.rotation.enabled() {
            return None;
        }
        self.encoder.pcap_snaplen()
    }

    /// Appends records already in this file's pcap layout (a 16-byte header in host order,
    /// nanoseconds, then at most the snap length of data) from where they are, with one
    /// `writev` per group of records and no copy in userspace.
    pub fn write_pcap_records(&mut self, records: &[&[u8]]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        // Whatever is buffered goes first, so that records stay in order.
        self.flush()?;
        for group in records.chunks(IOV_GROUP) {
            let mut iov: Vec<io::IoSlice<'_>> = group.iter().map(|r| io::IoSlice::new(r)).collect();
            let total: usize = group.iter().map(|r| r.len()).sum();
            let mut left = &mut iov[..];
            while !left.is_empty() {
                match self.out.writer().write_vectored(left) {
                    Ok(0) => return Err(self.err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => io::IoSlice::advance_slices(&mut left, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.err(e)),
                }
            }
            self.file_bytes += total as u64;
            self.bytes_written += total as u64;
        }
        self.file_packets += records.len() as u64;
        Ok(())
    }

    /// Flushes when the interval has passed; call it regularly. Also rotates by time when
    /// the capture is idle.
    pub fn tick(&mut self) -> Result<(), SinkError> {
        if self.rotation.max_age.is_some() && self.due_for_rotation(0) {
            self.rotate()?;
        }
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.out.writer().write_all(&self.buf);
        if let Err(e) = res {
            self.buf.clear();
            return Err(self.err(e));
        }
        self.file_bytes += self.buf.len() as u64;
        self.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes and makes the file durable.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        if let Out::File(f) = &mut self.out {
            f.sync_data().map_err(|e| SinkError {
                path: self.current_path.clone(),
                error: e,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::{pcap::PcapReader, DataLink};
    use rf_tap_engine::pcap::{CaptureFormat, InterfaceInfo};

    fn encoder() -> FrameEncoder {
        FrameEncoder::new(
            CaptureFormat::Pcap,
            InterfaceInfo {
                name: "t0".into(),
                linktype: DataLink::ETHERNET,
                snaplen: 2000,
            },
        )
    }

    fn pkt(data: &[u8]) -> CapturedPacket<'_> {
        CapturedPacket {
            ts: Duration::from_secs(1),
            ifindex: 1,
            direction: None,
            orig_len: data.len() as u32,
            data,
        }
    }

    fn count_packets(path: &Path) -> usize {
        let f = File::open(path).unwrap();
        let mut r = PcapReader::new(f).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_raw_packet() {
            p.unwrap();
            n += 1;
        }
        n
    }

    #[test]
    fn rotated_names_keep_the_extension() {
        assert_eq!(
            rotated_name(Path::new("/tmp/cap.pcap"), 2),
            PathBuf::from("/tmp/cap-002.pcap")
        );
        assert_eq!(rotated_name(Path::new("cap"), 0), PathBuf::from("cap-000"));
    }

    #[test]
    fn rotates_by_size_and_every_file_is_whole() {
        let dir = std::env::temp_dir().join(format!("rf-tap-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("cap.pcap");
        let mut s = CaptureFileSink::open(
            encoder(),
            OutputTarget::File(base.clone()),
            Rotation {
                max_bytes: Some(5_000),
                max_age: None,
            },
        )
        .unwrap();
        for _ in 0..20 {
            s.write(&pkt(&[7u8; 1000])).unwrap();
        }
        s.finish().unwrap();
        let files = s.files().to_vec();
        assert!(files.len() >= 4, "{files:?}");
        let total: usize = files.iter().map(|f| count_packets(Path::new(f))).sum();
        assert_eq!(total, 20);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 5_000 + 24);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_output_fails_at_open() {
        let e = CaptureFileSink::open(
            encoder(),
            OutputTarget::File("/nonexistent-dir/x.pcap".into()),
            Rotation::default(),
        )
        .err()
        .unwrap();
        assert!(e
            .to_string()
            .starts_with("cannot write /nonexistent-dir/x.pcap"));
    }
}
