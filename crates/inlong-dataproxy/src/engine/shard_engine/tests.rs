//! The engine driven by hand: injected time, a scripted server built on the local server's codec,
//! no sockets and no sleeps.

use crate::budget::PendingBudget;
use crate::buffers::CapacityPlan;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::engine::accumulator::SealedBatch;
use crate::protocol::BatchBody;

const SEND_TIMEOUT: Duration = Duration::from_secs(30);

fn config() -> EngineConfig {
    EngineConfig {
        group_id: "g".into(),
        wid: 0,
        mid_prefix: "t-".into(),
        send_timeout: SEND_TIMEOUT,
        max_retries: 2,
        retry_initial_interval: Duration::from_millis(100),
        retry_max_interval: Duration::from_secs(10),
        retry_on_server_error: true,
        max_frame_len: 524_288,
        heartbeat_interval: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(10),
        plan: CapacityPlan { read_buffer_len: 4096, ..CapacityPlan::for_batches(16) },
        compression: true,
        format: FrameFormat::default(),
        start_unix_ms: 1_700_000_000_000,
        add_columns: AddColumns::default(),
        seed: 7,
    }
}

/// The engine as the shard's shell drives it: each call that can resolve batches is followed by
/// their delivery (budget, callbacks, completion, metrics), as the shell does every turn.
struct TestShell {
    engine: ShardEngine,
    budget: Arc<PendingBudget>,
    metrics: crate::metrics::ShardMetrics,
}

impl std::ops::Deref for TestShell {
    type Target = ShardEngine;
    fn deref(&self) -> &ShardEngine {
        &self.engine
    }
}

impl std::ops::DerefMut for TestShell {
    fn deref_mut(&mut self) -> &mut ShardEngine {
        &mut self.engine
    }
}

impl TestShell {
    fn deliver(&mut self, now: Instant) {
        while let Some(mut resolved) = self.engine.poll_resolved() {
            crate::shard::deliver(&mut resolved, &self.budget, &self.metrics, now);
            self.engine.recycle(resolved);
        }
    }

    fn enqueue(&mut self, now: Instant, batch: SealedBatch, dt_ms: u64) {
        self.engine.enqueue(now, batch, dt_ms);
        self.deliver(now);
    }

    fn on_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        self.engine.on_bytes(now, conn, data);
        self.deliver(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.deliver(now);
    }

    fn conn_lost(&mut self, now: Instant, conn: ConnId, reason: &CloseReason) {
        self.engine.conn_lost(now, conn, reason);
        self.deliver(now);
    }

    fn fail_all(&mut self, now: Instant, error: &Error) {
        self.engine.fail_all(error);
        self.deliver(now);
    }
}

struct Harness {
    engine: TestShell,
    budget: Arc<PendingBudget>,
    now: Instant,
}

fn ep(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Harness {
    fn new(config: EngineConfig) -> Harness {
        let budget = Arc::new(PendingBudget::new(1000, 1 << 20));
        Harness {
            engine: TestShell {
                engine: ShardEngine::new(Instant::now(), config, Arc::new(FramePool::new(1 << 20))),
                budget: budget.clone(),
                metrics: crate::metrics::ShardMetrics::detached(),
            },
            budget,
            now: Instant::now(),
        }
    }

    /// Enqueues a batch of `records` one-byte records and returns its completion.
    fn batch(&mut self, records: u32) -> Arc<BatchCompletion> {
        self.batch_opened_at(records, self.now)
    }

    /// Like `batch`, for a batch opened at `opened_at`.
    fn batch_opened_at(&mut self, records: u32, opened_at: Instant) -> Arc<BatchCompletion> {
        self.batch_of(&vec![&b"x"[..]; records as usize], opened_at)
    }

    /// Enqueues a batch of these records, opened at `opened_at`, and returns its completion.
    fn batch_of(&mut self, records: &[&[u8]], opened_at: Instant) -> Arc<BatchCompletion> {
        let mut body = BatchBody::new();
        for record in records {
            assert!(self.budget.try_acquire(record.len()));
            body.push(record).unwrap();
        }
        let completion = BatchCompletion::new();
        let sealed = SealedBatch {
            stream_id: "s".into(),
            body,
            completion: completion.clone(),
            callbacks: Vec::new(),
            opened_at,
        };
        self.engine.enqueue(self.now, sealed, 1_700_000_000_000);
        completion
    }

    /// Everything the engine wants written, per connection, as (conn, frames).
    fn transmit(&mut self) -> Vec<(ConnId, Vec<Vec<u8>>)> {
        let mut out = Vec::new();
        while let Some(transmit) = self.engine.poll_transmit(self.now) {
            let mut frames = Vec::new();
            let mut at = 0;
            while let Some(len) = protocol::split_frame(&transmit.bytes[at..], usize::MAX).unwrap()
            {
                frames.push(transmit.bytes[at..at + len].to_vec());
                at += len;
            }
            assert_eq!(at, transmit.bytes.len(), "only whole frames are written");
            self.engine.write_done(self.now, transmit.conn, transmit.bytes);
            out.push((transmit.conn, frames));
        }
        out
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle_timeout(self.now);
    }

    /// Runs the clock forward to each deadline until `until` passes.
    fn run_until(&mut self, until: Instant) {
        while let Some(at) = self.engine.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now);
        }
        self.now = until;
    }
}

