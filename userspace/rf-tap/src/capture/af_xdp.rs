//! `attach --mode afxdp`: receiving a dedicated sink interface through AF_XDP sockets.
//!
//! One socket per receive queue, each with its own UMEM (4 KiB frames) whose buffers all start
//! on the fill ring. The `xdp_sink` program redirects accepted packets to the socket of their
//! queue; the kernel copies them into UMEM (copy mode; zero-copy where the driver has it) and
//! posts a descriptor on the socket's RX ring. Each frame is handed on and its buffer goes
//! straight back to the fill ring. Packets the socket could not take (fill ring empty, RX
//! ring full, frame too long) are counted by the kernel per socket (`XDP_STATISTICS`).

use std::{io, num::NonZeroU32, os::fd::RawFd, ptr::NonNull, time::Duration};

use rf_tap_common::{XskMeta, XSK_META_LEN, XSK_META_MAGIC};
use rf_tap_engine::packet::{CapturedPacket, PacketDirection};
use xdpilone::{DeviceQueue, IfInfo, RingRx, Socket, SocketConfig, Umem, UmemConfig, User};

use super::ClockMap;

const FRAME_SIZE: u32 = 4096;
/// Descriptors taken from one RX ring per pass, so that queues take turns.
const BATCH: u32 = 256;
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

struct Queue {
    rx: RingRx,
    device: DeviceQueue,
    _user: User,
    _socket: Socket,
    _umem: Umem,
    zero_copy: bool,
    frames: u32,
    /// Buffers read from RX and not yet back on the fill ring.
    done: Vec<u64>,
    // Dropped last: the memory registered as UMEM. Only frames the kernel has handed over
    // (read from RX, not yet back on the fill ring) are read through it.
    area: memmap2::MmapMut,
}

/// Socket counters, summed over the queues (the `af_xdp` part of the summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskDrops {
    /// Dropped by the socket: no free buffer, or a frame longer than a buffer.
    pub dropped: u64,
    /// Dropped because the RX ring was full (rf-tap too slow).
    pub rx_ring_full: u64,
    pub invalid_descs: u64,
    /// Times the kernel found the fill ring empty (a cause of `dropped`).
    pub fill_ring_empty: u64,
    /// Frames without the program's timestamp, stamped on arrival in userspace instead.
    pub unstamped: u64,
}

impl XskDrops {
    pub fn total(&self) -> u64 {
        self.dropped + self.rx_ring_full + self.invalid_descs
    }
}

pub struct XskReceiver {
    queues: Vec<Queue>,
    framing: Framing,
}

/// How a UMEM buffer becomes a packet, and what that found.
struct Framing {
    ifindex: u32,
    snaplen: u32,
    /// Frames handed on that were longer than the packet length.
    truncated: u64,
    /// Frames without the program's timestamp (stamped in userspace instead).
    unstamped: u64,
}

