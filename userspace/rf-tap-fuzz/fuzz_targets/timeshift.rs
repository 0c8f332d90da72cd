//! What `--shift-time` and `rf-tap mock` read from a captured request (header values, query
//! strings, JSON bodies, JWTs): never a panic, and output that stays bounded by the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::{
    http::message::Request,
    mock::{MockIndex, MockOptions},
    replay::http::timeshift::{JwtKey, Shifted, TimeShift},
};

fuzz_target!(|data: &[u8]| {
    let [by, rest @ ..] = data else {
        return;
    };
    let key = JwtKey::from_file_bytes(b"fuzz-secret").ok();
    let s = TimeShift::new(i64::from(*by) * 3_600 - 200_000, 1_764_648_000, key);
    let mut n = Shifted::default();
    let text = String::from_utf8_lossy(rest);
    let moved = s.text(&text, &mut n);
    assert!(moved.len() <= text.len() + 16 * (n.timestamps as usize + 1));
    let _ = s.target(&format!("/p?{text}"), &mut n);
    let _ = s.json_body(rest, &mut n);
    let _ = s.header("Authorization", format!("Bearer {text}").as_bytes(), &mut n);
    let _ = s.header("X-At", rest, &mut n);
    // A mock's signature of the same bytes as target and body.
    let q = Request {
        method: "POST".into(),
        target: format!("/p?{text}"),
        body: rf_tap_engine::http::body::Body {
            data: rest.to_vec(),
            len: rest.len() as u64,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut ix = MockIndex::new(MockOptions::default());
    let _ = ix.lookup(&q, true);
});
