//! Judging a target's answer against production's captured response, and the noise a live
//! mirror learns from production itself (Diffy's idea, without a second deployment).
//!
//! [`judge`] is the one comparison that HTTP replay, the live mirror and mocks share: it
//! returns a typed [`Verdict`]. [`NoiseModel`] learns, per endpoint, the JSON fields whose
//! values differ between two production responses to the same request (method and target),
//! and treats values that look generated (UUIDs, timestamps, long hex or numeric ids) as
//! noise when both sides have one. Differences on noise fields are reported apart, never as
//! real differences.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use super::{compare, noise_paths, CompareOptions, Comparison, Difference, ResponseView};

/// What judging found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing differs in what was compared but noise (`noise` differences on noise fields);
    /// `body_skipped` when production's body was not captured whole (then only status and
    /// headers were compared).
    Same { body_skipped: bool, noise: usize },
    /// Real differences, and how many differences were on noise fields.
    Differs {
        comparison: Comparison,
        noise: usize,
    },
    /// No production response to compare with.
    Unjudged,
}

impl Verdict {
    pub fn differs(&self) -> bool {
        matches!(self, Verdict::Differs { .. })
    }

    /// Whether production's body was left out (captured with a gap or cut).
    pub fn body_skipped(&self) -> bool {
        match self {
            Verdict::Same { body_skipped, .. } => *body_skipped,
            Verdict::Differs { comparison, .. } => comparison.body_skipped,
            Verdict::Unjudged => false,
        }
    }

    /// Differences on noise fields and headers, left out.
    pub fn noise(&self) -> usize {
        match self {
            Verdict::Same { noise, .. } | Verdict::Differs { noise, .. } => *noise,
            Verdict::Unjudged => 0,
        }
    }
}

/// Where [`judge`] learns what is noise.
#[derive(Clone, Copy)]
pub enum Noise<'a> {
    /// Nothing beyond the comparison options.
    None,
    /// What a live mirror learned from production for this endpoint ([`NoiseModel`]), and
    /// values that look generated on both sides.
    Learned {
        model: &'a NoiseModel,
        endpoint: &'a str,
    },
    /// The target's answers to the same request sent again (`replay --noise-runs`): JSON
    /// fields and headers whose values differ between the target's own answers.
    Reruns(&'a [ResponseView]),
}

/// The one comparison HTTP replay, the live mirror and mocks share: the target's answer
/// against production's captured response, noise left out and counted.
pub fn judge(
    prod: Option<&ResponseView>,
    target: &ResponseView,
    opts: &CompareOptions,
    noise: Noise<'_>,
) -> Verdict {
    let Some(prod) = prod else {
        return Verdict::Unjudged;
    };
    let mut noisy = 0;
    let mut c = match noise {
        Noise::Reruns(again) if !again.is_empty() => {
            let mut opts = opts.clone();
            let first = target.comparable_json();
            for a in again {
                if let (Some(x), Some(y)) = (&first, a.comparable_json()) {
                    let found = noise_paths(x, &y);
                    noisy += found.len();
                    opts.ignore.extend(found);
                }
                for (n, v) in target.headers.iter() {
                    if !a
                        .headers
                        .iter()
                        .any(|(n2, v2)| n2.eq_ignore_ascii_case(n) && v2 == v)
                    {
                        noisy += 1;
                        opts.ignore_headers.push(n.to_ascii_lowercase());
                    }
                }
            }
            compare(prod, target, &opts)
        }
        _ => compare(prod, target, opts),
    };
    if let Noise::Learned { model, endpoint } = noise {
        let before = c.differences.len();
        c.differences.retain(|d| !model.is_noise(endpoint, d));
        let removed = before - c.differences.len();
        c.count -= removed.min(c.count);
        noisy += removed;
    }
    if c.count == 0 {
        Verdict::Same {
            body_skipped: c.body_skipped,
            noise: noisy,
        }
    } else {
        Verdict::Differs {
            comparison: c,
            noise: noisy,
        }
    }
}

/// Most endpoints and exact requests the model remembers (oldest forgotten first).
const MAX_ENDPOINTS: usize = 4096;
const MAX_REQUESTS: usize = 16_384;
/// Bodies larger than this are not remembered for learning.
const MAX_BODY: usize = 256 << 10;

/// Noise fields learned per endpoint.
#[derive(Default)]
pub struct NoiseModel {
    /// endpoint → learned paths (`$.items[0].id` as found).
    fields: HashMap<String, BTreeSet<String>>,
    endpoints: VecDeque<String>,
    /// (method, target) → the last production JSON body for it.
    last: HashMap<String, Value>,
    last_order: VecDeque<String>,
}

impl NoiseModel {
    /// A production response to `method target` of `endpoint`: fields that changed since the
    /// last production response to the same request are noise of the endpoint.
    pub fn observe(&mut self, endpoint: &str, request: &str, prod: &ResponseView) {
        if prod.body_incomplete || prod.body.len() > MAX_BODY {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&prod.body) else {
            return;
        };
        if let Some(prev) = self.last.get(request) {
            let found = noise_paths(prev, &v);
            if !found.is_empty() {
                if !self.fields.contains_key(endpoint) {
                    if self.endpoints.len() >= MAX_ENDPOINTS {
                        if let Some(old) = self.endpoints.pop_front() {
                            self.fields.remove(&old);
                        }
                    }
                    self.endpoints.push_back(endpoint.to_string());
                }
                let set = self.fields.entry(endpoint.to_string()).or_default();
                set.extend(found.iter().map(ToString::to_string));
            }
        } else {
            if self.last_order.len() >= MAX_REQUESTS {
                if let Some(old) = self.last_order.pop_front() {
                    self.last.remove(&old);
                }
            }
            self.last_order.push_back(request.to_string());
        }
        self.last.insert(request.to_string(), v);
    }

