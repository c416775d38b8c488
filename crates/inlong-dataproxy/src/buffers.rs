//! Byte buffers a shard keeps for reuse, so that its memory after the first backlog stays flat.
//!
//! - [`CapacityPlan`]: how much of everything below a shard reserves and keeps, computed once
//!   from the options.
//! - [`BufferPool`]: buffers of one fixed capacity (the write buffer a connection's frames are
//!   coalesced into, the reply read buffer), allocated when the shard starts. Every buffer it
//!   hands out has exactly the pool's capacity and the engine never grows one, so a backlog
//!   neither reallocates a buffer through doubling sizes nor gives one back to the allocator.
//! - [`resident_vec`]: queues sized for the worst backlog up front, their pages resident.
//! - [`FramePool`]: the encoded frames held in flight until their acks, in size classes, one
//!   pool for all shards; what the worst backlog held is kept for the next one.
//!
//! Why: the soak (`perf/soak.rs`) measured the process RSS creeping up by tens of MB over ten
//! minutes while the live heap stayed flat. Write buffers grew to 1–8 MiB at every backlog and
//! were freed after it, and each backlog's thousands of frames went back to the shard thread's
//! malloc arena: the allocator kept those pages, and a later backlog, finding them fragmented,
//! took new ones.

use std::sync::{Mutex, MutexGuard};

use crate::config::ProducerConfig;

/// How much memory a shard reserves up front and keeps for reuse: computed once from the
/// producer's options ([`CapacityPlan::new`]) and read by every pool, queue and spare list, so
/// that a backlog takes what is already there instead of going through the allocator.
///
/// Why up front: the soak (`perf/soak.rs`) saw the RSS creep up while the live heap stayed flat
/// whenever memory arrived with the first bursts that needed it (spread over the allocator's
/// arenas) or was freed after each burst (fragmenting them). Each number below says what it was
/// sized against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityPlan {
    /// The pending budget's worth of full batches (`max_pending_messages /
    /// batching_max_messages`, 16..65 536): in-flight entries, completions and sealed-batch
    /// slots made at the start and kept at most.
    pub batches: usize,
    /// Room of the send queues, the delivery deadlines, the backoff heap and each connection's
    /// sent-batch queue: twice `batches`, since batches sealed by linger hold fewer records and
    /// in the soak one shard held more than a budget's worth of full batches (the other shard's
    /// node was down and its records acked, leaving it the whole budget).
    pub queue_len: usize,
    /// A connection's write buffer: `min(write_buffer_size, 256 KiB)` bytes, never grown (one
    /// frame larger than that goes out alone), so a backlog is written in chunks of this size
    /// rather than through an ever larger buffer.
    pub write_buffer_len: usize,
    /// Write buffers a shard holds from its start, in use (two per connection: one being
    /// filled, one being written) or kept: enough for four connections, so connections that
    /// come and go while nodes restart take kept buffers (the soak's RSS moved by megabytes
    /// with them).
    pub write_buffers: usize,
    /// A reply read buffer: `read_buffer_size` clamped to 4 KiB..64 KiB (a reply is 40 to a few
    /// hundred bytes: 64 KiB holds hundreds; the buffers are resident).
    pub read_buffer_len: usize,
    /// Reply read buffers a shard holds from its start: two per connection (one being read
    /// into while the shard loop hands the other's bytes to the engine), for three connections.
    pub read_buffers: usize,
    /// Connections' partial-reply buffers and queues made at the start: two connections and a
    /// third that replaces one before it is retired (made later, it appeared minutes into the
    /// soak, 128 KiB at once).
    pub start_conn_parts: usize,
    /// Lost connections' buffers and queues kept for the next connections.
    pub spare_conn_parts: usize,
    /// Emptied batch bodies a shard keeps (a 40-record batch freed and allocated one body per
    /// batch at 2 M records/s, which fragments the heap) ...
    pub spare_bodies: usize,
    /// ... and their bytes at most (25 bodies of the default 40 KiB; with 4 MiB the spares kept
    /// filling up for minutes after the warm-up, growth of their own).
    pub spare_body_bytes: usize,
    /// The frame pool's bytes for all shards at most: the pending budget's bytes.
    pub frame_pool_bytes: usize,
}

impl CapacityPlan {
    /// The plan for these options (already validated).
    pub fn new(config: &ProducerConfig) -> CapacityPlan {
        let batches =
            (config.max_pending_messages / config.batching_max_messages.max(1)).clamp(16, 1 << 16);
        CapacityPlan {
            batches,
            write_buffer_len: config.write_buffer_size.clamp(1, 256 << 10),
            read_buffer_len: config.read_buffer_size.clamp(4096, 64 << 10),
            frame_pool_bytes: config.max_pending_bytes,
            ..CapacityPlan::for_batches(batches)
        }
    }