/// DataProxy's txt reply to the msgType 5 `frame` (`PROTOCOL.md` §3.7): body `'2'`, attributes
/// `dpIp=...[&errCode=<code>][&<the request's attributes>]`, the echo carrying the `mid` to match.
fn reply(frame: &[u8], code: Option<i32>, with_mid: bool) -> Vec<u8> {
    let word = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
    let body_len = word(5);
    let attrs_at = 13 + body_len;
    let attrs = std::str::from_utf8(&frame[attrs_at..attrs_at + word(9 + body_len)]).unwrap();
    assert!(attrs.contains("mid="), "the engine wrote a frame without a mid: {attrs}");
    let mut text = String::from("dpIp=10.0.0.1");
    if let Some(code) = code {
        text.push_str(&format!("&errCode={code}"));
    }
    if with_mid {
        text.push_str("&rt=1&rtms=1&");
        text.push_str(attrs);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(10 + text.len()).unwrap().to_be_bytes()[..]);
    out.extend_from_slice(&[5, 0, 0, 0, 1, b'2']);
    out.extend_from_slice(&u32::try_from(text.len()).unwrap().to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

fn outcome(completion: &BatchCompletion) -> Option<Result<BatchOutcome, Error>> {
    completion.outcome()
}

#[test]
fn ack_resolves_the_batch_and_releases_the_budget() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(3);
    assert_eq!(h.budget.pending_records(), 3);
    let writes = h.transmit();
    assert_eq!(writes.len(), 1);
    let (conn, frames) = &writes[0];
    assert_eq!((*conn, frames.len()), (1, 1));
    h.now += Duration::from_millis(3);
    h.engine.on_bytes(h.now, 1, &reply(&frames[0], None, true));
    let report = outcome(&done).unwrap().unwrap();
    assert_eq!((report.batch_id, report.endpoint, report.retries), (1, ep(1), 0));
    assert_eq!(report.acked_at - report.opened_at, Duration::from_millis(3));
    assert_eq!(h.budget.pending_records(), 0);
    assert_eq!(h.engine.inflight(), 0);
}

#[test]
fn several_ready_batches_are_coalesced_into_one_write() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let batches: Vec<_> = (0..5).map(|_| h.batch(1)).collect();
    let writes = h.transmit();
    assert_eq!(writes.len(), 1, "one write for five batches");
    assert_eq!(writes[0].1.len(), 5);
    // Replies may arrive split anywhere.
    let replies: Vec<u8> = writes[0].1.iter().flat_map(|f| reply(f, None, true)).collect();
    for chunk in replies.chunks(7) {
        h.engine.on_bytes(h.now, 1, chunk);
    }
    assert!(batches.iter().all(|b| matches!(outcome(b), Some(Ok(_)))));
}

#[test]
fn replies_are_decoded_in_place_and_only_a_cut_frame_is_kept() {
    for chunk in [1, 2, 3, 5, 41, 1000, usize::MAX] {
        let mut h = Harness::new(config());
        h.engine.add_conn(h.now, 1, ep(1));
        let batches: Vec<_> = (0..40).map(|_| h.batch(1)).collect();
        let writes = h.transmit();
        let replies: Vec<Vec<u8>> = writes[0].1.iter().map(|f| reply(f, None, true)).collect();
        let longest = replies.iter().map(Vec::len).max().unwrap();
        let stream = replies.concat();
        let room = h.engine.conns[0].read_buf.capacity().max(2 * longest);
        // Every read but the last ends inside a frame unless the chunk size says otherwise.
        let (head, last) = stream.split_at(stream.len() - 3);
        for read in head.chunks(chunk.min(head.len())) {
            h.engine.on_bytes(h.now, 1, read);
            let kept = &h.engine.conns[0].read_buf;
            assert!(kept.len() < longest, "chunk {chunk}: more than one cut frame kept");
            assert!(kept.capacity() <= room, "chunk {chunk}: the read was copied");
        }
        assert_eq!(batches.iter().filter(|b| outcome(b).is_some()).count(), 39, "chunk {chunk}");
        h.engine.on_bytes(h.now, 1, last);
        assert!(batches.iter().all(|b| matches!(outcome(b), Some(Ok(_)))), "chunk {chunk}");
        assert!(h.engine.conns[0].read_buf.is_empty());
        assert!(h.engine.poll_event().is_none());
    }
}

#[test]
fn a_bad_length_field_cut_between_reads_closes_the_connection() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    h.engine.on_bytes(h.now, 1, b"\x00\x01");
    assert!(h.engine.poll_event().is_none(), "no verdict before the length field is whole");
    h.engine.on_bytes(h.now, 1, b"\x00\x00");
    assert!(matches!(h.engine.poll_event(), Some(EngineEvent::CloseConn { conn: 1, .. })));
    assert!(h.engine.conns.iter().all(|c| c.read_buf.is_empty()));
}

#[test]
fn write_buffers_never_grow_past_the_write_buffer_size() {
    let mut h = Harness::new(EngineConfig {
        plan: CapacityPlan { write_buffer_len: 1000, ..config().plan },
        ..config()
    });
    h.engine.add_conn(h.now, 1, ep(1));
    let small: Vec<_> = (0..40).map(|_| h.batch(1)).collect();
    // One batch whose frame alone is larger than a write buffer (incompressible body).
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let big: Vec<u8> = (0..3000).map(|_| rng.u8(..)).collect();
    let large = h.batch_of(&[&big], h.now);
    let mut frames = 0;
    let mut writes = 0;
    while let Some(transmit) = h.engine.poll_transmit(h.now) {
        writes += 1;
        let mut at = 0;
        let mut in_write = 0;
        while let Some(len) = protocol::split_frame(&transmit.bytes[at..], usize::MAX).unwrap() {
            h.engine.on_bytes(h.now, 1, &reply(&transmit.bytes[at..at + len], None, true));
            at += len;
            in_write += 1;
        }
        if transmit.bytes.len() > 1000 {
            assert_eq!(in_write, 1, "only a frame larger than the buffer is written alone");
        } else {
            assert_eq!(transmit.bytes.capacity(), 1000, "write buffers keep their size");
        }
        frames += in_write;
        h.engine.write_done(h.now, transmit.conn, transmit.bytes);
    }
    assert_eq!(frames, 41);
    assert!(writes > 4, "41 frames of over 100 bytes take several 1000-byte writes");
    assert!(small.iter().chain([&large]).all(|b| matches!(outcome(b), Some(Ok(_)))));
    assert_eq!(h.engine.inflight(), 0);
}

#[test]
fn replies_without_mid_are_matched_fifo() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let first = h.batch(1);
    let second = h.batch(1);
    let writes = h.transmit();
    // Code 105 is answered before the attributes are parsed: no mid.
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(105), false));
    assert!(matches!(outcome(&first), Some(Err(Error::Server { code: 105, .. }))));
    assert!(outcome(&second).is_none());
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[1], None, true));
    assert!(matches!(outcome(&second), Some(Ok(_))));
}

#[test]
fn non_retryable_server_code_fails_with_the_code() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(2);
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(115), true));
    let err = outcome(&done).unwrap().unwrap_err();
    assert_eq!((err.code(), err.server_code()), (10011, Some(115)));
    assert_eq!(h.budget.pending_records(), 0);
}

#[test]
fn retryable_code_backs_off_then_succeeds() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(114), true));
    assert!(outcome(&done).is_none());
    assert!(h.transmit().is_empty(), "nothing is resent before the backoff");
    let due = h.engine.poll_timeout().unwrap();
    let backoff = due - h.now;
    assert!(
        backoff >= Duration::from_millis(80) && backoff <= Duration::from_millis(120),
        "{backoff:?}"
    );
    h.advance(backoff);
    let writes = h.transmit();
    assert_eq!(writes.len(), 1);
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], None, true));
    assert_eq!(outcome(&done).unwrap().unwrap().retries, 1);
}

