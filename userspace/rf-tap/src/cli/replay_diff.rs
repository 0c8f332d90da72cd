//! `rf-tap replay diff FILE --show N`: the responses that differed from production in the
//! last HTTP replay of FILE (or a chosen run), one block each, the difference in words.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use crate::cli::http_replay::results_dir;

#[derive(Debug, Args)]
#[command(after_help = "\
Results are saved by `rf-tap replay FILE --target URL` in FILE.replay/, one file per run.

Examples:
  rf-tap replay diff capture.rfcap --show 5
  rf-tap replay diff capture.rfcap --failures
  rf-tap replay diff capture.rfcap --endpoint 'GET /api/users/{id}' --json")]
pub struct DiffArgs {
    /// The capture that was replayed (its results are in FILE.replay/)
    pub file: PathBuf,

    /// Show the first N differences
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub show: usize,

    /// A results file of an earlier run (default: the newest in FILE.replay/)
    #[arg(long, value_name = "RESULTS")]
    pub run: Option<PathBuf>,

    /// Show the failed requests (timeouts, resets, 5xx) instead
    #[arg(long)]
    pub failures: bool,

    /// Only this endpoint group, as the RESULTS table names it
    #[arg(long, value_name = "ENDPOINT")]
    pub endpoint: Option<String>,

    /// Print the saved records as JSON lines
    #[arg(long)]
    pub json: bool,
}

fn newest_run(file: &std::path::Path) -> anyhow::Result<PathBuf> {
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

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn indent(body: &str, max: usize) -> String {
    let cut: String = body.chars().take(max).collect();
    let mut s: String = cut.lines().map(|l| format!("    {l}\n")).collect();
    if body.chars().count() > max {
        s.push_str("    …\n");
    }
    if s.is_empty() {
        s.push_str("    (empty)\n");
    }
    s
}

pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.run {
        Some(p) => p.clone(),
        None => newest_run(&args.file)?,
    };
    let open = || -> anyhow::Result<BufReader<std::fs::File>> {
        Ok(BufReader::new(std::fs::File::open(&path).with_context(
            || format!("cannot open {}", path.display()),
        )?))
    };
    let kind = if args.failures { "failure" } else { "diff" };
    let wanted = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some(kind)
            && args
                .endpoint
                .as_ref()
                .is_none_or(|e| v.get("endpoint").and_then(Value::as_str) == Some(e.as_str()))
    };
    // First pass: the run's header, the count, and whether the file is ours.
    let mut label = "target".to_string();
    let mut total = 0usize;
    let mut bad_lines = 0usize;
    let mut saw_run = false;
    let mut saw_summary = false;
    for line in open()?.lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            bad_lines += 1;
            continue;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("run") => {
                saw_run = true;
                if let Some(l) = v.get("label").and_then(Value::as_str) {
                    label = l.to_string();
                }
            }
            Some("summary") => saw_summary = true,
            _ => {}
        }
        if wanted(&v) {
            total += 1;
        }
    }
    if !saw_run {
        bail!("{} is not an rf-tap replay results file", path.display());
    }
    if bad_lines > 0 {
        eprintln!(
            "rf-tap: {}: {bad_lines} unreadable lines left out",
            path.display()
        );
    }
    if !saw_summary {
        eprintln!(
            "rf-tap: {}: the run did not finish; showing what it saved",
            path.display()
        );
    }
    if total == 0 {
        if !args.json {
            println!(
                "No {} in {}",
                if args.failures {
                    "failed request"
                } else {
                    "response differed from production"
                },
                path.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = 0usize;
    let mut out = String::new();
    use std::fmt::Write as _;
    for line in open()?.lines() {
        if shown >= args.show {
            break;
        }
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if !wanted(&v) {
            continue;
        }
        shown += 1;
        if args.json {
            let _ = writeln!(out, "{v}");
            continue;
        }
        let get = |k: &str| text(v.get(k).unwrap_or(&Value::Null));
        let _ = writeln!(
            out,
            "{} {shown}/{total} — {} {}",
            if args.failures { "FAILURE" } else { "DIFF" },
            get("method"),
            get("target")
        );
        let _ = writeln!(
            out,
            "  endpoint {} · exchange {} · connection {}",
            get("endpoint"),
            get("id"),
            get("conn")
        );
        if args.failures {
            let _ = writeln!(out, "  {}: {}", get("words"), get("detail"));
        } else {
            let prod = v.get("production").cloned().unwrap_or(Value::Null);
            let tgt = v.get("target_response").cloned().unwrap_or(Value::Null);
            let status = |r: &Value| text(r.get("status").unwrap_or(&Value::Null));
            let _ = writeln!(
                out,
                "  production {} · {label} {}",
                status(&prod),
                status(&tgt)
            );
            for w in v
                .get("words")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let _ = writeln!(out, "  {}", text(w));
            }
            let count = v.get("count").and_then(Value::as_u64).unwrap_or(0);
            let listed = v.get("words").and_then(Value::as_array).map_or(0, Vec::len) as u64;
            if count > listed {
                let _ = writeln!(out, "  … and {} more differences", count - listed);
            }
            if v.get("partial").and_then(Value::as_bool) == Some(true) {
                let _ = writeln!(
                    out,
                    "  (production's response was captured with gaps or cut: compared on status and headers only)"
                );
            }
            let _ = writeln!(
                out,
                "  production body:\n{}",
                indent(&text(prod.get("body").unwrap_or(&Value::Null)), 2000)
            );
            let _ = writeln!(
                out,
                "  {label} body:\n{}",
                indent(&text(tgt.get("body").unwrap_or(&Value::Null)), 2000)
            );
        }
        if let Some(h) = v.get("hint").and_then(Value::as_str) {
            let _ = writeln!(out, "  {h}");
        }
        if !args.json {
            out.push('\n');
        }
    }
    if !args.json && shown < total {
        let _ = writeln!(out, "{} more; --show {total} lists them all", total - shown);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
