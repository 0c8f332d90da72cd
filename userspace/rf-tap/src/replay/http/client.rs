//! The HTTP client of a replay (and of the live mirror): HTTP/1.1 with one keep-alive
//! connection per captured connection, plain TCP or TLS (rustls), responses parsed by the
//! same push parser that reads captures, so a target's response and production's are decoded
//! (chunked, gzip, br) the same way. An `h2c://` target is spoken to in cleartext HTTP/2
//! with prior knowledge (the `h2` crate): the streams of one captured connection share one
//! connection ([`H2Session`]), trailers (gRPC's `grpc-status`) join the response's headers.

use std::{
    collections::VecDeque,
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rf_tap_engine::{
    compare::ResponseView,
    http::message::{Limits, MessageParser, Parsed, Response, Side},
    reassembly::Origin,
    replay::http::report::FailKind,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Most of a target's response body kept for the comparison (the rest is counted).
pub const KEEP_BODY: usize = 1 << 20;

/// The `--target` URL, resolved.
#[derive(Clone, Debug)]
pub struct Target {
    pub tls: bool,
    /// `h2c://`: HTTP/2 in the clear, with prior knowledge.
    pub h2: bool,
    pub host: String,
    /// `host[:port]` as a Host header (port left out when it is the scheme's default).
    pub authority: String,
    /// The URL's path without its trailing slash ("" for `/`).
    pub path_prefix: String,
    pub addrs: Vec<SocketAddr>,
}

/// What `replay --target` and `mirror --to` change in each request they send: the Host
/// header (`--host`, `--keep-host`, else the target's own), headers set and removed, JSON
/// fields scrubbed, and the target URL's path prefix.
pub struct Sending<'a> {
    pub host: Option<&'a str>,
    pub keep_host: bool,
    pub set: &'a [(String, String)],
    pub remove: &'a [String],
    pub scrub_fields: &'a [rf_tap_engine::compare::JsonPath],
}

impl Sending<'_> {
    pub fn transform(&self, target: &Target) -> rf_tap_engine::replay::http::transform::Transform {
        use rf_tap_engine::replay::http::transform::{HostHeader, Transform};
        let mut t = Transform::new(match (self.host, self.keep_host) {
            (Some(v), _) => HostHeader::Fixed(v.to_string()),
            (None, true) => HostHeader::Original,
            (None, false) => HostHeader::Target(target.authority.clone()),
        });
        t.set = self.set.to_vec();
        t.remove = self.remove.to_vec();
        t.scrub = rf_tap_engine::redact::Redaction::only_fields(self.scrub_fields);
        t.path_prefix = target.path_prefix.clone();
        t
    }
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        Self::parse_flag("--target", url)
    }

    /// The same, naming `flag` (the option the URL came with) in its errors.
    pub fn parse_flag(flag: &str, url: &str) -> anyhow::Result<Self> {
        let bad = || {
            format!(
                "{flag} {url}: use http://HOST[:PORT][/PATH], https://... or h2c://... (HTTP/2 in the clear)"
            )
        };
        let (tls, h2, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, false, r)
        } else if let Some(r) = url.strip_prefix("h2c://") {
            (false, true, r)
        } else {
            bail!("{}", bad());
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            bail!("{}", bad());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').with_context(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok().with_context(bad)?,
                None if after.is_empty() => default_port,
                None => bail!("{}", bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok().with_context(bad)?),
                None => (authority.to_string(), default_port),
            }
        };
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("{flag} {url}: cannot resolve {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{flag} {url}: {host} has no address");
        }
        Ok(Self {
            tls,
            h2,
            authority: if port == default_port {
                authority.split(':').next().unwrap_or(authority).to_string()
            } else {
                authority.to_string()
            },
            host,
            path_prefix: path.trim_end_matches('/').to_string(),
            addrs,
        })
    }

    /// A short name for the target in reports: the first label of its host name
    /// (`staging` for http://staging.internal:8080), or "target" for an address.
    pub fn label(&self) -> String {
        if self.host.parse::<std::net::IpAddr>().is_ok() || self.host == "localhost" {
            return "target".into();
        }
        self.host.split('.').next().unwrap_or("target").to_string()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens connections to the target.
pub struct Connector {
    target: Arc<Target>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Connector {
    /// `ca_file`: PEM certificates trusted besides the built-in web roots; `insecure`:
    /// accept any certificate (a staging host with a self-signed one).
    pub fn new(
        target: Arc<Target>,
        ca_file: Option<&Path>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        if !target.tls {
            return Ok(Self { target, tls: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS setup")?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = ca_file {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("--ca-file {}: cannot read", path.display()))?
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!("--ca-file {}: not PEM certificates", path.display())
                    })?;
                if certs.is_empty() {
                    bail!("--ca-file {}: no certificate in it", path.display());
                }
                for c in certs {
                    roots.add(c).with_context(|| {
                        format!("--ca-file {}: a certificate is not usable", path.display())
                    })?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(target.host.clone())
            .with_context(|| format!("--target: {} is not a TLS server name", target.host))?;
        Ok(Self {
            tls: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
            target,
        })
    }

    /// The target is `h2c://` (HTTP/2 with prior knowledge).
    pub fn is_h2(&self) -> bool {
        self.target.h2
    }

    async fn connect(&self) -> Result<Box<dyn Io>, (FailKind, String)> {
        let mut last = (FailKind::Connect, "no address".to_string());
        for addr in &self.target.addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Box::new(s)),
                        Some((c, name)) => match c.connect(name.clone(), s).await {
                            Ok(t) => Ok(Box::new(t)),
                            Err(e) => Err((FailKind::Tls, format!("TLS with {addr}: {e}"))),
                        },
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = (FailKind::Refused, format!("{addr} refused the connection"));
                }
                Err(e) => last = (FailKind::Connect, format!("cannot connect to {addr}: {e}")),
            }
        }
        Err(last)
    }
}

