//! Any bytes as an rfcap archive: header, frames, checksums and compressed exchanges are
//! checked, never trusted; a bad archive stops the reader with an error, never a panic or a
//! huge allocation, and every block before it reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::archive::ArchiveReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = ArchiveReader::new(data) else {
        return;
    };
    for block in reader.by_ref() {
        let _ = block.exchanges();
    }
    assert!(reader.valid_len() <= data.len());
});
