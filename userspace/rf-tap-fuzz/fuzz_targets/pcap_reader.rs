//! Any bytes as a pcap or pcapng file: the reader yields frames or one error, never panics,
//! and never hands out a frame that is not inside the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::pcap::reader::CaptureReader;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = CaptureReader::new(data) else {
        return;
    };
    let mut last = 0;
    for frame in reader {
        let Ok(f) = frame else {
            break;
        };
        assert!(f.data.len() <= data.len());
        assert!(f.number > last, "frame numbers go up");
        last = f.number;
    }
});
