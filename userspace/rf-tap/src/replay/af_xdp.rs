//! AF_XDP send backend: frames are copied into a UMEM shared with the kernel and queued on
//! an XDP socket's TX ring (queue 0). The kernel uses zero-copy where the driver has it and
//! copy mode otherwise (veth); either way the frame skips the qdisc layer and the socket
//! accounting of AF_PACKET. No XDP program is needed to transmit.
//!
//! One UMEM frame (4 KiB) holds one packet, so frames longer than that (jumbo, GSO) are
//! refused and counted. A frame's buffer is reused once the kernel reports it complete.

use std::{
    io,
    num::NonZeroU32,
    os::fd::RawFd,
    ptr::NonNull,
    time::{Duration, Instant},
};

use rf_tap_engine::replay::player::{Batch, FrameSink, SendOutcome};
use xdpilone::{
    xdp::XdpDesc, BufIdx, DeviceQueue, IfInfo, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
};

const SOL_XDP: libc::c_int = 283;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const FRAME_SIZE: u32 = 4096;
const FRAMES: u32 = 4096;
const RING: u32 = 2048;
/// How long the TX ring may stay full before the frames waiting count as failed.
const STALL_LIMIT: Duration = Duration::from_secs(1);

pub struct AfXdpSink {
    tx: RingTx,
    device: DeviceQueue,
    _user: User,
    _socket: Socket,
    umem: Umem,
    /// Buffers the kernel is not using.
    free: Vec<u32>,
    /// Frames queued and not yet completed.
    in_flight: u32,
    mtu: u32,
    /// Descriptors of the batch being queued (kept to reuse its allocation).
    descs: Vec<XdpDesc>,
    pub errors: Vec<(String, u64)>,
    // Dropped last: the memory the kernel maps as UMEM.
    _area: memmap2::MmapMut,
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw())
}

impl AfXdpSink {
    pub fn open(ifindex: u32, mtu: u32) -> io::Result<Self> {
        let mut area = memmap2::MmapMut::map_anon((FRAME_SIZE * FRAMES) as usize)?;
        let mem = NonNull::from(&mut area[..]);
        let cfg = UmemConfig {
            fill_size: RING,
            complete_size: RING,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the anonymous map is page aligned, FRAME_SIZE * FRAMES long, and lives in
        // `_area`, dropped after every ring and socket that refers to it.
        let umem = unsafe { Umem::new(cfg, mem) }.map_err(errno)?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex).map_err(errno)?;
        info.set_queue(0);
        let socket = Socket::with_shared(&info, &umem).map_err(errno)?;
        let device = umem.fq_cq(&socket).map_err(errno)?;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: None,
                    tx_size: NonZeroU32::new(RING),
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(errno)?;
        let tx = user.map_tx().map_err(errno)?;
        umem.bind(&user).map_err(errno)?;
        // Copy mode transmits a budget of frames per kick (32 by default); kernels from
        // 6.17 let the socket raise it (XDP_MAX_TX_SKB_BUDGET), which saves system calls.
        // Older kernels refuse the option, which is harmless.
        let budget: u32 = RING / 2;
        // SAFETY: setsockopt with a u32 value of the right size on our own socket.
        unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                &budget as *const u32 as *const libc::c_void,
                std::mem::size_of::<u32>() as u32,
            );
        }
        Ok(Self {
            tx,
            device,
            _user: user,
            _socket: socket,
            umem,
            free: (0..FRAMES).rev().collect(),
            in_flight: 0,
            mtu,
            descs: Vec::new(),
            errors: Vec::new(),
            _area: area,
        })
    }

    fn count_error(&mut self, what: String) {
        match self.errors.iter_mut().find(|(m, _)| *m == what) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((what, 1)),
        }
    }

    /// Takes back the buffers the kernel has finished with.
    fn reclaim(&mut self) {
        let mut done = self.device.complete(self.in_flight);
        while let Some(addr) = done.read() {
            self.free.push((addr / u64::from(FRAME_SIZE)) as u32);
            self.in_flight -= 1;
        }
        done.release();
    }

    /// Asks the kernel to transmit what is queued. Fatal errors stop the replay.
    fn kick(&self) -> io::Result<()> {
        let fd: RawFd = self.tx.as_raw_fd();
        // SAFETY: sendto with no data on our own XDP socket is the documented TX kick.
        let rc = unsafe {
            libc::sendto(
                fd,
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                | Some(libc::EINTR) => {}
                Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("the interface went away or down: {e}"),
                    ))
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }
}

