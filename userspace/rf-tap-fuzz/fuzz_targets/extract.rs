//! A whole capture through the pipeline: reader, decoder, defragmenter, reassembly, HTTP
//! and exchange pairing, with small limits so eviction and budgets are exercised too.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rf_tap_engine::{
    flow::{extract_all, ExtractConfig},
    http::message::Limits,
};

fuzz_target!(|data: &[u8]| {
    let config = ExtractConfig {
        flow_buffer: 8192,
        max_flows: 16,
        held_budget: 32 << 10,
        idle_timeout: Duration::from_secs(30),
        reorder_window: Default::default(),
        http: Limits {
            max_head: 4096,
            keep_body: 4096,
        },
    };
    if let Ok((exchanges, _)) = extract_all(data, config) {
        for x in &exchanges {
            assert!(x.request.as_ref().is_none_or(|r| r.body.data.len() <= 4096));
            assert!(x
                .response
                .as_ref()
                .is_none_or(|r| r.body.data.len() <= 4096));
        }
    }
});
