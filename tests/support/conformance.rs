//! Conformance against ../shared/corpus/http: for each Zeek case, the transactions of its
//! expected http.log, matched one to one against what `rf-tap extract` produces, on the
//! columns that log has among method, uri, status_code and response_body_len.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

/// The corpus, if present (beside the clone, as in CI).
pub fn corpus_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/http");
    p.join("INDEX.md").exists().then_some(p)
}

/// The capture files (pcap, pcapng, cap) under `dir`, at any depth, sorted.
pub fn capture_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "cap")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One expected or produced transaction, on the compared columns.
pub type Tx = BTreeMap<&'static str, String>;

const COLUMNS: [(&str, &str); 4] = [
    ("method", "method"),
    ("uri", "uri"),
    ("status_code", "status"),
    ("response_body_len", "response_body_len"),
];

/// Parses an http.log in any of the three forms the corpus has: Zeek TSV with `#fields`,
/// zeek-cut TSV with a plain header row, or JSON lines. Returns the compared columns it
/// has and its rows.
pub fn parse_http_log(text: &str) -> (Vec<&'static str>, Vec<Tx>) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rows = Vec::new();
    if lines.iter().any(|l| l.trim_start().starts_with('{')) {
        let mut cols: Vec<&'static str> = Vec::new();
        for l in lines.iter().filter(|l| l.trim_start().starts_with('{')) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let mut tx = Tx::new();
            for (zeek, ours) in COLUMNS {
                if let Some(x) = v.get(zeek) {
                    let s = match x {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    tx.insert(ours, s);
                    if !cols.contains(&ours) {
                        cols.push(ours);
                    }
                }
            }
            rows.push(tx);
        }
        // JSON logs omit unset fields: absent means "-".
        for r in &mut rows {
            for c in &cols {
                r.entry(c).or_insert_with(|| "-".into());
            }
        }
        return (cols, rows);
    }
    let header: Vec<&str> = match lines.iter().find(|l| l.starts_with("#fields")) {
        Some(h) => h.split('\t').skip(1).collect(),
        None => match lines.iter().find(|l| !l.starts_with('#')) {
            Some(h) => h.split('\t').collect(),
            None => return (Vec::new(), Vec::new()),
        },
    };
    let plain_header = !lines.iter().any(|l| l.starts_with("#fields"));
    let idx: Vec<(usize, &'static str)> = COLUMNS
        .iter()
        .filter_map(|(zeek, ours)| header.iter().position(|h| h == zeek).map(|i| (i, *ours)))
        .collect();
    let data = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .skip(if plain_header { 1 } else { 0 });
    for l in data {
        let f: Vec<&str> = l.split('\t').collect();
        let mut tx = Tx::new();
        for (i, c) in &idx {
            tx.insert(c, f.get(*i).unwrap_or(&"-").to_string());
        }
        rows.push(tx);
    }
    (idx.iter().map(|(_, c)| *c).collect(), rows)
}

/// The expected http.log of a case: the one with the most rows (then most columns).
pub fn expected_log(case_dir: &Path) -> Option<(PathBuf, Vec<&'static str>, Vec<Tx>)> {
    let mut best: Option<(PathBuf, Vec<&'static str>, Vec<Tx>)> = None;
    let exp = case_dir.join("expected");
    for dir in std::fs::read_dir(&exp).ok()?.filter_map(Result::ok) {
        for f in std::fs::read_dir(dir.path()).ok()?.filter_map(Result::ok) {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.starts_with("http.log") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(f.path()) else {
                continue;
            };
            let (cols, rows) = parse_http_log(&text);
            if cols.is_empty() || rows.is_empty() {
                continue;
            }
            let better = match &best {
                None => true,
                Some((_, bc, br)) => {
                    rows.len() > br.len() || (rows.len() == br.len() && cols.len() > bc.len())
                }
            };
            if better {
                best = Some((f.path(), cols, rows));
            }
        }
    }
    best
}

/// Zeek logs the request target percent-decoded (`unescape_URI`), with bytes outside
/// printable ASCII written `\xHH`; rf-tap keeps the raw target. Compare like with like.
pub fn zeek_uri(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // rf-tap's own \xHH escapes of raw bytes first.
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = raw
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                bytes.push(v);
                i += 4;
                continue;
            }
        }
        if b[i] == b'%' {
            if let Some(v) = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                bytes.push(v);
                i += 3;
                continue;
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
    let mut out = String::new();
    for c in bytes {
        if (0x20..0x7f).contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("\\x{c:02x}"));
        }
    }
    out
}

