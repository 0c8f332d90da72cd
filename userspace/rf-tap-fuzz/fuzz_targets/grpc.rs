//! gRPC bodies from the network: length-prefixed messages (gzip-inflated when flagged),
//! protobuf decoded without a schema into trees, shown as text and JSON, and compared.
//! Never a panic; inflated messages within their bound; nesting bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rf_tap_engine::{
    compare::{compare, CompareOptions, ResponseView},
    grpc,
    http::message::Headers,
};

fuzz_target!(|data: &[u8]| {
    let (enc, body) = match data.split_first() {
        Some((0, b)) => (None, b),
        Some((1, b)) => (Some("gzip"), b),
        Some((2, b)) => (Some("deflate"), b),
        Some((_, b)) => (Some("identity"), b),
        None => return,
    };
    for m in grpc::messages(body, enc) {
        assert!(m.data.len() <= grpc::MAX_MESSAGE);
        let _ = grpc::message_text(&m, false);
        let _ = grpc::message_text(&m, true);
    }
    if let Some(tree) = grpc::decode(body) {
        let _ = grpc::tree_text(&tree);
        let _ = grpc::tree_json(&tree);
    }
    let mut h: Vec<(String, Vec<u8>)> = vec![
        ("content-type".into(), b"application/grpc".to_vec()),
        (
            "grpc-status".into(),
            body.get(..2).unwrap_or_default().to_vec(),
        ),
        (
            "grpc-message".into(),
            body.get(..16).unwrap_or_default().to_vec(),
        ),
    ];
    if let Some(e) = enc {
        h.push(("grpc-encoding".into(), e.as_bytes().to_vec()));
    }
    let headers: Headers = h.into();
    let _ = grpc::status(&headers);
    let _ = grpc::message(&headers);
    let _ = grpc::body_text(&headers, body);
    let half = body.len() / 2;
    let view = |b: &[u8]| ResponseView {
        status: 200,
        headers: headers.clone(),
        body: b.to_vec(),
        body_incomplete: false,
    };
    let _ = compare(
        &view(&body[..half]),
        &view(&body[half..]),
        &CompareOptions::default(),
    );
});