#[test]
fn retries_run_out_into_send_timeout_with_the_cause() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    for attempt in 1..=3 {
        let writes = h.transmit();
        assert_eq!(writes.len(), 1, "attempt {attempt}");
        h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(1), true));
        h.run_until(h.now + Duration::from_secs(1));
    }
    let err = outcome(&done).unwrap().unwrap_err();
    assert!(matches!(err, Error::SendTimeout { attempts: 3, .. }), "{err:?}");
    assert_eq!((err.code(), err.server_code()), (10001, Some(1)));
}

#[test]
fn zero_retries_means_one_attempt() {
    let mut h = Harness::new(EngineConfig { max_retries: 0, ..config() });
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(114), true));
    assert!(matches!(outcome(&done), Some(Err(Error::SendTimeout { attempts: 1, .. }))));
}

#[test]
fn send_timeout_is_exact_and_retries_on_another_connection() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    h.engine.add_conn(h.now, 2, ep(2));
    let done = h.batch(1);
    let sent_at = h.now;
    let writes = h.transmit();
    assert_eq!(writes[0].0, 1, "the first connection is preferred");
    assert_eq!(h.engine.poll_timeout(), Some(sent_at + SEND_TIMEOUT));
    h.advance(SEND_TIMEOUT - Duration::from_millis(1));
    assert!(outcome(&done).is_none());
    h.advance(Duration::from_millis(1));
    // The retry waits for its backoff; meanwhile the silent connection is probed.
    let probes = h.transmit();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].1, vec![HEARTBEAT_REQUEST.to_vec()]);
    let due = h.engine.poll_timeout().unwrap();
    h.run_until(due);
    let writes = h.transmit();
    assert_eq!(writes[0].0, 2, "the retry avoids the connection that timed out");
    h.engine.on_bytes(h.now, 2, &reply(&writes[0].1[0], None, true));
    let report = outcome(&done).unwrap().unwrap();
    assert_eq!((report.endpoint, report.retries), (ep(2), 1));
}

#[test]
fn connection_loss_retries_at_once() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    h.transmit();
    h.engine.add_conn(h.now, 2, ep(2));
    h.engine.conn_lost(h.now, 1, &CloseReason::ReadFailed("reset".into()));
    let writes = h.transmit();
    assert_eq!(writes.len(), 1, "resent without waiting for a timeout or backoff");
    assert_eq!(writes[0].0, 2);
    h.engine.on_bytes(h.now, 2, &reply(&writes[0].1[0], None, true));
    assert!(matches!(outcome(&done), Some(Ok(_))));
}

#[test]
fn connection_losses_inside_the_window_do_not_use_up_attempts() {
    // Every node going down at once: the batch is lost with five connections in a row, more
    // than its three attempts, and is still delivered once a node is back.
    let mut h = Harness::new(config());
    let done = h.batch(1);
    for conn in 1..=5 {
        h.engine.add_conn(h.now, conn, ep(1));
        let writes = h.transmit();
        assert_eq!(writes.len(), 1, "sent on connection {conn}");
        h.advance(Duration::from_millis(100));
        h.engine.conn_lost(h.now, conn, &CloseReason::ReadFailed("reset".into()));
        assert!(outcome(&done).is_none(), "not failed after losing connection {conn}");
    }
    h.engine.add_conn(h.now, 6, ep(2));
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 6, &reply(&writes[0].1[0], None, true));
    assert_eq!(outcome(&done).unwrap().unwrap().retries, 5);
}

#[test]
fn connection_losses_past_the_window_or_after_bad_replies_count() {
    // Past `send_timeout x (1 + max_retries)` from the batch's opening, losses count again.
    let mut h = Harness::new(config());
    let opened = h.now;
    h.now += SEND_TIMEOUT * 3; // nothing pending yet, so no timer to run
    let done = h.batch_opened_at(1, opened);
    for conn in 1..=3 {
        h.engine.add_conn(h.now, conn, ep(1));
        h.transmit();
        h.engine.conn_lost(h.now, conn, &CloseReason::ReadFailed("reset".into()));
    }
    let err = outcome(&done).unwrap().unwrap_err();
    assert!(matches!(err, Error::SendTimeout { attempts: 3, .. }), "{err:?}");

    // A connection closed for a garbage reply is at fault: its attempt counts at once.
    let mut h = Harness::new(config());
    let done = h.batch(1);
    for conn in 1..=3 {
        h.engine.add_conn(h.now, conn, ep(1));
        h.transmit();
        h.engine.on_bytes(h.now, conn, &[0, 0, 0, 1, 0xff]);
        let Some(EngineEvent::CloseConn { reason, .. }) = h.engine.poll_event() else {
            panic!("a garbage reply closes the connection")
        };
        assert!(matches!(reason, CloseReason::BadReply(_)), "{reason:?}");
        assert_eq!(reason.codes(), (codes::UNKNOWN, Some(codes::CONN_READ_FAILED)));
        h.engine.conn_lost(h.now, conn, &reason);
    }
    assert!(matches!(outcome(&done), Some(Err(Error::SendTimeout { attempts: 3, .. }))));
}

#[test]
fn late_success_from_a_lost_attempt_still_counts_once() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    h.engine.add_conn(h.now, 2, ep(2));
    let done = h.batch(1);
    let first = h.transmit();
    h.advance(SEND_TIMEOUT);
    h.run_until(h.engine.poll_timeout().unwrap());
    let second = h.transmit();
    let frame = second.iter().find(|(c, _)| *c == 2).unwrap().1[0].clone();
    // The first attempt's ack arrives late: the batch is delivered; the second ack is ignored.
    h.engine.on_bytes(h.now, 1, &reply(&first[0].1[0], None, true));
    assert_eq!(outcome(&done).unwrap().unwrap().endpoint, ep(1));
    h.engine.on_bytes(h.now, 2, &reply(&frame, None, true));
    assert_eq!(h.engine.inflight(), 0);
    assert_eq!(h.budget.pending_records(), 0, "released exactly once");
}

#[test]
fn batches_wait_for_a_connection_but_not_forever() {
    let mut h = Harness::new(EngineConfig { max_retries: 0, ..config() });
    let done = h.batch(1);
    assert!(h.transmit().is_empty());
    h.advance(SEND_TIMEOUT);
    let err = outcome(&done).unwrap().unwrap_err();
    assert!(
        matches!(err, Error::SendTimeout { attempts: 1, ref last_error, .. } if matches!(**last_error.as_ref().unwrap(), Error::NoEndpoints { .. })),
        "{err:?}"
    );
}

