//! Both sides of an HTTP/1.x conversation, cut at fuzzer-chosen places, with gaps and an
//! early close: the parsers keep every message within their limits and never panic.
#![no_main]
use std::{collections::VecDeque, time::Duration};

use libfuzzer_sys::fuzz_target;
use rf_tap_engine::{
    http::message::{Limits, MessageParser, Parsed, Side},
    reassembly::Origin,
};

fuzz_target!(|data: &[u8]| {
    // First byte: where the request bytes end; second: how to cut the pieces.
    let [split, cut, rest @ ..] = data else {
        return;
    };
    let at = (*split as usize * rest.len()) / 255;
    let (requests, responses) = rest.split_at(at.min(rest.len()));
    let limits = Limits {
        max_head: 2048,
        keep_body: 1024,
    };
    let mut client = MessageParser::new(Side::Client, limits);
    let mut server = MessageParser::new(Side::Server, limits);
    let mut methods = VecDeque::new();
    let mut out = Vec::new();
    let step = (*cut as usize % 61) + 1;
    let origin = Origin {
        ts: Duration::ZERO,
        frame: 1,
    };
    for (i, piece) in requests.chunks(step).enumerate() {
        if *cut >= 250 && i == 2 {
            client.gap(piece.len() as u64, &mut out);
            continue;
        }
        client.data(piece, origin, &methods, &mut out);
        for p in out.drain(..) {
            if let Parsed::Request(r) = p {
                assert!(r.body.data.len() <= limits.keep_body);
                methods.push_back(r.method.clone());
            }
        }
    }
    client.close(&mut out);
    for piece in responses.chunks(step) {
        server.data(piece, origin, &methods, &mut out);
        for p in out.drain(..) {
            if let Parsed::Response(r) = p {
                assert!(r.body.data.len() <= limits.keep_body);
                methods.pop_front();
            }
        }
    }
    server.close(&mut out);
});
