//! AF_PACKET send backend: a raw packet socket bound to the interface, frames handed to
//! the kernel a batch at a time with `sendmmsg` (one system call per batch).
//!
//! The socket is opened with protocol 0, so it never receives. By default frames take the
//! normal transmit path (qdisc, TC egress, taps such as tcpdump on the same interface);
//! `qdisc_bypass` hands them straight to the driver (PACKET_QDISC_BYPASS), which is faster
//! and invisible to egress hooks on the sending interface.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use rf_tap_engine::replay::player::{Batch, FrameSink, SendOutcome};

/// How long a full device queue may refuse frames before they count as failed.
const BACKOFF_LIMIT: Duration = Duration::from_secs(1);

pub struct AfPacketSink {
    fd: OwnedFd,
    mtu: u32,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// First error message of each kind, with its count (for the report).
    pub errors: Vec<(String, u64)>,
}

// SAFETY: the raw pointers in `msgs`/`iovs` are only scratch space, rebuilt on every send
// from the batch borrowed for that call; nothing points into them across calls.
unsafe impl Send for AfPacketSink {}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

impl AfPacketSink {
    pub fn open(ifindex: u32, mtu: u32, qdisc_bypass: bool) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right after.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(errno());
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(errno());
        }
        let set = |level, name, value: libc::c_int| -> io::Result<()> {
            // SAFETY: setsockopt with a c_int value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc < 0 {
                Err(errno())
            } else {
                Ok(())
            }
        };
        // A larger send buffer lets a batch in flight not block on the socket's accounting.
        let _ = set(libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
        if qdisc_bypass {
            set(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
        }
        Ok(Self {
            fd,
            mtu,
            msgs: Vec::new(),
            iovs: Vec::new(),
            errors: Vec::new(),
        })
    }

    fn count_error(&mut self, e: &io::Error) {
        let s = if e.raw_os_error() == Some(libc::EMSGSIZE) {
            format!("frame longer than the interface MTU ({}) allows", self.mtu)
        } else {
            e.to_string()
        };
        match self.errors.iter_mut().find(|(m, _)| *m == s) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((s, 1)),
        }
    }
}

impl FrameSink for AfPacketSink {
    fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome> {
        let n = batch.len();
        self.iovs.clear();
        for i in 0..n {
            let f = batch.frame(i);
            self.iovs.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
        }
        self.msgs.clear();
        for iov in self.iovs.iter_mut() {
            // SAFETY: msghdr is plain data; zeroed then the iovec set.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        let mut out = SendOutcome::default();
        let mut i = 0;
        let mut backoff_since: Option<Instant> = None;
        while i < n {
            // SAFETY: msgs[i..n] are valid mmsghdrs pointing at iovecs that point into the
            // batch, which outlives this call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.msgs.as_mut_ptr().add(i),
                    (n - i) as u32,
                    0,
                )
            };
            if rc > 0 {
                let sent = rc as usize;
                for k in i..i + sent {
                    out.sent_bytes += batch.frame(k).len() as u64;
                }
                out.sent += sent as u64;
                i += sent;
                backoff_since = None;
                continue;
            }
            let e = errno();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    // The device queue is full: wait for it, but not forever.
                    let since = *backoff_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > BACKOFF_LIMIT {
                        self.count_error(&e);
                        out.failed += 1;
                        i += 1;
                        backoff_since = None;
                    } else {
                        out.retried += 1;
                        std::thread::yield_now();
                    }
                }
                Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("the interface went away or down: {e}"),
                    ));
                }
                _ => {
                    // This frame is refused (too long for the MTU, malformed): count it,
                    // go on with the next.
                    self.count_error(&e);
                    out.failed += 1;
                    i += 1;
                }
            }
        }
        Ok(out)
    }
}