/// A response from the target.
#[derive(Debug)]
pub struct Answer {
    pub view: ResponseView,
    /// From the end of writing the request to the first byte of the response.
    pub latency: Duration,
}

/// Why a request failed, with details for the saved results.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub detail: String,
}

/// One replay connection: opened on first use, reopened after a failure or a close.
pub struct Connection {
    io: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    /// To an `h2c://` target: the HTTP/2 connection (shared with other streams).
    h2: Option<H2Session>,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            io: None,
            buf: vec![0; 64 << 10],
            h2: None,
        }
    }
}

impl Connection {
    /// A connection whose requests go as streams of `session` (an `h2c://` target).
    pub fn on(session: H2Session) -> Self {
        Self {
            h2: Some(session),
            ..Self::default()
        }
    }
}

/// One HTTP/2 connection to the target, opened on first use and again after it failed;
/// cloned, its streams run concurrently.
#[derive(Clone, Default)]
pub struct H2Session(Arc<tokio::sync::Mutex<Option<h2::client::SendRequest<bytes::Bytes>>>>);

/// Headers HTTP/2 does not carry (RFC 9113 8.2.2), besides Host (`:authority`).
const NOT_IN_H2: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// The HTTP/1.1 bytes a transform built, as an HTTP/2 request and its body.
fn h2_request(bytes: &[u8], authority: &str) -> Result<(http::Request<()>, bytes::Bytes), Failure> {
    let bad = |why: String| Failure {
        kind: FailKind::Garbage,
        detail: format!("cannot send as HTTP/2: {why}"),
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("request head cut".into())),
        Err(e) => return Err(bad(e.to_string())),
    };
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .unwrap_or(authority);
    let uri = format!("http://{host}{}", req.path.unwrap_or("/"));
    let mut b = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(uri)
        .version(http::Version::HTTP_2);
    let mut grpc = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if NOT_IN_H2.contains(&name.as_str()) || (name == "te" && h.value != b"trailers") {
            continue;
        }
        if name == "content-type" && h.value.starts_with(b"application/grpc") {
            grpc = true;
        }
        b = b.header(name, h.value);
    }
    if grpc
        && !req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("te"))
    {
        // gRPC servers want it (the transform drops TE as hop-by-hop for HTTP/1).
        b = b.header("te", "trailers");
    }
    let request = b.body(()).map_err(|e| bad(e.to_string()))?;
    Ok((request, bytes::Bytes::copy_from_slice(&bytes[head..])))
}

