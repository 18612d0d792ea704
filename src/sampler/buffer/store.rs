//! How the buffer holds a chunk between ingest and decision: [`Stored`], and the optional
//! compression of its span bytes (`buffer_compression: zstd`, [`Codec`]).
//!
//! A stored chunk is a slice of its request's block ([`BlockBuilder`]): the payload (the framed
//! run of spans, raw or compressed) followed by one [`SpanSummary`] per span. The summaries let a
//! decision build its [`crate::policy::TraceView`] without walking the spans again; keeping them
//! beside the payload instead of in a per-trace vector saves an allocation and a vector header per
//! trace.
//!
//! Compression: chunks are small (a trace's spans from one request: typically 1-4 spans, 0.5-2
//! KB), which zstd alone compresses to only about 0.67x on OTLP spans. With a dictionary trained
//! on the first [`SAMPLE_BYTES`] of chunks the same chunks compress to about 0.15-0.2x: the
//! attribute keys, resource-independent values and span names are what the dictionary learns.
//! (Compressing a whole trace again each time it grows reached only 0.4x, at several times the
//! CPU.) Chunks buffered before the dictionary is ready are compressed without one (each chunk
//! records which).
//! The dictionary is trained once, on a background thread, and kept for the life of the buffer.
//! Compression runs outside the shard locks; contexts are per thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use crate::otlp::wire::len_field_size;
use crate::otlp::write::put_framed_span;
use crate::otlp::{Chunk, Origin, SpanSummary};

/// Bytes of chunk samples the dictionary is trained on.
pub const SAMPLE_BYTES: usize = 1 << 20;
/// Largest dictionary trained.
const DICTIONARY_BYTES: usize = 32 * 1024;
/// zstd level. Compression runs on the ingest path for every span, so the fast end: measured on
/// the load generator's spans (sampler at saturation, 2 cores), level 1 cost 1.67 CPU-s per
/// million spans in all for 0.32x memory, -3 cost 1.42 for 0.37x, -7 1.31 for 0.38x (plain
/// buffering: 0.71 for 1.16x). -3 keeps a margin under 0.5x for spans less repetitive than
/// these.
const LEVEL: i32 = -3;

/// How a stored chunk's payload is encoded.
const RAW: u8 = 0;
const ZSTD: u8 = 1;
const ZSTD_DICT: u8 = 2;

/// A chunk as the buffer holds it: a slice of its request's block.
#[derive(Debug)]
pub struct Stored {
    pub origin: Arc<Origin>,
    /// The block of every chunk stored from one request (see [`BlockBuilder`]).
    block: Arc<Vec<u8>>,
    /// This chunk's bytes in the block: payload, then `spans` summaries of
    /// [`SpanSummary::SIZE`] bytes.
    offset: u32,
    len: u32,
    pub spans: u32,
    /// Length of the framed run (the payload once decompressed).
    run_len: u32,
    codec: u8,
}

impl Stored {
    /// Bytes of memory this chunk is counted for: its bytes in the block and its header in the
    /// trace's vector.
    pub fn memory(&self) -> usize {
        self.len as usize + std::mem::size_of::<Stored>()
    }

    /// Length of the span bytes as received (framed), whatever the storage.
    pub fn run_len(&self) -> usize {
        self.run_len as usize
    }

    fn data(&self) -> &[u8] {
        &self.block[self.offset as usize..(self.offset + self.len) as usize]
    }

    fn payload(&self) -> &[u8] {
        let data = self.data();
        &data[..data.len() - self.spans as usize * SpanSummary::SIZE]
    }

