//! HPACK header blocks from an untrusted stream: never a panic, the dynamic table within
//! its limit, every string within the string limit. Then the same bytes as the frames of
//! an HTTP/2 connection (client after its preface, server), bodies within their limit; and
//! as a connection joined mid-stream (frames found by their shape), with a gap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::{
    analyzer::AppOut,
    http::message,
    http2::{
        conn::H2Connection,
        hpack::{Decoder, Limits},
    },
    reassembly::Origin,
};

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
    let mut h2 = H2Connection::new(message::Limits {
        max_head: 4096,
        keep_body: 4096,
    });
    let mut out = AppOut::default();
    let mid = data.len() / 2;
    let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    client.extend_from_slice(&data[..mid]);
    for (i, part) in client.chunks(7).enumerate() {
        h2.data(true, part, Origin::default(), &mut out);
        if i % 3 == 0 {
            h2.data(
                false,
                &data[mid..][..(i % 5).min(data.len() - mid)],
                Origin::default(),
                &mut out,
            );
        }
    }
    h2.data(false, &data[mid..], Origin::default(), &mut out);
    h2.finish(&mut out);
    let mut joined = H2Connection::mid_stream(message::Limits {
        max_head: 4096,
        keep_body: 4096,
    });
    for (i, part) in data.chunks(11).enumerate() {
        joined.data(i % 2 == 0, part, Origin::default(), &mut out);
        if i == 3 {
            joined.gap(true, 100, &mut out);
        }
    }
    joined.finish(&mut out);
    let _ = rf_tap_engine::http2::conn::find_frames(data, 0, true);
    for p in &out.paired {
        assert!(p.request.as_ref().is_none_or(|q| q.body.data.len() <= 4096));
        assert!(p
            .response
            .as_ref()
            .is_none_or(|r| r.body.data.len() <= 4096));
    }
});
