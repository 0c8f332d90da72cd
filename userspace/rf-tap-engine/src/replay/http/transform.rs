//! What is changed in a captured request before it is sent to the target: the Host header
//! (the target's by default), headers set or removed, the URL rewritten, and the runtime
//! variables `{{now}}`, `{{now_epoch}}`, `{{now_epoch_ms}}` and `{{uuid}}` expanded in what
//! the user wrote (set header values and URL replacements).

use std::{fmt::Write as _, str::FromStr, time::Duration};

use regex::Regex;

use super::plan::ReplayRequest;
use crate::{query::rfc3339, redact::Redaction};

/// Headers that belong to one connection, or that rf-tap recomputes: never copied.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// The Host header sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// The target's authority (`staging:8080`).
    Target(String),
    /// As captured.
    Original,
    /// This value.
    Fixed(String),
}

/// `REGEX:REPLACEMENT` (GoReplay's `--http-rewrite-url` form: split at the first `:`),
/// applied to the request target (path and query). `$1` names a group.
#[derive(Clone, Debug)]
pub struct UrlRewrite {
    re: Regex,
    to: String,
}

impl FromStr for UrlRewrite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (from, to) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: use REGEX:REPLACEMENT, e.g. '^/v1/(.*):/v2/$1'"))?;
        let re = Regex::new(from).map_err(|e| format!("`{from}` is not a regex: {e}"))?;
        Ok(Self {
            re,
            to: to.to_string(),
        })
    }
}

/// `Name: value` for a header set on every request.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: use 'Name: value'"))?;
    let n = n.trim();
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("`{n}` is not a header name"));
    }
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("the value of {n} has a line break"));
    }
    Ok((n.to_string(), v.trim().to_string()))
}

/// Values of the runtime variables for one request.
#[derive(Clone, Copy, Debug)]
pub struct Vars {
    /// Wall-clock time since the Unix epoch.
    pub now: Duration,
    /// 16 random bytes (made a version-4 UUID).
    pub random: [u8; 16],
}

impl Vars {
    pub fn uuid(&self) -> String {
        let mut b = self.random;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, x) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            let _ = write!(s, "{x:02x}");
        }
        s
    }

    /// Expands `{{now}}` (ISO 8601, UTC, milliseconds), `{{now_epoch}}` (seconds),
    /// `{{now_epoch_ms}}` and `{{uuid}}`; other text is left as written.
    pub fn expand(&self, template: &str) -> String {
        if !template.contains("{{") {
            return template.to_string();
        }
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                out.push_str(&rest[open..]);
                return out;
            };
            match after[..close].trim() {
                "now" => out.push_str(&rfc3339(self.now)),
                "now_epoch" => {
                    let _ = write!(out, "{}", self.now.as_secs());
                }
                "now_epoch_ms" => {
                    let _ = write!(out, "{}", self.now.as_millis());
                }
                "uuid" => out.push_str(&self.uuid()),
                _ => out.push_str(&rest[open..open + 2 + close + 2]),
            }
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Every change made to a request before it is sent.
#[derive(Clone, Debug)]
pub struct Transform {
    pub host: HostHeader,
    /// Headers set (replacing any captured header of that name), values expanded.
    pub set: Vec<(String, String)>,
    /// Header names removed (any case).
    pub remove: Vec<String>,
    pub rewrite_url: Vec<UrlRewrite>,
    /// Prepended to every request target (the path of the `--target` URL, without its
    /// trailing slash).
    pub path_prefix: String,
    /// JSON body fields whose values are replaced by `****` before sending
    /// (`--scrub-field`: personal data that a staging target must not get).
    pub scrub: Redaction,
    /// `--shift-time`: timestamps moved by the capture's age, JWTs re-signed.
    pub shift: Option<std::sync::Arc<super::timeshift::TimeShift>>,
}

impl Transform {
    pub fn new(host: HostHeader) -> Self {
        Self {
            host,
            set: Vec::new(),
            remove: Vec::new(),
            rewrite_url: Vec::new(),
            path_prefix: String::new(),
            scrub: Redaction::only_fields(&[]),
            shift: None,
        }
    }

