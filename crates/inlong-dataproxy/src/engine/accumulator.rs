//! [`BatchAccumulator`]: one shard's open batches, one per stream, filled by the sending threads.
//!
//! A caller appends a record under the shard's accumulator lock: one lookup by stream, one copy
//! of the payload into the open batch's body, no allocation once bodies are recycled. A batch is
//! sealed when it reaches `batching_max_messages`, `batching_max_size` payload bytes, or the
//! frame-size limit, or when its linger deadline passes (the shard calls
//! [`BatchAccumulator::seal_expired`] exactly at the earliest deadline). Sealed batches wait here
//! until the shard takes them: the only cross-thread handoff is per batch.
//!
//! Pure code: the caller passes `now`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffers::{CapacityPlan, FramePool};
use crate::completion::{BatchCompletion, Callback};
use crate::error::{Error, Field};
use crate::protocol::{self, BatchBody, FrameBudget, COMPRESS_THRESHOLD};
use crate::record::StreamId;

/// Limits a batch is sealed on.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// `batching_max_messages`.
    pub max_messages: u32,
    /// `batching_max_size`, compared with the raw payload bytes of the batch.
    pub max_payload_bytes: usize,
    /// `batching_max_publish_delay`.
    pub linger: Duration,
    /// How large a body may grow under the frame limit.
    pub frame: FrameBudget,
}

/// A batch being filled.
struct OpenBatch {
    body: BatchBody,
    completion: Arc<BatchCompletion>,
    callbacks: Vec<(u32, u64, Callback)>,
    opened_at: Instant,
    max_body_len: usize,
}

/// A batch ready to be encoded and sent.
pub struct SealedBatch {
    /// The batch's stream.
    pub stream_id: StreamId,
    /// Its records.
    pub body: BatchBody,
    /// Shared with every record's future.
    pub completion: Arc<BatchCompletion>,
    /// `(record index, metadata, callback)` for records sent with a callback.
    pub callbacks: Vec<(u32, u64, Callback)>,
    /// When the batch was opened.
    pub opened_at: Instant,
}

impl std::fmt::Debug for SealedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBatch")
            .field("stream_id", &self.stream_id)
            .field("records", &self.body.count())
            .field("callbacks", &self.callbacks.len())
            .finish_non_exhaustive()
    }
}

/// Where an appended record went.
#[derive(Debug)]
pub struct Appended {
    /// The completion of the record's batch.
    pub completion: Arc<BatchCompletion>,
    /// True when the shard must be woken: a batch was sealed into an empty queue, or a new batch
    /// opened (its linger deadline must be armed).
    pub wake: bool,
}

/// See the module docs.
pub struct BatchAccumulator {
    limits: BatchLimits,
    /// FxHash, not SipHash (which cost ~4 % of the send path at 100 B records): stream IDs come
    /// from the application, not the network, so hash flooding is not a concern here.
    open: HashMap<StreamId, OpenBatch, rustc_hash::FxBuildHasher>,
    sealed: Vec<SealedBatch>,
    spare_bodies: Vec<BatchBody>,
    /// Where new bodies come from when no spare is left, and where bodies beyond the spares
    /// go (see [`BatchAccumulator::share_pool`]); `None`: allocated and freed.
    pool: Option<Arc<FramePool>>,
    /// Emptied completions for new batches (see [`BatchAccumulator::keep_completions`]).
    spare_completions: Vec<Arc<BatchCompletion>>,
    /// How many emptied completions are kept, at most.
    completions_kept: usize,
    /// Capacity of the spare bodies, in bytes.
    spare_bytes: usize,
    /// Spare bodies kept at most, and their bytes ([`CapacityPlan`]).
    max_spare_bodies: usize,
    max_spare_bytes: usize,
    /// Length of the last body sealed: the capacity new bodies start with.
    last_body_len: usize,
    closed: bool,
    appended: u64,
}

