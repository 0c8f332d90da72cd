//! Reading large inputs through a memory map without letting them fill the resident set.

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
