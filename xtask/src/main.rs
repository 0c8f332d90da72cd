//! Project tasks: `cargo xtask setup | test | lint | demo | conformance | fuzz | bench ...`.
mod bench;
mod bench_extract;
mod bench_http_replay;
mod bench_mirror;
mod bench_mirror_live;
mod bench_mock;
mod bench_replay;
mod bench_sink;
mod demo;
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "rf-tap project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, rust-src, bpf-linker); idempotent
    Setup,
    /// Setup, build, and run every test (privileged netns tests need root), then every fuzz
    /// target for 10 seconds (skipped when arguments for cargo test are given)
    Test {
        /// Extra arguments for `cargo test`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings
    Lint,
    /// Setup, build, and capture real traffic between two namespaces it makes
    Demo,
    /// Agreement with Zeek's http.log on ../shared/corpus/http: per case and in total
    Conformance,
    /// Run the libFuzzer targets (pcap_reader, decode, reassembly, http, rfcap_reader,
    /// extract, timeshift, hpack, grpc) for a bounded time each; a crash fails and keeps the
    /// input
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all)
        targets: Vec<String>,
    },
    /// Benchmarks that print rf-tap's figures beside the reference tools'
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

/// wrk-driven rounds of the mirror benchmarks.
#[derive(clap::Args)]
struct Load {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: u32,
}

#[derive(Subcommand)]
enum Bench {
    /// Capture at wrk's maximum rate: rf-tap vs tcpdump and netsniff-ng
    Capture {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        #[arg(long)]
        json: bool,
        /// Keep both cores busy with `stress-ng --cpu 2` during every run (capture under
        /// CPU pressure)
        #[arg(long)]
        contended: bool,
        /// Size of the response body nginx serves, in bytes (default: a 24-byte JSON object)
        #[arg(long)]
        body: Option<usize>,
    },
    /// Extraction speed and memory: rf-tap vs tshark, tcpflow and httpry on one large capture
    Extract {
        /// Size of the generated capture in MiB
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        /// Runs per tool (the median is printed)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Keep the generated files under target/bench
        #[arg(long)]
        keep: bool,
        /// Cleartext HTTP/2 instead (nginx http2 + h2load), beside `tshark -Y http2`
        #[arg(long)]
        h2: bool,
    },
    /// Packet replay: --topspeed rate and 2x timing accuracy, rf-tap vs tcpreplay
    Replay {
        /// Runs per tool (the median is printed)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// 64-byte frames per top-speed run (half as many 1514-byte frames)
        #[arg(long, default_value_t = 1_000_000)]
        packets: u32,
    },
    /// Mirror sessions: production cost and mirrored/offered packets, rf-tap session vs
    /// tc mirred to a vxlan device
    Mirror(Load),
    /// Live shadow mirroring at wrk's maximum: completeness, production cost and p99 with a
    /// fast and a slow shadow, rf-tap mirror vs nginx's mirror directive, shadow lag
    MirrorLive(Load),
    /// Sink capture under a flood: rf-tap --mode afxdp vs the ring buffer (tc, xdp) vs tcpdump
    Sink {
        /// Runs per tool (the median is printed)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// 64-byte frames per run
        #[arg(long, default_value_t = 2_000_000)]
        packets: u32,
    },
    /// Mock server requests/s on one core beside nginx serving the same bytes
    Mock {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Response body size in bytes
        #[arg(long, default_value_t = 512)]
        body: usize,
    },
    /// HTTP replay: --topspeed requests/s vs wrk on nginx, 10x schedule accuracy, memory
    HttpReplay {
        /// Runs per tool (the median is printed)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests in the top-speed capture (a capture 10 times larger is used for memory)
        #[arg(long, default_value_t = 50_000)]
        requests: u32,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !st.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn build_release() -> anyhow::Result<PathBuf> {
    cargo(&["build", "--release", "-p", "rf-tap"])?;
    Ok(root().join("target/release/rf-tap"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test { args } => {
            setup::setup()?;
            cargo(&["build", "-p", "rf-tap"])?;
            let mut a = vec!["test"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)?;
            if args.is_empty() {
                fuzz::fuzz(&root(), &[], 10)?;
            }
            Ok(())
        }
        Task::Fuzz { seconds, targets } => fuzz::fuzz(&root(), &targets, seconds.max(1)),
        Task::Lint => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The fuzz targets are a workspace of their own.
            let fuzz = root().join("userspace/rf-tap-fuzz/Cargo.toml");
            let fuzz = fuzz.to_str().context("path")?;
            cargo(&["fmt", "--manifest-path", fuzz, "--", "--check"])?;
            cargo(&[
                "clippy",
                "--manifest-path",
                fuzz,
                "--target-dir",
                "target/fuzz-lint",
                "--",
                "-D",
                "warnings",
            ])
        }
        Task::Conformance => {
            let bin = build_release()?;
            let Some(corpus) = rf_tap_tests::conformance::corpus_dir() else {
                bail!("../shared/corpus/http not found beside the repository");
            };
            let results: Vec<_> = rf_tap_tests::conformance::zeek_cases(&corpus)
                .iter()
                .filter_map(|c| rf_tap_tests::conformance::run_case(&bin, &corpus, c))
                .collect();
            let (table, _, _) = rf_tap_tests::conformance::report(&results);
            print!("{table}");
            Ok(())
        }
        Task::Demo => {
            setup::setup()?;
            let bin = build_release()?;
            demo::demo(&root(), &bin)
        }
        Task::Bench { which } => {
            setup::setup()?;
            let bin = build_release()?;
            match which {
                Bench::Capture {
                    seconds,
                    rounds,
                    connections,
                    json,
                    contended,
                    body,
                } => bench::capture(
                    &bin,
                    bench::CaptureLoad {
                        seconds,
                        rounds: rounds.max(1),
                        connections,
                        contended,
                        body,
                    },
                    json,
                ),
                Bench::Extract {
                    size_mb,
                    rounds,
                    h2: true,
                    ..
                } => bench_extract::extract_h2(&bin, &root(), size_mb, rounds.max(1)),
                Bench::Extract {
                    size_mb,
                    rounds,
                    keep,
                    h2: false,
                } => bench_extract::extract(&bin, &root(), size_mb, rounds.max(1), keep),
                Bench::Replay { rounds, packets } => {
                    bench_replay::replay(&bin, rounds.max(1), packets.max(1000))
                }
                Bench::Mirror(l) => bench_mirror::mirror(
                    &bin,
                    l.rounds.max(1),
                    l.seconds.max(1),
                    l.connections.max(1),
                ),
                Bench::MirrorLive(l) => bench_mirror_live::mirror_live(
                    &bin,
                    l.rounds.max(1),
                    l.seconds.max(1),
                    l.connections.max(1),
                ),
                Bench::Sink { rounds, packets } => {
                    bench_sink::sink(&bin, rounds.max(1), packets.max(1000))
                }
                Bench::Mock {
                    rounds,
                    seconds,
                    body,
                } => bench_mock::mock(&bin, rounds.max(1), seconds.max(1), body),
                Bench::HttpReplay { rounds, requests } => {
                    bench_http_replay::http_replay(&bin, rounds.max(1), requests.max(100))
                }
            }
        }
    }
}
