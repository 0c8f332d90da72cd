//! HAR 1.2 export (http://www.softwareishard.com/blog/har-12-spec/): one entry per
//! exchange, streamed (`HAR_PREFIX`, entries joined by commas, `HAR_SUFFIX`) so that a
//! large capture never has to be held in memory.

use serde_json::{json, Value};

use crate::{http::exchange::Exchange, query::rfc3339};

pub const HAR_PREFIX: &str = concat!(
    r#"{"log":{"version":"1.2","creator":{"name":"rf-tap","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""},"pages":[],"entries":["#
);
pub const HAR_SUFFIX: &str = "]}}\n";

fn headers(h: &[(String, Vec<u8>)]) -> Vec<Value> {
    h.iter()
        .map(|(n, v)| json!({"name": n, "value": String::from_utf8_lossy(v)}))
        .collect()
}

fn cookies(h: &[(String, Vec<u8>)], name: &str) -> Vec<Value> {
    h.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| {
            let v = String::from_utf8_lossy(v).into_owned();
            let pairs: Vec<String> = if name.eq_ignore_ascii_case("set-cookie") {
                v.split(';')
                    .next()
                    .map(str::to_string)
                    .into_iter()
                    .collect()
            } else {
                v.split(';').map(str::to_string).collect()
            };
            pairs
        })
        .filter_map(|kv| {
            kv.trim()
                .split_once('=')
                .map(|(k, v)| json!({"name": k, "value": v}))
        })
        .collect()
}

fn content(data: &[u8], len: u64, mime: &str) -> Value {
    match std::str::from_utf8(data) {
        Ok(t) => json!({"size": len, "mimeType": mime, "text": t}),
        Err(_) => {
            use base64::Engine as _;
            json!({"size": len, "mimeType": mime, "text": base64::engine::general_purpose::STANDARD.encode(data), "encoding": "base64"})
        }
    }
}

/// One HAR entry. Times in milliseconds; `-1` where HAR says "not applicable".
pub fn entry(x: &Exchange) -> Value {
    let q = x.request.as_ref();
    let r = x.response.as_ref();
    let host = q
        .and_then(|q| q.headers.get_str("host").map(|h| h.into_owned()))
        .unwrap_or_else(|| x.server.to_string());
    let target = q.map(|q| q.target.as_str()).unwrap_or("/");
    let url = if target.starts_with("http://") || target.starts_with("https://") {
        target.to_string()
    } else {
        format!(
            "http://{host}{}",
            if target.starts_with('/') {
                target.to_string()
            } else {
                format!("/{target}")
            }
        )
    };
    let query: Vec<Value> = target
        .split_once('?')
        .map(|(_, qs)| {
            qs.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    json!({"name": k, "value": v})
                })
                .collect()
        })
        .unwrap_or_default();
    let wait = x.latency_ms().unwrap_or(0.0);
    let send = q
        .map(|q| q.end.ts.saturating_sub(q.start.ts).as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let receive = r
        .map(|r| r.end.ts.saturating_sub(r.start.ts).as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let mut request = json!({
        "method": q.map(|q| q.method.as_str()).unwrap_or(""),
        "url": url,
        "httpVersion": format!("HTTP/{}", q.map(|q| q.version.as_str()).unwrap_or("1.1")),
        "cookies": q.map(|q| cookies(&q.headers, "cookie")).unwrap_or_default(),
        "headers": q.map(|q| headers(&q.headers)).unwrap_or_default(),
        "queryString": query,
        "headersSize": -1,
        "bodySize": q.map(|q| q.body.wire_len as i64).unwrap_or(0),
    });
    if let Some(q) = q.filter(|q| q.body.len > 0) {
        let mime = q
            .headers
            .get_str("content-type")
            .map(|m| m.into_owned())
            .unwrap_or_default();
        request["postData"] =
            json!({"mimeType": mime, "text": String::from_utf8_lossy(&q.body.data)});
    }
    let response = match r {
        Some(r) => {
            let mime = r
                .headers
                .get_str("content-type")
                .map(|m| m.into_owned())
                .unwrap_or_default();
            json!({
                "status": r.status,
                "statusText": r.reason,
                "httpVersion": format!("HTTP/{}", r.version),
                "cookies": cookies(&r.headers, "set-cookie"),
                "headers": headers(&r.headers),
                "content": content(&r.body.data, r.body.len, &mime),
                "redirectURL": r.headers.get_str("location").map(|l| l.into_owned()).unwrap_or_default(),
                "headersSize": -1,
                "bodySize": r.body.wire_len as i64,
            })
        }
        // HAR requires a response object: status 0 marks "none captured" (as browsers do
        // for aborted requests).
        None => json!({
            "status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
            "content": {"size": 0, "mimeType": ""}, "redirectURL": "", "headersSize": -1, "bodySize": -1,
        }),
    };
    json!({
        "startedDateTime": rfc3339(x.start().ts),
        "time": send + wait + receive,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": send, "wait": wait, "receive": receive},
        "serverIPAddress": x.server.ip().to_string(),
        "connection": x.conn.to_string(),
        "comment": x.flags.names().join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{extract_all, ExtractConfig};

    /// Checks an entry against the HAR 1.2 spec's required fields and types.
    fn check_entry(e: &Value) {
        let obj = |v: &Value, k: &str| assert!(v[k].is_object(), "{k} must be an object: {v}");
        let arr = |v: &Value, k: &str| assert!(v[k].is_array(), "{k} must be an array: {v}");
        let num = |v: &Value, k: &str| assert!(v[k].is_number(), "{k} must be a number: {v}");
        let s = |v: &Value, k: &str| assert!(v[k].is_string(), "{k} must be a string: {v}");
        s(e, "startedDateTime");
        num(e, "time");
        for k in ["request", "response", "cache", "timings"] {
            obj(e, k);
        }
        let q = &e["request"];
        for k in ["method", "url", "httpVersion"] {
            s(q, k);
        }
        for k in ["cookies", "headers", "queryString"] {
            arr(q, k);
        }
        num(q, "headersSize");
        num(q, "bodySize");
        let r = &e["response"];
        num(r, "status");
        for k in ["statusText", "httpVersion", "redirectURL"] {
            s(r, k);
        }
        for k in ["cookies", "headers"] {
            arr(r, k);
        }
        obj(r, "content");
        num(&r["content"], "size");
        s(&r["content"], "mimeType");
        for k in ["send", "wait", "receive"] {
            num(&e["timings"], k);
        }
        let t = e["startedDateTime"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }

    #[test]
    fn entries_of_a_real_capture_follow_the_spec() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../pcaps/http-keepalive-get-post.pcap"
        ))
        .unwrap();
        let (out, _) = extract_all(&bytes, ExtractConfig::default()).unwrap();
        let entries: Vec<String> = out.iter().map(|x| entry(x).to_string()).collect();
        let doc = format!("{HAR_PREFIX}{}{HAR_SUFFIX}", entries.join(","));
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["log"]["version"], "1.2");
        assert!(v["log"]["creator"]["name"].is_string());
        let es = v["log"]["entries"].as_array().unwrap();
        assert_eq!(es.len(), 4);
        es.iter().for_each(check_entry);
        assert_eq!(es[0]["request"]["url"], "http://10.9.0.2/api/users/u_1");
        assert_eq!(
            es[3]["request"]["postData"]["text"],
            r#"{"name":"new user"}"#
        );
        assert_eq!(es[3]["response"]["status"], 405);
    }
}
