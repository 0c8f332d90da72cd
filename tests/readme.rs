//! A README example is a test: every `rf-tap` command in the README's shell blocks names a
//! command that exists and only flags that its `--help` lists, and the examples that read the
//! repository's own captures run and succeed.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, path::Path, process::Command};

use rf_tap_tests::rf_tap_bin;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The `rf-tap ...` commands of the README's sh blocks, continuation lines joined, comments
/// and what follows a pipe cut off.
fn readme_commands() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            pending.clear();
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(cont) = code.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let full = std::mem::take(&mut pending);
        for part in full.split("&&") {
            let first = part.split('|').next().unwrap_or("").trim();
            let words = shell_words(first);
            let at = match words.first().map(String::as_str) {
                Some("rf-tap") => 1,
                Some("sudo") if words.get(1).map(String::as_str) == Some("rf-tap") => 2,
                _ => continue,
            };
            out.push(words[at..].to_vec());
        }
    }
    out
}

/// Splits on spaces, keeping quoted strings whole (quotes removed).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, ' ' | '\t') => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

const NESTED: &[&str] = &[
    "create", "list", "delete", "start", "stop", "stats", "diff", "show",
];

fn help(chain: &[String]) -> String {
    let out = Command::new(rf_tap_bin())
        .args(chain)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rf-tap {} --help: {}",
        chain.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_readme_command_exists_with_the_flags_it_shows() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 30,
        "only {} commands found",
        commands.len()
    );
    let mut checked = BTreeSet::new();
    for words in &commands {
        let mut chain = vec![words[0].clone()];
        if let Some(second) = words.get(1) {
            if NESTED.contains(&second.as_str()) {
                chain.push(second.clone());
            }
        }
        let text = help(&chain);
        for w in words.iter().skip(chain.len()) {
            let Some(flag) = w.strip_prefix("--") else {
                continue;
            };
            let flag = flag.split('=').next().unwrap();
            if flag.is_empty() {
                continue;
            }
            let shown = format!("--{flag}");
            assert!(
                text.contains(&format!("{shown} "))
                    || text.contains(&format!("{shown}\n"))
                    || text.contains(&format!("{shown},"))
                    || text.contains(&format!("{shown}]")),
                "README: `rf-tap {}` uses {shown}, which `rf-tap {} --help` does not list",
                words.join(" "),
                chain.join(" ")
            );
            checked.insert((chain.join(" "), shown));
        }
    }
    assert!(checked.len() >= 40, "only {} flags checked", checked.len());
}

#[test]
fn readme_examples_on_the_repositorys_captures_run() {
    let mut ran = 0;
    for words in readme_commands() {
        if !words.iter().any(|w| w.starts_with("pcaps/")) {
            continue;
        }
        let out = Command::new(rf_tap_bin())
            .args(&words)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rf-tap {}: {}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "rf-tap {}", words.join(" "));
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} examples ran");
}

/// Every option of the everyday commands is in the README, long or short.
#[test]
fn every_option_in_help_is_in_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut missing = Vec::new();
    for chain in [
        "attach",
        "extract",
        "requests",
        "replay",
        "session create",
        "mirror start",
        "mock",
    ] {
        let chain: Vec<String> = chain.split(' ').map(str::to_string).collect();
        let text = help(&chain);
        for line in text.lines().map(str::trim_start) {
            // `-w, --write <FILE>` or `--force`
            let (short, rest) = match line.strip_prefix('-') {
                Some(r) if !r.starts_with('-') && r.len() > 2 && &r[1..3] == ", " => {
                    (Some(format!("-{}", &r[..1])), &r[3..])
                }
                _ => (None, line),
            };
            let Some(long) = rest.strip_prefix("--") else {
                continue;
            };
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name == "help" || name.is_empty() {
                continue;
            }
            let long = format!("--{name}");
            let found = readme.contains(&long)
                || short.as_ref().is_some_and(|s| {
                    readme.contains(&format!("`{s} "))
                        || readme.contains(&format!("`{s}/"))
                        || readme.contains(&format!(" {s} "))
                });
            if !found {
                missing.push(format!("{} {long}", chain.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "options only in --help: {missing:?}");
}
