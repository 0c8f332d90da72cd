//! Where HTTP replay results are saved (`FILE.replay/run-STAMP.jsonl`) and found again. The
//! records themselves are the engine's `replay::http::record` types.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use rf_tap_engine::query::format_utc;

/// Where the results of HTTP replays of `capture` are saved.
pub fn results_dir(capture: &Path) -> PathBuf {
    let mut name = capture
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".replay");
    capture.with_file_name(name)
}

pub fn stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now, 'T', 0).replace([':', '-'], "") + "Z"
}

pub fn open_results(capture: &Path) -> anyhow::Result<(BufWriter<File>, PathBuf)> {
    let dir = results_dir(capture);
    crate::output::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = stamp();
    for i in 0..100 {
        let name = if i == 0 {
            format!("run-{base}.jsonl")
        } else {
            format!("run-{base}-{i}.jsonl")
        };
        let path = dir.join(name);
        match crate::output::create_new(&path) {
            Ok(f) => return Ok((BufWriter::new(f), path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    bail!("{}: too many runs this second", dir.display())
}

pub fn newest_run(file: &Path) -> anyhow::Result<PathBuf> {
    let dir = results_dir(file);
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "no saved replay results for {} (run `rf-tap replay {} --target URL` first)",
            file.display(),
            file.display()
        )
    })?;
    let mut runs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("run-") && n.ends_with(".jsonl"))
        })
        .collect();
    runs.sort();
    runs.pop()
        .with_context(|| format!("{} holds no replay results", dir.display()))
}