    /// The summaries of the chunk's spans, in order.
    pub fn summaries(&self) -> impl Iterator<Item = SpanSummary> + '_ {
        let data = self.data();
        data[data.len() - self.spans as usize * SpanSummary::SIZE..]
            .chunks_exact(SpanSummary::SIZE)
            .map(SpanSummary::read)
    }

    /// Asks the CPU to start loading the chunk's summaries (what a decision reads first) into
    /// cache. A trace is decided `decision_wait` after it arrived, so its block has long left the
    /// cache; issuing these loads for a whole decision round before judging its first trace
    /// overlaps their misses instead of taking them one after another.
    pub fn prefetch_summaries(&self) {
        let data = self.data();
        let tail = &data[data.len() - self.spans as usize * SpanSummary::SIZE..];
        prefetch(tail.as_ptr());
        if let Some(last) = tail.last() {
            prefetch(last);
        }
    }

    /// The framed run when stored raw; `None` when compressed.
    pub fn raw_run(&self) -> Option<&[u8]> {
        (self.codec == RAW).then(|| self.payload())
    }

    /// The chunk for export, in its own allocation so that a kept trace waiting in the export
    /// queue does not pin its requests' blocks: the run decompressed, or copied out of the
    /// block. `decompressed` is the run when the caller already decompressed it.
    pub fn into_chunk(self, codec: &Codec, decompressed: Option<Box<[u8]>>) -> Chunk {
        let run = match decompressed {
            Some(run) => run,
            None => codec.decompress(&self),
        };
        Chunk {
            origin: self.origin,
            run,
            spans: self.spans,
        }
    }
}

/// A hint to load the cache line holding `at`; no effect on the program's meaning.
#[inline(always)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program sees; `at` points into a
    // live allocation anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Size of one chunk as stored, for the trace's counts.
#[derive(Debug, Clone, Copy)]
pub struct StoredSize {
    pub spans: u32,
    /// Framed span bytes as received.
    pub run_len: usize,
    /// Bytes counted against `max_buffered_bytes` ([`Stored::memory`]).
    pub memory: usize,
}

/// Largest block: 64 KiB, a size class of its own in mimalloc (which rounds allocations up by up
/// to 25 %) and under glibc's mmap threshold.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// Builds the stored chunks of one request into a few shared allocations ("blocks") of up to
/// [`BLOCK_BYTES`].
///
/// Blocks instead of one allocation per chunk (a request of 512 spans carries about 256 chunks)
/// save the allocator's work and its size-class rounding, which cost about 10 % of the buffered
/// bytes with mimalloc. A block is freed when the last of its chunks is decided. Every chunk in
/// it arrived with the same request and belongs to a trace decided at most `decision_wait` later,
/// so a block lives no longer than its longest-lived chunk would on its own; kept chunks are
/// copied out at decision ([`Stored::into_chunk`]), so the export queue never pins a block.
pub struct BlockBuilder<'c> {
    codec: &'c Codec,
    /// Bytes still expected (an estimate when compressing), to size the next block.
    expected: usize,
    current: Vec<u8>,
    /// Finished blocks and the chunks of each, then those of `current`.
    done: Vec<(Vec<u8>, usize)>,
    chunks: Vec<(Arc<Origin>, StoredParts)>,
}

#[derive(Clone, Copy)]
struct StoredParts {
    offset: u32,
    len: u32,
    spans: u32,
    run_len: u32,
    codec: u8,
}

