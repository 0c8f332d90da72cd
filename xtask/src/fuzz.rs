//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the libFuzzer targets of
//! `userspace/rf-tap-fuzz`, built with coverage instrumentation on stable Rust and run one
//! after another for a bounded time each, from seeds made of the repository's own captures.
//!
//! The flags are cargo-fuzz's defaults without a sanitizer (those need nightly): sancov
//! coverage with 8-bit counters, PC table and comparison tracing, `--cfg fuzzing`, debug
//! assertions and overflow checks. A crash, a timeout or memory beyond the limit fails the
//! run and leaves the input under `target/fuzz/artifacts/<target>/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use rf_tap_engine::{
    archive::ArchiveWriter,
    flow::{extract_all, ExtractConfig},
    pcap::reader::CaptureReader,
    wire,
};
use rf_tap_tests::conformance::capture_files;

pub const TARGETS: [&str; 9] = [
    "pcap_reader",
    "decode",
    "reassembly",
    "http",
    "rfcap_reader",
    "extract",
    "timeshift",
    "hpack",
    "grpc",
];

const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// Largest input the fuzzer makes (seeds above it are cut to it).
const MAX_LEN: usize = 256 << 10;
/// Memory a target may use before libFuzzer calls it a failure.
const RSS_LIMIT_MB: u32 = 1024;

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

/// Builds every target; returns the directory holding the binaries.
fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let triple = host_triple()?;
    let target_dir = root.join("target/fuzz");
    // --target keeps the instrumentation off build scripts and proc macros.
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(root.join("userspace/rf-tap-fuzz/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--target", &triple])
        .env("RUSTFLAGS", RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("cannot run cargo")?;
    if !st.success() {
        bail!("building the fuzz targets failed");
    }
    Ok(target_dir.join(triple).join("release"))
}

/// Captures to seed from: the repository's, and the shared HTTP corpus when it is there.
fn captures(root: &Path) -> Vec<PathBuf> {
    let mut out = capture_files(&root.join("pcaps"));
    if let Some(c) = rf_tap_tests::conformance::corpus_dir() {
        out.extend(capture_files(&c));
    }
    out
}

/// Writes the seeds of one target into `dir` (made afresh each run).
fn seeds(target: &str, captures: &[PathBuf], dir: &Path) -> anyhow::Result<usize> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let mut n = 0usize;
    let mut put = |bytes: &[u8]| -> anyhow::Result<()> {
        if bytes.len() <= MAX_LEN {
            fs::write(dir.join(format!("seed-{n:05}")), bytes)?;
            n += 1;
        }
        Ok(())
    };
    match target {
        "pcap_reader" | "extract" => {
            for c in captures {
                put(&fs::read(c)?)?;
            }
        }
        "decode" => {
            // One byte choosing the link type (the index in the target's table), then a frame.
            let links = wire::DECODED_LINKTYPES;
            for c in captures {
                let bytes = fs::read(c)?;
                let Ok(reader) = CaptureReader::new(&bytes) else {
                    continue;
                };
                for f in reader.take(20).map_while(Result::ok) {
                    if let Some(i) = links.iter().position(|l| *l == f.linktype) {
                        let mut s = vec![i as u8];
                        s.extend_from_slice(f.data);
                        put(&s)?;
                    }
                }
            }
        }
        "http" => {
            let conversations: [(&[u8], &[u8]); 4] = [
                (
                    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
                ),
                (
                    b"HEAD / HTTP/1.1\r\n\r\nPUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Go on\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                ),
                (
                    b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
                    b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03",
                ),
                (
                    b"GET /old\r\n",
                    b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00",
                ),
            ];
            for (req, resp) in conversations {
                for cut in [0u8, 7, 255] {
                    let split = (req.len() * 255).div_ceil(req.len() + resp.len()) as u8;
                    let mut s = vec![split, cut];
                    s.extend_from_slice(req);
                    s.extend_from_slice(resp);
                    put(&s)?;
                }
            }
        }
        "hpack" => {
            // RFC 7541 C.4 and C.6, blocks joined by the target's separator.
            let seeds: [&[u8]; 2] = [
                b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff\xfe\x82\x86\x84\xbe\x58\x86\xa8\xeb\x10\x64\x9c\xbf",
                b"\x3f\xe1\x01\x48\x82\x64\x02\xfe\x48\x83\x64\x0e\xff\xc1\xc0\xbf\xfe\x20\x40\x03foo\x03bar\xbe",
            ];
            for s in seeds {
                put(s)?;
            }
        }
        "grpc" => {
            // An uncompressed message `1: "alice", 2: {1: 42}`, and a nested one.
            let seeds: [&[u8]; 2] = [
                b"\x00\x00\x00\x00\x00\x0b\x0a\x05alice\x12\x02\x08\x2a",
                b"\x01\x00\x00\x00\x00\x06\x0a\x04\x12\x02\x08\x01",
            ];
            for s in seeds {
                put(s)?;
            }
        }
        "timeshift" => {
            let seeds: [&[u8]; 4] = [
                b"\x30from=2026-11-30T10:00:00.123+01:00&ts=1764000000",
                b"\x30{\"since\":\"2026-02-28 12:00:00Z\",\"at\":1764000000123,\"a\":[1,{\"b\":\"x\"}]}",
                b"\x30eyJhbGciOiJIUzI1NiJ9.eyJpYXQiOjE3NjQwMDAwMDAsImV4cCI6MTc2NDAwMzYwMH0.c2ln",
                b"\x00a=1&b=2&a=3&c",
            ];
            for s in seeds {
                put(s)?;
            }
        }
        "rfcap_reader" => {
            for c in captures.iter().take(40) {
                let bytes = fs::read(c)?;
                let Ok((exchanges, _)) = extract_all(&bytes, ExtractConfig::default()) else {
                    continue;
                };
                if exchanges.is_empty() {
                    continue;
                }
                let mut w = ArchiveWriter::new(Vec::new(), 0)?.with_block_bytes(4096);
                for x in exchanges.into_iter().take(20) {
                    w.append(x)?;
                }
                put(&w.finish()?)?;
            }
        }
        _ => {}
    }
    Ok(n)
}

