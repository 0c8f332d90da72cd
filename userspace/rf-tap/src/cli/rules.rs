//! The filter options shared by `attach` and `replay`: `--rule`, `--filter`, `--port`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use rf_tap_engine::filter::{PortRange, Rule, RuleSet};

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// A filter rule (repeatable); see below
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,

    /// Read filter rules from a YAML file
    #[arg(long, value_name = "FILE")]
    pub filter: Option<PathBuf>,

    /// Shorthand: accept TCP with source or destination port in PORT or LO-HI, both directions
    #[arg(long, value_name = "PORTS")]
    pub port: Option<String>,
}

impl FilterArgs {
    pub fn given(&self) -> bool {
        !self.rules.is_empty() || self.filter.is_some() || self.port.is_some()
    }

    /// The rules in force; without any, a set that accepts everything.
    pub fn rule_set(&self) -> anyhow::Result<RuleSet> {
        let mut rules: Vec<Rule> = Vec::new();
        for r in &self.rules {
            rules.push(r.parse().context("bad --rule")?);
        }
        if let Some(path) = &self.filter {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read filter file {}", path.display()))?;
            rules.extend(
                RuleSet::from_yaml(&text)
                    .with_context(|| format!("bad filter file {}", path.display()))?,
            );
        }
        if let Some(p) = &self.port {
            let range: PortRange = p
                .parse()
                .map_err(|e| anyhow::anyhow!("bad --port `{p}`: {e}"))?;
            let after = rules.iter().map(|r| r.number).max().unwrap_or(0);
            rules.extend(RuleSet::port_shorthand(range, after)?);
        }
        if rules.is_empty() {
            return Ok(RuleSet::accept_all());
        }
        Ok(RuleSet::new(rules)?)
    }
}