impl<'c> BlockBuilder<'c> {
    /// `raw_bytes`: the request's span bytes, to size the blocks.
    pub fn new(codec: &'c Codec, spans: usize, raw_bytes: usize) -> Self {
        let summaries = spans * SpanSummary::SIZE;
        // Spans take their bytes plus a field header of at most 3 bytes; compressed, about a
        // quarter of that.
        let runs = raw_bytes + spans * 3;
        let expected = summaries + if codec.compress { runs / 4 } else { runs };
        Self {
            codec,
            expected,
            current: Vec::new(),
            done: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// Makes room for `size` more bytes in the current block, starting a new one if needed.
    fn room(&mut self, size: usize) {
        if self.current.capacity() - self.current.len() >= size {
            return;
        }
        let capacity = self.expected.clamp(4096, BLOCK_BYTES).max(size);
        let full = std::mem::replace(&mut self.current, Vec::with_capacity(capacity));
        if !full.is_empty() {
            let chunks = self.chunks.len() - self.done.iter().map(|d| d.1).sum::<usize>();
            self.done.push((full, chunks));
        }
    }

    /// Adds a chunk of `spans` (byte ranges in `body`) with their summaries.
    pub fn push(
        &mut self,
        origin: Arc<Origin>,
        body: &[u8],
        spans: &[(usize, usize)],
        summaries: &[SpanSummary],
    ) -> StoredSize {
        debug_assert_eq!(spans.len(), summaries.len());
        let run_len: usize = spans.iter().map(|&(a, b)| len_field_size(b - a)).sum();
        let tail = summaries.len() * SpanSummary::SIZE;
        let codec_ref = self.codec;
        let (offset, codec) = if codec_ref.compress {
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                scratch.reserve(run_len);
                for &(a, b) in spans {
                    put_framed_span(scratch, &body[a..b]);
                }
                codec_ref.compress(scratch, |payload, codec| {
                    self.room(payload.len() + tail);
                    let offset = self.current.len();
                    self.current.extend_from_slice(payload);
                    (offset, codec)
                })
            })
        } else {
            self.room(run_len + tail);
            let offset = self.current.len();
            for &(a, b) in spans {
                put_framed_span(&mut self.current, &body[a..b]);
            }
            (offset, RAW)
        };
        for summary in summaries {
            summary.write(&mut self.current);
        }
        let len = self.current.len() - offset;
        self.expected = self.expected.saturating_sub(len);
        let parts = StoredParts {
            offset: offset as u32,
            len: len as u32,
            spans: spans.len() as u32,
            run_len: run_len as u32,
            codec,
        };
        self.chunks.push((origin, parts));
        StoredSize {
            spans: parts.spans,
            run_len,
            memory: len + std::mem::size_of::<Stored>(),
        }
    }

    /// The stored chunks, in the order pushed.
    pub fn finish(mut self) -> Vec<Stored> {
        let chunks = self.chunks.len() - self.done.iter().map(|d| d.1).sum::<usize>();
        let last = std::mem::take(&mut self.current);
        self.done.push((last, chunks));
        let mut parts = self.chunks.into_iter();
        let mut stored = Vec::with_capacity(parts.len());
        for (block, count) in self.done {
            let block = Arc::new(block);
            for (origin, p) in parts.by_ref().take(count) {
                stored.push(Stored {
                    origin,
                    block: Arc::clone(&block),
                    offset: p.offset,
                    len: p.len,
                    spans: p.spans,
                    run_len: p.run_len,
                    codec: p.codec,
                });
            }
        }
        stored
    }
}

/// The dictionary, prepared for both directions.
struct Dictionary {
    compress: CDict<'static>,
    decompress: DDict<'static>,
}

/// Samples collected for training.
#[derive(Default)]
struct Samples {
    data: Vec<u8>,
    sizes: Vec<usize>,
}

/// Builds stored chunks, compressing them when configured.
pub struct Codec {
    compress: bool,
    /// Set once training has finished: `None` when it failed (chunks then stay dictionary-less).
    dictionary: Arc<OnceLock<Option<Dictionary>>>,
    samples: Mutex<Samples>,
    training: AtomicBool,
}