#[test]
fn batches_without_a_connection_name_the_shards_connect_failures() {
    let mut h = Harness::new(EngineConfig { max_retries: 0, ..config() });
    let refused: Arc<str> = "connection refused (os error 111)".into();
    let causes = crate::error::ConnectFailures::new([(ep(1), refused.clone())], 4);
    h.engine.set_connect_failures(causes.clone());
    let done = h.batch(1);
    h.advance(SEND_TIMEOUT);
    let err = outcome(&done).unwrap().unwrap_err();
    let Error::SendTimeout { last_error: Some(cause), .. } = &err else { panic!("{err:?}") };
    assert_eq!(**cause, Error::no_endpoints(causes));
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1: connection refused (os error 111); +4 more"), "{text}");
}

#[test]
fn batches_behind_a_write_that_never_ends_time_out_as_ack_timeouts_from_that_node() {
    // Write buffers of 1000 bytes: the first write takes what fits, the rest waits in the queue
    // behind it; the write never completes (a node that stopped reading).
    let mut h = Harness::new(EngineConfig {
        max_retries: 0,
        plan: CapacityPlan { write_buffer_len: 1000, ..config().plan },
        ..config()
    });
    h.engine.add_conn(h.now, 1, ep(1));
    let batches: Vec<_> = (0..40).map(|_| h.batch(1)).collect();
    let stuck = h.engine.poll_transmit(h.now).expect("a first write");
    assert!(h.engine.poll_transmit(h.now).is_none(), "one write at a time per connection");
    h.run_until(h.now + SEND_TIMEOUT + Duration::from_millis(1));
    for batch in &batches {
        let err = outcome(batch).expect("every batch resolved").unwrap_err();
        assert!(
            matches!(&err, Error::SendTimeout { last_error: Some(cause), .. }
                if matches!(**cause, Error::AckTimeout { endpoint, .. } if endpoint == ep(1))),
            "{err:?}"
        );
    }
    drop(stuck);
}

#[test]
fn idle_connections_heartbeat_and_a_missing_reply_closes_them() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    assert_eq!(h.engine.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    h.advance(Duration::from_secs(60));
    let writes = h.transmit();
    assert_eq!(writes[0].1, vec![HEARTBEAT_REQUEST.to_vec()]);
    // Answered: nothing happens.
    h.engine.on_bytes(h.now, 1, &crate::protocol::HEARTBEAT_REPLY);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.engine.poll_event(), None);
    // Next one is not answered.
    h.run_until(h.now + Duration::from_secs(60));
    h.transmit();
    h.advance(Duration::from_secs(10));
    assert!(matches!(h.engine.poll_event(), Some(EngineEvent::CloseConn { conn: 1, .. })));
}

#[test]
fn code_2_drains_the_connection_and_retries_elsewhere() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    h.engine.add_conn(h.now, 2, ep(2));
    let a = h.batch(1);
    let b = h.batch(1);
    let writes = h.transmit();
    assert_eq!(writes[0].1.len(), 2);
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], Some(2), true));
    assert_eq!(h.engine.poll_event(), None, "still waiting for b's reply");
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[1], None, true));
    assert!(matches!(outcome(&b), Some(Ok(_))));
    assert!(matches!(h.engine.poll_event(), Some(EngineEvent::CloseConn { conn: 1, .. })));
    h.run_until(h.engine.poll_timeout().unwrap());
    let writes = h.transmit();
    assert_eq!(writes[0].0, 2);
    h.engine.on_bytes(h.now, 2, &reply(&writes[0].1[0], None, true));
    assert!(matches!(outcome(&a), Some(Ok(_))));
}

#[test]
fn undecodable_replies_close_the_connection() {
    for bad in [&b"\x00\x01\x00\x00"[..], b"\x00\x00\x00\x05\x07abcd"] {
        let mut h = Harness::new(config());
        h.engine.add_conn(h.now, 1, ep(1));
        h.engine.on_bytes(h.now, 1, bad);
        assert!(matches!(h.engine.poll_event(), Some(EngineEvent::CloseConn { conn: 1, .. })));
    }
}

#[test]
fn fail_all_resolves_everything_once() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let sent = h.batch(2);
    h.transmit();
    let queued = h.batch(3);
    h.engine.fail_all(h.now, &Error::ProducerClosed);
    assert_eq!(outcome(&sent), Some(Err(Error::ProducerClosed)));
    assert_eq!(outcome(&queued), Some(Err(Error::ProducerClosed)));
    assert_eq!((h.engine.inflight(), h.budget.pending_records()), (0, 0));
}

#[test]
fn callbacks_get_their_own_metadata() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut body = BatchBody::new();
    let mut callbacks: Vec<(u32, u64, Callback)> = Vec::new();
    for i in 0..3u32 {
        assert!(h.budget.try_acquire(1));
        body.push(b"y").unwrap();
        let seen = seen.clone();
        callbacks.push((
            i,
            u64::from(i) * 10,
            Box::new(move |r| seen.lock().unwrap().push(r.unwrap().metadata)),
        ));
    }
    let sealed = SealedBatch {
        stream_id: "s".into(),
        body,
        completion: BatchCompletion::new(),
        callbacks,
        opened_at: h.now,
    };
    h.engine.enqueue(h.now, sealed, 1);
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 1, &reply(&writes[0].1[0], None, true));
    assert_eq!(*seen.lock().unwrap(), vec![0, 10, 20]);
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let mut h =
        Harness::new(EngineConfig { retry_max_interval: Duration::from_millis(350), ..config() });
    for attempts in 1..=6u32 {
        let delay = h.engine.backoff(attempts);
        let base = 0.1 * f64::from(1u32 << (attempts - 1));
        let (low, high) = (base * 0.8, (base * 1.2).min(0.35));
        assert!(
            delay.as_secs_f64() >= low.min(0.35) - 1e-9 && delay.as_secs_f64() <= high + 1e-9,
            "{attempts}: {delay:?}"
        );
    }
}