impl FrameSink for AfXdpSink {
    fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome> {
        let mut out = SendOutcome::default();
        let mut descs = std::mem::take(&mut self.descs);
        let mut stalled: Option<Instant> = None;
        let mut i = 0;
        while i < batch.len() {
            let frame = batch.frame(i);
            // The driver would drop an over-MTU frame without telling us (AF_PACKET gets
            // EMSGSIZE from the kernel): refuse it here, and count it.
            let tagged = matches!(frame.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8]));
            let limit = self.mtu as usize + 14 + if tagged { 4 } else { 0 };
            if frame.len() > limit {
                self.count_error(format!(
                    "frame longer than the interface MTU ({}) allows",
                    self.mtu
                ));
                out.failed += 1;
                i += 1;
                continue;
            }
            if frame.len() > FRAME_SIZE as usize {
                self.count_error(format!(
                    "frame longer than an AF_XDP buffer ({FRAME_SIZE} bytes)"
                ));
                out.failed += 1;
                i += 1;
                continue;
            }
            let Some(idx) = self.free.pop() else {
                // Every buffer is in flight: queue what we have, kick, reclaim.
                self.push(&mut descs, &mut out)?;
                self.kick()?;
                self.reclaim();
                if self.free.is_empty() {
                    let since = *stalled.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALL_LIMIT {
                        self.count_error("AF_XDP TX ring stalled".into());
                        out.failed += (batch.len() - i) as u64;
                        return Ok(out);
                    }
                    out.retried += 1;
                    std::thread::yield_now();
                }
                continue;
            };
            stalled = None;
            let Some(mut chunk) = self.umem.frame(BufIdx(idx)) else {
                return Err(io::Error::other("UMEM frame out of range"));
            };
            // SAFETY: this buffer is not in flight (it came from `free`), so the kernel does
            // not touch it until it is queued below; we are its only user.
            let buf = unsafe { chunk.addr.as_mut() };
            buf[..frame.len()].copy_from_slice(frame);
            descs.push(XdpDesc {
                addr: chunk.offset,
                len: frame.len() as u32,
                options: 0,
            });
            out.sent_bytes += frame.len() as u64;
            i += 1;
        }
        let pushed = self.push(&mut descs, &mut out);
        self.descs = descs;
        pushed?;
        // Copy mode sends a limited budget per kick: kick until the ring is drained.
        let started = Instant::now();
        while self.tx.pending() > 0 {
            self.kick()?;
            self.reclaim();
            if started.elapsed() > STALL_LIMIT {
                break;
            }
        }
        self.reclaim();
        Ok(out)
    }

    fn finish(&mut self) -> io::Result<()> {
        let started = Instant::now();
        while (self.tx.pending() > 0 || self.in_flight > 0) && started.elapsed() < STALL_LIMIT {
            self.kick()?;
            self.reclaim();
        }
        Ok(())
    }
}

impl AfXdpSink {
    /// Queues descriptors on the TX ring (waiting for room when it is full).
    fn push(&mut self, descs: &mut Vec<XdpDesc>, out: &mut SendOutcome) -> io::Result<()> {
        let mut start = 0;
        let began = Instant::now();
        while start < descs.len() {
            let n = {
                let mut w = self.tx.transmit((descs.len() - start) as u32);
                let n = w.insert(descs[start..].iter().copied()) as usize;
                w.commit();
                n
            };
            start += n;
            self.in_flight += n as u32;
            out.sent += n as u64;
            if start < descs.len() {
                self.kick()?;
                self.reclaim();
                if began.elapsed() > STALL_LIMIT {
                    let left = descs.len() - start;
                    for d in &descs[start..] {
                        self.free.push((d.addr / u64::from(FRAME_SIZE)) as u32);
                        out.sent_bytes -= u64::from(d.len);
                    }
                    out.failed += left as u64;
                    self.count_error("AF_XDP TX ring stalled".into());
                    break;
                }
            }
        }
        descs.clear();
        Ok(())
    }
}