impl std::fmt::Debug for BatchAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchAccumulator")
            .field("open", &self.open.len())
            .field("sealed", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

impl BatchAccumulator {
    /// An empty accumulator.
    pub fn new(limits: BatchLimits) -> BatchAccumulator {
        BatchAccumulator {
            limits,
            open: HashMap::default(),
            sealed: Vec::new(),
            spare_bodies: Vec::new(),
            pool: None,
            spare_completions: Vec::new(),
            completions_kept: 0,
            spare_bytes: 0,
            max_spare_bodies: CapacityPlan::for_batches(0).spare_bodies,
            max_spare_bytes: CapacityPlan::for_batches(0).spare_body_bytes,
            last_body_len: 0,
            closed: false,
            appended: 0,
        }
    }

    /// [`BatchAccumulator::append_with`] for a record the producer accepted before a close
    /// (it waited for room in blocking mode): taken even after [`BatchAccumulator::close`],
    /// and sealed at once when the accumulator is closed (nothing lingers after a close).
    pub fn append_admitted(
        &mut self,
        clock: impl FnOnce() -> Instant,
        stream_id: &StreamId,
        payload: &[u8],
        callback: &mut Option<(u64, Callback)>,
    ) -> Result<Appended, Error> {
        let closed = std::mem::replace(&mut self.closed, false);
        let appended = self.append_with(clock, stream_id, payload, callback);
        self.closed = closed;
        if closed {
            self.seal_all();
            return appended.map(|appended| Appended { wake: true, ..appended });
        }
        appended
    }

    #[cfg(test)]
    /// Appends one record to its stream's open batch, sealing as the limits say.
    ///
    /// Fails, leaving nothing behind (the callback stays in `callback`), on an invalid stream ID or
    /// payload, a record too large for a frame on its own, or after [`BatchAccumulator::close`].
    pub fn append(
        &mut self,
        now: Instant,
        stream_id: &StreamId,
        payload: &[u8],
        callback: &mut Option<(u64, Callback)>,
    ) -> Result<Appended, Error> {
        self.append_with(|| now, stream_id, payload, callback)
    }

    /// [`BatchAccumulator::append`] reading the clock only when a batch opens (its linger
    /// deadline starts then): most records join an open batch and need no time at all.
    pub fn append_with(
        &mut self,
        clock: impl FnOnce() -> Instant,
        stream_id: &StreamId,
        payload: &[u8],
        callback: &mut Option<(u64, Callback)>,
    ) -> Result<Appended, Error> {
        if self.closed {
            return Err(Error::ProducerClosed);
        }
        protocol::validate_payload(payload)?;
        let entry_len = 4 + payload.len() - usize::from(payload.ends_with(b"\n"));
        let stream = stream_id.as_str();
        // The common case: one lookup, the record joins the stream's open batch.
        if let Some(batch) = self.open.get_mut(stream) {
            if batch.body.len() + entry_len <= batch.max_body_len {
                let (completion, full) = Self::push(&self.limits, batch, payload, callback)?;
                self.appended += 1;
                let wake = full && self.seal(stream);
                return Ok(Appended { completion, wake });
            }
        }
        // Sealed to make room; the new batch below wakes the shard anyway.
        self.seal(stream);
        protocol::validate_id(Field::StreamId, stream)?;
        let max_body_len = self.fits_a_frame(stream, payload)?;
        // A new body starts at the size of the last sealed one, so it does not grow by doubling
        // record after record (realloc cost ~2 % of the send path at 100 B).
        let body = match self.spare_bodies.pop() {
            Some(body) => {
                self.spare_bytes -= body.capacity();
                body
            }
            None => {
                let capacity = self.last_body_len.min(max_body_len);
                match &self.pool {
                    Some(pool) => BatchBody::from_buffer(pool.take(capacity)),
                    None => BatchBody::with_capacity(capacity),
                }
            }
        };
        let batch = self.open.entry(stream_id.clone()).or_insert(OpenBatch {
            body,
            completion: self.spare_completions.pop().unwrap_or_default(),
            callbacks: Vec::new(),
            opened_at: clock(),
            max_body_len,
        });
        let (completion, full) = Self::push(&self.limits, batch, payload, callback)?;
        self.appended += 1;
        if full {
            self.seal(stream);
        }
        Ok(Appended { completion, wake: true })
    }

    /// Checks what [`BatchAccumulator::append_with`] checks of a record of an already valid
    /// stream ID, without taking it: a valid payload that fits a frame on its own.
    pub fn check(&self, stream_id: &StreamId, payload: &[u8]) -> Result<(), Error> {
        protocol::validate_payload(payload)?;
        self.fits_a_frame(stream_id.as_str(), payload).map(|_| ())
    }

    /// The largest body a batch of `stream` may have, when `payload` fits one on its own.
    fn fits_a_frame(&self, stream: &str, payload: &[u8]) -> Result<usize, Error> {
        let max_body_len = self.limits.frame.max_body_len(stream.len());
        let newline = usize::from(payload.ends_with(b"\n"));
        // The payload, less a trailing newline, plus its 4-byte length.
        if 4 + payload.len() - newline > max_body_len {
            return Err(Error::RecordTooLong {
                record_len: payload.len(),
                max_record_len: (max_body_len + newline).saturating_sub(4),
                max_frame_len: self.limits.frame.max_frame_len(),
                compressed: self.limits.frame.compression() && max_body_len > COMPRESS_THRESHOLD,
            });
        }
        Ok(max_body_len)
    }

    /// Adds the record to `batch`; returns its completion and whether the batch is now full.
    fn push(
        limits: &BatchLimits,
        batch: &mut OpenBatch,
        payload: &[u8],
        callback: &mut Option<(u64, Callback)>,
    ) -> Result<(Arc<BatchCompletion>, bool), Error> {
        batch.body.push(payload)?;
        if let Some((metadata, callback)) = callback.take() {
            batch.callbacks.push((batch.body.count() - 1, metadata, callback));
        }
        let full = batch.body.count() >= limits.max_messages
            || batch.body.payload_bytes() >= limits.max_payload_bytes;
        Ok((batch.completion.clone(), full))
    }

    /// Moves the open batch of `stream` to the sealed queue; true when the queue was empty.
    fn seal(&mut self, stream: &str) -> bool {
        let Some((stream_id, batch)) = self.open.remove_entry(stream) else { return false };
        let was_empty = self.sealed.is_empty();
        self.last_body_len = batch.body.len();
        self.sealed.push(SealedBatch {
            stream_id,
            body: batch.body,
            completion: batch.completion,
            callbacks: batch.callbacks,
            opened_at: batch.opened_at,
        });
        was_empty
    }

    /// Seals every batch whose linger deadline is at or before `now`.
    pub fn seal_expired(&mut self, now: Instant) {
        let linger = self.limits.linger;
        let expired: Vec<StreamId> = self
            .open
            .iter()
            .filter(|(_, batch)| batch.opened_at + linger <= now)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in expired {
            self.seal(stream.as_str());
        }
    }

    /// Seals every open batch (flush and close).
    pub fn seal_all(&mut self) {
        let streams: Vec<StreamId> = self.open.keys().cloned().collect();
        for stream in streams {
            self.seal(stream.as_str());
        }
    }

    /// Refuses further records (they fail with `ProducerClosed`) and seals what is open.
    pub fn close(&mut self) {
        self.closed = true;
        self.seal_all();
    }

    /// The earliest linger deadline of the open batches.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|batch| batch.opened_at + self.limits.linger).min()
    }

    /// Gives the queue of sealed batches room for `batches` up front, its pages resident (see
    /// [`resident_vec`](crate::buffers::resident_vec)): a backlog of sealed batches then does not
    /// grow it by doubling.
    /// Reserves and keeps what `plan` says: room for its batches' sealed slots and completions,
    /// and at most its spare bodies.
    pub fn reserve(&mut self, plan: &CapacityPlan) {
        self.reserve_sealed(plan.batches);
        self.keep_completions(plan.batches);
        self.max_spare_bodies = plan.spare_bodies;
        self.max_spare_bytes = plan.spare_body_bytes;
    }

    fn reserve_sealed(&mut self, batches: usize) {
        if self.sealed.capacity() < batches {
            let mut sealed = crate::buffers::resident_vec(batches);
            sealed.append(&mut self.sealed);
            self.sealed = sealed;
        }
    }

    /// Creates `batches` completions up front and keeps up to that many emptied ones for new
    /// batches ([`BatchAccumulator::recycle_completion`]): a backlog of that many batches then
    /// allocates none, and the memory is there from the start rather than left behind, spread
    /// over the allocator's arenas, by the first bursts that needed it.
    fn keep_completions(&mut self, batches: usize) {
        self.spare_completions = crate::buffers::resident_vec(batches);
        self.spare_completions.extend((0..batches).map(|_| BatchCompletion::new()));
        self.completions_kept = batches;
    }

    /// Gives back a completion emptied by [`BatchCompletion::reuse`]; kept while fewer than
    /// [`BatchAccumulator::keep_completions`] are, freed otherwise.
    pub fn recycle_completion(&mut self, completion: Arc<BatchCompletion>) {
        debug_assert!(Arc::strong_count(&completion) == 1 && !completion.is_resolved());
        if self.spare_completions.len() < self.completions_kept {
            self.spare_completions.push(completion);
        }
    }

    #[cfg(test)]
    /// Emptied completions kept for new batches.
    pub fn spare_completions(&self) -> usize {
        self.spare_completions.len()
    }

    /// Moves the sealed batches into `out`. An empty `out` is swapped with the queue, so the
    /// two vectors take turns and neither grows by taking the other's batches.
    pub fn take_sealed(&mut self, out: &mut Vec<SealedBatch>) {
        if out.is_empty() {
            std::mem::swap(&mut self.sealed, out);
        } else {
            out.append(&mut self.sealed);
        }
    }

    /// Gives an emptied body back for reuse: kept while the spares hold at most
    /// the plan's `spare_body_bytes` (and `spare_bodies` bodies), given to the shared pool otherwise.
    pub fn recycle(&mut self, mut body: BatchBody) {
        let capacity = body.capacity();
        if self.spare_bodies.len() < self.max_spare_bodies
            && self.spare_bytes + capacity <= self.max_spare_bytes
        {
            body.clear();
            self.spare_bytes += capacity;
            self.spare_bodies.push(body);
        } else if let Some(pool) = &self.pool {
            pool.give(body.into_buffer());
        }
    }

    /// Takes new bodies from `pool` once the spares run out and gives it those beyond the
    /// spares' bounds, instead of allocating and freeing them. While the shard is busy (a
    /// burst after an outage), sealed batches wait for it with their bodies, up to the pending
    /// budget; allocated one by one and freed afterwards, those bodies moved the soak's RSS by
    /// 2-3 MB up and down. The pool is the producer's frame pool: a pending record's bytes are
    /// in its body until encoded, in its frame afterwards, so the pool's peak covers both.
    pub fn share_pool(&mut self, pool: Arc<FramePool>) {
        self.pool = Some(pool);
    }

    #[cfg(test)]
    /// Spare bodies kept for new batches.
    pub fn spare_bodies(&self) -> usize {
        self.spare_bodies.len()
    }

    /// Records accepted since the start.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    #[cfg(test)]
    /// Open batches.
    pub fn open_batches(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_messages: 3,
            max_payload_bytes: 100,
            linger: Duration::from_millis(20),
            frame: FrameBudget::new(4096, Default::default(), "g", 20, &Default::default(), true),
        }
    }

    fn stream(name: &'static str) -> StreamId {
        StreamId::from(name)
    }

    #[test]
    fn seals_on_count() {
        let mut acc = BatchAccumulator::new(limits());
        let now = Instant::now();
        let first = acc.append(now, &stream("s"), b"a", &mut None).unwrap();
        assert!(first.wake, "a new batch arms the linger timer");
        assert!(!acc.append(now, &stream("s"), b"b", &mut None).unwrap().wake);
        let third = acc.append(now, &stream("s"), b"c", &mut None).unwrap();
        assert!(third.wake, "sealed into an empty queue");
        assert!(Arc::ptr_eq(&first.completion, &third.completion));
        let mut sealed = Vec::new();
        acc.take_sealed(&mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].body.count(), 3);
        assert_eq!(acc.open_batches(), 0);
    }

    #[test]
    fn seals_on_payload_bytes_and_keeps_streams_apart() {
        let mut acc = BatchAccumulator::new(limits());
        let now = Instant::now();
        acc.append(now, &stream("a"), &[b'x'; 60], &mut None).unwrap();
        acc.append(now, &stream("b"), &[b'y'; 10], &mut None).unwrap();
        acc.append(now, &stream("a"), &[b'x'; 40], &mut None).unwrap();
        let mut sealed = Vec::new();
        acc.take_sealed(&mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].stream_id.as_str(), "a");
        assert_eq!(acc.open_batches(), 1);
    }

    #[test]
    fn linger_deadline_is_exact() {
        let mut acc = BatchAccumulator::new(limits());
        let t0 = Instant::now();
        acc.append(t0, &stream("s"), b"a", &mut None).unwrap();
        acc.append(t0 + Duration::from_millis(5), &stream("t"), b"a", &mut None).unwrap();
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(20)));
        acc.seal_expired(t0 + Duration::from_millis(19));
        assert_eq!(acc.open_batches(), 2);
        acc.seal_expired(t0 + Duration::from_millis(20));
        assert_eq!(acc.open_batches(), 1);
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(25)));
    }

    #[test]
    fn frame_limit_seals_before_overflowing_and_refuses_giants() {
        let mut acc = BatchAccumulator::new(BatchLimits {
            max_payload_bytes: 1 << 20,
            max_messages: 1000,
            ..limits()
        });
        let now = Instant::now();
        let max = limits().frame.max_body_len(1);
        let record = vec![b'r'; max / 2];
        acc.append(now, &stream("s"), &record, &mut None).unwrap();
        acc.append(now, &stream("s"), &record, &mut None).unwrap();
        let mut sealed = Vec::new();
        acc.take_sealed(&mut sealed);
        assert_eq!(sealed.len(), 1, "the second record did not fit with the first");
        assert_eq!(sealed[0].body.count(), 1);
        let giant = vec![b'g'; 5000];
        let err = acc.append(now, &stream("s"), &giant, &mut None).unwrap_err();
        let Error::RecordTooLong { record_len, max_record_len, max_frame_len, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!((record_len, max_frame_len), (5000, 4096));
        assert_eq!(max_record_len, limits().frame.max_body_len(1) - 4);
        // The largest record the error names is taken; one byte more is not.
        let mut fresh = BatchAccumulator::new(limits());
        let fits = vec![b'f'; max_record_len];
        fresh.append(now, &stream("s"), &fits, &mut None).unwrap();
        let over = vec![b'o'; max_record_len + 1];
        assert!(matches!(
            fresh.append(now, &stream("s"), &over, &mut None),
            Err(Error::RecordTooLong { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused_and_leaves_nothing() {
        let mut acc = BatchAccumulator::new(limits());
        let now = Instant::now();
        assert_eq!(acc.append(now, &stream("s"), b"", &mut None).unwrap_err().code(), 10010);
        assert_eq!(acc.append(now, &stream("s"), b"\n", &mut None).unwrap_err().code(), 10010);
        assert_eq!(acc.append(now, &stream("a b"), b"x", &mut None).unwrap_err().code(), 10010);
        assert_eq!(acc.append(now, &stream("a&b"), b"x", &mut None).unwrap_err().code(), 10010);
        assert_eq!(acc.open_batches(), 0);
        acc.close();
        assert_eq!(
            acc.append(now, &stream("s"), b"x", &mut None).unwrap_err(),
            Error::ProducerClosed
        );
    }

    #[test]
    fn callbacks_keep_record_index_and_metadata() {
        let mut acc = BatchAccumulator::new(limits());
        let now = Instant::now();
        acc.append(now, &stream("s"), b"a", &mut None).unwrap();
        acc.append(now, &stream("s"), b"b", &mut Some((42, Box::new(|_| {})))).unwrap();
        acc.seal_all();
        let mut sealed = Vec::new();
        acc.take_sealed(&mut sealed);
        let (index, metadata, _) = &sealed[0].callbacks[0];
        assert_eq!((*index, *metadata), (1, 42));
    }

    #[test]
    fn spare_bodies_are_bounded_in_count_and_bytes() {
        let mut acc = BatchAccumulator::new(limits());
        for _ in 0..CapacityPlan::for_batches(0).spare_bodies + 10 {
            acc.recycle(BatchBody::with_capacity(16));
        }
        assert_eq!(acc.spare_bodies(), CapacityPlan::for_batches(0).spare_bodies);
        let mut acc = BatchAccumulator::new(limits());
        for _ in 0..10 {
            acc.recycle(BatchBody::with_capacity(
                CapacityPlan::for_batches(0).spare_body_bytes / 4,
            ));
        }
        assert_eq!(acc.spare_bodies(), 4, "no more than the plan's spare bytes");
        // A new batch takes a spare, which makes room for one more.
        acc.append(Instant::now(), &stream("s"), b"x", &mut None).unwrap();
        assert_eq!(acc.spare_bodies(), 3);
        acc.recycle(BatchBody::with_capacity(CapacityPlan::for_batches(0).spare_body_bytes / 4));
        assert_eq!(acc.spare_bodies(), 4);
    }

    #[test]
    fn completions_made_up_front_are_used_by_new_batches_and_kept_up_to_their_number() {
        let mut acc = BatchAccumulator::new(limits());
        acc.keep_completions(2);
        assert_eq!(acc.spare_completions(), 2);
        let first = acc.append(Instant::now(), &stream("a"), b"x", &mut None).unwrap();
        let joined = acc.append(Instant::now(), &stream("a"), b"y", &mut None).unwrap();
        assert!(Arc::ptr_eq(&first.completion, &joined.completion), "one per batch");
        assert_eq!(acc.spare_completions(), 1, "the new batch took a spare");
        acc.append(Instant::now(), &stream("b"), b"x", &mut None).unwrap();
        acc.append(Instant::now(), &stream("c"), b"x", &mut None).unwrap();
        assert_eq!(acc.spare_completions(), 0, "then allocated");
        for _ in 0..3 {
            acc.recycle_completion(BatchCompletion::new());
        }
        assert_eq!(acc.spare_completions(), 2, "no more kept than made up front");
    }

    #[test]
    fn bodies_beyond_the_spares_go_to_the_shared_pool_and_come_back_from_it() {
        let pool = Arc::new(FramePool::new(1 << 30));
        let mut acc = BatchAccumulator::new(limits());
        acc.share_pool(pool.clone());
        let extra = 6;
        let bodies: Vec<BatchBody> = (0..CapacityPlan::for_batches(0).spare_bodies + extra)
            .map(|_| BatchBody::from_buffer(pool.take(0)))
            .collect();
        let capacity = bodies[0].capacity();
        for body in bodies {
            acc.recycle(body);
        }
        assert_eq!(acc.spare_bodies(), CapacityPlan::for_batches(0).spare_bodies);
        assert_eq!(pool.kept_bytes(), extra * capacity, "the rest went to the pool, not freed");
        // New batches take the spares first, then the pool's buffers.
        for i in 0..=CapacityPlan::for_batches(0).spare_bodies {
            let id = StreamId::from(format!("s{i}"));
            acc.append(Instant::now(), &id, b"x", &mut None).unwrap();
        }
        assert_eq!(acc.spare_bodies(), 0);
        assert_eq!(pool.kept_bytes(), (extra - 1) * capacity);
    }
}