#[test]
fn resolved_entries_are_reused_and_hold_nothing_of_their_batch() {
    let mut h = Harness::new(config());
    assert_eq!(h.engine.spare_inflight.len(), 16, "a budget's worth made at the start");
    h.engine.add_conn(h.now, 1, ep(1));
    let first = h.batch(3);
    assert_eq!(h.engine.spare_inflight.len(), 15);
    let used: *const Inflight = h.engine.batches.values().next().unwrap().as_ref();
    let sent = h.transmit();
    let frame = &sent[0].1[0];
    h.engine.on_bytes(h.now, 1, &reply(frame, None, true));
    assert!(matches!(outcome(&first), Some(Ok(_))));
    assert_eq!(Arc::strong_count(&first), 1, "the kept entry let go of the batch's completion");
    assert_eq!(h.engine.spare_inflight.len(), 16);
    assert!(std::ptr::eq(&**h.engine.spare_inflight.last().unwrap(), used));
    assert!(h.engine.spare_completions.is_empty(), "a future still held the completion");
    // The next batch goes into the same box, and is delivered like any other.
    let second = h.batch(2);
    assert!(std::ptr::eq(h.engine.batches.values().next().unwrap().as_ref(), used));
    let sent = h.transmit();
    h.engine.on_bytes(h.now, 1, &reply(&sent[0].1[0], None, true));
    assert!(matches!(outcome(&second), Some(Ok(BatchOutcome { .. }))));
    assert_eq!(h.engine.inflight(), 0);
}

#[test]
fn entries_and_completions_are_kept_up_to_the_budgets_batches() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    // Nobody holds these batches' completions (fire and forget): they come back for reuse.
    for _ in 0..20 {
        drop(h.batch(1));
    }
    assert!(h.engine.spare_inflight.is_empty(), "16 made at the start, 4 more allocated");
    for (_, frames) in h.transmit() {
        for frame in frames {
            h.engine.on_bytes(h.now, 1, &reply(&frame, None, true));
        }
    }
    assert_eq!(h.engine.inflight(), 0);
    assert_eq!(h.engine.spare_inflight.len(), 16, "no more than the budget's batches kept");
    let completions: Vec<_> = h.engine.take_spare_completions().collect();
    assert_eq!(completions.len(), 16);
    assert!(completions.iter().all(|c| Arc::strong_count(c) == 1 && !c.is_resolved()));
}

#[test]
fn a_lost_connections_queues_go_to_the_next_connection() {
    let mut h = Harness::new(config());
    h.engine.add_conn(h.now, 1, ep(1));
    let batches: Vec<_> = (0..20).map(|_| h.batch(1)).collect();
    h.transmit();
    let grown = h.engine.conns[0].sent.capacity();
    assert!(grown >= 20);
    h.engine.conn_lost(h.now, 1, &CloseReason::ReadFailed("reset".into()));
    h.engine.add_conn(h.now, 2, ep(2));
    let conn = &h.engine.conns[0];
    assert_eq!(conn.sent.capacity(), grown, "the queue is taken over, not grown again");
    assert!(conn.sent.is_empty() && conn.heartbeats.is_empty() && conn.read_buf.is_empty());
    // The lost batches were retried on the new connection and are delivered there.
    for (conn, frames) in h.transmit() {
        assert_eq!(conn, 2);
        for frame in frames {
            h.engine.on_bytes(h.now, 2, &reply(&frame, None, true));
        }
    }
    assert!(batches.iter().all(|b| matches!(outcome(b), Some(Ok(_)))));
}

/// The documented bound, computed here from the options: `send_timeout × (2 + max_retries)`
/// plus each backoff at its longest (see [`ShardEngine::delivery_timeout`]).
fn delivery_bound(config: &EngineConfig) -> Duration {
    let backoffs: Duration = (0..config.max_retries)
        .map(|n| {
            (config.retry_initial_interval * 2u32.pow(n) * 6 / 5).min(config.retry_max_interval)
        })
        .sum();
    config.send_timeout * (2 + config.max_retries) + backoffs
}

#[test]
fn the_delivery_timeout_is_the_documented_formula() {
    let h = Harness::new(config());
    // 30 s × 4 + 120 ms + 240 ms.
    assert_eq!(h.engine.delivery_timeout(), Duration::from_millis(120_360));
    assert_eq!(h.engine.delivery_timeout(), delivery_bound(&h.engine.config));
    // Backoffs past the cap count at the cap; no retry, no backoff.
    let capped =
        EngineConfig { max_retries: 3, retry_initial_interval: Duration::from_secs(5), ..config() };
    assert_eq!(Harness::new(capped).engine.delivery_timeout(), Duration::from_secs(150 + 6 + 20));
    let single = EngineConfig { max_retries: 0, ..config() };
    assert_eq!(Harness::new(single).engine.delivery_timeout(), SEND_TIMEOUT * 2);
}

/// How a simulated node treats the connections made to it: each connection's socket takes
/// `room` bytes of writes (the socket buffers between the shard and a node that never reads;
/// `usize::MAX` for a silent node, which reads everything) and after that a write never
/// completes. It never answers anything, heartbeats included; a connection the engine closes is
/// replaced by a new one `reconnect` later.
struct UnansweringNode {
    room: usize,
    reconnect: Duration,
    /// The open connection and the bytes its socket has taken.
    open: Option<(ConnId, usize)>,
    connect_at: Option<Instant>,
    connections: ConnId,
}

impl UnansweringNode {
    fn new(room: usize) -> UnansweringNode {
        UnansweringNode {
            room,
            reconnect: Duration::from_millis(100),
            open: None,
            connect_at: None,
            connections: 0,
        }
    }
}

/// When each batch of a simulated run was enqueued and resolved.
struct Resolutions {
    enqueued: Vec<Instant>,
    completions: Vec<Arc<BatchCompletion>>,
    resolved: Vec<Option<Instant>>,
}

impl Resolutions {
    /// The longest time from a batch's enqueue to its outcome (every batch must have one).
    fn worst(&self) -> Duration {
        let waits =
            self.enqueued.iter().zip(&self.resolved).enumerate().map(|(i, (at, done))| {
                done.unwrap_or_else(|| panic!("batch {i} unresolved")) - *at
            });
        waits.max().unwrap_or_default()
    }
}

impl Harness {
    /// A harness whose budget holds `records` records.
    fn with_budget(config: EngineConfig, records: usize) -> Harness {
        let mut h = Harness::new(config);
        h.budget = Arc::new(PendingBudget::new(records, 1 << 34));
        h.engine.budget = h.budget.clone();
        h
    }