impl H2Session {
    async fn sender(
        &self,
        connector: &Connector,
    ) -> Result<h2::client::SendRequest<bytes::Bytes>, Failure> {
        let mut g = self.0.lock().await;
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let io = connector
            .connect()
            .await
            .map_err(|(kind, detail)| Failure { kind, detail })?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, bytes::Bytes>(io)
            .await
            .map_err(|e| Failure {
                kind: FailKind::Reset,
                detail: format!("HTTP/2 handshake: {e}"),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *g = Some(send.clone());
        Ok(send)
    }

    async fn forget(&self) {
        *self.0.lock().await = None;
    }

    async fn exchange(&self, connector: &Connector, request: &[u8]) -> Result<Answer, Failure> {
        let reset = |e: h2::Error| Failure {
            kind: if e.is_remote() || e.is_io() {
                FailKind::Reset
            } else {
                FailKind::Garbage
            },
            detail: format!("HTTP/2: {e}"),
        };
        let (req, body) = h2_request(request, &connector.target.authority)?;
        let sender = self.sender(connector).await?;
        let mut sender = match sender.ready().await {
            Ok(s) => s,
            Err(e) => {
                // The connection is gone (GOAWAY, closed): once more on a new one.
                self.forget().await;
                let _ = e;
                self.sender(connector).await?.ready().await.map_err(reset)?
            }
        };
        let (response, mut stream) = sender.send_request(req, body.is_empty()).map_err(reset)?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(reset)?;
        }
        let sent = Instant::now();
        let response = response.await.map_err(reset)?;
        let latency = sent.elapsed();
        let (parts, mut recv) = response.into_parts();
        let mut headers: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let enc = parts
            .headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = rf_tap_engine::http::body::BodyState::new(enc.as_deref(), KEEP_BODY);
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(reset)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.push(&chunk);
        }
        if let Some(t) = recv.trailers().await.map_err(reset)? {
            headers.extend(
                t.iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())),
            );
        }
        let body = body.finish();
        Ok(Answer {
            latency,
            view: ResponseView {
                status: parts.status.as_u16(),
                body_incomplete: body.decode_error || (body.data.len() as u64) < body.len,
                headers: headers.into(),
                body: body.data,
            },
        })
    }
}

fn keeps_alive(r: &Response) -> bool {
    let conn = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    if conn.contains("close") {
        return false;
    }
    r.version != "1.0" || conn.contains("keep-alive")
}