thread_local! {
    static CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
    /// A chunk's framed run before compression.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Output space for one compressed chunk before it is copied to its exact-size allocation.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Codec {
    pub fn new(compress: bool) -> Self {
        Self {
            compress,
            dictionary: Arc::new(OnceLock::new()),
            samples: Mutex::new(Samples::default()),
            training: AtomicBool::new(false),
        }
    }

    pub fn compresses(&self) -> bool {
        self.compress
    }

    /// Whether the dictionary has been trained (tests wait for it).
    pub fn has_dictionary(&self) -> bool {
        matches!(self.dictionary.get(), Some(Some(_)))
    }

    /// Compresses `run` and hands the result to `emit` with how it is stored (`run` itself when
    /// compression does not make it smaller); samples it for the dictionary while there is none.
    fn compress<T>(&self, run: &[u8], emit: impl FnOnce(&[u8], u8) -> T) -> T {
        let dictionary = match self.dictionary.get() {
            Some(d) => d.as_ref(),
            None => {
                self.sample(run);
                None
            }
        };
        CCTX.with_borrow_mut(|cctx| {
            OUT.with_borrow_mut(|compressed| {
                let cctx = cctx.get_or_insert_with(CCtx::create);
                compressed.clear();
                compressed.reserve(zstd::zstd_safe::compress_bound(run.len()));
                let result = match dictionary {
                    Some(d) => cctx.compress_using_cdict(compressed, run, &d.compress),
                    None => cctx.compress(compressed, run, LEVEL),
                };
                match result {
                    Ok(n) if n < run.len() => {
                        let codec = if dictionary.is_some() {
                            ZSTD_DICT
                        } else {
                            ZSTD
                        };
                        emit(&compressed[..n], codec)
                    }
                    _ => emit(run, RAW),
                }
            })
        })
    }

    /// One chunk in a block of its own (tests).
    #[cfg(test)]
    pub fn store(
        &self,
        origin: Arc<Origin>,
        body: &[u8],
        spans: &[(usize, usize)],
        summaries: &[SpanSummary],
    ) -> Stored {
        let mut builder = BlockBuilder::new(self, spans.len(), body.len());
        builder.push(origin, body, spans, summaries);
        builder.finish().pop().expect("one chunk")
    }

    /// The framed run of a stored chunk.
    pub fn decompress(&self, stored: &Stored) -> Box<[u8]> {
        let payload = stored.payload();
        if stored.codec == RAW {
            return payload.into();
        }
        let mut out = Vec::with_capacity(stored.run_len as usize);
        let result = DCTX.with_borrow_mut(|dctx| {
            let dctx = dctx.get_or_insert_with(DCtx::create);
            if stored.codec == ZSTD_DICT {
                let Some(Some(dictionary)) = self.dictionary.get() else {
                    unreachable!("a chunk compressed with the dictionary implies it exists");
                };
                dctx.decompress_using_ddict(&mut out, payload, &dictionary.decompress)
            } else {
                dctx.decompress(&mut out, payload)
            }
        });
        // The buffer wrote these bytes itself; failure would be memory corruption.
        match result {
            Ok(n) if n == stored.run_len as usize => out.into_boxed_slice(),
            other => panic!("buffered chunk failed to decompress: {other:?}"),
        }
    }

    /// Adds a run to the training samples; the request that fills them starts training.
    fn sample(&self, run: &[u8]) {
        if self.training.load(Ordering::Relaxed) {
            return;
        }
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.data.len() >= SAMPLE_BYTES {
            return;
        }
        samples.data.extend_from_slice(run);
        samples.sizes.push(run.len());
        if samples.data.len() < SAMPLE_BYTES || self.training.swap(true, Ordering::Relaxed) {
            return;
        }
        let Samples { data, sizes } = std::mem::take(&mut *samples);
        drop(samples);
        let dictionary = Arc::clone(&self.dictionary);
        // Training takes tens of milliseconds: off the request path.
        let spawned = std::thread::Builder::new()
            .name("tailgate-zstd-dict".into())
            .spawn(move || {
                let trained = train(&data, &sizes);
                let _ = dictionary.set(trained);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start dictionary training; compressing without one");
            let _ = self.dictionary.set(None);
        }
    }
}

fn train(data: &[u8], sizes: &[usize]) -> Option<Dictionary> {
    let started = std::time::Instant::now();
    match zstd::dict::from_continuous(data, sizes, DICTIONARY_BYTES) {
        Ok(dict) => {
            tracing::info!(
                samples = sizes.len(),
                sample_bytes = data.len(),
                dictionary_bytes = dict.len(),
                ms = started.elapsed().as_millis() as u64,
                "buffer_compression: trained the zstd dictionary"
            );
            Some(Dictionary {
                compress: CDict::create(&dict, LEVEL),
                decompress: DDict::create(&dict),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "buffer_compression: dictionary training failed; compressing chunks without one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::SpanInfo;

    fn summary(i: u64) -> SpanSummary {
        SpanSummary::of(
            &SpanInfo {
                trace_id: [1; 16],
                start_unix_nano: i,
                end_unix_nano: i + 10,
                status_code: (i % 3) as i32,
                is_root: i == 0,
            },
            100,
        )
    }

    /// A body of `n` fake spans, each a repetitive text with a number in it.
    fn body(n: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut body = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..n {
            let start = body.len();
            let noise = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            body.extend_from_slice(
                format!(
                    "span {i} {noise:x} http.method GET http.route /api/v1/orders/{} db.system \
                     postgresql peer {}",
                    noise % 977,
                    noise % 13
                )
                .as_bytes(),
            );
            ranges.push((start, body.len()));
        }
        (body, ranges)
    }

    #[test]
    fn stored_chunks_give_back_their_spans_and_summaries_raw_or_compressed() {
        let (body, ranges) = body(4);
        let summaries: Vec<SpanSummary> = (0..4).map(summary).collect();
        let summaries: Vec<SpanSummary> = summaries
            .iter()
            .zip(&ranges)
            .map(|(s, &(a, b))| {
                let mut s = *s;
                s.len = (b - a) as u32;
                s
            })
            .collect();
        let expected = Chunk::from_spans(Arc::new(Origin::default()), &body, &ranges);
        for compress in [false, true] {
            let codec = Codec::new(compress);
            let stored = codec.store(Arc::new(Origin::default()), &body, &ranges, &summaries);
            assert_eq!(stored.summaries().collect::<Vec<_>>(), summaries);
            assert_eq!(stored.run_len(), expected.run.len());
            assert_eq!(
                stored.raw_run().is_none(),
                compress,
                "compressed: {compress}"
            );
            if compress {
                assert!(stored.payload().len() < expected.run.len());
            }
            let chunk = stored.into_chunk(&codec, None);
            assert_eq!(chunk.run, expected.run);
            assert_eq!(chunk.spans, 4);
        }
    }

    #[test]
    fn a_request_with_more_than_a_block_of_chunks_spreads_them_over_blocks() {
        let (body, ranges) = body(600);
        for compress in [false, true] {
            let codec = Codec::new(compress);
            let mut builder = BlockBuilder::new(&codec, ranges.len(), body.len());
            let mut expected = Vec::new();
            for pair in ranges.chunks(2) {
                let summaries: Vec<SpanSummary> = pair
                    .iter()
                    .map(|&(a, b)| {
                        let mut s = summary(a as u64);
                        s.len = (b - a) as u32;
                        s
                    })
                    .collect();
                builder.push(Arc::new(Origin::default()), &body, pair, &summaries);
                expected.push((
                    Chunk::from_spans(Arc::new(Origin::default()), &body, pair),
                    summaries,
                ));
            }
            let stored = builder.finish();
            assert_eq!(stored.len(), expected.len());
            let blocks: std::collections::HashSet<*const Vec<u8>> =
                stored.iter().map(|s| Arc::as_ptr(&s.block)).collect();
            if !compress {
                assert!(blocks.len() > 1, "{} blocks", blocks.len());
            }
            for (s, (chunk, summaries)) in stored.into_iter().zip(expected) {
                assert_eq!(s.summaries().collect::<Vec<_>>(), summaries);
                assert_eq!(s.into_chunk(&codec, None).run, chunk.run);
            }
        }
    }

    #[test]
    fn after_enough_samples_chunks_are_compressed_with_a_trained_dictionary() {
        let codec = Codec::new(true);
        let (body, ranges) = body(2000);
        let summaries: Vec<SpanSummary> = (0..2).map(summary).collect();
        let mut stored = Vec::new();
        let mut i = 0;
        while codec.dictionary.get().is_none() {
            let pair = [ranges[i % 1999], ranges[i % 1999 + 1]];
            stored.push(codec.store(Arc::new(Origin::default()), &body, &pair, &summaries));
            i += 1;
            if codec.training.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(i < 1_000_000, "the dictionary was never trained");
        }
        assert!(codec.has_dictionary(), "training failed");
        let pair = [ranges[10], ranges[11]];
        let with_dict = codec.store(Arc::new(Origin::default()), &body, &pair, &summaries);
        assert_eq!(with_dict.codec, ZSTD_DICT);
        stored.push(with_dict);
        // Chunks from before and after the dictionary both decompress.
        for s in stored.into_iter().rev().take(3) {
            let run = codec.decompress(&s);
            assert_eq!(run.len(), s.run_len());
            assert_eq!(crate::otlp::write::framed_spans(&run).count(), 2);
        }
    }
}