    /// Runs the shell's loop against `node` (or no node at all) until `until`: `batches`
    /// batches of one incompressible 1 000-byte record enqueued `spacing` apart from now, time
    /// moving from one due instant to the next.
    fn run_backlog(
        &mut self,
        mut node: Option<UnansweringNode>,
        batches: usize,
        spacing: Duration,
        until: Instant,
    ) -> Resolutions {
        let start = self.now;
        let mut runs = Resolutions {
            enqueued: Vec::with_capacity(batches),
            completions: Vec::with_capacity(batches),
            resolved: vec![None; batches],
        };
        let due = |i: usize| start + spacing * u32::try_from(i).unwrap();
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let mut record = vec![0u8; 1000];
        let mut unresolved = Vec::with_capacity(batches);
        if let Some(node) = &mut node {
            node.connect_at = Some(start);
        }
        loop {
            // Connect, enqueue what is due, run the timers, close what the engine gave up on.
            if let Some(node) = &mut node {
                if node.connect_at.is_some_and(|at| at <= self.now) {
                    node.connect_at = None;
                    node.connections += 1;
                    node.open = Some((node.connections, 0));
                    self.engine.add_conn(self.now, node.connections, ep(1));
                }
            }
            while runs.enqueued.len() < batches && due(runs.enqueued.len()) <= self.now {
                rng.fill(&mut record);
                runs.enqueued.push(self.now);
                let done = self.batch_of(&[&record], self.now);
                unresolved.push(runs.completions.len());
                runs.completions.push(done);
            }
            if self.engine.poll_timeout().is_some_and(|at| at <= self.now) {
                self.engine.handle_timeout(self.now);
            }
            while let Some(EngineEvent::CloseConn { conn, .. }) = self.engine.poll_event() {
                self.engine.conn_lost(self.now, conn, &CloseReason::ClosedByPeer);
                if let Some(node) = &mut node {
                    if node.open.is_some_and(|(open, _)| open == conn) {
                        node.open = None;
                        node.connect_at = Some(self.now + node.reconnect);
                    }
                }
            }
            // Writes complete while the socket has room; then one is stuck for good.
            while let Some(transmit) = self.engine.poll_transmit(self.now) {
                let node = node.as_mut().expect("writes only with a connection");
                let (open, taken) = node.open.as_mut().expect("an open connection");
                assert_eq!(transmit.conn, *open);
                if transmit.bytes.len() <= node.room - *taken {
                    *taken += transmit.bytes.len();
                    self.engine.write_done(self.now, transmit.conn, transmit.bytes);
                } else {
                    *taken = node.room;
                }
            }
            // Look for outcomes only when some batch was resolved.
            if self.engine.inflight() < unresolved.len() {
                unresolved.retain(|&i| {
                    let done = runs.completions[i].is_resolved();
                    if done {
                        runs.resolved[i] = Some(self.now);
                    }
                    !done
                });
            }
            let next = [
                self.engine.poll_timeout(),
                (runs.enqueued.len() < batches).then(|| due(runs.enqueued.len())),
                node.as_ref().and_then(|n| n.connect_at),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(at) if at <= until => self.now = self.now.max(at),
                _ => break,
            }
        }
        self.now = until;
        runs
    }
}

/// Default timeouts, uncompressed frames, write buffers of 8 KiB; 2 000 batches of 1 KB
/// enqueued over two seconds against `node`. Returns the worst wait, checked against the bound,
/// and the causes of the failures.
fn backlog_against(node: Option<UnansweringNode>) -> (Duration, Vec<Error>) {
    let config = EngineConfig {
        compression: false,
        plan: CapacityPlan { write_buffer_len: 8 << 10, ..config().plan },
        ..config()
    };
    let bound = delivery_bound(&config);
    let mut h = Harness::with_budget(config, 10_000);
    let until = h.now + bound * 3;
    let runs = h.run_backlog(node, 2000, Duration::from_millis(1), until);
    let worst = runs.worst();
    eprintln!("worst outcome {worst:?} after enqueue, bound {bound:?}");
    assert!(worst <= bound, "a batch was resolved {worst:?} after its enqueue, past {bound:?}");
    assert_eq!((h.engine.inflight(), h.budget.pending_records()), (0, 0));
    let causes = runs
        .completions
        .iter()
        .map(|done| match outcome(done).unwrap().unwrap_err() {
            Error::SendTimeout { last_error: Some(cause), .. } => *cause,
            other => panic!("{other:?}"),
        })
        .collect();
    (worst, causes)
}

#[test]
fn every_batch_of_a_backlog_on_a_node_that_never_reads_is_resolved_by_its_deadline() {
    // The node's socket takes 64 KiB per connection, then every write stalls: most of the
    // backlog waits in the queue, behind retries, for connections that come and go.
    let (_, causes) = backlog_against(Some(UnansweringNode::new(64 << 10)));
    for cause in causes {
        assert!(
            matches!(cause, Error::AckTimeout { endpoint, .. } if endpoint == ep(1))
                || matches!(cause, Error::NoEndpoints { .. }),
            "{cause:?}"
        );
    }
}

#[test]
fn every_batch_of_a_backlog_on_a_silent_node_or_none_is_resolved_by_its_deadline() {
    let (_, causes) = backlog_against(Some(UnansweringNode::new(usize::MAX)));
    assert!(causes.iter().any(|cause| matches!(cause, Error::AckTimeout { .. })));
    let (_, causes) = backlog_against(None);
    assert!(causes.iter().all(|cause| matches!(cause, Error::NoEndpoints { .. })));
}

#[test]
fn a_queued_batch_times_out_behind_newer_retries() {
    // No retry: a wait of a whole send timeout in the queue fails the batch.
    let mut h = Harness::new(EngineConfig { max_retries: 0, ..config() });
    let start = h.now;
    h.engine.add_conn(h.now, 1, ep(1));
    let retried = h.batch(1);
    h.transmit();
    // Queued behind nothing yet; nothing is written from here on.
    let waiting = h.batch(1);
    // Ten seconds later the first batch's connection is lost: its retry goes to the front of
    // the queue, ahead of the batch that has waited since the start.
    h.advance(Duration::from_secs(10));
    h.engine.conn_lost(h.now, 1, &CloseReason::ReadFailed("reset".into()));
    assert_eq!(h.engine.poll_timeout(), Some(start + SEND_TIMEOUT), "the longest wait is due");
    h.run_until(start + SEND_TIMEOUT);
    let err = outcome(&waiting).expect("failed after a whole send timeout").unwrap_err();
    assert!(
        matches!(&err, Error::SendTimeout { attempts: 1, last_error: Some(cause), .. }
            if matches!(**cause, Error::NoEndpoints { .. })),
        "{err:?}"
    );
    assert!(outcome(&retried).is_none(), "the retry has waited only 20 s");
    h.run_until(start + Duration::from_secs(10) + SEND_TIMEOUT);
    assert!(matches!(outcome(&retried), Some(Err(Error::SendTimeout { .. }))));
}

