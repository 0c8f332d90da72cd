//! Selecting and presenting exchanges: filters (status, method, path glob, time), UTC time
//! formatting and parsing, and masking of credentials.

use std::time::Duration;

use crate::archive::Summary;

/// `500`, or a class like `5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        if t.len() == 3 && t.ends_with("xx") {
            if let Some(d) = t
                .chars()
                .next()
                .and_then(|c| c.to_digit(10))
                .filter(|d| (1..=5).contains(d))
            {
                return Ok(Self::Class(d as u16));
            }
        }
        t.parse::<u16>()
            .ok()
            .filter(|c| (100..=999).contains(c))
            .map(Self::Exact)
            .ok_or_else(|| format!("`{s}` is not a status (e.g. 500 or 5xx)"))
    }
}

impl StatusFilter {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::Exact(c) => status == *c,
            Self::Class(d) => status / 100 == *d,
        }
    }
}

/// A shell-style glob: `*` any run of characters (`/` included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Everything `requests` can filter on.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub status: Option<StatusFilter>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// Inclusive window, nanoseconds since the epoch.
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Filter {
    pub fn matches(&self, s: &Summary) -> bool {
        self.status
            .is_none_or(|f| s.status != 0 && f.matches(s.status))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&s.method))
            && self.path.as_ref().is_none_or(|p| glob_match(p, &s.path))
            && self.since_ns.is_none_or(|t| s.ts_ns >= t)
            && self.until_ns.is_none_or(|t| s.ts_ns <= t)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) `z` days after 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + if m <= 2 { 1 } else { 0 }, m, d)
}

/// `2026-11-21 10:00:00.123` (UTC) with `sep` between date and time and `frac` digits.
pub fn format_utc(ts: Duration, sep: char, frac: usize) -> String {
    let secs = ts.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if frac > 0 {
        let nanos = format!("{:09}", ts.subsec_nanos());
        s.push('.');
        s.push_str(&nanos[..frac.min(9)]);
    }
    s
}

/// ISO 8601 / RFC 3339 with milliseconds and `Z` (HAR's `startedDateTime`).
pub fn rfc3339(ts: Duration) -> String {
    format!("{}Z", format_utc(ts, 'T', 3))
}

/// Parses `2026-11-21T10:00:00Z`, `2026-11-21 10:00:00`, `2026-11-21T10:00:00.5+01:00`,
/// `2026-11-21` (midnight UTC) or seconds since the epoch (`1763719200.5`).
pub fn parse_time(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a time (use 2026-11-21T10:00:00Z or epoch seconds)");
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let (date, rest) = t.split_at(t.find(['T', ' ']).unwrap_or(t.len()));
    let dp: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = dp.as_slice() else {
        return Err(bad());
    };
    let (y, mo, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        mo.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, mo, d) * 86_400;
    let mut nanos = 0u32;
    let rest = rest.trim_start_matches(['T', ' ']);
    if !rest.is_empty() {
        let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let cp: Vec<&str> = clock.split(':').collect();
        let h: i64 = cp.first().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let mi: i64 = cp.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let sec_text = cp.get(2).copied().unwrap_or("0");
        let sec: f64 = sec_text.parse().map_err(|_| bad())?;
        if h > 23 || mi > 59 || !(0.0..61.0).contains(&sec) {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + sec.trunc() as i64;
        nanos = (sec.fract() * 1e9).round() as u32;
        if let Some(off) = zone.strip_prefix(['+', '-']) {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let op: Vec<&str> = off.split(':').collect();
            let oh: i64 = op
                .first()
                .and_then(|v| v.get(..2))
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad)?;
            let om: i64 = op
                .get(1)
                .and_then(|v| v.parse().ok())
                .or_else(|| off.get(2..4).and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            secs -= sign * (oh * 3600 + om * 60);
        }
    }
    if secs < 0 {
        return Err(bad());
    }
    Ok(Duration::new(secs as u64, nanos.min(999_999_999)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("/api/*", "/api/users/1"));
        assert!(glob_match("/api/users/?", "/api/users/7"));
        assert!(!glob_match("/api/*", "/health"));
        assert!(glob_match("*", ""));
        assert!(glob_match("/a*b*c", "/aXXbYYc"));
        assert!(!glob_match("/a*b*c", "/aXXbYY"));
    }

    #[test]
    fn times_round_trip() {
        let t = parse_time("2026-11-21T10:00:00Z").unwrap();
        assert_eq!(format_utc(t, ' ', 0), "2026-11-21 10:00:00");
        assert_eq!(parse_time("2026-11-21 11:00:00+01:00").unwrap(), t);
        assert_eq!(parse_time("1795255200").unwrap(), t);
        assert_eq!(
            rfc3339(Duration::new(0, 5_000_000)),
            "1970-01-01T00:00:00.005Z"
        );
        assert_eq!(
            format_utc(parse_time("2000-02-29T23:59:59.25Z").unwrap(), 'T', 2),
            "2000-02-29T23:59:59.25"
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01").is_err());
    }

    #[test]
    fn status_filters() {
        assert!("5xx".parse::<StatusFilter>().unwrap().matches(503));
        assert!(!"500".parse::<StatusFilter>().unwrap().matches(503));
        assert!("6xx".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
    }
}
