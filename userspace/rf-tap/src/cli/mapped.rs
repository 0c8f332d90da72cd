//! Reading large inputs through a memory map without letting them fill the resident set.

use anyhow::Context as _;

/// Opens and maps an input file (a capture or an archive), read-only. A directory or a
/// special file is refused by name.
pub fn open(path: &std::path::Path) -> anyhow::Result<memmap2::Mmap> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!(
            "{} is a directory, not a capture or an archive",
            path.display()
        );
    }
    if !meta.is_file() {
        anyhow::bail!(
            "{} is not a regular file (a pipe or a device cannot be mapped; save it to a file first)",
            path.display()
        );
    }
    // SAFETY: the map is read-only; a file changed underneath could only yield odd bytes,
    // which the readers treat like any other untrusted input.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
}

/// `--strict`: reads the whole input first (a capture's records, an archive's frames and
/// their checksums) and refuses it at its first damage, before anything is done.
pub fn refuse_damaged(path: &std::path::Path, map: &memmap2::Mmap) -> anyhow::Result<()> {
    use rf_tap_engine::{archive::ArchiveReader, pcap::reader::CaptureReader};
    let damage = if ArchiveReader::sniff(map) {
        let mut r = ArchiveReader::new(map)?;
        // A frame whose checksums hold but whose payload does not decode is damage too.
        let undecodable = r.by_ref().find_map(|block| block.exchanges().err());
        r.damage()
            .first()
            .map(ToString::to_string)
            .or_else(|| undecodable.map(|e| e.to_string()))
            .or_else(|| r.stopped.as_ref().map(ToString::to_string))
            .or_else(|| {
                r.incomplete()
                    .then(|| "no end frame (cut, or still being written)".to_string())
            })
    } else {
        CaptureReader::new(map)?
            .find_map(Result::err)
            .map(|e| e.to_string())
    };
    match damage {
        Some(d) => anyhow::bail!("{}: {d} (--strict: nothing was done)", path.display()),
        None => Ok(()),
    }
}

/// How much is parsed between two releases.
const RELEASE_EVERY: usize = 64 << 20;

/// Tracks how much of a mapping has been parsed and gives those pages back to the kernel,
/// so that the resident size stays bounded whatever the file size.
pub struct Releaser {
    released: usize,
}

impl Releaser {
    pub fn new(map: &memmap2::Mmap) -> Self {
        let _ = map.advise(memmap2::Advice::Sequential);
        Self { released: 0 }
    }

    /// Everything before `offset` has been parsed (and copied where still needed).
    pub fn parsed_up_to(&mut self, map: &memmap2::Mmap, offset: usize) {
        if offset < self.released + RELEASE_EVERY {
            return;
        }
        let page = 4096;
        let end = (offset / page) * page;
        if end <= self.released {
            return;
        }
        // SAFETY: the map is a read-only, file-backed shared mapping: MADV_DONTNEED only drops
        // our page-table entries, and any later access faults the same bytes back in from the
        // page cache, so no reader can observe different data.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released,
                end - self.released,
            )
        };
        self.released = end;
    }
}
