//! The file pipeline: a mapped capture through the engine into a sink, on one thread or
//! sharded by connection over several, exchanges numbered in the order their frames completed
//! them either way (`extract`, `requests` and `replay --target` on a pcap).

use crossbeam::channel::bounded;
use rf_tap_engine::{
    flow::{ExtractConfig, ExtractStats, Extractor},
    http::exchange::Exchange,
    pcap::reader::{CaptureReader, RawFrame, ReadError},
};

use super::{
    live::{conn_id, Sharder},
    sinks::{Sink, SinkError},
};

/// What a file run gives: the engine's counters, and where reading stopped early, if it did.
pub type Extracted = (ExtractStats, Option<ReadError>);

/// Runs every frame of `reader` (over `map`) through the engine into `out`, with `threads`
/// workers (1: this thread only). `show(offset, exchanges)` is called as reading goes on,
/// for progress. A sink error stops the run at once.
pub fn run(
    map: &memmap2::Mmap,
    reader: CaptureReader<'_>,
    threads: usize,
    config: ExtractConfig,
    out: &mut dyn Sink,
    show: &mut dyn FnMut(usize, u64),
) -> Result<Extracted, SinkError> {
    if threads > 1 {
        sharded(map, reader, threads, config, out, show)
    } else {
        single(map, reader, config, out, show)
    }
}

/// One thread: frames → extractor → output, in order.
fn single(
    map: &memmap2::Mmap,
    mut reader: CaptureReader<'_>,
    config: ExtractConfig,
    out: &mut dyn Sink,
    show: &mut dyn FnMut(usize, u64),
) -> Result<Extracted, SinkError> {
    let mut extractor = Extractor::new(config);
    let mut batch = Vec::new();
    let mut stopped_at = None;
    let mut releaser = crate::cli::mapped::Releaser::new(map);
    while let Some(item) = reader.next() {
        match item {
            Ok(frame) => extractor.frame(&frame, &mut batch),
            Err(e) => {
                stopped_at = Some(e);
                break;
            }
        }
        if !batch.is_empty() {
            write_batch(out, &mut batch)?;
        }
        releaser.parsed_up_to(map, reader.offset());
        show(reader.offset(), extractor.stats.exchanges);
    }
    extractor.finish(&mut batch);
    write_batch(out, &mut batch)?;
    Ok((extractor.stats, stopped_at))
}

/// Frames a shard worker gets: a batch, or word that every frame up to a number was sent.
enum ToShard<'m> {
    Frames(Vec<RawFrame<'m>>),
    Tick(u64),
}

/// What a worker sends back: exchanges keyed by the frame that completed them (`u64::MAX`
/// for those its end of input closed), and the frame number up to which it has worked.
struct FromShard {
    shard: usize,
    items: Vec<(u64, Exchange)>,
    watermark: u64,
    stats: Option<ExtractStats>,
}

/// Frames per batch to a worker, and how often every worker hears how far the reader got.
const BATCH: usize = 256;
const TICK_EVERY: u64 = 4096;

