//! `--shift-time`: timestamps in a captured request moved by the capture's age, so that a
//! request that asked for "since yesterday" still does; and JWTs re-signed with fresh
//! `iat`/`exp` (`--jwt-key`), or counted as expired without a key.
//!
//! What is moved: ISO-8601 date-times (`2026-11-30T10:00:00Z`, with a fraction, a zone
//! offset, or a space for `T`) anywhere in header values, query values and JSON string
//! values; epoch timestamps of this century (10 digits: seconds, 13: milliseconds) as
//! whole query values, header values and JSON numbers.

use base64::Engine as _;
use serde_json::Value;

use crate::query::{civil_from_days, days_from_civil};

/// How JWTs are signed again.
pub enum JwtKey {
    /// HS256 with this secret.
    Hmac(Vec<u8>),
    /// RS256 with this key (PKCS#8).
    Rsa(Box<ring::signature::RsaKeyPair>),
}

#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("not a PEM private key (-----BEGIN PRIVATE KEY-----, PKCS#8)")]
    NotPem,
    #[error("the RSA key is not usable: {0}")]
    Rsa(String),
}

impl JwtKey {
    /// A PEM `PRIVATE KEY` (PKCS#8 RSA) is an RS256 key; anything else is an HS256 secret
    /// (its bytes, without a final newline).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, JwtKeyError> {
        let text = String::from_utf8_lossy(bytes);
        if text.contains("-----BEGIN") {
            let body: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|_| JwtKeyError::NotPem)?;
            if der.is_empty() {
                return Err(JwtKeyError::NotPem);
            }
            return ring::signature::RsaKeyPair::from_pkcs8(&der)
                .map(|k| JwtKey::Rsa(Box::new(k)))
                .map_err(|e| JwtKeyError::Rsa(e.to_string()));
        }
        let mut secret = bytes.to_vec();
        while secret.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            secret.pop();
        }
        Ok(JwtKey::Hmac(secret))
    }

    fn alg(&self) -> &'static str {
        match self {
            JwtKey::Hmac(_) => "HS256",
            JwtKey::Rsa(_) => "RS256",
        }
    }

    fn sign(&self, input: &[u8]) -> Option<Vec<u8>> {
        match self {
            JwtKey::Hmac(secret) => {
                let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                Some(ring::hmac::sign(&k, input).as_ref().to_vec())
            }
            JwtKey::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    input,
                    &mut sig,
                )
                .ok()?;
                Some(sig)
            }
        }
    }
}

/// What one request's shifting did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shifted {
    pub timestamps: u32,
    pub jwts_resigned: u32,
    /// JWTs whose `exp` has passed at `now`, with no key to sign them again.
    pub jwts_expired: u32,
}

/// Moves timestamps by `by` seconds; `now` is the replay's wall clock (Unix seconds).
pub struct TimeShift {
    pub by: i64,
    pub now: i64,
    pub key: Option<JwtKey>,
    /// Totals over every request shifted (timestamps, JWTs re-signed, JWTs expired).
    pub totals: [std::sync::atomic::AtomicU64; 3],
}

impl std::fmt::Debug for TimeShift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeShift")
            .field("by", &self.by)
            .field("now", &self.now)
            .field("key", &self.key.as_ref().map(JwtKey::alg))
            .finish()
    }
}

impl TimeShift {
    pub fn new(by: i64, now: i64, key: Option<JwtKey>) -> Self {
        Self {
            by,
            now,
            key,
            totals: Default::default(),
        }
    }

    pub fn add(&self, n: Shifted) {
        use std::sync::atomic::Ordering::Relaxed;
        self.totals[0].fetch_add(u64::from(n.timestamps), Relaxed);
        self.totals[1].fetch_add(u64::from(n.jwts_resigned), Relaxed);
        self.totals[2].fetch_add(u64::from(n.jwts_expired), Relaxed);
    }