fn errno(what: &str, e: xdpilone::Errno) -> io::Error {
    let os = io::Error::from_raw_os_error(e.get_raw());
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

/// Receive queues of an interface (its `queues/rx-N` entries).
pub fn rx_queue_count(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

impl XskReceiver {
    /// Opens and binds one socket per receive queue, `frames` buffers each (a power of two).
    pub fn open(ifindex: u32, queues: u32, frames: u32, snaplen: u32) -> io::Result<Self> {
        let frames = frames.clamp(64, 1 << 16).next_power_of_two();
        let mut out = Vec::new();
        for q in 0..queues {
            out.push(Self::open_queue(ifindex, q, frames)?);
        }
        Ok(Self {
            queues: out,
            framing: Framing {
                ifindex,
                snaplen,
                truncated: 0,
                unstamped: 0,
            },
        })
    }

    fn open_queue(ifindex: u32, queue: u32, frames: u32) -> io::Result<Queue> {
        let mut area = memmap2::MmapMut::map_anon((FRAME_SIZE * frames) as usize)?;
        let mem = NonNull::from(&mut area[..]);
        let cfg = UmemConfig {
            fill_size: frames,
            complete_size: 64,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the anonymous map is page aligned, FRAME_SIZE * frames long, and lives in
        // `area`, dropped after every ring and socket that refers to it.
        let umem = unsafe { Umem::new(cfg, mem) }.map_err(|e| errno("register the UMEM", e))?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex)
            .map_err(|e| errno("find the interface", e))?;
        info.set_queue(queue);
        let socket =
            Socket::with_shared(&info, &umem).map_err(|e| errno("open an AF_XDP socket", e))?;
        let mut device = umem
            .fq_cq(&socket)
            .map_err(|e| errno("map the fill ring", e))?;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(frames),
                    tx_size: None,
                    bind_flags: 0,
                },
            )
            .map_err(|e| errno("set up the RX ring", e))?;
        let rx = user.map_rx().map_err(|e| errno("map the RX ring", e))?;
        umem.bind(&user)
            .map_err(|e| errno(&format!("bind to receive queue {queue}"), e))?;
        {
            let mut fill = device.fill(frames);
            let n = fill.insert((0..u64::from(frames)).map(|i| i * u64::from(FRAME_SIZE)));
            fill.commit();
            if n != frames {
                return Err(io::Error::other(
                    "the fill ring took fewer buffers than it has",
                ));
            }
        }
        let zero_copy = options(rx.as_raw_fd()) & XDP_OPTIONS_ZEROCOPY != 0;
        Ok(Queue {
            rx,
            device,
            _user: user,
            _socket: socket,
            _umem: umem,
            zero_copy,
            frames,
            done: Vec::with_capacity(BATCH as usize),
            area,
        })
    }

    /// The socket of each receive queue, in queue order (for the XSK map).
    pub fn fds(&self) -> Vec<RawFd> {
        self.queues.iter().map(|q| q.rx.as_raw_fd()).collect()
    }

    /// "copy" or "zero-copy" (the mode the kernel chose at bind).
    pub fn mode(&self) -> &'static str {
        if self.queues.iter().all(|q| q.zero_copy) {
            "zero-copy"
        } else {
            "copy"
        }
    }

    /// How long the reader may pause after a busy drain: a quarter of the smallest RX ring
    /// at 2 Mpps, between 100 us and 5 ms.
    pub fn pause(&self) -> Duration {
        let frames = self.queues.iter().map(|q| q.frames).min().unwrap_or(64);
        Duration::from_micros((u64::from(frames) / 4 / 2).clamp(100, 5_000))
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Hands every frame waiting on the RX rings to `each` and gives the buffers back to the
    /// kernel. `each` returns false to stop early. Returns the number of frames handed on.
    pub fn drain(
        &mut self,
        clock: &ClockMap,
        mut each: impl FnMut(CapturedPacket<'_>) -> bool,
    ) -> u64 {
        let mut handed = 0u64;
        let mut more = true;
        while more {
            more = false;
            for q in &mut self.queues {
                let mut stop = false;
                {
                    let mut rx = q.rx.receive(BATCH);
                    while let Some(desc) = rx.read() {
                        q.done.push(desc.addr);
                        handed += 1;
                        let Some(pkt) = self.framing.frame(&q.area, desc.addr, desc.len, clock)
                        else {
                            continue;
                        };
                        if !each(pkt) {
                            stop = true;
                            break;
                        }
                    }
                    rx.release();
                }
                if q.done.len() as u32 == BATCH {
                    more = true;
                }
                // Every buffer goes back: the fill ring has room for all of them.
                let mut fill = q.device.fill(q.done.len() as u32);
                let n = fill.insert(q.done.iter().map(|a| a & !u64::from(FRAME_SIZE - 1)));
                fill.commit();
                q.done.drain(..n as usize);
                if stop {
                    return handed;
                }
            }
        }
        handed
    }

    /// Frames handed on that were cut to the packet length.
    pub fn truncated(&self) -> u64 {
        self.framing.truncated
    }

    pub fn drops(&self) -> XskDrops {
        let mut d = XskDrops::default();
        for q in &self.queues {
            if let Ok(s) = q.device.statistics_v2() {
                d.dropped += s.rx_dropped;
                d.rx_ring_full += s.rx_ring_full;
                d.invalid_descs += s.rx_invalid_descs;
                d.fill_ring_empty += s.rx_fill_ring_empty_descs;
            }
        }
        d.unstamped = self.framing.unstamped;
        d
    }
}

impl Framing {
    /// The frame at UMEM offset `addr`, with the timestamp the program put before it.
    fn frame<'a>(
        &mut self,
        area: &'a [u8],
        addr: u64,
        len: u32,
        clock: &ClockMap,
    ) -> Option<CapturedPacket<'a>> {
        let start = usize::try_from(addr).ok()?;
        let data = area.get(start..start.checked_add(len as usize)?)?;
        let meta = start
            .checked_sub(XSK_META_LEN)
            .and_then(|m| area.get(m..start))
            .map(|b| {
                // SAFETY: XskMeta is plain #[repr(C)] data of XSK_META_LEN bytes.
                unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<XskMeta>()) }
            })
            .filter(|m| m.magic == XSK_META_MAGIC);
        let ts = match meta {
            Some(m) => clock.wall(m.ts_ns),
            None => {
                self.unstamped += 1;
                clock.wall(super::clock_ns(libc::CLOCK_MONOTONIC) as u64)
            }
        };
        let cap = len.min(self.snaplen);
        if cap < len {
            self.truncated += 1;
        }
        Some(CapturedPacket {
            ts,
            ifindex: self.ifindex,
            direction: Some(PacketDirection::Ingress),
            orig_len: len,
            data: &data[..cap as usize],
        })
    }
}

fn options(fd: RawFd) -> u32 {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt with a u32 out-value of the right size on our own socket.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        flags
    } else {
        0
    }
}