/// Sends a batch on connection 1, loses that connection 29 s later (inside the batch's window:
/// no attempt used up), resends it on connection 2, and so on: the third loss comes 87 s in and
/// the fourth send, on connection 4, at `last_sent_at`.
fn sent_after_three_free_losses(h: &mut Harness, last_sent_at: Instant) -> Arc<BatchCompletion> {
    let start = h.now;
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    h.transmit();
    for conn in 1..=3 {
        h.run_until(start + Duration::from_secs(29 * conn));
        h.engine.conn_lost(h.now, conn, &CloseReason::ReadFailed("reset".into()));
        if conn == 3 {
            h.run_until(last_sent_at);
        }
        h.engine.add_conn(h.now, conn + 1, ep(u16::try_from(conn + 1).unwrap()));
        assert_eq!(h.transmit().len(), 1, "sent on connection {}", conn + 1);
    }
    assert!(outcome(&done).is_none());
    done
}

#[test]
fn a_batch_in_backoff_at_its_deadline_fails_then_with_its_last_cause() {
    let mut h = Harness::new(config());
    let deadline = h.now + delivery_bound(&h.engine.config);
    // Sent a fourth time 89.9 s in; code 114 comes back just before its ack deadline, and the
    // backoff (800 ms ± 20 %, the fourth send's) runs past the delivery deadline.
    let last_sent_at = h.now + Duration::from_millis(89_900);
    let done = sent_after_three_free_losses(&mut h, last_sent_at);
    h.run_until(h.now + Duration::from_millis(29_900));
    let frame = h.engine.batches.values().next().unwrap().frame.clone();
    h.engine.on_bytes(h.now, 4, &reply(&frame, Some(114), true));
    assert!(matches!(h.engine.batches.values().next().unwrap().state, BatchState::Backoff));
    let backoff_end = h.engine.backoffs.peek().map(|Reverse((at, _, _))| *at).unwrap();
    assert!(backoff_end > deadline, "the backoff ends after the deadline");
    h.run_until(deadline - Duration::from_millis(1));
    assert!(outcome(&done).is_none());
    h.run_until(deadline);
    let err = outcome(&done).expect("failed at its deadline").unwrap_err();
    assert!(
        matches!(&err, Error::SendTimeout { attempts: 4, last_error: Some(cause), .. }
            if cause.server_code() == Some(114)),
        "{err:?}"
    );
    // Nothing of it is left to run: its backoff comes up and is dropped.
    h.run_until(backoff_end + SEND_TIMEOUT);
    assert!(h.transmit().iter().all(|(_, frames)| frames == &[HEARTBEAT_REQUEST.to_vec()]));
    assert_eq!((h.engine.inflight(), h.budget.pending_records()), (0, 0));
}

#[test]
fn a_sent_batch_fails_at_its_deadline_and_its_late_reply_is_ignored() {
    let mut h = Harness::new(config());
    let deadline = h.now + delivery_bound(&h.engine.config);
    // Sent a fourth time 95 s in: its ack deadline (125 s) is past the delivery deadline.
    let sent_at = h.now + Duration::from_secs(95);
    let done = sent_after_three_free_losses(&mut h, sent_at);
    let frame = h.engine.batches.values().next().unwrap().frame.clone();
    h.run_until(deadline);
    let err = outcome(&done).expect("failed at its deadline").unwrap_err();
    let waited = deadline - sent_at;
    assert!(
        matches!(&err, Error::SendTimeout { attempts: 4, last_error: Some(cause), .. }
            if **cause == Error::AckTimeout { endpoint: ep(4), timeout: waited }),
        "{err:?}"
    );
    // The connection is probed, as after any ack timeout.
    let probes = h.transmit();
    assert_eq!(probes, vec![(4, vec![HEARTBEAT_REQUEST.to_vec()])]);
    // The late ack finds nothing to resolve, and takes the batch's place on the connection.
    h.engine.on_bytes(h.now, 4, &reply(&frame, None, true));
    assert!(matches!(outcome(&done), Some(Err(Error::SendTimeout { .. }))));
    assert!(h.engine.conns[0].sent.is_empty());
    assert_eq!((h.engine.inflight(), h.budget.pending_records()), (0, 0));
    assert!(h.engine.deliver_by.is_empty() && h.engine.backoffs.is_empty());
    h.engine.on_bytes(h.now, 4, &crate::protocol::HEARTBEAT_REPLY);
    assert_eq!(h.engine.poll_timeout(), Some(h.now + Duration::from_secs(60)), "idle");
}

#[test]
fn delivery_deadlines_of_resolved_batches_leave_without_growing_their_queue() {
    let mut h = Harness::new(config());
    let capacity = h.engine.deliver_by.capacity();
    assert_eq!(capacity, config().plan.queue_len);
    h.engine.add_conn(h.now, 1, ep(1));
    // The first batch is never answered: its deadline stays at the front while 1 000 batches
    // behind it are acked, 50 times the queue's room.
    let stuck = h.batch(1);
    h.transmit();
    for _ in 0..1000 {
        let done = h.batch(1);
        for (_, frames) in h.transmit() {
            for frame in frames {
                h.engine.on_bytes(h.now, 1, &reply(&frame, None, true));
            }
        }
        assert!(matches!(outcome(&done), Some(Ok(_))));
        h.now += Duration::from_millis(1);
    }
    assert_eq!(h.engine.deliver_by.capacity(), capacity, "compacted, not grown");
    assert!(h.engine.deliver_by.len() <= capacity);
    assert_eq!(h.engine.deliver_by.front().map(|&(_, id)| id), Some(1));
    assert!(outcome(&stuck).is_none());
}

#[test]
fn close_reasons_map_to_the_go_sdks_metric_codes() {
    let bad = CloseReason::BadReply(FrameError::UnexpectedType(0xff));
    let cases = [
        (
            CloseReason::WriteFailed("broken pipe".into()),
            (10007, Some(10007)),
            "write failed: broken pipe",
        ),
        (CloseReason::ClosedByPeer, (20001, Some(10015)), "closed by the server"),
        (CloseReason::ReadFailed("reset".into()), (20001, Some(10008)), "read failed: reset"),
        (bad, (20001, Some(10008)), "bad reply: "),
        (CloseReason::HeartbeatLost, (20001, None), "heartbeat reply missing"),
        (CloseReason::ServerOffline, (0, None), "server is going offline (code 2)"),
        (CloseReason::MovedHome, (0, None), "moved to its preferred node"),
        (CloseReason::Rebalanced, (0, None), "rebalanced"),
        (CloseReason::Rotation, (0, None), "periodic rotation"),
        (CloseReason::LifetimeReached, (0, None), "max_conn_lifetime reached"),
    ];
    for (reason, codes, text) in cases {
        assert_eq!(reason.codes(), codes, "{reason:?}");
        assert!(reason.to_string().starts_with(text), "{reason}");
    }
}

