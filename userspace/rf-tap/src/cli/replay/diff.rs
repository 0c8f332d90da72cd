//! `rf-tap replay diff FILE --show N`: the responses that differed from production in the
//! last HTTP replay of FILE (or a chosen run), one block each, the difference in words.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{bail, Context as _};
use clap::Args;
use rf_tap_engine::replay::http::record::ResultRecord;

use super::results::newest_run;

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
    let wanted = |r: &ResultRecord| {
        let kind = match r {
            ResultRecord::Diff(_) => !args.failures,
            ResultRecord::Failure(_) => args.failures,
            ResultRecord::Run(_) | ResultRecord::Summary(_) => false,
        };
        kind && args
            .endpoint
            .as_ref()
            .is_none_or(|e| r.request().is_some_and(|q| q.endpoint == *e))
    };
    // First pass: the run's header, the count, and whether the file is ours.
    let mut label = "target".to_string();
    let mut total = 0usize;
    let mut bad_lines = 0usize;
    let mut saw_run = false;
    let mut saw_summary = false;
    for line in open()?.lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(r) = serde_json::from_str::<ResultRecord>(&line) else {
            bad_lines += 1;
            continue;
        };
        match &r {
            ResultRecord::Run(run) => {
                saw_run = true;
                label = run.label.clone();
            }
            ResultRecord::Summary(_) => saw_summary = true,
            _ => {}
        }
        if wanted(&r) {
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
        let Ok(r) = serde_json::from_str::<ResultRecord>(&line) else {
            continue;
        };
        if !wanted(&r) {
            continue;
        }
        shown += 1;
        if args.json {
            let _ = writeln!(out, "{}", serde_json::to_string(&r)?);
            continue;
        }
        let Some(q) = r.request() else { continue };
        let _ = writeln!(
            out,
            "{} {shown}/{total} — {} {}",
            if args.failures { "FAILURE" } else { "DIFF" },
            q.method,
            q.target
        );
        let _ = writeln!(
            out,
            "  endpoint {} · exchange {} · connection {}",
            q.endpoint, q.id, q.conn
        );
        let hint = match &r {
            ResultRecord::Failure(f) => {
                let _ = writeln!(out, "  {}: {}", f.words, f.detail);
                f.hint.as_deref()
            }
            ResultRecord::Diff(d) => {
                let (prod, tgt) = (&d.production, &d.target_response);
                let _ = writeln!(out, "  production {} · {label} {}", prod.status, tgt.status);
                for w in &d.words {
                    let _ = writeln!(out, "  {w}");
                }
                let listed = d.words.len();
                if d.count > listed {
                    let _ = writeln!(out, "  … and {} more differences", d.count - listed);
                }
                if d.partial {
                    let _ = writeln!(
                        out,
                        "  (production's response was captured with gaps or cut: compared on status and headers only)"
                    );
                }
                let _ = writeln!(out, "  production body:\n{}", indent(&prod.body, 2000));
                let _ = writeln!(out, "  {label} body:\n{}", indent(&tgt.body, 2000));
                d.hint.as_deref()
            }
            ResultRecord::Run(_) | ResultRecord::Summary(_) => None,
        };
        if let Some(h) = hint {
            let _ = writeln!(out, "  {h}");
        }
        out.push('\n');
    }
    if !args.json && shown < total {
        let _ = writeln!(out, "{} more; --show {total} lists them all", total - shown);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
