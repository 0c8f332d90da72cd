//! Reading the kernel's BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`) in batches.
//!
//! aya's `RingBuf` gives records one at a time and publishes the consumer position after
//! each, so every record costs a store to a cache line the producing CPUs read on every
//! reserve. This reader walks every record that is ready, lets the caller use them in place
//! (the pcap writer hands them to `writev` without copying), and publishes the position once
//! per batch.
//!
//! Layout (kernel `kernel/bpf/ringbuf.c`, a stable UAPI): page 0 holds the consumer position
//! (read-write), page 1 the producer position (read-only), then the data area, mapped twice
//! in a row so that a record crossing the end reads as one slice. Each record starts with an
//! 8-byte header: a u32 length whose top bits are BUSY (being written) and DISCARD, and a u32
//! page offset. Records are padded to 8 bytes.

use std::{
    cell::Cell,
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use aya::maps::MapData;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

pub struct RingReader {
    map: MapData,
    consumer: *mut u8,
    /// Producer page followed by the data area twice.
    producer: *mut u8,
    page: usize,
    size: usize,
    /// Bytes the last batch took, and the time between the last two batches: the rate the
    /// reader paces itself by.
    drained: Cell<usize>,
    last_batch: Instant,
    interval: Duration,
}

// SAFETY: the mappings belong to this value alone; moving it to another thread is fine.
unsafe impl Send for RingReader {}

impl RingReader {
    pub fn new(map: MapData) -> std::io::Result<Self> {
        let size = map
            .info()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .max_entries() as usize;
        // SAFETY: sysconf is always safe to call.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        if !size.is_power_of_two() || size < page {
            return Err(std::io::Error::other(format!(
                "ring buffer size {size} is not a power of two of at least a page"
            )));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = mmap(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(fd, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping what was just mapped.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        Ok(Self {
            map,
            consumer,
            producer,
            page,
            size,
            drained: Cell::new(0),
            last_batch: Instant::now(),
            interval: Duration::ZERO,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page, mapped for the reader's lifetime.
        unsafe { &*(self.consumer as *const AtomicUsize) }
    }

    /// How long the reader may wait before its next batch: `longest`, or less when, at the
    /// rate of the last batch, a quarter of the ring would fill sooner. (No kernel wakeup
    /// comes while the ring fills: the programs ask for one only when the reader has caught
    /// up, which keeps the per-packet cost off the production path.)
    pub fn pause(&self, longest: Duration) -> Duration {
        let bytes = self.drained.get();
        if bytes == 0 {
            return longest;
        }
        let quarter = (self.size / 4) as f64;
        let secs = self.interval.as_secs_f64() * quarter / bytes as f64;
        Duration::from_secs_f64(secs.min(longest.as_secs_f64()))
    }

    /// The records ready now; the space they take is given back when the batch is dropped.
    pub fn batch(&mut self) -> Batch<'_> {
        let now = Instant::now();
        self.interval = now.duration_since(self.last_batch);
        self.last_batch = now;
        let start = self.consumer_pos().load(Ordering::Relaxed);
        // SAFETY: the first word of the producer page.
        let end = unsafe { &*(self.producer as *const AtomicUsize) }.load(Ordering::Acquire);
        // SAFETY: the data area (twice its size), mapped for the reader's lifetime.
        let data =
            unsafe { std::slice::from_raw_parts(self.producer.add(self.page), 2 * self.size) };
        Batch {
            drained: &self.drained,
            start,
            consumer: self.consumer_pos(),
            data,
            mask: self.size - 1,
            pos: Cell::new(start),
            end,
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mappings, with their sizes.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}

fn mmap(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of the ring's fd; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Records read from the ring, valid while the batch lives. Dropping it publishes how far
/// the reader got, which lets the kernel reuse that space.
pub struct Batch<'r> {
    drained: &'r Cell<usize>,
    start: usize,
    consumer: &'r AtomicUsize,
    data: &'r [u8],
    mask: usize,
    pos: Cell<usize>,
    /// Producer position when the batch started (records after it wait for the next batch).
    end: usize,
}

impl Batch<'_> {
    /// The next ready record. Records borrow the batch, so none outlives the moment its
    /// space is given back.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&self) -> Option<&[u8]> {
        loop {
            let pos = self.pos.get();
            if pos >= self.end {
                return None;
            }
            let at = pos & self.mask;
            // SAFETY: `at` is 8-aligned and inside the first copy of the data area; the header
            // is written by the kernel with a release store, read here with acquire.
            let word = unsafe { &*(self.data.as_ptr().add(at) as *const AtomicU32) }
                .load(Ordering::Acquire);
            if word & BUSY != 0 {
                // Reserved before `end` but not yet committed: stop here, keep order.
                return None;
            }
            let len = (word & !(BUSY | DISCARD)) as usize;
            let total = (HEADER + len + 7) & !7;
            self.pos.set(pos + total);
            if word & DISCARD != 0 {
                continue;
            }
            // Bounded by the double mapping: a record is never longer than the ring.
            return self.data.get(at + HEADER..at + HEADER + len);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.consumer.store(self.pos.get(), Ordering::Release);
        self.drained.set(self.pos.get().wrapping_sub(self.start));
    }
}
