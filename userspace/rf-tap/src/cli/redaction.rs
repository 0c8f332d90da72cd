//! `--redact-header`, `--redact-param`, `--redact-field`, `--no-redact`: the engine's one
//! redaction policy ([`rf_tap_engine::redact`]) for every command that writes exchange
//! content (HAR, JSONL, `requests show`, replay results, the mirror's diffs).

use clap::Args;
use rf_tap_engine::{compare::JsonPath, redact::Redaction};

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Redaction (credentials are masked in what rf-tap writes)")]
pub struct RedactArgs {
    /// Mask this header's value too (Authorization, Cookie, Set-Cookie, API-key and token
    /// headers always are); repeatable
    #[arg(long, value_name = "NAME")]
    pub redact_header: Vec<String>,

    /// Mask this query or form parameter too (password, token, api_key and the like always
    /// are); repeatable
    #[arg(long, value_name = "NAME")]
    pub redact_param: Vec<String>,

    /// Mask this JSON body field too ('$.user.email', '$..ssn'); repeatable
    #[arg(long, value_name = "JSONPATH")]
    pub redact_field: Vec<JsonPath>,

    /// Write credentials and secret fields in clear, on purpose
    #[arg(long, conflicts_with_all = ["redact_header", "redact_param", "redact_field"])]
    pub no_redact: bool,
}

impl RedactArgs {
    pub fn policy(&self) -> Redaction {
        if self.no_redact {
            Redaction::off()
        } else {
            Redaction::with(&self.redact_header, &self.redact_param, &self.redact_field)
        }
    }
}