    /// Whether anything written by the user holds a `{{variable}}` (else [`Vars`] are not
    /// needed and can be left at zero).
    pub fn uses_variables(&self) -> bool {
        self.set.iter().any(|(_, v)| v.contains("{{"))
            || self.rewrite_url.iter().any(|r| r.to.contains("{{"))
    }

    /// The request target after rewriting.
    pub fn target(&self, req: &ReplayRequest, vars: &Vars) -> String {
        let mut t = req.target.clone();
        for r in &self.rewrite_url {
            if r.re.is_match(&t) {
                t = r.re.replace(&t, vars.expand(&r.to).as_str()).into_owned();
            }
        }
        // An absolute-form target (a request sent to a proxy) becomes origin-form.
        if let Some(rest) = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"))
        {
            t = rest.find('/').map_or("/".into(), |i| rest[i..].to_string());
        }
        if !self.path_prefix.is_empty() {
            t = format!("{}{}", self.path_prefix, t);
        }
        t
    }

    /// Writes the HTTP/1.1 request to send into `out`.
    pub fn build(&self, req: &ReplayRequest, vars: &Vars, out: &mut Vec<u8>) {
        out.clear();
        let mut shifted = super::timeshift::Shifted::default();
        let target = self.target(req, vars);
        let target = match self.shift.as_deref() {
            Some(s) => s.target(&target, &mut shifted),
            None => target,
        };
        out.extend_from_slice(req.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let dropped = |n: &str| {
            HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(n))
                || self.remove.iter().any(|r| r.eq_ignore_ascii_case(n))
                || self.set.iter().any(|(s, _)| s.eq_ignore_ascii_case(n))
                // The body is sent decoded (the capture keeps it that way).
                || n.eq_ignore_ascii_case("content-encoding")
        };
        let host_removed = self.remove.iter().any(|r| r.eq_ignore_ascii_case("host"));
        let mut wrote_host = false;
        let header = |out: &mut Vec<u8>, n: &str, v: &[u8]| {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        };
        let shift = self.shift.as_deref();
        let mut captured = |out: &mut Vec<u8>, n: &str, v: &[u8]| match shift {
            Some(s) => {
                let moved = s.header(n, v, &mut shifted);
                header(out, n, &moved)
            }
            None => header(out, n, v),
        };
        for (n, v) in &req.headers {
            if n.eq_ignore_ascii_case("host") {
                if wrote_host
                    || host_removed
                    || self.set.iter().any(|(s, _)| s.eq_ignore_ascii_case(n))
                {
                    continue;
                }
                wrote_host = true;
                match &self.host {
                    HostHeader::Original => captured(out, n, v),
                    HostHeader::Target(h) | HostHeader::Fixed(h) => header(out, n, h.as_bytes()),
                }
                continue;
            }
            if !dropped(n) {
                captured(out, n, v);
            }
        }
        if !wrote_host
            && !host_removed
            && !self.set.iter().any(|(s, _)| s.eq_ignore_ascii_case("host"))
        {
            match &self.host {
                HostHeader::Target(h) | HostHeader::Fixed(h) => header(out, "Host", h.as_bytes()),
                HostHeader::Original => {}
            }
        }
        for (n, v) in &self.set {
            header(out, n, vars.expand(v).as_bytes());
        }
        let body = if self.scrub.is_on() {
            let ct = req.headers.get_str("content-type");
            self.scrub.body(ct.as_deref(), &req.body)
        } else {
            std::borrow::Cow::Borrowed(&req.body[..])
        };
        let body = match shift.and_then(|s| s.json_body(&body, &mut shifted)) {
            Some(moved) => std::borrow::Cow::Owned(moved),
            None => body,
        };
        if let Some(s) = shift {
            s.add(shifted);
        }
        let needs_length = !body.is_empty()
            || ["POST", "PUT", "PATCH"]
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&req.method));
        if needs_length {
            header(out, "Content-Length", body.len().to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> ReplayRequest {
        ReplayRequest {
            id: 1,
            conn: 1,
            at: Duration::ZERO,
            method: method.into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            prod: None,
            prod_latency_ms: None,
            partial: false,
        }
    }

    fn vars() -> Vars {
        Vars {
            now: Duration::from_millis(1_763_719_200_123),
            random: [0xab; 16],
        }
    }

    fn text(t: &Transform, r: &ReplayRequest) -> String {
        let mut out = Vec::new();
        t.build(r, &vars(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn host_is_the_targets_and_hop_by_hop_headers_go() {
        let r = req(
            "GET",
            "/a?b=1",
            &[
                ("Host", "prod.example"),
                ("Connection", "close"),
                ("Accept", "*/*"),
                ("Transfer-Encoding", "chunked"),
            ],
            b"",
        );
        let t = Transform::new(HostHeader::Target("staging:8080".into()));
        assert_eq!(
            text(&t, &r),
            "GET /a?b=1 HTTP/1.1\r\nHost: staging:8080\r\nAccept: */*\r\n\r\n"
        );
        let keep = Transform::new(HostHeader::Original);
        assert!(text(&keep, &r).contains("Host: prod.example\r\n"));
    }

    #[test]
    fn bodies_get_their_length_and_writes_always_have_one() {
        let t = Transform::new(HostHeader::Target("t".into()));
        let r = req("POST", "/x", &[("Content-Length", "99")], b"hello");
        assert!(text(&t, &r).ends_with("Content-Length: 5\r\n\r\nhello"));
        let empty = req("PUT", "/x", &[], b"");
        assert!(text(&t, &empty).ends_with("Content-Length: 0\r\n\r\n"));
        assert!(!text(&t, &req("GET", "/", &[], b"")).contains("Content-Length"));
    }

    #[test]
    fn scrubbed_fields_are_masked_in_what_is_sent_with_the_length_to_match() {
        let body = br#"{"user":"ann","ssn":"123-45-6789","password":"kept"}"#;
        let r = req(
            "POST",
            "/signup",
            &[("Host", "prod"), ("Content-Type", "application/json")],
            body,
        );
        let mut t = Transform::new(HostHeader::Original);
        let mut out = Vec::new();
        t.build(&r, &vars(), &mut out);
        assert!(out.ends_with(body), "nothing scrubbed unless asked");
        t.scrub = Redaction::only_fields(&["$.ssn".parse().unwrap()]);
        t.build(&r, &vars(), &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, sent) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(sent, r#"{"password":"kept","ssn":"****","user":"ann"}"#);
        assert!(
            head.contains(&format!("Content-Length: {}", sent.len())),
            "{head}"
        );
    }

    #[test]
    fn headers_set_and_removed_with_variables() {
        let mut t = Transform::new(HostHeader::Target("t".into()));
        t.set.push(parse_header("X-Replay-Id: {{uuid}}").unwrap());
        t.set
            .push(parse_header("X-At: {{now}} {{now_epoch}} {{now_epoch_ms}} {{other}}").unwrap());
        t.set
            .push(parse_header("authorization: Bearer staging").unwrap());
        t.remove.push("cookie".into());
        let r = req(
            "GET",
            "/",
            &[("Cookie", "s=1"), ("Authorization", "Bearer prod")],
            b"",
        );
        let s = text(&t, &r);
        assert!(!s.contains("s=1") && !s.contains("Bearer prod"), "{s}");
        assert!(s.contains("authorization: Bearer staging\r\n"));
        assert!(
            s.contains("X-Replay-Id: abababab-abab-4bab-abab-abababababab\r\n"),
            "{s}"
        );
        assert!(
            s.contains("X-At: 2025-11-21T10:00:00.123Z 1763719200 1763719200123 {{other}}\r\n"),
            "{s}"
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn url_rewrites_and_the_target_path_prefix() {
        let mut t = Transform::new(HostHeader::Target("t".into()));
        t.rewrite_url.push("^/v1/(.*):/v2/$1".parse().unwrap());
        t.path_prefix = "/canary".into();
        let r = req("GET", "/v1/users/7?x=1", &[], b"");
        assert!(text(&t, &r).starts_with("GET /canary/v2/users/7?x=1 HTTP/1.1\r\n"));
        let proxied = req("GET", "http://prod.example/p?q", &[], b"");
        assert_eq!(
            Transform::new(HostHeader::Original).target(&proxied, &vars()),
            "/p?q"
        );
        assert!("([:x".parse::<UrlRewrite>().is_err());
        assert!("noseparator".parse::<UrlRewrite>().is_err());
    }
}
