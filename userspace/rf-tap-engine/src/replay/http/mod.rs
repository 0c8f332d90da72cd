//! HTTP-level replay, sans IO: which captured exchanges are sent again ([`plan`]), what is
//! changed in them first ([`transform`]), the tally and reports of a run ([`report`]), the
//! records of its results file ([`record`]) and the quality gates a CI job fails on ([`gate`]). The binary supplies the schedule clock,
//! the connections and the HTTP client; the comparison itself is [`crate::compare`].
pub mod gate;
pub mod plan;
pub mod record;
pub mod report;
pub mod timeshift;
pub mod transform;
