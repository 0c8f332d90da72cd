//! One redaction policy for everything that leaves rf-tap with exchange content in it: HAR,
//! JSONL, `requests show`, replay results and `replay diff`, the mirror's diffs.
//!
//! By default credentials are masked with `****`:
//! - `Authorization` and `Proxy-Authorization` keep their scheme (`Bearer ****`);
//! - `Cookie` and `Set-Cookie` keep cookie names and attributes (`sid=****; Path=/`);
//! - headers named like keys or tokens (`X-Api-Key`, `Api-Key`, `X-Auth-Token`, `*-Token`,
//!   `*-Secret`);
//! - query parameters, JSON fields (at any depth) and form fields named like secrets
//!   (`password`, `passwd`, `secret`, `token`, `access_token`, `refresh_token`, `api_key`,
//!   `card_number`, `cvv`, and `*_token`, `*_secret`, `*_password`).
//!
//! Users add header names, parameter names and JSON paths, or turn it off on purpose. The
//! rfcap archive is not redacted: replay needs the original bytes (the file is private to
//! its owner instead).

use std::borrow::Cow;

use serde_json::Value;

use crate::{
    compare::{
        json::{redact_json, rendered_path_matches},
        Difference, JsonPath,
    },
    http::{exchange::Exchange, message::Headers},
};

/// The mask that replaces a secret value.
pub const MASK: &str = "****";

/// What to mask, and whether to at all.
#[derive(Clone, Debug)]
pub struct Redaction {
    on: bool,
    /// The default names (credential headers, secret-looking names) count too.
    defaults: bool,
    /// Extra header names, lower case.
    headers: Vec<String>,
    /// Extra query and form parameter names, lower case.
    params: Vec<String>,
    /// Extra JSON body paths.
    fields: Vec<JsonPath>,
}

impl Default for Redaction {
    fn default() -> Self {
        Self {
            on: true,
            defaults: true,
            headers: Vec::new(),
            params: Vec::new(),
            fields: Vec::new(),
        }
    }
}

/// Headers whose values are credentials by default.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "set-cookie"
            | "x-api-key"
            | "api-key"
            | "apikey"
            | "x-auth-token"
            | "x-access-token"
            | "x-csrf-token"
    ) || n.contains("api-key")
        || n.contains("secret")
        || n.ends_with("-token")
}

/// Query, form and JSON names whose values are secrets by default (any case, `-` or `_`).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    matches!(
        n.as_str(),
        "password"
            | "passwd"
            | "pwd"
            | "secret"
            | "token"
            | "access_token"
            | "refresh_token"
            | "id_token"
            | "api_key"
            | "apikey"
            | "client_secret"
            | "card_number"
            | "cardnumber"
            | "cvv"
            | "cvc"
    ) || n.ends_with("_token")
        || n.ends_with("_secret")
        || n.ends_with("_password")
        || n.contains("api_key")
}