/// Several threads: a reader thread shards frames by connection ([`Sharder`]) to workers,
/// each with its own extractor, borrowing frames from the map rather than copying them. This
/// thread merges the workers' exchanges in the order the frames completed them (a worker's
/// exchange is written once every worker has got past that frame), numbers them, and writes
/// them. Memory limits are shared out over the workers.
fn sharded<'m>(
    map: &'m memmap2::Mmap,
    reader: CaptureReader<'m>,
    threads: usize,
    config: ExtractConfig,
    out: &mut dyn Sink,
    show: &mut dyn FnMut(usize, u64),
) -> Result<Extracted, SinkError> {
    let per_shard = ExtractConfig {
        max_flows: (config.max_flows / threads).max(1),
        held_budget: (config.held_budget / threads).max(config.flow_buffer),
        ..config
    };
    let offset = std::sync::atomic::AtomicUsize::new(0);
    // (frame number, file offset after it) at each tick: once every worker is past a frame,
    // the pages before its offset can go (the reader runs ahead of the workers, and a page
    // given back too early would only be faulted in again and stay).
    let ticks = std::sync::Mutex::new(std::collections::VecDeque::<(u64, usize)>::new());
    std::thread::scope(|scope| -> Result<Extracted, SinkError> {
        let (result_tx, result_rx) = bounded::<FromShard>(threads * 16);
        let mut to_shards = Vec::new();
        for shard in 0..threads {
            let (tx, rx) = bounded::<ToShard<'m>>(64);
            to_shards.push(tx);
            let results = result_tx.clone();
            scope.spawn(move || {
                let mut x = Extractor::new(per_shard);
                let mut out = Vec::new();
                let mut items = Vec::new();
                for msg in rx {
                    let watermark = match msg {
                        ToShard::Frames(frames) => {
                            for f in &frames {
                                x.frame(f, &mut out);
                                items.extend(out.drain(..).map(|e| (f.number, e)));
                            }
                            frames.last().map(|f| f.number)
                        }
                        ToShard::Tick(n) => Some(n),
                    };
                    if let Some(watermark) = watermark {
                        let sent = results.send(FromShard {
                            shard,
                            items: std::mem::take(&mut items),
                            watermark,
                            stats: None,
                        });
                        if sent.is_err() {
                            return;
                        }
                    }
                }
                x.finish(&mut out);
                let _ = results.send(FromShard {
                    shard,
                    items: out.drain(..).map(|e| (u64::MAX, e)).collect(),
                    watermark: u64::MAX,
                    stats: Some(x.stats),
                });
            });
        }
        drop(result_tx);
        let offset = &offset;
        let ticks = &ticks;
        let reading = scope.spawn(move || -> Option<ReadError> {
            let mut reader = reader;
            let mut sharder = Sharder::new(threads);
            let mut batches: Vec<Vec<RawFrame<'m>>> = vec![Vec::new(); threads];
            let mut stopped = None;
            let mut last = 0u64;
            // A send fails only when the workers are gone (the writer failed): stop reading.
            let flush = |batches: &mut Vec<Vec<RawFrame<'m>>>, tick: Option<u64>| -> bool {
                for (tx, b) in to_shards.iter().zip(batches.iter_mut()) {
                    if !b.is_empty() && tx.send(ToShard::Frames(std::mem::take(b))).is_err() {
                        return false;
                    }
                    if let Some(n) = tick {
                        if tx.send(ToShard::Tick(n)).is_err() {
                            return false;
                        }
                    }
                }
                true
            };
            while let Some(item) = reader.next() {
                let frame = match item {
                    Ok(f) => f,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                };
                last = frame.number;
                let shard = sharder.shard(frame.linktype, frame.data, frame.orig_len);
                batches[shard].push(frame);
                if batches[shard].len() >= BATCH {
                    let b = std::mem::take(&mut batches[shard]);
                    if to_shards[shard].send(ToShard::Frames(b)).is_err() {
                        return stopped;
                    }
                }
                if last.is_multiple_of(TICK_EVERY) {
                    if !flush(&mut batches, Some(last)) {
                        return stopped;
                    }
                    if let Ok(mut t) = ticks.lock() {
                        t.push_back((last, reader.offset()));
                    }
                    offset.store(reader.offset(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            flush(&mut batches, Some(last));
            stopped
        });

        let mut queues: Vec<std::collections::VecDeque<(u64, Exchange)>> =
            (0..threads).map(|_| Default::default()).collect();
        let mut marks = vec![0u64; threads];
        let mut stats = ExtractStats::default();
        let mut next_id = 1u64;
        let mut batch = Vec::new();
        let mut releaser = crate::cli::mapped::Releaser::new(map);
        for msg in result_rx.iter() {
            queues[msg.shard].extend(msg.items);
            marks[msg.shard] = msg.watermark;
            if let Some(s) = msg.stats {
                stats.add(&s);
            }
            while let Some((key, shard)) = queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|(k, _)| (*k, i)))
                .min()
            {
                // No worker whose queue is empty may still produce an earlier exchange.
                if !(0..threads).all(|j| !queues[j].is_empty() || marks[j] >= key) {
                    break;
                }
                let Some((_, mut e)) = queues[shard].pop_front() else {
                    break;
                };
                e.id = next_id;
                next_id += 1;
                e.conn = conn_id(e.conn, shard, threads);
                batch.push(e);
            }
            if !batch.is_empty() {
                // An error here drops the receiver; the workers and the reader then stop.
                write_batch(out, &mut batch)?;
            }
            let passed = marks.iter().copied().min().unwrap_or(0);
            let mut done_up_to = None;
            if let Ok(mut t) = ticks.lock() {
                while t.front().is_some_and(|(n, _)| *n <= passed) {
                    done_up_to = t.pop_front().map(|(_, o)| o);
                }
            }
            if let Some(o) = done_up_to {
                releaser.parsed_up_to(map, o);
            }
            show(
                offset.load(std::sync::atomic::Ordering::Relaxed),
                next_id - 1,
            );
        }
        let stopped = reading.join().map_err(|_| SinkError::Write {
            file: "the exchange pipeline".into(),
            error: std::io::Error::other("the capture reader thread panicked"),
        })?;
        stats.exchanges = next_id - 1;
        Ok((stats, stopped))
    })
}

fn write_batch(out: &mut dyn Sink, batch: &mut Vec<Exchange>) -> Result<(), SinkError> {
    for x in batch.drain(..) {
        out.exchange(&x)?;
    }
    Ok(())
}