    /// (timestamps moved, JWTs re-signed, JWTs expired) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.totals[0].load(Relaxed),
            self.totals[1].load(Relaxed),
            self.totals[2].load(Relaxed),
        )
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS` at the start of `b`, as seconds of its own clock.
fn iso_at(b: &[u8]) -> Option<i64> {
    if b.len() < 19 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(r)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s)
}

fn iso_write(secs: i64, sep: u8, out: &mut String) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    out.push_str(&format!(
        "{y:04}-{m:02}-{d:02}{}{:02}:{:02}:{:02}",
        sep as char,
        r / 3600,
        r / 60 % 60,
        r % 60
    ));
}

/// An epoch timestamp of this century: seconds or milliseconds.
fn epoch_shift(n: i64, by: i64) -> Option<i64> {
    if (1_000_000_000..4_000_000_000).contains(&n) {
        Some(n + by)
    } else if (1_000_000_000_000..4_000_000_000_000).contains(&n) {
        Some(n + by * 1000)
    } else {
        None
    }
}

impl TimeShift {
    /// `s` with every ISO-8601 date-time in it moved, and a whole-value epoch moved.
    pub fn text(&self, s: &str, n: &mut Shifted) -> String {
        if let Ok(v) = s.trim().parse::<i64>() {
            if let Some(m) = epoch_shift(v, self.by) {
                n.timestamps += 1;
                return m.to_string();
            }
        }
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let mut copied = 0;
        while i + 19 <= b.len() {
            let starts = (i == 0 || !b[i - 1].is_ascii_digit()) && b[i].is_ascii_digit();
            if let Some(t) = starts.then(|| iso_at(&b[i..])).flatten() {
                out.push_str(&s[copied..i]);
                iso_write(t + self.by, b[i + 10], &mut out);
                n.timestamps += 1;
                i += 19;
                copied = i;
            } else {
                i += 1;
            }
        }
        out.push_str(&s[copied..]);
        out
    }

    /// A request target with its query values moved.
    pub fn target(&self, t: &str, n: &mut Shifted) -> String {
        let Some((path, query)) = t.split_once('?') else {
            return t.to_string();
        };
        let parts: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, v)) => {
                    // %3A is how a colon travels in a query.
                    let decoded = v.replace("%3A", ":").replace("%3a", ":");
                    let moved = self.text(&decoded, n);
                    if moved == decoded {
                        p.to_string()
                    } else {
                        format!("{k}={}", moved.replace(':', "%3A"))
                    }
                }
                None => p.to_string(),
            })
            .collect();
        format!("{path}?{}", parts.join("&"))
    }

    /// A JSON body with its timestamps moved (None when it is not JSON or nothing moved).
    pub fn json_body(&self, body: &[u8], n: &mut Shifted) -> Option<Vec<u8>> {
        let mut v: Value = serde_json::from_slice(body).ok()?;
        let before = n.timestamps;
        self.json(&mut v, n);
        (n.timestamps > before).then(|| v.to_string().into_bytes())
    }

    fn json(&self, v: &mut Value, n: &mut Shifted) {
        match v {
            Value::String(s) => {
                let moved = self.text(s, n);
                *s = moved;
            }
            Value::Number(x) => {
                if let Some(m) = x.as_i64().and_then(|i| epoch_shift(i, self.by)) {
                    *v = Value::from(m);
                    n.timestamps += 1;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.json(x, n)),
            Value::Object(o) => o.values_mut().for_each(|x| self.json(x, n)),
            _ => {}
        }
    }

    /// A header value: `Bearer <JWT>` re-signed (or counted expired), others moved as text.
    pub fn header(&self, name: &str, value: &[u8], n: &mut Shifted) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(value) else {
            return value.to_vec();
        };
        if name.eq_ignore_ascii_case("authorization") {
            if let Some(token) = text.strip_prefix("Bearer ").map(str::trim) {
                return match self.jwt(token, n) {
                    Some(t) => format!("Bearer {t}").into_bytes(),
                    None => value.to_vec(),
                };
            }
            return value.to_vec();
        }
        self.text(text, n).into_bytes()
    }

    /// A JWT with `iat`/`nbf`/`exp` moved to now (keeping its lifetime) and signed again;
    /// None when it is not a JWT, or when there is no key (counted if it has expired).
    fn jwt(&self, token: &str, n: &mut Shifted) -> Option<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (h, p, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        let mut header: Value = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
        let mut payload: Value = serde_json::from_slice(&b64.decode(p).ok()?).ok()?;
        let claim = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64);
        let Some(key) = &self.key else {
            if claim(&payload, "exp").is_some_and(|e| e <= self.now) {
                n.jwts_expired += 1;
            }
            return None;
        };
        let iat = claim(&payload, "iat");
        let lifetime = match (iat, claim(&payload, "exp")) {
            (Some(i), Some(e)) => e - i,
            _ => 3600,
        };
        let obj = payload.as_object_mut()?;
        obj.insert("iat".into(), Value::from(self.now));
        if obj.contains_key("nbf") {
            obj.insert("nbf".into(), Value::from(self.now));
        }
        obj.insert("exp".into(), Value::from(self.now + lifetime));
        header
            .as_object_mut()?
            .insert("alg".into(), Value::from(key.alg()));
        let signing = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(payload.to_string())
        );
        let sig = key.sign(signing.as_bytes())?;
        n.jwts_resigned += 1;
        Some(format!("{signing}.{}", b64.encode(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn shift(by: i64) -> TimeShift {
        TimeShift::new(by, 1_764_648_000, None)
    }

    #[test]
    fn iso_and_epoch_timestamps_move_by_the_captures_age() {
        let s = shift(2 * DAY);
        let mut n = Shifted::default();
        assert_eq!(
            s.text(
                "from 2026-11-30T23:30:00.250Z to 2026-12-31 10:00:00+01:00",
                &mut n
            ),
            "from 2026-12-02T23:30:00.250Z to 2027-01-02 10:00:00+01:00"
        );
        assert_eq!(s.text("1764000000", &mut n), "1764172800");
        assert_eq!(s.text("1764000000123", &mut n), "1764172800123");
        assert_eq!(s.text("order 12345", &mut n), "order 12345");
        assert_eq!(n.timestamps, 4);
        assert_eq!(
            s.target(
                "/r?from=2026-11-29T00%3A00%3A00Z&limit=10&ts=1764000000",
                &mut n
            ),
            "/r?from=2026-12-01T00%3A00%3A00Z&limit=10&ts=1764172800"
        );
        let body = s
            .json_body(
                br#"{"since":"2026-02-28T12:00:00Z","at":1764000000,"n":5}"#,
                &mut n,
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"at":1764172800,"n":5,"since":"2026-03-02T12:00:00Z"}"#
        );
        assert_eq!(s.json_body(br#"{"n":5}"#, &mut n), None);
        // Leap years and the turn of a century hold.
        for t in [951_782_400i64, 4_107_542_400, 1_709_164_800] {
            let mut o = String::new();
            iso_write(t, b'T', &mut o);
            assert_eq!(iso_at(o.as_bytes()), Some(t), "{o}");
        }
    }

    fn jwt(header: &str, payload: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.c2ln", b64.encode(header), b64.encode(payload))
    }

    fn claims(token: &str) -> Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let p = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&b64.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn jwts_are_signed_again_with_fresh_times_or_counted_expired() {
        let old = jwt(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"alice","iat":1764000000,"exp":1764003600}"#,
        );
        let value = format!("Bearer {old}");
        let mut n = Shifted::default();
        let same = shift(DAY).header("Authorization", value.as_bytes(), &mut n);
        assert_eq!(same, value.as_bytes());
        assert_eq!(n.jwts_expired, 1);

        let s = TimeShift::new(
            DAY,
            1_764_648_000,
            Some(JwtKey::from_file_bytes(b"s3cret\n").unwrap()),
        );
        let mut n = Shifted::default();
        let out = String::from_utf8(s.header("Authorization", value.as_bytes(), &mut n)).unwrap();
        let token = out.strip_prefix("Bearer ").unwrap();
        let c = claims(token);
        assert_eq!(
            (c["iat"].as_i64(), c["exp"].as_i64()),
            (Some(s.now), Some(s.now + 3600))
        );
        assert_eq!(c["sub"], "alice");
        let (signing, sig) = token.rsplit_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        assert!(ring::hmac::verify(&k, signing.as_bytes(), &b64.decode(sig).unwrap()).is_ok());
        assert_eq!(n.jwts_resigned, 1);

        let rsa = TimeShift::new(
            DAY,
            1_764_648_000,
            Some(JwtKey::from_file_bytes(TEST_RSA_KEY.as_bytes()).unwrap()),
        );
        let out = String::from_utf8(rsa.header("authorization", value.as_bytes(), &mut n)).unwrap();
        let token = out.strip_prefix("Bearer ").unwrap();
        let (signing, sig) = token.rsplit_once('.').unwrap();
        let Some(JwtKey::Rsa(pair)) = &rsa.key else {
            unreachable!()
        };
        use ring::signature::KeyPair as _;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public_key().as_ref(),
        );
        assert!(public
            .verify(signing.as_bytes(), &b64.decode(sig).unwrap())
            .is_ok());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h: Value =
            serde_json::from_slice(&b64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(h["alg"], "RS256");
        assert!(JwtKey::from_file_bytes(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }

    /// A 2048-bit RSA key made for this test alone (openssl genpkey).
    const TEST_RSA_KEY: &str = include_str!("testdata/jwt-test-rsa.pem");
}