    /// The plan's fixed counts, for `batches` full batches (buffer sizes at their defaults).
    pub fn for_batches(batches: usize) -> CapacityPlan {
        CapacityPlan {
            batches,
            queue_len: batches * 2,
            write_buffer_len: 256 << 10,
            write_buffers: 8,
            read_buffer_len: 64 << 10,
            read_buffers: 6,
            start_conn_parts: 3,
            spare_conn_parts: 4,
            spare_bodies: 1024,
            spare_body_bytes: 1 << 20,
            frame_pool_bytes: 64 << 20,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct BufferPool {
    capacity: usize,
    keep: usize,
    spare: Vec<Vec<u8>>,
    /// Buffers handed out and not given back.
    out: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes, holding `keep` of them from the start (written
    /// through once, so their pages are resident). Buffers handed out plus buffers kept stay
    /// at `keep` whenever no more than that are in use at once: a buffer given back beyond that
    /// is freed, so after a peak the pool shrinks back to where it started.
    pub fn new(capacity: usize, keep: usize) -> BufferPool {
        let spare = (0..keep).map(|_| Self::resident(capacity)).collect();
        BufferPool { capacity, keep, spare, out: 0 }
    }

    /// A new empty buffer of `capacity` bytes whose pages are all resident: written through
    /// once. Otherwise the process RSS creeps up for as long as buffers get filled a little
    /// deeper than before (the soak saw it), where this way it is flat from the start.
    fn resident(capacity: usize) -> Vec<u8> {
        // Not `vec![0; n]`: that is `calloc`, whose fresh pages stay unmapped until written.
        resident_vec(capacity)
    }

    /// The capacity of every buffer of this pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// An empty buffer of the pool's capacity: a kept one, or a new one.
    pub fn take(&mut self) -> Vec<u8> {
        self.out += 1;
        self.spare.pop().unwrap_or_else(|| Self::resident(self.capacity))
    }

    /// Keeps `buffer` (emptied) when it has the pool's capacity and the pool holds fewer than
    /// `keep` buffers, counting those handed out. Otherwise hands it back, for the caller to use
    /// elsewhere or drop.
    pub fn give(&mut self, mut buffer: Vec<u8>) -> Option<Vec<u8>> {
        self.out = self.out.saturating_sub(1);
        if buffer.capacity() != self.capacity || self.spare.len() + self.out >= self.keep {
            return Some(buffer);
        }
        buffer.clear();
        self.spare.push(buffer);
        None
    }

    #[cfg(test)]
    /// Buffers kept.
    pub fn spare(&self) -> usize {
        self.spare.len()
    }
}

/// An empty vector with room for `capacity` items, its memory written through once so that its
/// pages are resident from the start: a queue sized for the worst backlog then does not add to
/// the RSS, page after page, each time a backlog goes a little deeper than before.
pub fn resident_vec<T>(capacity: usize) -> Vec<T> {
    let mut vec = Vec::with_capacity(capacity);
    for slot in vec.spare_capacity_mut() {
        *slot = std::mem::MaybeUninit::zeroed();
    }
    std::hint::black_box(&mut vec);
    vec
}

/// Frames up to this length share the smallest size class.
const SMALLEST_CLASS: usize = 1024;
/// Size classes per doubling: a frame's buffer is at most 1/8 larger than the frame.
const CLASSES_PER_OCTAVE: usize = 8;

/// The size class of a frame of `len` bytes: `(index, capacity)`. Capacities are `1024` and
/// then, in each octave `(2^k, 2^(k+1)]`, the eight multiples of `2^(k+1) / 16` above `2^k`.
fn frame_class(len: usize) -> (usize, usize) {
    if len <= SMALLEST_CLASS {
        return (0, SMALLEST_CLASS);
    }
    let octave_top = len.next_power_of_two();
    let granule = octave_top / (2 * CLASSES_PER_OCTAVE);
    let capacity = len.div_ceil(granule) * granule;
    let step = capacity / granule - (CLASSES_PER_OCTAVE + 1);
    let octave = (octave_top.trailing_zeros() - SMALLEST_CLASS.trailing_zeros() - 1) as usize;
    (1 + octave * CLASSES_PER_OCTAVE + step, capacity)
}

/// Frame buffers by size class, kept for reuse, shared by the producer's shards. See the
/// module docs.
///
/// What the pool holds, kept plus handed out, never exceeds the most it ever had handed out at
/// once (its peak in flight). A buffer given back beyond that makes room by freeing kept
/// buffers of other classes (or is freed itself when there are none): a backlog of another
/// size mix than the last one replaces the kept buffers instead of adding to them, and the
/// memory after the worst backlog stays where that backlog put it. The pool is one for all
/// shards (a lock per batch, not per record) because the pending budget is one for all: the
/// frames a full budget holds are about the same whichever shards hold them, while per-shard
/// pools would each keep their own worst split. It also never keeps more than `max_kept`
/// bytes (the producer passes `max_pending_bytes`).
#[derive(Debug)]
pub struct FramePool {
    max_kept: usize,
    inner: Mutex<FrameClasses>,
}

#[derive(Debug, Default)]
struct FrameClasses {
    classes: Vec<Vec<Vec<u8>>>,
    /// Bytes of the buffers kept.
    kept: usize,
    /// Bytes of the buffers handed out and not given back.
    in_use: usize,
    /// The most `in_use` has been.
    peak: usize,
}

impl FramePool {
    /// An empty pool that keeps at most `max_kept` bytes.
    pub fn new(max_kept: usize) -> FramePool {
        FramePool { max_kept, inner: Mutex::new(FrameClasses::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, FrameClasses> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty buffer for a frame of `len` bytes: a kept one of its size class or of one of the
    /// `CLASSES_PER_OCTAVE` classes above (the smallest there is, at most twice the class's
    /// capacity), or a new one with the class's capacity.
    ///
    /// Reaching up an octave keeps frames whose sizes drift (batches sealed by linger) on the
    /// buffers the pool has instead of allocating new ones and freeing kept ones: with only the
    /// next class up, the soak made a new frame buffer for one batch in 200.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let (class, capacity) = frame_class(len);
        let mut pool = self.lock();
        let kept = (class..=class + CLASSES_PER_OCTAVE)
            .find_map(|c| pool.classes.get_mut(c).and_then(Vec::pop));
        let capacity = kept.as_ref().map_or(capacity, Vec::capacity);
        pool.kept -= kept.as_ref().map_or(0, Vec::capacity);
        pool.in_use += capacity;
        pool.peak = pool.peak.max(pool.in_use);
        drop(pool);
        kept.unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Takes back a buffer from [`FramePool::take`] (any other is only freed): kept for reuse
    /// when the pool stays within its peak (after freeing kept buffers of other classes if need
    /// be) and within `max_kept`, freed otherwise.
    pub fn give(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        let (class, class_capacity) = frame_class(capacity);
        if class_capacity != capacity {
            return;
        }
        let mut pool = self.lock();
        pool.in_use = pool.in_use.saturating_sub(capacity);
        while pool.kept + pool.in_use + capacity > pool.peak {
            let stale = pool
                .classes
                .iter_mut()
                .enumerate()
                .find(|(c, kept)| *c != class && !kept.is_empty());
            let Some(stale) = stale.and_then(|(_, kept)| kept.pop()) else { return };
            pool.kept -= stale.capacity();
        }
        if pool.kept + capacity > self.max_kept {
            return;
        }
        if pool.classes.len() <= class {
            pool.classes.resize_with(class + 1, Vec::new);
        }
        buffer.clear();
        pool.classes[class].push(buffer);
        pool.kept += capacity;
    }

    #[cfg(test)]
    /// Bytes of buffers kept.
    pub fn kept_bytes(&self) -> usize {
        self.lock().kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_keep_buffers_from_the_start_and_shrinks_back_after_a_peak() {
        let mut pool = BufferPool::new(1024, 2);
        assert_eq!(pool.spare(), 2, "filled up front");
        let mut a = pool.take();
        assert_eq!(a.capacity(), 1024);
        a.extend_from_slice(b"abc");
        let pointer = a.as_ptr();
        assert!(pool.give(a).is_none());
        let again = pool.take();
        assert_eq!(again.as_ptr(), pointer, "the kept block is handed out again");
        assert!(again.is_empty(), "kept buffers are emptied");
        // A peak of four in use: two new buffers.
        let b = pool.take();
        let c = pool.take();
        let d = pool.take();
        assert_eq!(pool.spare(), 0);
        assert!(pool.give(again).is_some(), "four in use: not kept");
        assert!(pool.give(b).is_some(), "three in use: not kept");
        assert!(pool.give(c).is_none(), "two in use: kept");
        assert!(pool.give(d).is_none());
        assert_eq!(pool.spare(), 2, "back to where it started");
    }

    #[test]
    fn refuses_buffers_of_another_capacity() {
        let mut pool = BufferPool::new(1024, 4);
        let mut grown = pool.take();
        grown.extend_from_slice(&[0; 2048]);
        assert!(pool.give(grown).is_some(), "a buffer that grew past the class is not kept");
        assert_eq!(pool.spare(), 3);
        assert!(pool.give(Vec::with_capacity(16)).is_some());
        assert_eq!(pool.spare(), 3);
    }

    #[test]
    fn resident_vecs_have_their_room_and_nothing_in_it() {
        let vec: Vec<(u64, u32)> = resident_vec(1000);
        assert!(vec.is_empty());
        assert!(vec.capacity() >= 1000);
    }

    #[test]
    fn frame_classes_cover_every_length_with_at_most_an_eighth_of_slack() {
        let mut last = (0, SMALLEST_CLASS);
        for len in 1..=300_000 {
            let (class, capacity) = frame_class(len);
            assert!(capacity >= len, "{len}");
            if len > SMALLEST_CLASS {
                assert!(capacity - len < capacity / 8 + 1, "{len} -> {capacity}");
            }
            assert_eq!(frame_class(capacity), (class, capacity), "a capacity is its own class");
            assert!(class == last.0 || class == last.0 + 1, "classes are dense: {len}");
            assert!(class > last.0 || capacity == last.1);
            last = (class, capacity);
        }
        assert_eq!(frame_class(1025), (1, 1152));
        assert_eq!(frame_class(2048), (8, 2048));
        assert_eq!(frame_class(2049), (9, 2304));
    }

    #[test]
    fn frame_pool_reuses_buffers_up_to_its_byte_cap() {
        let pool = FramePool::new(8_000);
        let a = pool.take(2000);
        let b = pool.take(2000);
        let c = pool.take(5000);
        assert_eq!((a.capacity(), b.capacity(), c.capacity()), (2048, 2048, 5120));
        let pointer = a.as_ptr();
        pool.give(a);
        pool.give(c);
        assert_eq!(pool.kept_bytes(), 2048 + 5120);
        pool.give(b);
        assert_eq!(pool.kept_bytes(), 2048 + 5120, "over the 8000-byte cap: freed, not kept");
        let again = pool.take(1950);
        assert_eq!(again.as_ptr(), pointer, "the kept buffer of the class is reused");
        assert!(again.is_empty());
        assert_eq!(pool.kept_bytes(), 5120);
        pool.give(Vec::with_capacity(3000));
        assert_eq!(pool.kept_bytes(), 5120, "a buffer that is not a size class is not kept");
    }

    #[test]
    fn frame_pool_is_shared_by_threads() {
        let pool = std::sync::Arc::new(FramePool::new(1 << 30));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let frames: Vec<_> = (0..8).map(|i| pool.take(1000 + i * 300)).collect();
                        frames.into_iter().for_each(|f| pool.give(f));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // Never more than two threads' worth of frames at once, each frame in a buffer of at
        // most twice its class's capacity (`take` reaches up to an octave above). With the
        // classes' capacities alone, this failed once in CI: 37 248 > 34 048 bytes.
        let most: usize = (0..8).map(|i| frame_class(1000 + i * 300).1).sum::<usize>() * 2 * 2;
        assert!(pool.kept_bytes() <= most, "{} > {most}", pool.kept_bytes());
        assert!(pool.kept_bytes() > 0);
    }

    #[test]
    fn frame_pool_holds_no_more_than_its_peak_when_the_size_mix_changes() {
        let pool = FramePool::new(1 << 30);
        // A backlog of 2000-byte frames, then one of 2200-byte frames (another class).
        let first: Vec<_> = (0..100).map(|_| pool.take(2000)).collect();
        first.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.kept_bytes(), 100 * 2048);
        let second: Vec<_> = (0..100).map(|_| pool.take(2200)).collect();
        assert!(second.iter().all(|b| b.capacity() == 2304), "no kept buffer fits: new ones");
        second.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.kept_bytes(), 100 * 2304, "the new mix replaced the old one");
        // A frame one class below the kept ones takes one (one class up).
        let near = pool.take(2000);
        assert_eq!(near.capacity(), 2304);
        assert_eq!(pool.kept_bytes(), 99 * 2304);
        pool.give(near);
        // Again the first mix: the pool stays at its peak, 100 x 2304, whatever the order.
        for _ in 0..3 {
            let backlog: Vec<_> =
                (0..100).map(|i| pool.take(if i % 2 == 0 { 2000 } else { 2200 })).collect();
            backlog.into_iter().for_each(|b| pool.give(b));
            assert!(pool.kept_bytes() <= 100 * 2304);
        }
    }

    #[test]
    fn frame_pool_serves_smaller_frames_from_kept_buffers_up_to_an_octave_above() {
        let pool = FramePool::new(1 << 30);
        let kept: Vec<_> = (0..4).map(|_| pool.take(4000)).collect();
        kept.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.kept_bytes(), 4 * 4096);
        // 2100 bytes: class 2304, and 4096 is within the octave above.
        let drifted = pool.take(2100);
        assert_eq!(drifted.capacity(), 4096, "a kept buffer, not a new one");
        // 1500 bytes: class 1536; 4096 is more than an octave above, so a new buffer.
        let small = pool.take(1500);
        assert_eq!(small.capacity(), 1536);
        assert_eq!(pool.kept_bytes(), 3 * 4096);
    }
}
