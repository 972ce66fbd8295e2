//! Block compression, and the parallel pipeline that feeds backhand precomputed blocks.
//!
//! backhand's writer compresses every block on the thread that calls `write`. We give it a
//! custom `CompressionAction` instead: a producer thread reads the files in the order backhand
//! will (sorted paths), predicts each compress call (full blocks, file tails, fragment blocks
//! packed as backhand packs them), and worker threads compress those inputs ahead. When backhand
//! asks, `compress` looks the input up in the in-order queue and compares the bytes, so a wrong
//! prediction (a file changed under us) costs only time: the block is compressed inline.
//! Compressed output is a pure function of the input bytes, so the image does not depend on
//! timing or thread count.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::{BackhandError, FilesystemCompressor, SuperBlock};

use crate::Compression;

/// How one block is compressed: the settings mksquashfs uses by default.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub compression: Compression,
    pub level: Option<u32>,
    pub block_size: u32,
}

/// Compress one block. Deterministic: same input and settings, same bytes.
pub(crate) fn compress_block(s: &Settings, input: &[u8]) -> io::Result<Vec<u8>> {
    match s.compression {
        Compression::Gzip => {
            use flate2::{Compress, FlushCompress, Status};
            let level = s.level.unwrap_or(9);
            let mut c = Compress::new_with_window_bits(flate2::Compression::new(level), true, 15);
            let mut out = Vec::with_capacity(input.len() + input.len() / 1000 + 64);
            loop {
                let consumed = c.total_in() as usize;
                let st = c
                    .compress_vec(&input[consumed..], &mut out, FlushCompress::Finish)
                    .map_err(io::Error::other)?;
                match st {
                    Status::StreamEnd => return Ok(out),
                    _ => out.reserve(out.capacity().max(4096)),
                }
            }
        }
        Compression::Xz => {
            use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
            let mut opts =
                LzmaOptions::new_preset(s.level.unwrap_or(6)).map_err(io::Error::other)?;
            opts.dict_size(s.block_size.max(8192));
            let mut filters = Filters::new();
            filters.lzma2(&opts);
            let mut st =
                Stream::new_stream_encoder(&filters, Check::Crc32).map_err(io::Error::other)?;
            let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 128);
            loop {
                let consumed = st.total_in() as usize;
                match st
                    .process_vec(&input[consumed..], &mut out, Action::Finish)
                    .map_err(io::Error::other)?
                {
                    Status::StreamEnd => return Ok(out),
                    _ => out.reserve(out.capacity().max(4096)),
                }
            }
        }
        Compression::Zstd => zstd::bulk::compress(input, s.level.unwrap_or(15) as i32),
        Compression::Lz4 => Ok(lz4_flex::block::compress(input)),
    }
}

/// One predicted compress call.
pub(crate) struct Slot {
    input: Vec<u8>,
    output: Mutex<Option<io::Result<Vec<u8>>>>,
    ready: Condvar,
}

impl Slot {
    fn wait(&self) -> io::Result<Vec<u8>> {
        let mut g = self.output.lock().unwrap();
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.ready.wait(g).unwrap();
        }
    }
}

struct QueueState {
    slots: VecDeque<Arc<Slot>>,
    producer_done: bool,
}

pub(crate) struct Pipeline {
    settings: Settings,
    state: Mutex<QueueState>,
    changed: Condvar,
    max: usize,
    cancelled: AtomicBool,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// First error the producer met, with the file it was reading.
    pub producer_error: Mutex<Option<(PathBuf, io::Error)>>,
}

impl Pipeline {
    pub fn new(settings: Settings, threads: usize) -> Arc<Self> {
        Arc::new(Pipeline {
            settings,
            state: Mutex::new(QueueState {
                slots: VecDeque::new(),
                producer_done: false,
            }),
            changed: Condvar::new(),
            // Enough look-ahead to keep every worker busy while backhand catches up, small
            // enough that memory stays at a few MiB per thread.
            max: 8 * threads + 16,
            cancelled: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            producer_error: Mutex::new(None),
        })
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let _g = self.state.lock().unwrap();
        self.changed.notify_all();
    }

    /// Queue a predicted input; blocks while the queue is full. False when cancelled.
    fn push(&self, input: Vec<u8>, work: &mpsc::Sender<Arc<Slot>>) -> bool {
        let slot = Arc::new(Slot {
            input,
            output: Mutex::new(None),
            ready: Condvar::new(),
        });
        let mut st = self.state.lock().unwrap();
        while st.slots.len() >= self.max {
            if self.cancelled.load(Ordering::SeqCst) {
                return false;
            }
            st = self.changed.wait(st).unwrap();
        }
        if self.cancelled.load(Ordering::SeqCst) {
            return false;
        }
        st.slots.push_back(Arc::clone(&slot));
        self.changed.notify_all();
        drop(st);
        work.send(slot).is_ok()
    }

