//! Grouping requests by endpoint: `GET /api/users/u_123?x=1` → `GET /api/users/{id}`.

/// Whether a path segment looks like an identifier rather than a route name: numbers,
/// UUIDs, long hex, prefixed ids (`u_123`, `ord-9f8e`), and long opaque tokens.
pub fn is_id_like(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let digits = seg.chars().filter(|c| c.is_ascii_digit()).count();
    if digits == seg.len() {
        return true;
    }
    let hex = seg.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if hex && seg.len() >= 8 && digits > 0 {
        return true; // UUIDs, hashes, object ids
    }
    // prefix_123, prefix-123abc: letters, a separator, then something with a digit.
    if let Some((head, tail)) = seg.split_once(['_', '-']) {
        if !head.is_empty()
            && head.len() <= 8
            && head.chars().all(|c| c.is_ascii_alphabetic())
            && tail.chars().any(|c| c.is_ascii_digit())
            && tail
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return true;
        }
    }
    // Long opaque tokens mixing letters and digits.
    seg.len() >= 16
        && digits >= 2
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '.'))
}

/// `METHOD /path/with/{id}`, the query string left out.
pub fn endpoint_key(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    // Absolute-form targets (proxies): keep only the path.
    let path = match path.find("://") {
        Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
        None => path,
    };
    let collapsed: Vec<&str> = path
        .split('/')
        .map(|s| if is_id_like(s) { "{id}" } else { s })
        .collect();
    let mut p = collapsed.join("/");
    if p.is_empty() {
        p.push('/');
    }
    format!("{method} {p}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_ids_and_keeps_route_names() {
        let cases = [
            ("GET", "/api/users/u_123", "GET /api/users/{id}"),
            (
                "GET",
                "/api/users/42/orders?page=2",
                "GET /api/users/{id}/orders",
            ),
            (
                "DELETE",
                "/v1/items/3f2b8c1e-9a7d-4c5e-8f00-1234567890ab",
                "DELETE /v1/items/{id}",
            ),
            ("GET", "/blobs/5f3a9c0d2e1b", "GET /blobs/{id}"),
            ("GET", "/api/v2/health", "GET /api/v2/health"),
            ("GET", "/static/app-main.css", "GET /static/app-main.css"),
            ("POST", "/api/user-profiles", "POST /api/user-profiles"),
            ("GET", "/t/eyJhbGciOiJIUzI1NiJ9abc123", "GET /t/{id}"),
            ("GET", "", "GET /"),
            (
                "GET",
                "http://example.com/api/users/7?x",
                "GET /api/users/{id}",
            ),
            ("GET", "/", "GET /"),
        ];
        for (m, t, want) in cases {
            assert_eq!(endpoint_key(m, t), want, "{t}");
        }
    }
}
