//! An in-process HTTP/1.1 server for replay tests: a handler decides each answer (a
//! response, after a delay if asked; a hang; a reset; garbage), and the server records
//! what arrived, on which of its connections, and how many connections were open at once.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The server's number for the connection it came on.
    pub conn: u64,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Never answers (until the server stops).
    Hang,
    /// Resets the connection (RST).
    Reset,
    /// Writes these bytes and closes.
    Garbage(Vec<u8>),
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Most connections open at the same time (as the server saw them: a closed
    /// connection counts until the server reads its end).
    pub max_open: Arc<AtomicUsize>,
    /// Most requests being answered at the same time.
    pub max_busy: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0", handler)
    }

    /// The same on a given address (in the network namespace of the calling thread).
    pub fn start_on(addr: &str, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let max_open = Arc::new(AtomicUsize::new(0));
        let max_busy = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s2, m2, st2) = (Arc::clone(&seen), Arc::clone(&max_open), Arc::clone(&stop));
        let (b2, mb2) = (Arc::clone(&busy), Arc::clone(&max_busy));
        let accept = std::thread::spawn(move || {
            let open = Arc::new(AtomicUsize::new(0));
            let next = AtomicU64::new(0);
            let mut workers = Vec::new();
            // Polled, so that stopping needs no connection from the listener's namespace.
            let _ = listener.set_nonblocking(true);
            loop {
                if st2.load(Ordering::Relaxed) {
                    break;
                }
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let n = open.fetch_add(1, Ordering::SeqCst) + 1;
                m2.fetch_max(n, Ordering::SeqCst);
                let conn = next.fetch_add(1, Ordering::SeqCst);
                let (h, s, o, st) = (
                    Arc::clone(&handler),
                    Arc::clone(&s2),
                    Arc::clone(&open),
                    Arc::clone(&st2),
                );
                let (b, mb) = (Arc::clone(&b2), Arc::clone(&mb2));
                workers.push(std::thread::spawn(move || {
                    serve(stream, conn, &*h, &s, &st, (&b, &mb));
                    o.fetch_sub(1, Ordering::SeqCst);
                }));
                workers.retain(|w| !w.is_finished());
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Self {
            addr,
            seen,
            max_open,
            max_busy,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);

        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    conn: u64,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    (busy, max_busy): (&AtomicUsize, &AtomicUsize),
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // A whole request in buf?
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf);
        if let Ok(httparse::Status::Complete(head)) = parsed {
            let hs: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = hs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + len {
                let r = Seen {
                    conn,
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    headers: hs,
                    body: buf[head..head + len].to_vec(),
                    at: Instant::now(),
                };
                buf.drain(..head + len);
                seen.lock().unwrap().push(r.clone());
                match handler(&r) {
                    Reply::Respond {
                        status,
                        headers,
                        body,
                        delay,
                    } => {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        max_busy.fetch_max(now, Ordering::SeqCst);
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        busy.fetch_sub(1, Ordering::SeqCst);
                        let mut out =
                            format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                        for (n, v) in headers {
                            out.push_str(&format!("{n}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let mut bytes = out.into_bytes();
                        bytes.extend_from_slice(&body);
                        if s.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                    Reply::Hang => {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        return;
                    }
                    Reply::Reset => {
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: setsockopt with a valid fd and a linger struct of the right size.
                        unsafe {
                            libc::setsockopt(
                                s.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&linger as *const libc::linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                        return;
                    }
                    Reply::Garbage(g) => {
                        let _ = s.write_all(&g);
                        return;
                    }
                }
                continue;
            }
        } else if parsed.is_err() {
            return;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
