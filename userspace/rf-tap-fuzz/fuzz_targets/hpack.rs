//! HPACK header blocks from an untrusted stream: never a panic, the dynamic table within
//! its limit, every string within the string limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::http2::hpack::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_string: 1024,
        max_fields: 64,
        max_table: 4096,
    };
    let mut d = Decoder::new(4096, limits);
    // Blocks separated by 0xfe, so one input is several
    // blocks sharing one table.
    for block in data.split(|b| *b == 0xfe) {
        if let Ok(b) = d.decode(block) {
            assert!(b.fields.len() <= 64);
            for f in &b.fields {
                assert!(f.name.as_ref().is_none_or(|n| n.len() <= 1024));
                assert!(f.value.as_ref().is_none_or(|v| v.len() <= 1024));
            }
        }
        assert!(d.table_size() <= 4096);
    }
});
