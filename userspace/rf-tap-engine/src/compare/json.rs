//! JSON paths and the structural diff of two JSON documents.
//!
//! Paths are written as in JSONPath's common subset: `$.user.name`, `$.items[3].id`,
//! `$["odd key"]`; patterns may use `*` for any key, `[*]` for any index, and `..name` for a
//! key at any depth.

use std::{fmt, str::FromStr};

use serde_json::Value;

use super::Difference;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pat {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
    /// `..name`: zero or more segments, then `name`.
    Descend(String),
}

/// A path pattern (`--ignore '$.created_at'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<Pat>);

impl FromStr for JsonPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}` is not a JSON path ({why}; e.g. $.user.created_at)");
        let t = s.trim();
        let mut rest = t.strip_prefix('$').unwrap_or(t);
        let mut pats = Vec::new();
        if !rest.is_empty() && !rest.starts_with(['.', '[']) {
            // `a.b` without `$`: as if `$.a.b`.
            let owned = format!(".{rest}");
            return JsonPath::from_str(&format!("${owned}"));
        }
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(bad("`..` needs a key"));
                }
                pats.push(Pat::Descend(r[..end].to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let key = &r[..end];
                if key.is_empty() {
                    return Err(bad("empty key"));
                }
                if key.contains([']', '"', '\'']) || key.chars().any(char::is_whitespace) {
                    return Err(bad("quote odd keys: $[\"a key\"]"));
                }
                pats.push(if key == "*" {
                    Pat::AnyKey
                } else {
                    Pat::Key(key.to_string())
                });
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| bad("unclosed ["))?;
                let inner = r[..end].trim();
                pats.push(if inner == "*" {
                    Pat::AnyIndex
                } else if let Some(q) = inner
                    .strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')))
                {
                    Pat::Key(q.to_string())
                } else {
                    Pat::Index(
                        inner
                            .parse()
                            .map_err(|_| bad("index must be a number, * or a quoted key"))?,
                    )
                });
                rest = &r[end + 1..];
            } else {
                return Err(bad("expected . or ["));
            }
        }
        Ok(Self(pats))
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$")?;
        for p in &self.0 {
            match p {
                Pat::Key(k) => write_key(f, k)?,
                Pat::AnyKey => write!(f, ".*")?,
                Pat::Index(i) => write!(f, "[{i}]")?,
                Pat::AnyIndex => write!(f, "[*]")?,
                Pat::Descend(k) => write!(f, "..{k}")?,
            }
        }
        Ok(())
    }
}

fn write_key(f: &mut impl fmt::Write, k: &str) -> fmt::Result {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        write!(f, ".{k}")
    } else {
        write!(f, "[{}]", Value::String(k.to_string()))
    }
}

fn render(path: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let _ = write_key(&mut s, k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

impl JsonPath {
    fn matches(&self, path: &[Seg]) -> bool {
        fn go(pat: &[Pat], path: &[Seg]) -> bool {
            match (pat.first(), path.first()) {
                (None, None) => true,
                (None, Some(_)) => false,
                (Some(Pat::Descend(k)), _) => (0..path.len()).any(|skip| {
                    matches!(&path[skip], Seg::Key(x) if x == k) && go(&pat[1..], &path[skip + 1..])
                }),
                (Some(_), None) => false,
                (Some(p), Some(s)) => {
                    let ok = match (p, s) {
                        (Pat::Key(a), Seg::Key(b)) => a == b,
                        (Pat::AnyKey, Seg::Key(_)) => true,
                        (Pat::Index(a), Seg::Index(b)) => a == b,
                        (Pat::AnyIndex, Seg::Index(_)) => true,
                        _ => false,
                    };
                    ok && go(&pat[1..], &path[1..])
                }
            }
        }
        go(&self.0, path)
    }

    fn exact(path: &[Seg]) -> Self {
        Self(
            path.iter()
                .map(|s| match s {
                    Seg::Key(k) => Pat::Key(k.clone()),
                    Seg::Index(i) => Pat::Index(*i),
                })
                .collect(),
        )
    }
}

/// Whether a concrete path as differences render it (`$.items[3].id`) matches one of `paths`.
pub fn rendered_path_matches(paths: &[JsonPath], rendered: &str) -> bool {
    concrete(rendered).is_some_and(|s| paths.iter().any(|q| q.matches(&s)))
}

/// The segments of a concrete rendered path (`$.items[3].id`); None for a pattern.
fn concrete(rendered: &str) -> Option<Vec<Seg>> {
    let p = rendered.parse::<JsonPath>().ok()?;
    p.0.iter()
        .map(|x| match x {
            Pat::Key(k) => Some(Seg::Key(k.clone())),
            Pat::Index(i) => Some(Seg::Index(*i)),
            _ => None,
        })
        .collect()
}

/// Replaces with `mask` every value whose path matches one of `paths` or whose key
/// `secret_key` names (at any depth, up to the comparison's depth limit); returns how many.
/// `at` is where `v` sits in its document (`$` for a whole body, `$.profile` for a value a
/// difference names).
pub fn redact_json(
    v: &mut Value,
    at: &str,
    paths: &[JsonPath],
    secret_key: &dyn Fn(&str) -> bool,
    mask: &str,
) -> usize {
    fn go(
        v: &mut Value,
        paths: &[JsonPath],
        secret_key: &dyn Fn(&str) -> bool,
        mask: &str,
        path: &mut Vec<Seg>,
    ) -> usize {
        if !path.is_empty() && paths.iter().any(|p| p.matches(path)) {
            *v = Value::String(mask.into());
            return 1;
        }
        if path.len() >= MAX_DEPTH {
            return 0;
        }
        let mut n = 0;
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if secret_key(k) && !matches!(x, Value::Object(_) | Value::Array(_)) {
                        *x = Value::String(mask.into());
                        n += 1;
                        continue;
                    }
                    path.push(Seg::Key(k.clone()));
                    n += go(x, paths, secret_key, mask, path);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    n += go(x, paths, secret_key, mask, path);
                    path.pop();
                }
            }
            _ => {}
        }
        n
    }
    let mut path = concrete(at).unwrap_or_default();
    go(v, paths, secret_key, mask, &mut path)
}

/// Appends the differences between `prod` and `target` to `out`.
pub(super) fn diff(prod: &Value, target: &Value, ignore: &[JsonPath], out: &mut Vec<Difference>) {
    let mut path = Vec::new();
    walk(prod, target, ignore, &mut path, &mut |p, d| {
        out.push(d(render(p)))
    });
}

type Emit<'a> = dyn FnMut(&[Seg], Box<dyn FnOnce(String) -> Difference>) + 'a;

/// Deepest nesting compared (deeper values are compared whole).
const MAX_DEPTH: usize = 64;

fn walk(p: &Value, t: &Value, ignore: &[JsonPath], path: &mut Vec<Seg>, emit: &mut Emit<'_>) {
    if ignore.iter().any(|i| i.matches(path)) {
        return;
    }
    match (p, t) {
        (Value::Object(po), Value::Object(to)) if path.len() < MAX_DEPTH => {
            for (k, pv) in po {
                path.push(Seg::Key(k.clone()));
                match to.get(k) {
                    Some(tv) => walk(pv, tv, ignore, path, emit),
                    None if !ignore.iter().any(|i| i.matches(path)) => {
                        let v = pv.clone();
                        emit(
                            path,
                            Box::new(move |path| Difference::FieldRemoved { path, prod: v }),
                        );
                    }
                    None => {}
                }
                path.pop();
            }
            for (k, tv) in to {
                if po.contains_key(k) {
                    continue;
                }
                path.push(Seg::Key(k.clone()));
                if !ignore.iter().any(|i| i.matches(path)) {
                    let v = tv.clone();
                    emit(
                        path,
                        Box::new(move |path| Difference::FieldAdded { path, target: v }),
                    );
                }
                path.pop();
            }
        }
        (Value::Array(pa), Value::Array(ta)) if path.len() < MAX_DEPTH => {
            for i in 0..pa.len().max(ta.len()) {
                path.push(Seg::Index(i));
                match (pa.get(i), ta.get(i)) {
                    (Some(pv), Some(tv)) => walk(pv, tv, ignore, path, emit),
                    (Some(pv), None) if !ignore.iter().any(|x| x.matches(path)) => {
                        let v = pv.clone();
                        emit(
                            path,
                            Box::new(move |path| Difference::FieldRemoved { path, prod: v }),
                        );
                    }
                    (None, Some(tv)) if !ignore.iter().any(|x| x.matches(path)) => {
                        let v = tv.clone();
                        emit(
                            path,
                            Box::new(move |path| Difference::FieldAdded { path, target: v }),
                        );
                    }
                    _ => {}
                }
                path.pop();
            }
        }
        _ => {
            if p != t {
                let (pv, tv) = (p.clone(), t.clone());
                emit(
                    path,
                    Box::new(move |path| Difference::FieldChanged {
                        path,
                        prod: pv,
                        target: tv,
                    }),
                );
            }
        }
    }
}

/// The paths whose values differ between two responses of the target to the same request:
/// noise (ids, timestamps, nonces) to leave out of the comparison with production.
pub fn noise_paths(first: &Value, second: &Value) -> Vec<JsonPath> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    walk(first, second, &[], &mut path, &mut |p, _| {
        found.push(JsonPath::exact(p))
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> JsonPath {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        for s in [
            "$.a.b",
            "$.items[*].id",
            "$..updated_at",
            "$[\"odd key\"].x",
            "$.*.id",
            "$.a[3]",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("a.b").to_string(), "$.a.b");
        assert_eq!(p("$['q']").to_string(), "$.q");
        for bad in ["$.", "$[", "$.a[x]", "$..", "$.a]"] {
            assert!(bad.parse::<JsonPath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_concrete_paths() {
        let path = vec![
            Seg::Key("items".into()),
            Seg::Index(2),
            Seg::Key("id".into()),
        ];
        assert!(p("$.items[*].id").matches(&path));
        assert!(p("$.items[2].id").matches(&path));
        assert!(!p("$.items[1].id").matches(&path));
        assert!(p("$..id").matches(&path));
        assert!(p("$.*[*].id").matches(&path));
        assert!(!p("$.items").matches(&path));
        assert!(!p("$..name").matches(&path));
    }

    #[test]
    fn noise_is_what_differs_between_two_target_runs() {
        let a = json!({"id": "r_1", "at": 1, "user": {"name": "Ann", "session": "x"}});
        let b = json!({"id": "r_2", "at": 2, "user": {"name": "Ann", "session": "y"}});
        let noise: Vec<String> = noise_paths(&a, &b).iter().map(|n| n.to_string()).collect();
        // serde_json keeps object keys sorted: the order is stable.
        assert_eq!(noise, vec!["$.at", "$.id", "$.user.session"]);
        let prod = json!({"id": "r_0", "at": 0, "user": {"name": "Bob", "session": "z"}});
        let mut out = Vec::new();
        diff(&prod, &a, &noise_paths(&a, &b), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_string(), "$.user.name changed: \"Bob\" → \"Ann\"");
    }

    #[test]
    fn deep_documents_do_not_overflow() {
        let mut a = json!(1);
        let mut b = json!(2);
        for _ in 0..120 {
            a = json!({ "x": a });
            b = json!({ "x": b });
        }
        let mut out = Vec::new();
        diff(&a, &b, &[], &mut out);
        assert_eq!(out.len(), 1);
    }
}