    /// The fields learned as noise, over every endpoint.
    pub fn field_count(&self) -> usize {
        self.fields.values().map(BTreeSet::len).sum()
    }

    /// The fields learned for one endpoint.
    pub fn fields(&self, endpoint: &str) -> Vec<String> {
        self.fields
            .get(endpoint)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a difference is on a noise field of `endpoint`, or between two values that
    /// both look generated.
    pub fn is_noise(&self, endpoint: &str, d: &Difference) -> bool {
        let Difference::FieldChanged { path, prod, target } = d else {
            return false;
        };
        if self.fields.get(endpoint).is_some_and(|s| s.contains(path)) {
            return true;
        }
        looks_generated(prod) && looks_generated(target)
    }
}

/// A UUID, an ISO-8601 timestamp, an epoch timestamp (seconds or milliseconds of this
/// century), or a long hex token.
pub fn looks_generated(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            let b = s.as_bytes();
            let uuid = b.len() == 36
                && b.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                });
            let iso = b.len() >= 19
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[7] == b'-'
                && (b[10] == b'T' || b[10] == b' ')
                && b[13] == b':';
            let hex = b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit);
            uuid || iso || hex
        }
        Value::Number(n) => n.as_u64().is_some_and(|x| {
            (1_000_000_000..4_000_000_000).contains(&x)
                || (1_000_000_000_000..4_000_000_000_000).contains(&x)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn learned<'a>(model: &'a NoiseModel, endpoint: &'a str) -> Noise<'a> {
        Noise::Learned { model, endpoint }
    }

    fn view(body: Value) -> ResponseView {
        ResponseView {
            status: 200,
            headers: vec![("Content-Type".into(), b"application/json".to_vec())].into(),
            body: body.to_string().into_bytes(),
            body_incomplete: false,
        }
    }

    #[test]
    fn fields_that_vary_in_production_are_noise_and_real_changes_are_not() {
        let mut m = NoiseModel::default();
        let ep = "GET /api/users/{id}";
        m.observe(
            ep,
            "GET /api/users/1",
            &view(json!({"id": 1, "seen": 5, "name": "a"})),
        );
        m.observe(
            ep,
            "GET /api/users/1",
            &view(json!({"id": 1, "seen": 6, "name": "a"})),
        );
        assert_eq!(m.fields(ep), ["$.seen"]);
        assert_eq!(m.field_count(), 1);
        let prod = view(json!({"id": 1, "seen": 7, "name": "a"}));
        let shadow = view(json!({"id": 1, "seen": 9, "name": "b"}));
        let v = judge(
            Some(&prod),
            &shadow,
            &CompareOptions::default(),
            learned(&m, ep),
        );
        let Verdict::Differs { comparison, noise } = v else {
            panic!("{v:?}")
        };
        assert_eq!(noise, 1);
        assert_eq!(comparison.count, 1);
        assert!(
            matches!(&comparison.differences[0], Difference::FieldChanged { path, .. } if path == "$.name")
        );
        // Only noise differs: the same.
        let shadow = view(json!({"id": 1, "seen": 10, "name": "a"}));
        let v = judge(
            Some(&prod),
            &shadow,
            &CompareOptions::default(),
            learned(&m, ep),
        );
        assert_eq!(
            v,
            Verdict::Same {
                body_skipped: false,
                noise: 1
            }
        );
        assert_eq!(
            judge(None, &shadow, &CompareOptions::default(), learned(&m, ep)),
            Verdict::Unjudged
        );
    }

    #[test]
    fn generated_looking_values_are_noise_on_both_sides_only() {
        let m = NoiseModel::default();
        let ep = "GET /x";
        let prod = view(
            json!({"req": "3f2b8c1e-9d4a-4e2b-8f1a-0c9d8e7f6a5b", "at": "2026-12-01T10:00:00Z", "n": 1}),
        );
        let shadow = view(
            json!({"req": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "at": "2026-12-01T10:00:05Z", "n": 1}),
        );
        let v = judge(
            Some(&prod),
            &shadow,
            &CompareOptions::default(),
            learned(&m, ep),
        );
        assert_eq!(
            v,
            Verdict::Same {
                body_skipped: false,
                noise: 2
            }
        );
        let shadow = view(json!({"req": "not-an-id", "at": "2026-12-01T10:00:05Z", "n": 1}));
        assert!(judge(
            Some(&prod),
            &shadow,
            &CompareOptions::default(),
            learned(&m, ep)
        )
        .differs());
        assert!(looks_generated(&json!(1_764_580_000)));
        assert!(looks_generated(&json!("9f86d081884c7d659a2feaa0c55ad015")));
        assert!(!looks_generated(&json!(42)));
        assert!(!looks_generated(&json!("alice")));
    }
}