// msgType 7: the same engine, another frame format.

fn bin_config(ack: crate::Ack) -> EngineConfig {
    EngineConfig { format: FrameFormat::new(crate::MsgType::BinMultiBody, ack), ..config() }
}

/// DataProxy's reply to the msgType 7 `frame` (§4.4): its `uniq`, `dpIp`, the code, and the
/// request's attributes with `rtms` prepended.
fn bin_reply(frame: &[u8], code: Option<i32>) -> Vec<u8> {
    assert_eq!(frame[4] & 0x1f, 7, "a msgType 7 frame");
    let body_len = u32::from_be_bytes(frame[21..25].try_into().unwrap()) as usize;
    let attr_len = u16::from_be_bytes([frame[25 + body_len], frame[26 + body_len]]) as usize;
    let attrs = std::str::from_utf8(&frame[27 + body_len..27 + body_len + attr_len]).unwrap();
    let mut text = String::from("dpIp=10.0.0.1");
    if let Some(code) = code {
        text.push_str(&format!("&errCode={code}"));
    }
    text.push_str("&rtms=1&");
    text.push_str(attrs);
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(1 + 4 + 2 + text.len() + 2).unwrap().to_be_bytes());
    out.push(7);
    out.extend_from_slice(&frame[17..21]);
    out.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&[0xee, 0x01]);
    out
}

#[test]
fn type_7_sink_replies_in_any_order_match_their_batches_by_uniq() {
    let mut h = Harness::new(bin_config(crate::Ack::Sink));
    h.engine.add_conn(h.now, 1, ep(1));
    let batches: Vec<_> = (1..=3).map(|records| h.batch(records)).collect();
    let writes = h.transmit();
    let frames = &writes[0].1;
    assert_eq!(frames.len(), 3);
    for frame in frames {
        let attrs = String::from_utf8_lossy(&frame[frame.len() - 50..]).into_owned();
        assert!(attrs.contains("&proxySend=true"), "{attrs}");
    }
    // The sink answers as the MQ acks: last batch first.
    for index in [2, 0, 1] {
        h.now += Duration::from_millis(1);
        h.engine.on_bytes(h.now, 1, &bin_reply(&frames[index], None));
        let report = outcome(&batches[index]).expect("resolved by its own reply").unwrap();
        assert_eq!(report.batch_id, index as u64 + 1);
    }
    assert_eq!(h.budget.pending_records(), 0);
    assert_eq!(h.engine.inflight(), 0);
}

#[test]
fn type_7_sink_errors_116_to_119_are_retried() {
    for code in 116..=119 {
        let mut h = Harness::new(bin_config(crate::Ack::Sink));
        h.engine.add_conn(h.now, 1, ep(1));
        let done = h.batch(1);
        let first = h.transmit();
        h.engine.on_bytes(h.now, 1, &bin_reply(&first[0].1[0], Some(code)));
        assert!(outcome(&done).is_none(), "{code} is retried");
        h.advance(Duration::from_millis(150));
        let again = h.transmit();
        assert_eq!(again[0].1[0], first[0].1[0], "{code}: the same frame, the same uniq");
        h.engine.on_bytes(h.now, 1, &bin_reply(&again[0].1[0], None));
        assert_eq!(outcome(&done).unwrap().unwrap().retries, 1, "{code}");
    }
    // Without retry_on_server_error they fail with the code.
    let mut h =
        Harness::new(EngineConfig { retry_on_server_error: false, ..bin_config(crate::Ack::Sink) });
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    let writes = h.transmit();
    h.engine.on_bytes(h.now, 1, &bin_reply(&writes[0].1[0], Some(118)));
    let error = outcome(&done).unwrap().unwrap_err();
    assert_eq!(error.server_code(), Some(118));
    assert!(error.is_retriable(), "the application may send it again");
}

#[test]
fn a_missing_sink_reply_is_an_ack_timeout_and_a_stray_uniq_matches_nothing() {
    let mut h = Harness::new(EngineConfig { max_retries: 0, ..bin_config(crate::Ack::Sink) });
    h.engine.add_conn(h.now, 1, ep(1));
    let done = h.batch(1);
    let writes = h.transmit();
    let mut stray = bin_reply(&writes[0].1[0], None);
    stray[8] ^= 0xff; // another uniq
    h.engine.on_bytes(h.now, 1, &stray);
    assert!(outcome(&done).is_none());
    assert_eq!(h.engine.poll_event(), None, "a reply to no batch does not close the connection");
    h.run_until(h.now + SEND_TIMEOUT);
    h.engine.deliver(h.now);
    match outcome(&done).unwrap().unwrap_err() {
        Error::SendTimeout { last_error: Some(cause), .. } => {
            assert!(matches!(*cause, Error::AckTimeout { .. }), "{cause:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn type_7_connections_heartbeat_with_type_8() {
    let mut h = Harness::new(bin_config(crate::Ack::Proxy));
    h.engine.add_conn(h.now, 1, ep(1));
    h.advance(Duration::from_secs(60));
    let writes = h.transmit();
    // 60 s after the engine's start, in seconds since the epoch.
    assert_eq!(writes[0].1, vec![protocol::bin_heartbeat(1_700_000_060).to_vec()]);
    // The real server's reply to a version 1 heartbeat.
    let answer = [0, 0, 0, 16, 8, 0x65, 0x53, 0xf1, 0x3c, 1, 0, 0, 0, 2, 0xff, 0xff, 0, 0, 0xee, 1];
    h.engine.on_bytes(h.now, 1, &answer);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.engine.poll_event(), None);
    // A type 8 reply without its magic is a bad reply (the next heartbeat goes at 120 s).
    h.run_until(h.now + Duration::from_secs(50));
    h.transmit();
    let mut bad = answer;
    bad[19] = 0;
    h.engine.on_bytes(h.now, 1, &bad);
    let event = h.engine.poll_event();
    let bad_magic = CloseReason::BadReply(FrameError::BadMagic(0xee00));
    assert_eq!(event, Some(EngineEvent::CloseConn { conn: 1, reason: bad_magic }));
}