/// What rf-tap produced for a capture, on the compared columns.
pub fn produced(rf_tap: &Path, pcap: &Path, cols: &[&'static str]) -> Result<Vec<Tx>, String> {
    let out = Command::new(rf_tap)
        .args(["extract", "-q"])
        .arg(pcap)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| format!("bad JSONL from rf-tap: {e}: {l}"))?;
        let mut tx = Tx::new();
        for c in cols {
            let x = &v[*c];
            let s = match x {
                serde_json::Value::Null => "-".to_string(),
                // Zeek's log writes an empty string as "(empty)".
                serde_json::Value::String(s) if s.is_empty() => "(empty)".to_string(),
                serde_json::Value::String(s) if *c == "uri" => zeek_uri(s),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            tx.insert(c, s);
        }
        rows.push(tx);
    }
    if !out.status.success() && rows.is_empty() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(rows)
}

/// Result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub case: String,
    pub expected: usize,
    pub matched: usize,
    pub produced: usize,
    /// Expected rows with no match, each with rf-tap's closest row (same method and uri).
    pub misses: Vec<(Tx, Option<Tx>)>,
    pub error: Option<String>,
}

pub fn run_case(rf_tap: &Path, corpus: &Path, case: &str) -> Option<CaseResult> {
    let dir = corpus.join(case);
    let (_, cols, expected) = expected_log(&dir)?;
    let pcap = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))?;
    let (mut left, error) = match produced(rf_tap, &pcap, &cols) {
        Ok(rows) => (rows, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let produced_count = left.len();
    let mut matched = 0;
    let mut misses = Vec::new();
    for want in &expected {
        if let Some(i) = left.iter().position(|got| got == want) {
            left.remove(i);
            matched += 1;
        } else {
            let near = left
                .iter()
                .find(|g| g.get("method") == want.get("method") && g.get("uri") == want.get("uri"))
                .cloned();
            misses.push((want.clone(), near));
        }
    }
    Some(CaseResult {
        case: case.to_string(),
        expected: expected.len(),
        matched,
        produced: produced_count,
        misses,
        error,
    })
}

/// Every Zeek case of the corpus.
pub fn zeek_cases(corpus: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(corpus.join("zeek"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| format!("zeek/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn show(tx: &Tx) -> String {
    tx.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The per-case table and the disagreements, as text; returns (matched, expected).
pub fn report(results: &[CaseResult]) -> (String, usize, usize) {
    let mut s = String::new();
    let (mut m, mut e) = (0, 0);
    s.push_str(&format!(
        "{:<58} {:>8} {:>8} {:>8}\n",
        "case", "expected", "matched", "rf-tap"
    ));
    for r in results {
        m += r.matched;
        e += r.expected;
        s.push_str(&format!(
            "{:<58} {:>8} {:>8} {:>8}{}\n",
            r.case,
            r.expected,
            r.matched,
            r.produced,
            if r.matched == r.expected { "" } else { "  *" }
        ));
    }
    s.push_str(&format!(
        "{:<58} {:>8} {:>8}   {:.1}%\n",
        "TOTAL (Zeek http.log transactions)",
        e,
        m,
        m as f64 * 100.0 / e.max(1) as f64
    ));
    s.push_str("\ndisagreements:\n");
    for r in results {
        if let Some(err) = &r.error {
            s.push_str(&format!("  {}: rf-tap failed: {err}\n", r.case));
        }
        for (want, near) in &r.misses {
            s.push_str(&format!(
                "  {}: zeek [{}] / rf-tap [{}]\n",
                r.case,
                show(want),
                near.as_ref().map(show).unwrap_or_else(|| "none".into())
            ));
        }
    }
    (s, m, e)
}