/// The masked form of a credential header's value.
pub fn mask_header(name: &str, value: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with("authorization") {
        return match value.trim().split_once(' ') {
            Some((scheme, _)) => format!("{scheme} {MASK}"),
            None => MASK.into(),
        };
    }
    if n == "cookie" {
        return value
            .split(';')
            .map(|kv| match kv.trim().split_once('=') {
                Some((k, _)) => format!("{k}={MASK}"),
                None => MASK.into(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    if n == "set-cookie" {
        let mut parts = value.split(';');
        let first = match parts.next().and_then(|kv| kv.trim().split_once('=')) {
            Some((k, _)) => format!("{k}={MASK}"),
            None => MASK.into(),
        };
        return std::iter::once(first)
            .chain(parts.map(|p| p.trim().to_string()))
            .collect::<Vec<_>>()
            .join("; ");
    }
    MASK.into()
}

impl Redaction {
    /// Nothing masked (`--no-redact`).
    pub fn off() -> Self {
        Self {
            on: false,
            ..Self::default()
        }
    }

    /// The defaults plus these header names, parameter names and JSON paths.
    pub fn with(headers: &[String], params: &[String], fields: &[JsonPath]) -> Self {
        Self {
            on: true,
            defaults: true,
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            params: params.iter().map(|p| p.to_ascii_lowercase()).collect(),
            fields: fields.to_vec(),
        }
    }

    /// Only these JSON paths, none of the default names (`--scrub-field`: what is sent to
    /// a target).
    pub fn only_fields(fields: &[JsonPath]) -> Self {
        Self {
            on: !fields.is_empty(),
            defaults: false,
            fields: fields.to_vec(),
            ..Self::default()
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    pub fn secret_header(&self, name: &str) -> bool {
        self.on
            && ((self.defaults && is_secret_header(name))
                || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)))
    }

    pub fn secret_name(&self, name: &str) -> bool {
        self.on
            && ((self.defaults && is_secret_name(name))
                || self.params.iter().any(|p| p.eq_ignore_ascii_case(name)))
    }

    /// A header's value as it may leave rf-tap.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.secret_header(name) {
            Cow::Owned(mask_header(name, value))
        } else {
            Cow::Borrowed(value)
        }
    }

    /// Headers with the secret values masked.
    pub fn headers(&self, h: &Headers) -> Headers {
        h.iter()
            .map(|(n, v)| {
                if self.secret_header(n) {
                    let masked = mask_header(n, &String::from_utf8_lossy(v));
                    (n.clone(), masked.into_bytes())
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect()
    }

    /// A request target (`/path?a=1&token=x`) with secret query parameters masked.
    pub fn target<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = target.split_once('?') else {
            return Cow::Borrowed(target);
        };
        match self.pairs(query) {
            Some(q) => Cow::Owned(format!("{path}?{q}")),
            None => Cow::Borrowed(target),
        }
    }

    /// `a=1&token=x` with secret names' values masked; None when nothing was.
    fn pairs(&self, query: &str) -> Option<String> {
        if !self.on {
            return None;
        }
        let mut changed = false;
        let parts: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !v.is_empty() && self.secret_name(&percent_decode(k)) => {
                    changed = true;
                    Cow::Owned(format!("{k}={MASK}"))
                }
                _ => Cow::Borrowed(kv),
            })
            .collect();
        changed.then(|| parts.join("&"))
    }

    /// A body with secret JSON fields (defaults and `--redact-field` paths) or form fields
    /// masked. Anything else is returned as it is.
    pub fn body<'a>(&self, content_type: Option<&str>, body: &'a [u8]) -> Cow<'a, [u8]> {
        if !self.on || body.is_empty() {
            return Cow::Borrowed(body);
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.contains("x-www-form-urlencoded") {
            if let Ok(text) = std::str::from_utf8(body) {
                if let Some(masked) = self.pairs(text.trim_end()) {
                    return Cow::Owned(masked.into_bytes());
                }
            }
            return Cow::Borrowed(body);
        }
        let first = body.iter().find(|c| !c.is_ascii_whitespace());
        if !(ct.contains("json") || matches!(first, Some(b'{' | b'['))) {
            return Cow::Borrowed(body);
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return Cow::Borrowed(body);
        };
        if self.json(&mut v) == 0 {
            return Cow::Borrowed(body);
        }
        match serde_json::to_vec(&v) {
            Ok(out) => Cow::Owned(out),
            Err(_) => Cow::Borrowed(body),
        }
    }

    /// Masks secret fields of a JSON body in place; returns how many.
    pub fn json(&self, v: &mut Value) -> usize {
        self.json_at(v, "$")
    }

    /// The same for a value found at `at` in its document (`$.profile`).
    fn json_at(&self, v: &mut Value, at: &str) -> usize {
        if !self.on {
            return 0;
        }
        redact_json(v, at, &self.fields, &|k| self.secret_name(k), MASK)
    }

    /// An exchange as it may leave rf-tap: headers, target and bodies masked. Borrowed when
    /// redaction is off.
    pub fn exchange<'a>(&self, x: &'a Exchange) -> Cow<'a, Exchange> {
        if !self.on {
            return Cow::Borrowed(x);
        }
        let mut out = x.clone();
        if let Some(q) = out.request.as_mut() {
            q.target = self.target(&q.target).into_owned();
            let ct = q.headers.get_str("content-type").map(|c| c.into_owned());
            if let Cow::Owned(b) = self.body(ct.as_deref(), &q.body.data) {
                q.body.data = b;
            }
            q.headers = self.headers(&q.headers);
        }
        if let Some(r) = out.response.as_mut() {
            let ct = r.headers.get_str("content-type").map(|c| c.into_owned());
            if let Cow::Owned(b) = self.body(ct.as_deref(), &r.body.data) {
                r.body.data = b;
            }
            r.headers = self.headers(&r.headers);
        }
        Cow::Owned(out)
    }

    /// A comparison's difference with secret values masked (a changed `password` field, a
    /// changed `Set-Cookie`).
    pub fn difference(&self, d: &mut Difference) {
        if !self.on {
            return;
        }
        let masked = || Value::String(MASK.into());
        match d {
            Difference::HeaderAdded { name, target } if self.secret_header(name) => {
                *target = mask_header(name, target);
            }
            Difference::HeaderRemoved { name, prod } if self.secret_header(name) => {
                *prod = mask_header(name, prod);
            }
            Difference::HeaderChanged { name, prod, target } if self.secret_header(name) => {
                *prod = mask_header(name, prod);
                *target = mask_header(name, target);
            }
            Difference::FieldAdded { path, target } => {
                if self.secret_path(path) {
                    *target = masked();
                } else {
                    self.json_at(target, path);
                }
            }
            Difference::FieldRemoved { path, prod } => {
                if self.secret_path(path) {
                    *prod = masked();
                } else {
                    self.json_at(prod, path);
                }
            }
            Difference::FieldChanged { path, prod, target } => {
                if self.secret_path(path) {
                    *prod = masked();
                    *target = masked();
                } else {
                    self.json_at(prod, path);
                    self.json_at(target, path);
                }
            }
            _ => {}
        }
    }

    /// Whether a rendered JSON path (`$.user.password`, `$.items[0].token`) names a secret.
    fn secret_path(&self, path: &str) -> bool {
        let last = path
            .rsplit(['.', '['])
            .next()
            .unwrap_or(path)
            .trim_end_matches(']')
            .trim_matches('"');
        self.secret_name(last) || rendered_path_matches(&self.fields, path)
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(c) => {
                        out.push(c);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_keep_schemes_and_cookie_names() {
        let r = Redaction::default();
        assert_eq!(r.header("Authorization", "Bearer abc.def"), "Bearer ****");
        assert_eq!(
            r.header("authorization", "Basic dXNlcjpwdw=="),
            "Basic ****"
        );
        assert_eq!(
            r.header("Cookie", "sid=s3cr3t; theme=dark"),
            "sid=****; theme=****"
        );
        assert_eq!(
            r.header("Set-Cookie", "sid=s3cr3t; Path=/; HttpOnly"),
            "sid=****; Path=/; HttpOnly"
        );
        for h in [
            "X-Api-Key",
            "Api-Key",
            "X-Auth-Token",
            "X-Session-Token",
            "X-Client-Secret",
        ] {
            assert_eq!(r.header(h, "k-123"), "****", "{h}");
        }
        assert!(is_secret_header("X-Upload-Token") && !is_secret_header("Content-Type"));
        assert_eq!(r.header("Content-Type", "text/plain"), "text/plain");
        assert_eq!(r.header("X-Custom", "v"), "v");
        let custom = Redaction::with(&["x-custom".into()], &[], &[]);
        assert_eq!(custom.header("X-Custom", "v"), "****");
        assert_eq!(
            Redaction::off().header("Authorization", "Bearer abc"),
            "Bearer abc"
        );
    }

    #[test]
    fn query_parameters_of_secret_names() {
        let r = Redaction::default();
        assert_eq!(
            r.target("/a?q=shoes&api_key=K1&Access-Token=T2&page=2"),
            "/a?q=shoes&api_key=****&Access-Token=****&page=2"
        );
        assert_eq!(r.target("/a?api%5Fkey=K1"), "/a?api%5Fkey=****");
        assert!(matches!(r.target("/a?q=1"), Cow::Borrowed(_)));
        assert_eq!(r.target("/plain"), "/plain");
        let custom = Redaction::with(&[], &["q".into()], &[]);
        assert_eq!(custom.target("/a?q=shoes"), "/a?q=****");
        assert_eq!(Redaction::off().target("/a?token=x"), "/a?token=x");
    }

    #[test]
    fn json_and_form_bodies() {
        let r = Redaction::default();
        let body = br#"{"user":"ann","password":"hunter2","nested":{"refresh_token":"R","list":[{"cvv":123}]},"card_number":"4111"}"#;
        let out = r.body(Some("application/json"), body);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"user":"ann","password":"****","nested":{"refresh_token":"****","list":[{"cvv":"****"}]},"card_number":"****"})
        );
        let form = r.body(
            Some("application/x-www-form-urlencoded"),
            b"user=ann&password=hunter2",
        );
        assert_eq!(&*form, b"user=ann&password=****");
        // Nothing to mask: the very bytes come back.
        assert!(matches!(
            r.body(Some("application/json"), br#"{"a":1}"#),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            r.body(Some("text/html"), b"password=1"),
            Cow::Borrowed(_)
        ));
        let by_path = Redaction::with(&[], &[], &["$.profile.email".parse().unwrap()]);
        let out = by_path.body(None, br#"{"profile":{"email":"a@b.c","name":"A"}}"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"profile":{"email":"****","name":"A"}})
        );
    }

    #[test]
    fn differences_on_secrets_are_masked() {
        let r = Redaction::with(&[], &[], &["$.profile.email".parse().unwrap()]);
        let mut d = Difference::FieldChanged {
            path: "$.password".into(),
            prod: json!("a"),
            target: json!("b"),
        };
        r.difference(&mut d);
        assert_eq!(
            d,
            Difference::FieldChanged {
                path: "$.password".into(),
                prod: json!("****"),
                target: json!("****")
            }
        );
        let mut d = Difference::FieldAdded {
            path: "$.profile".into(),
            target: json!({"email": "x@y", "token": "t"}),
        };
        r.difference(&mut d);
        assert_eq!(
            d,
            Difference::FieldAdded {
                path: "$.profile".into(),
                target: json!({"email": "****", "token": "****"})
            }
        );
        let mut d = Difference::FieldChanged {
            path: "$.profile.email".into(),
            prod: json!("a@b"),
            target: json!("c@d"),
        };
        r.difference(&mut d);
        assert!(matches!(d, Difference::FieldChanged { prod, .. } if prod == json!("****")));
        let mut d = Difference::HeaderChanged {
            name: "Set-Cookie".into(),
            prod: "sid=1; Path=/".into(),
            target: "sid=2; Path=/".into(),
        };
        r.difference(&mut d);
        assert_eq!(
            d,
            Difference::HeaderChanged {
                name: "Set-Cookie".into(),
                prod: "sid=****; Path=/".into(),
                target: "sid=****; Path=/".into()
            }
        );
    }
}
