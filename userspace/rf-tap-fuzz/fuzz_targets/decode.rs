//! One frame of any supported link type through the wire decoder, tunnels included.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::wire::{self, Transport};

const LINKS: [u32; 14] = wire::DECODED_LINKTYPES;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let linktype = LINKS[pick as usize % LINKS.len()];
    let Ok(mut ip) = wire::ip_packet(linktype, frame, frame.len() as u32) else {
        return;
    };
    for depth in 0..8 {
        match wire::transport(&ip, depth) {
            Ok(Transport::Tcp(seg)) => {
                assert!(seg.payload.len() <= frame.len());
                break;
            }
            Ok(Transport::Inner(inner)) => ip = inner,
            Err(_) => break,
        }
    }
});