impl Connection {
    /// Sends `request` and reads the whole response, within `timeout` for everything
    /// (connecting included).
    pub async fn exchange(
        &mut self,
        connector: &Connector,
        request: &[u8],
        method: &str,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        if connector.target.h2 {
            let session = self.h2.get_or_insert_with(H2Session::default).clone();
            return match tokio::time::timeout(timeout, session.exchange(connector, request)).await {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    kind: FailKind::Timeout,
                    detail: format!("no whole response within {timeout:?}"),
                }),
            };
        }
        match tokio::time::timeout(timeout, self.exchange_inner(connector, request, method)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(f)) => {
                self.io = None;
                Err(f)
            }
            Err(_) => {
                self.io = None;
                Err(Failure {
                    kind: FailKind::Timeout,
                    detail: format!("no whole response within {timeout:?}"),
                })
            }
        }
    }

    async fn exchange_inner(
        &mut self,
        connector: &Connector,
        request: &[u8],
        method: &str,
    ) -> Result<Answer, Failure> {
        if self.io.is_some() {
            match self.attempt(connector, request, method).await {
                // The target closed an idle keep-alive connection before reading the
                // request: once more, on a new connection.
                Err(None) => self.io = None,
                Err(Some(f)) => return Err(f),
                Ok(a) => return Ok(a),
            }
        }
        match self.attempt(connector, request, method).await {
            Ok(a) => Ok(a),
            Err(f) => Err(f.unwrap_or_else(|| Failure {
                kind: FailKind::Reset,
                detail: "the connection closed without a response".into(),
            })),
        }
    }

    /// One try. `Err(None)`: nothing came back on a connection that was already open.
    async fn attempt(
        &mut self,
        connector: &Connector,
        request: &[u8],
        method: &str,
    ) -> Result<Answer, Option<Failure>> {
        let reused = self.io.is_some();
        let io = match &mut self.io {
            Some(io) => io,
            None => {
                let io = connector
                    .connect()
                    .await
                    .map_err(|(kind, detail)| Some(Failure { kind, detail }))?;
                self.io.insert(io)
            }
        };
        if let Err(e) = write_all(io, request).await {
            return Err((!reused).then(|| Failure {
                kind: FailKind::Reset,
                detail: format!("sending the request: {e}"),
            }));
        }
        let sent = Instant::now();
        let mut parser = MessageParser::new(
            Side::Server,
            Limits {
                max_head: 64 << 10,
                keep_body: KEEP_BODY,
            },
        );
        let methods: VecDeque<String> = VecDeque::from([method.to_string()]);
        let mut first_byte: Option<Instant> = None;
        let mut parsed = Vec::new();
        loop {
            let n = match io.read(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => {
                    return Err((!reused || first_byte.is_some()).then(|| Failure {
                        kind: FailKind::Reset,
                        detail: format!("reading the response: {e}"),
                    }));
                }
            };
            if n == 0 {
                if reused && first_byte.is_none() {
                    return Err(None);
                }
                parser.close(&mut parsed);
            } else {
                first_byte.get_or_insert_with(Instant::now);
                parser.data(&self.buf[..n], Origin::default(), &methods, &mut parsed);
            }
            for p in parsed.drain(..) {
                return match p {
                    Parsed::Response(r) => {
                        if n == 0 || !keeps_alive(&r) {
                            self.io = None;
                        }
                        if r.incomplete {
                            self.io = None;
                            return Err(Some(Failure {
                                kind: FailKind::Reset,
                                detail: format!(
                                    "the connection closed inside the response ({} {}, {} body bytes)",
                                    r.status, r.reason, r.body.len
                                ),
                            }));
                        }
                        Ok(Answer {
                            latency: first_byte.unwrap_or(sent) - sent,
                            view: ResponseView {
                                status: r.status,
                                body_incomplete: r.body.decode_error
                                    || (r.body.data.len() as u64) < r.body.len,
                                headers: r.headers,
                                body: r.body.data,
                            },
                        })
                    }
                    Parsed::Interim(_) => continue,
                    Parsed::Anomaly(a) => Err(Some(Failure {
                        kind: FailKind::Garbage,
                        detail: format!("{} ({a})", a.describe()),
                    })),
                    Parsed::Request(_) | Parsed::Tunnel => Err(Some(Failure {
                        kind: FailKind::Garbage,
                        detail: "the target switched protocols".into(),
                    })),
                };
            }
            if n == 0 {
                return Err(Some(Failure {
                    kind: FailKind::Reset,
                    detail: "the connection closed inside the response".into(),
                }));
            }
        }
    }
}

async fn write_all(io: &mut Box<dyn Io>, bytes: &[u8]) -> std::io::Result<()> {
    let mut io: Pin<&mut Box<dyn Io>> = Pin::new(io);
    io.write_all(bytes).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = Target::parse("http://127.0.0.1:8080/canary/").unwrap();
        assert_eq!((t.tls, t.authority.as_str()), (false, "127.0.0.1:8080"));
        assert_eq!(t.path_prefix, "/canary");
        assert_eq!(t.label(), "target");
        let t = Target::parse("https://localhost").unwrap();
        assert_eq!(
            (t.tls, t.authority.as_str(), t.path_prefix.as_str()),
            (true, "localhost", "")
        );
        assert_eq!(t.addrs[0].port(), 443);
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.addrs[0].port()), ("::1", 9000));
        for bad in [
            "staging:8080",
            "ftp://x",
            "http://",
            "http://h:port",
            "http://u@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
