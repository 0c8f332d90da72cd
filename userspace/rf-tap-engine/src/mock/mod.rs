//! Mocks of a service's dependencies from its captured outbound exchanges: which exchanges
//! are outbound and to which dependency ([`Dependency`]), and the index that answers a new
//! request with the recorded response whose signature matches ([`MockIndex`]).
//!
//! A signature is the method, the path, the query as a sorted list of pairs, and the body:
//! JSON canonicalised (keys sorted, spacing gone), other bodies as bytes. Values that look
//! generated (UUIDs, ISO-8601 and epoch timestamps, long hex tokens: the ones the noise model
//! calls generated) and the JSON paths the user ignores are left out, in the query and in
//! JSON bodies alike. The Host is part of it only when one mock serves several dependencies.

mod index;

pub use index::{Lookup, MockIndex, MockOptions, Recording, Signature};

use crate::http::exchange::{Exchange, Traffic};

/// Which dependency an outbound exchange called: its Host (as sent, port included when
/// the client wrote one) and the server's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub host: Option<String>,
    pub server: std::net::SocketAddr,
}

impl Dependency {
    pub fn of(x: &Exchange) -> Self {
        Self {
            host: x
                .request
                .as_ref()
                .and_then(|q| q.headers.get_str("host"))
                .map(|h| h.trim().to_ascii_lowercase()),
            server: x.server,
        }
    }

    /// The name people know it by: the Host, else the server's address.
    pub fn name(&self) -> String {
        self.host.clone().unwrap_or_else(|| self.server.to_string())
    }

    /// Whether `wanted` names it: the Host with or without its port, or the server's
    /// `address:port`.
    pub fn is(&self, wanted: &str) -> bool {
        let wanted = wanted.trim().to_ascii_lowercase();
        if let Some(h) = &self.host {
            let bare = match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|c| c.is_ascii_digit()) => name,
                _ => h.as_str(),
            };
            if *h == wanted || bare == wanted {
                return true;
            }
        }
        self.server.to_string() == wanted
    }
}

/// Whether the captured host was the client: it called a dependency.
pub fn is_outbound(x: &Exchange) -> bool {
    x.traffic == Some(Traffic::Outbound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::message::Request;

    #[test]
    fn a_dependency_is_named_by_its_host_or_its_address() {
        let mut x = Exchange {
            id: 0,
            conn: 0,
            client: "10.1.2.9:40000".parse().unwrap(),
            server: "10.1.2.3:8081".parse().unwrap(),
            request: Some(Request {
                headers: vec![("Host".into(), b"Payment-API:8081".to_vec())].into(),
                ..Default::default()
            }),
            response: None,
            flags: Default::default(),
            anomalies: Vec::new(),
            client_by: None,
            traffic: None,
        };
        let d = Dependency::of(&x);
        assert_eq!(d.name(), "payment-api:8081");
        assert!(d.is("payment-api"));
        assert!(d.is("payment-api:8081"));
        assert!(d.is("10.1.2.3:8081"));
        assert!(!d.is("billing"));
        x.request = Some(Request::default());
        assert_eq!(Dependency::of(&x).name(), "10.1.2.3:8081");
    }
}