    fn finish_producer(&self) {
        let mut st = self.state.lock().unwrap();
        st.producer_done = true;
        self.changed.notify_all();
    }

    /// The precomputed result for `input`, or None if it was not predicted.
    fn take(&self, input: &[u8]) -> Option<io::Result<Vec<u8>>> {
        let mut st = self.state.lock().unwrap();
        loop {
            let pos = st
                .slots
                .iter()
                .position(|s| s.input.len() == input.len() && s.input == input);
            if let Some(i) = pos {
                // Anything before the match was mispredicted and is dropped.
                st.slots.drain(..i);
                let slot = st.slots.pop_front().unwrap();
                self.changed.notify_all();
                drop(st);
                return Some(slot.wait());
            }
            // Not queued yet: wait while the producer can still add it. A full queue without
            // it means it was never predicted (metadata, compressor options).
            if st.producer_done || st.slots.len() >= self.max {
                return None;
            }
            st = self.changed.wait(st).unwrap();
        }
    }
}

/// Which file's data backhand will read, in its order.
pub(crate) struct PlannedFile {
    pub source: PathBuf,
}

/// Read the files as backhand will and queue every compress call it will make.
pub(crate) fn produce(
    p: &Pipeline,
    files: &[PlannedFile],
    work: mpsc::Sender<Arc<Slot>>,
    progress: &dyn Fn(u64),
) {
    let bs = p.settings.block_size as usize;
    let mut frag: Vec<u8> = Vec::with_capacity(bs);
    'files: for f in files {
        let mut file = match File::open(&f.source) {
            Ok(x) => x,
            Err(e) => {
                p.producer_error
                    .lock()
                    .unwrap()
                    .get_or_insert((f.source.clone(), e));
                break;
            }
        };
        let mut first = true;
        loop {
            let mut chunk = vec![0u8; bs];
            let n = match read_full(&mut file, &mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    p.producer_error
                        .lock()
                        .unwrap()
                        .get_or_insert((f.source.clone(), e));
                    break 'files;
                }
            };
            chunk.truncate(n);
            progress(n as u64);
            if n == 0 {
                break;
            }
            if first && n != bs {
                // A file shorter than a block goes into the fragment being packed; a full
                // fragment is compressed first (backhand's DataWriter::add_bytes).
                if n + frag.len() > bs {
                    let full = std::mem::replace(&mut frag, Vec::with_capacity(bs));
                    if !p.push(full, &work) {
                        return;
                    }
                }
                frag.extend_from_slice(&chunk);
                break;
            }
            first = false;
            // All-zero blocks are stored as holes, never compressed.
            if chunk.iter().any(|&b| b != 0) && !p.push(chunk, &work) {
                return;
            }
        }
    }
    // backhand compresses the last fragment even when it is empty.
    p.push(frag, &work);
    p.finish_producer();
}

/// Worker loop: compress queued slots until the channel closes.
pub(crate) fn work(p: &Pipeline, rx: &Mutex<mpsc::Receiver<Arc<Slot>>>) {
    loop {
        let slot = match rx.lock().unwrap().recv() {
            Ok(s) => s,
            Err(_) => return,
        };
        let r = compress_block(&p.settings, &slot.input);
        *slot.output.lock().unwrap() = Some(r);
        slot.ready.notify_all();
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

thread_local! {
    /// The pipeline of the build running on this thread; backhand calls `compress` on the
    /// thread that called `FilesystemWriter::write`.
    static CURRENT: RefCell<Option<Arc<Pipeline>>> = const { RefCell::new(None) };
}

/// Install `p` for this thread until the guard drops.
pub(crate) fn install(p: Arc<Pipeline>) -> InstallGuard {
    CURRENT.with(|c| *c.borrow_mut() = Some(p));
    InstallGuard
}

pub(crate) struct InstallGuard;

impl Drop for InstallGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// The `CompressionAction` backhand sees; stateless, state lives in `CURRENT`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParallelCompressor;

pub(crate) static PARALLEL: ParallelCompressor = ParallelCompressor;

impl CompressionAction for ParallelCompressor {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        compressor: Compressor,
    ) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, BackhandError> {
        let p = CURRENT.with(|c| c.borrow().clone());
        let Some(p) = p else {
            // Not inside one of our builds: behave like backhand's own compressor.
            return DefaultCompressor.compress(bytes, fc, block_size);
        };
        if let Some(r) = p.take(bytes) {
            p.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(r?);
        }
        p.misses.fetch_add(1, Ordering::Relaxed);
        Ok(compress_block(&p.settings, bytes)?)
    }

    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        kind: &backhand::kind::Kind,
        fs_compressor: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        // The options block is a metadata block compressed with `compress` above.
        DefaultCompressor.compression_options(superblock, kind, fs_compressor)
    }
}