struct Outcome {
    target: String,
    seeds: usize,
    runs: u64,
    execs_per_sec: u64,
    cov: u64,
    corpus: u64,
    failure: Option<String>,
}

/// "#1234 DONE cov: 56 ft: 78 corp: 9/10b ... exec/s: 11 rss: 12Mb" and the like.
fn stat(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub fn fuzz(root: &Path, targets: &[String], seconds: u64) -> anyhow::Result<()> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", "));
        }
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let bin_dir = build(root)?;
    let captures = captures(root);
    let work = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for t in &chosen {
        let seed_dir = work.join("seeds").join(t);
        let corpus = work.join("corpus").join(t);
        let artifacts = work.join("artifacts").join(t);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        let seeds = seeds(t, &captures, &seed_dir)?;
        eprintln!("fuzz {t}: {seconds}s from {seeds} seeds");
        let started = Instant::now();
        let out = Command::new(bin_dir.join(t))
            .arg(&corpus)
            .arg(&seed_dir)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .output()
            .with_context(|| format!("cannot run the fuzz target {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let last = log
            .lines()
            .rev()
            .find(|l| l.starts_with('#') && l.contains("cov:"))
            .unwrap_or("");
        let failure = (!out.status.success()).then(|| {
            let why = log
                .lines()
                .find(|l| l.starts_with("==") && l.contains("ERROR"))
                .or_else(|| log.lines().find(|l| l.contains("panicked")))
                .unwrap_or("libFuzzer failed")
                .to_string();
            let input = log
                .lines()
                .find_map(|l| l.split("Test unit written to ").nth(1))
                .unwrap_or("(no input written)");
            eprintln!("{log}");
            format!(
                "{why}; input: {input}; reproduce: {} {input}",
                bin_dir.join(t).display()
            )
        });
        outcomes.push(Outcome {
            target: t.to_string(),
            seeds,
            runs: stat(last, "#").unwrap_or(0),
            execs_per_sec: stat(last, "exec/s:").unwrap_or(0),
            cov: stat(last, "cov:").unwrap_or(0),
            corpus: stat(last, "corp:").unwrap_or(0),
            failure,
        });
        eprintln!("fuzz {t}: done in {:.0?}", started.elapsed());
    }
    println!(
        "{:<14} {:>6} {:>10} {:>9} {:>7} {:>7}  RESULT",
        "TARGET", "SEEDS", "RUNS", "EXEC/S", "COV", "CORPUS"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>6} {:>10} {:>9} {:>7} {:>7}  {}",
            o.target,
            o.seeds,
            o.runs,
            o.execs_per_sec,
            o.cov,
            o.corpus,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
