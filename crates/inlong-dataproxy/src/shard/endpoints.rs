//! [`EndpointPlan`]: which DataProxy nodes one shard connects to, and when.
//!
//! Sans-IO, like the engine: it takes events (a connect succeeded or failed, a connection broke
//! or was let go, a new node list) and `now`, and says which connects to start
//! ([`EndpointPlan::due_connects`]), what a new connection is for
//! ([`EndpointPlan::connect_succeeded`]) and which connections to drain
//! ([`EndpointPlan::take_misplaced`]). The shard's I/O shell (`super`) owns the sockets.
//!
//! A shard keeps a primary connection and, when there is more than one node, a second one for
//! retries (two *slots*); shard *i* prefers nodes *i* and *i+1* of the list (the slots' *home*
//! nodes), so shards spread evenly over the nodes. A node whose connect fails or whose connection
//! breaks is quarantined with a backoff (10 s doubling to 1 min, ±20 %) and avoided while another
//! node is usable; a single remaining node is never quarantined into "no endpoints".
//!
//! A slot without a connection tries, in this order: its home node or the node it last left
//! without fault, if nothing is known against them; nodes never tried, walking the list from
//! the shard's home with a cursor; nodes whose quarantine is over, the earliest over first; then,
//! paced by a backoff after failures (0.1 s doubling to 5 s, so nodes that accept connections
//! and close them are not hammered), a node the other slot is connected to, and only when
//! nothing else is left, the node whose quarantine ends first. So every listed node is
//! reached, however many dead ones the list holds, and none is tried twice while one was never
//! tried. While the shard has no usable connection and a connect has failed, up to
//! [`CONNECT_FAN_OUT`] connects run at once; the first to succeed serves the primary slot, the
//! next the other one, and the rest are closed.
//!
//! A slot served by another node goes back home only once a probe connect to home succeeded
//! (tried when home has no failure record or its quarantine ended): a node that failed before is
//! never trusted with a slot on the strength of a quarantine having ended.
//!
//! Every call does constant work (amortized: the cursor and the quarantine heap move forward),
//! whatever the number of nodes; only a new node list costs time proportional to its length.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::error::ConnectFailures;

/// Failures further apart than this do not add up.
const STREAK_WINDOW: Duration = Duration::from_secs(30);
/// A connection that served a slot this long before it broke ends the failure streak: the
/// node was working, so the next connects start again from the first pause. (Nodes that
/// accept connections and close them at once keep their streak and stay paced.) Without this,
/// frequent short outages grew the streak to the longest pause for good: after a 2 s outage of
/// both nodes a shard then waited 5 s per connect, and batches used up their attempts.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Connects a shard runs at once while it has no usable connection and a connect has failed:
/// enough to get through a list of 10 000 refusing nodes in well under a second on loopback,
/// and through nodes that never answer in `conn_timeout` per 8 of them, while a shard never has
/// more than 8 connects in flight (probes included).
pub const CONNECT_FAN_OUT: usize = 8;

/// A connect attempt's id, which becomes its connection's id when it succeeds.
pub type AttemptId = u64;

/// A connect the shell must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Its id (the connection's id if it succeeds).
    pub id: AttemptId,
    /// The node to connect to.
    pub endpoint: SocketAddr,
}

/// What a new connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// It serves slot `slot` (0: the primary). `replaces` is the slot's previous connection,
    /// which the shell drains: the slot has just been moved home.
    Serve {
        /// The slot.
        slot: usize,
        /// The connection it takes over from.
        replaces: Option<AttemptId>,
    },
    /// Not needed (every slot is served, or the node left the list): close it.
    Close,
}

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Needs a connection (the connects in flight belong to the plan, not to a slot).
    Down,
    /// Served by connection `conn` to `endpoint`.
    Up {
        /// The connection.
        conn: AttemptId,
        /// Its node.
        endpoint: SocketAddr,
    },
}

/// One wanted connection.
#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    /// The node the slot left without fault (drained, rotated): tried again first.
    revisit: Option<SocketAddr>,
}

/// Why a connect is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Looking for a node for a slot that has none.
    Search,
    /// Slot `k`'s home node while another node serves it: the slot moves only if this connects.
    Probe(usize),
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: AttemptId,
    endpoint: SocketAddr,
    purpose: Purpose,
}

/// What is known against a node. Nodes with no record were never tried, or connected since
/// they last failed.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    failures: u32,
    quarantined_until: Option<Instant>,
    /// Its last connect failed (it is counted in `EndpointPlan::failing`).
    connect_failed: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct EndpointPlan {
    shard: usize,
    endpoints: Vec<SocketAddr>,
    listed: HashSet<SocketAddr>,
    health: HashMap<SocketAddr, Health>,
    /// Quarantine ends, soonest first. Lazy: an entry that no longer matches its node's record
    /// (quarantined again, connected since, left the list) is dropped when it comes up.
    quarantine_ends: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// How far (in steps around the list from the shard's first home) the search for nodes
    /// never tried has got.
    cursor: usize,
    slots: Vec<Slot>,
    in_flight: Vec<InFlight>,
    next_attempt: AttemptId,
    /// Failures in a row (each within [`STREAK_WINDOW`] of the previous), and the last one:
    /// they pace the connects to nodes that failed before.
    streak: (u32, Option<Instant>),
    /// When each connection serving a slot started serving it (see [`HEALTHY_AFTER`]).
    up_since: Vec<(AttemptId, Instant)>,
    /// A connect failed or a connection broke since a slot was last served: connects fan out.
    failed_since_up: bool,
    /// The last connect failure of the nodes that failed most recently, newest first (at most
    /// [`ConnectFailures::KEPT`]).
    recent_failures: VecDeque<(SocketAddr, Arc<str>)>,
    /// Listed nodes whose last connect failed.
    failing: usize,
    /// `recent_failures` or `failing` changed since [`EndpointPlan::take_connect_failures`].
    failures_changed: bool,
    rng: fastrand::Rng,
}

impl EndpointPlan {
    /// The plan of shard `shard` over `endpoints` (not empty).
    pub fn new(shard: usize, endpoints: Vec<SocketAddr>) -> EndpointPlan {
        let listed = endpoints.iter().copied().collect();
        let wanted = endpoints.len().min(2);
        EndpointPlan {
            shard,
            endpoints,
            listed,
            health: HashMap::new(),
            quarantine_ends: BinaryHeap::new(),
            cursor: 0,
            slots: vec![Slot { state: SlotState::Down, revisit: None }; wanted],
            in_flight: Vec::with_capacity(CONNECT_FAN_OUT + 2),
            next_attempt: 1,
            streak: (0, None),
            up_since: Vec::with_capacity(4),
            failed_since_up: false,
            recent_failures: VecDeque::with_capacity(ConnectFailures::KEPT + 1),
            failing: 0,
            failures_changed: false,
            rng: fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d ^ (shard as u64 + 1)),
        }
    }

    /// What each slot is doing; slot 0 is the primary.
    #[cfg(test)]
    pub fn slots(&self) -> impl Iterator<Item = SlotState> + '_ {
        self.slots.iter().map(|slot| slot.state)
    }

    /// No slot is served: every node is failing for this shard (or it is just starting).
    pub fn stranded(&self) -> bool {
        self.slots.iter().all(|slot| slot.state == SlotState::Down)
    }

    /// The current node list.
    #[cfg(test)]
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The node `step` places after the shard's first home, around the list.
    fn ring(&self, step: usize) -> SocketAddr {
        self.endpoints[(self.shard + step) % self.endpoints.len()]
    }

    fn quarantined(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.health
            .get(&endpoint)
            .and_then(|h| h.quarantined_until)
            .is_some_and(|until| until > now)
    }

    fn in_flight_to(&self, endpoint: SocketAddr) -> bool {
        self.in_flight.iter().any(|a| a.endpoint == endpoint)
    }

    fn served_by(&self, endpoint: SocketAddr) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Up { endpoint: e, .. } if e == endpoint))
    }

    /// Neither being connected to nor serving a slot.
    fn free(&self, endpoint: SocketAddr) -> bool {
        !self.in_flight_to(endpoint) && !self.served_by(endpoint)
    }

    /// Listed, free, and nothing known against it.
    fn fresh(&self, endpoint: SocketAddr) -> bool {
        self.listed.contains(&endpoint)
            && !self.health.contains_key(&endpoint)
            && self.free(endpoint)
    }

    /// Searches in flight (probes not counted).
    fn searching(&self) -> usize {
        self.in_flight.iter().filter(|a| !matches!(a.purpose, Purpose::Probe(_))).count()
    }

    /// How many searches may run at once.
    fn search_width(&self) -> usize {
        let down = self.slots.iter().filter(|s| s.state == SlotState::Down).count();
        if self.failed_since_up && self.stranded() {
            CONNECT_FAN_OUT
        } else {
            down
        }
    }

    /// When a paced connect (see `next_candidate`) may start: after the failure streak's pause.
    fn pause_ends(&self) -> Option<Instant> {
        let (count, last) = self.streak;
        let last = last?;
        Some(last + Backoff::RECONNECT_PAUSE.nominal(count))
    }

    /// The quarantine entry at the top of the heap, once stale ones are dropped.
    fn quarantine_top(&mut self) -> Option<(Instant, SocketAddr)> {
        while let Some(&Reverse((until, endpoint))) = self.quarantine_ends.peek() {
            let current = self.health.get(&endpoint).and_then(|h| h.quarantined_until);
            if current == Some(until) && self.listed.contains(&endpoint) {
                return Some((until, endpoint));
            }
            self.quarantine_ends.pop();
        }
        None
    }

    /// Slot `k`'s home may be probed: it is free, and not quarantined.
    fn probe_due(&self, k: usize, now: Instant) -> bool {
        let home = self.ring(k);
        let served_elsewhere =
            matches!(self.slots[k].state, SlotState::Up { endpoint, .. } if endpoint != home);
        served_elsewhere
            && !self.in_flight.iter().any(|a| a.purpose == Purpose::Probe(k))
            && self.free(home)
            && !self.quarantined(home, now)
    }

    /// Connects due now; the shell starts each and reports it with
    /// [`EndpointPlan::connect_succeeded`] or [`EndpointPlan::connect_failed`].
    pub fn due_connects(&mut self, now: Instant) -> Vec<Attempt> {
        let mut due = Vec::new();
        for k in 0..self.slots.len() {
            if self.probe_due(k, now) {
                due.push(self.start(self.ring(k), Purpose::Probe(k)));
            }
        }
        while self.searching() < self.search_width() {
            let Some((endpoint, purpose)) = self.next_candidate(now) else { break };
            due.push(self.start(endpoint, purpose));
        }
        due
    }

    fn start(&mut self, endpoint: SocketAddr, purpose: Purpose) -> Attempt {
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.in_flight.push(InFlight { id, endpoint, purpose });
        Attempt { id, endpoint }
    }

    /// The next node to try for a slot without a connection (see the module docs for the
    /// order).
    fn next_candidate(&mut self, now: Instant) -> Option<(SocketAddr, Purpose)> {
        for k in 0..self.slots.len() {
            if self.slots[k].state == SlotState::Down {
                let home = self.ring(k);
                if let Some(endpoint) = [Some(home), self.slots[k].revisit]
                    .into_iter()
                    .flatten()
                    .find(|&e| self.fresh(e))
                {
                    return Some((endpoint, Purpose::Search));
                }
            }
        }
        while self.cursor < self.endpoints.len() {
            let endpoint = self.ring(self.cursor);
            self.cursor += 1;
            if self.fresh(endpoint) {
                return Some((endpoint, Purpose::Search));
            }
        }
        while let Some((until, endpoint)) = self.quarantine_top() {
            if until > now {
                break;
            }
            self.quarantine_ends.pop();
            if self.free(endpoint) {
                return Some((endpoint, Purpose::Search));
            }
        }
        // From here on, only nodes that failed before, or whose connections keep breaking
        // (a node going offline accepts connects and closes them): paced by the failures.
        let paced = self.pause_ends().is_none_or(|at| at <= now);
        if !paced {
            return None;
        }
        let doubled = self.slots.iter().find_map(|s| match s.state {
            SlotState::Up { endpoint, .. } if self.listed.contains(&endpoint) => Some(endpoint),
            _ => None,
        });
        if let Some(endpoint) = doubled.filter(|&e| !self.in_flight_to(e)) {
            return Some((endpoint, Purpose::Search));
        }
        if self.searching() == 0 {
            let endpoint = self.quarantine_top().map_or_else(|| self.ring(0), |(_, e)| e);
            return Some((endpoint, Purpose::Search));
        }
        None
    }

    /// The next time something is due after `now`: a paced connect, a quarantine ending while a
    /// slot needs a node, or a slot's home becoming worth a probe.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| {
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for (k, slot) in self.slots.iter().enumerate() {
            if matches!(slot.state, SlotState::Up { endpoint, .. } if endpoint != self.ring(k)) {
                if let Some(until) =
                    self.health.get(&self.ring(k)).and_then(|h| h.quarantined_until)
                {
                    consider(until);
                }
            }
        }
        let searching = self.searching();
        if self.slots.iter().any(|s| s.state == SlotState::Down) {
            if searching < self.search_width() {
                if let Some(&Reverse((until, _))) = self.quarantine_ends.peek() {
                    consider(until);
                }
            }
            if searching == 0 {
                if let Some(at) = self.pause_ends() {
                    consider(at);
                }
            }
        }
        next
    }

    /// [`EndpointPlan::connect_succeeded`] at `now`: a connection that then serves a slot for
    /// [`HEALTHY_AFTER`] before it breaks ends the failure streak.
    pub fn connect_succeeded_at(&mut self, id: AttemptId, now: Instant) -> Placement {
        let placement = self.connect_succeeded(id);
        if matches!(placement, Placement::Serve { .. }) {
            let slots = &self.slots;
            self.up_since.retain(|(conn, _)| {
                slots.iter().any(|s| matches!(s.state, SlotState::Up { conn: c, .. } if c == *conn))
            });
            self.up_since.push((id, now));
        }
        placement
    }

    /// Attempt `id` connected: where the new connection goes.
    pub fn connect_succeeded(&mut self, id: AttemptId) -> Placement {
        let Some(attempt) = self.take_attempt(id) else { return Placement::Close };
        let endpoint = attempt.endpoint;
        if !self.listed.contains(&endpoint) {
            return Placement::Close;
        }
        self.mark_good(endpoint);
        if let Purpose::Probe(k) = attempt.purpose {
            if let Some(slot) = self.slots.get_mut(k) {
                let replaces = match slot.state {
                    SlotState::Up { conn, endpoint: old } if old != endpoint => Some(Some(conn)),
                    SlotState::Down => Some(None),
                    SlotState::Up { .. } => None,
                };
                if let Some(replaces) = replaces {
                    *slot = Slot { state: SlotState::Up { conn: id, endpoint }, revisit: None };
                    self.failed_since_up = false;
                    return Placement::Serve { slot: k, replaces };
                }
            }
        }
        // A slot without a connection: the one whose home this is, else the first.
        let down = |k: &usize| self.slots[*k].state == SlotState::Down;
        let home = (0..self.slots.len()).filter(down).find(|&k| self.ring(k) == endpoint);
        let Some(k) = home.or_else(|| (0..self.slots.len()).find(down)) else {
            return Placement::Close;
        };
        self.slots[k] = Slot { state: SlotState::Up { conn: id, endpoint }, revisit: None };
        self.failed_since_up = false;
        Placement::Serve { slot: k, replaces: None }
    }

    /// Attempt `id` failed (refused, timed out, …) for `reason`: the node is quarantined
    /// (unless it is the only one) and its failure kept for [`Error::NoEndpoints`].
    ///
    /// [`Error::NoEndpoints`]: crate::Error::NoEndpoints
    pub fn connect_failed(&mut self, id: AttemptId, now: Instant, reason: Arc<str>) {
        let Some(attempt) = self.take_attempt(id) else { return };
        let endpoint = attempt.endpoint;
        if !self.listed.contains(&endpoint) {
            return;
        }
        self.quarantine(endpoint, now);
        let health = self.health.entry(endpoint).or_default();
        if !health.connect_failed {
            health.connect_failed = true;
            self.failing += 1;
        }
        if let Some(at) = self.recent_failures.iter().position(|(e, _)| *e == endpoint) {
            self.recent_failures.remove(at);
        }
        self.recent_failures.push_front((endpoint, reason));
        self.recent_failures.truncate(ConnectFailures::KEPT);
        self.failures_changed = true;
        // A probe failing changes nothing for the slots; a search failing does.
        if !matches!(attempt.purpose, Purpose::Probe(_)) {
            self.note_failure(now);
        }
    }

    /// Connection `conn` broke: if it served a slot, its node is quarantined (unless it is the
    /// only one) and the slot looks for another. Returns whether it served a slot.
    pub fn lost(&mut self, conn: AttemptId, now: Instant) -> bool {
        let Some(k) = self.slot_of(conn) else { return false };
        if let Some(at) = self.up_since.iter().position(|(c, _)| *c == conn) {
            let (_, since) = self.up_since.swap_remove(at);
            if now.saturating_duration_since(since) >= HEALTHY_AFTER {
                self.streak = (0, None);
            }
        }
        if let SlotState::Up { endpoint, .. } = self.slots[k].state {
            if self.listed.contains(&endpoint) {
                self.quarantine(endpoint, now);
            }
        }
        self.slots[k] = Slot { state: SlotState::Down, revisit: None };
        self.note_failure(now);
        true
    }

    /// Connection `conn` was let go without fault (drained, rotated): if it served a slot, the
    /// slot reconnects, to its home or to the same node first.
    pub fn released(&mut self, conn: AttemptId) {
        let Some(k) = self.slot_of(conn) else { return };
        if let SlotState::Up { endpoint, .. } = self.slots[k].state {
            self.slots[k] = Slot { state: SlotState::Down, revisit: Some(endpoint) };
        }
    }

    /// The connections to drain now: slots on nodes that left the list (the slot looks for
    /// another node), and surplus slots (the list shrank to one node), which are dropped.
    pub fn take_misplaced(&mut self) -> Vec<AttemptId> {
        let wanted = self.endpoints.len().min(2);
        let mut drain = Vec::new();
        for k in 0..self.slots.len() {
            if let SlotState::Up { conn, endpoint } = self.slots[k].state {
                if k >= wanted || !self.listed.contains(&endpoint) {
                    drain.push(conn);
                    self.slots[k] = Slot { state: SlotState::Down, revisit: None };
                }
            }
        }
        self.slots.truncate(wanted);
        drain
    }

    /// When the other slot is connected to the primary slot's home node and the primary is
    /// not, the two slots trade places (no connect, no drain: a list change can leave the
    /// slots on each other's homes). Returns the connection that became the primary, which the
    /// shell makes the engine prefer.
    pub fn take_primary_swap(&mut self) -> Option<AttemptId> {
        let home = *self.endpoints.get(self.shard % self.endpoints.len())?;
        let (primary, other) = (self.slots.first()?.state, self.slots.get(1)?.state);
        let primary_home = matches!(primary, SlotState::Up { endpoint, .. } if endpoint == home);
        match other {
            SlotState::Up { conn, endpoint } if endpoint == home && !primary_home => {
                self.slots.swap(0, 1);
                Some(conn)
            }
            _ => None,
        }
    }

    /// The recent connect failures, when they changed since the last call.
    pub fn take_connect_failures(&mut self) -> Option<ConnectFailures> {
        if !std::mem::take(&mut self.failures_changed) {
            return None;
        }
        let more = self.failing.saturating_sub(self.recent_failures.len());
        Some(ConnectFailures::new(self.recent_failures.iter().cloned(), more))
    }

    /// Replaces the node list (ignored when empty: the old list is kept). What is known about
    /// nodes still listed is kept; the search for untried nodes starts again from the top.
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>, now: Instant) {
        if endpoints.is_empty() {
            return;
        }
        self.listed = endpoints.iter().copied().collect();
        self.endpoints = endpoints;
        let listed = &self.listed;
        self.health.retain(|endpoint, _| listed.contains(endpoint));
        self.recent_failures.retain(|(endpoint, _)| listed.contains(endpoint));
        self.failing = self.health.values().filter(|h| h.connect_failed).count();
        self.failures_changed = true;
        if self.endpoints.len() > 1 {
            // The only node was never quarantined; now that there are others, its failure
            // counts as a quarantine that has just ended.
            for health in self.health.values_mut() {
                health.quarantined_until.get_or_insert(now);
            }
        }
        self.rebuild_quarantine_ends();
        self.cursor = 0;
        let wanted = self.endpoints.len().min(2);
        while self.slots.len() < wanted {
            self.slots.push(Slot { state: SlotState::Down, revisit: None });
        }
        // Surplus slots (the list shrank to one node) are retired by `take_misplaced`.
    }

    fn rebuild_quarantine_ends(&mut self) {
        self.quarantine_ends.clear();
        for (&endpoint, health) in &self.health {
            if let Some(until) = health.quarantined_until {
                self.quarantine_ends.push(Reverse((until, endpoint)));
            }
        }
    }

    fn take_attempt(&mut self, id: AttemptId) -> Option<InFlight> {
        let at = self.in_flight.iter().position(|a| a.id == id)?;
        Some(self.in_flight.swap_remove(at))
    }

    fn slot_of(&self, conn: AttemptId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s.state, SlotState::Up { conn: c, .. } if c == conn))
    }

    /// `endpoint` connected: nothing is held against it any more.
    fn mark_good(&mut self, endpoint: SocketAddr) {
        if let Some(health) = self.health.remove(&endpoint) {
            if health.connect_failed {
                self.failing -= 1;
                self.recent_failures.retain(|(e, _)| *e != endpoint);
                self.failures_changed = true;
            }
        }
    }

    fn note_failure(&mut self, now: Instant) {
        let count = match self.streak {
            (count, Some(last)) if now.saturating_duration_since(last) < STREAK_WINDOW => {
                count.saturating_add(1)
            }
            _ => 1,
        };
        self.streak = (count, Some(now));
        self.failed_since_up = true;
    }

    fn quarantine(&mut self, endpoint: SocketAddr, now: Instant) {
        let health = self.health.entry(endpoint).or_default();
        health.failures = health.failures.saturating_add(1);
        if self.endpoints.len() <= 1 {
            return;
        }
        let failures = health.failures;
        let base = Backoff::QUARANTINE.nominal(failures);
        let until = now + Backoff::QUARANTINE.delay(failures, &mut self.rng);
        if let Some(health) = self.health.get_mut(&endpoint) {
            health.quarantined_until = Some(until);
        }
        self.quarantine_ends.push(Reverse((until, endpoint)));
        // Stale entries leave the heap when they reach its top; one that is seldom consumed
        // (every slot served, a dead home probed now and then) is rebuilt before it grows.
        if self.quarantine_ends.len() > 2 * self.endpoints.len() + 16 {
            self.rebuild_quarantine_ends();
        }
        tracing::debug!(%endpoint, failures, until_secs = base.as_secs(), "endpoint quarantined");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUARANTINE_FIRST: Duration = Backoff::QUARANTINE.initial;
    const QUARANTINE_MAX: Duration = Backoff::QUARANTINE.max;
    const RECONNECT_PAUSE: Duration = Backoff::RECONNECT_PAUSE.initial;
    const RECONNECT_PAUSE_MAX: Duration = Backoff::RECONNECT_PAUSE.max;

    /// Distinct loopback nodes: `node(i)` is 127.x.y.z port 1.
    fn node(i: usize) -> SocketAddr {
        let i = u32::try_from(i).unwrap() + 1;
        SocketAddr::from(([127, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1))
    }

    fn nodes(n: usize) -> Vec<SocketAddr> {
        (0..n).map(node).collect()
    }

    fn refused() -> Arc<str> {
        "connection refused (os error 111)".into()
    }

    /// The endpoints of `attempts`.
    fn targets(attempts: &[Attempt]) -> Vec<SocketAddr> {
        attempts.iter().map(|a| a.endpoint).collect()
    }

    fn served(plan: &EndpointPlan) -> Vec<Option<SocketAddr>> {
        plan.slots()
            .map(|s| match s {
                SlotState::Up { endpoint, .. } => Some(endpoint),
                SlotState::Down => None,
            })
            .collect()
    }

    #[test]
    fn shards_spread_over_nodes() {
        let now = Instant::now();
        let list = nodes(3);
        for shard in 0..3 {
            let mut plan = EndpointPlan::new(shard, list.clone());
            let first = targets(&plan.due_connects(now));
            assert_eq!(
                first,
                vec![list[shard], list[(shard + 1) % 3]],
                "a healthy start: homes only"
            );
        }
        let mut single = EndpointPlan::new(5, vec![node(0)]);
        assert_eq!(single.slots().count(), 1);
        assert_eq!(targets(&single.due_connects(now)), vec![node(0)]);
    }

    #[test]
    fn a_failing_node_is_avoided_and_its_slot_goes_home_only_once_a_probe_connected() {
        let t0 = Instant::now();
        let (a, b, c) = (node(0), node(1), node(2));
        let mut plan = EndpointPlan::new(0, vec![a, b, c]);
        let first = plan.due_connects(t0);
        assert_eq!(targets(&first), vec![a, b]);
        assert_eq!(
            plan.connect_succeeded(first[1].id),
            Placement::Serve { slot: 1, replaces: None }
        );
        plan.connect_failed(first[0].id, t0, refused());
        // Slot 0 moves on to the node never tried, not back to A; one connect, as slot 1 serves.
        let next = plan.due_connects(t0);
        assert_eq!(targets(&next), vec![c]);
        assert_eq!(
            plan.connect_succeeded(next[0].id),
            Placement::Serve { slot: 0, replaces: None }
        );
        assert_eq!(served(&plan), vec![Some(c), Some(b)]);
        assert!(plan.due_connects(t0).is_empty());
        assert!(plan.take_misplaced().is_empty());

        // A's quarantine ending wakes the shard, which probes A; the slot stays on C meanwhile.
        let ends = plan.next_deadline(t0).expect("A's quarantine end");
        assert!(ends >= t0 + QUARANTINE_FIRST.mul_f64(0.8), "{:?}", ends - t0);
        assert!(plan.due_connects(ends - Duration::from_millis(1)).is_empty());
        let probe = plan.due_connects(ends);
        assert_eq!(targets(&probe), vec![a]);
        assert!(plan.take_misplaced().is_empty(), "no move before the probe connected");
        assert_eq!(served(&plan), vec![Some(c), Some(b)]);
        // It fails: A is quarantined for longer, C keeps the slot.
        plan.connect_failed(probe[0].id, ends, refused());
        assert_eq!(served(&plan), vec![Some(c), Some(b)]);
        let again = plan.next_deadline(ends).unwrap();
        assert!(again >= ends + (QUARANTINE_FIRST * 2).mul_f64(0.8), "{:?}", again - ends);
        // The next probe connects: the slot moves home and C's connection is drained.
        let probe = plan.due_connects(again);
        assert_eq!(targets(&probe), vec![a]);
        let c_conn = next[0].id;
        assert_eq!(
            plan.connect_succeeded(probe[0].id),
            Placement::Serve { slot: 0, replaces: Some(c_conn) }
        );
        assert_eq!(served(&plan), vec![Some(a), Some(b)]);
        assert_eq!(plan.next_deadline(again), None, "nothing left to do");
    }

    #[test]
    fn two_nodes_one_dead_both_slots_use_the_live_one() {
        let t0 = Instant::now();
        let (a, b) = (node(0), node(1));
        let mut plan = EndpointPlan::new(0, vec![a, b]);
        let first = plan.due_connects(t0);
        plan.connect_succeeded(first[1].id);
        plan.connect_failed(first[0].id, t0, refused());
        // After the failure's pause: B is live, A failed a moment ago.
        assert!(plan.due_connects(t0).is_empty());
        let paused = plan.next_deadline(t0).unwrap();
        assert_eq!(paused, t0 + RECONNECT_PAUSE);
        let next = plan.due_connects(paused);
        assert_eq!(targets(&next), vec![b]);
        assert_eq!(
            plan.connect_succeeded(next[0].id),
            Placement::Serve { slot: 0, replaces: None }
        );
        assert_eq!(served(&plan), vec![Some(b), Some(b)]);
    }

    #[test]
    fn nodes_never_tried_come_before_quarantined_ones_are_retried() {
        let t0 = Instant::now();
        let list = nodes(40);
        let mut plan = EndpointPlan::new(0, list.clone());
        let mut tried = Vec::new();
        let mut now = t0;
        // Every node refuses; rounds are 2 s apart, so early quarantines end before the list
        // has been gone through.
        while tried.len() < list.len() {
            let due = plan.due_connects(now);
            assert!(!due.is_empty(), "a round with nothing to try after {} nodes", tried.len());
            for attempt in due {
                tried.push(attempt.endpoint);
                plan.connect_failed(attempt.id, now, refused());
            }
            now += Duration::from_secs(2);
        }
        let mut distinct = tried.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), list.len(), "every node once before any twice: {tried:?}");
        // Then the retries, the earliest quarantine end first.
        let earliest = list.iter().min_by_key(|e| plan.health[e].quarantined_until).copied();
        let retry = plan.due_connects(now);
        assert_eq!(retry.first().map(|a| a.endpoint), earliest, "{:?}", targets(&retry));
    }

    /// Every node refuses at once but `live`; returns the connect rounds until a slot is served
    /// there, checking the fan-out bound and that no node is tried twice.
    fn rounds_to_reach(shard: usize, list: &[SocketAddr], live: SocketAddr) -> usize {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(shard, list.to_vec());
        let mut tried = HashSet::new();
        for round in 1.. {
            // 1 ms a round: no quarantine ends before the list is gone through.
            let now = t0 + Duration::from_millis(round as u64);
            let due = plan.due_connects(now);
            assert!(due.len() <= CONNECT_FAN_OUT, "round {round}: {} connects", due.len());
            for attempt in due {
                assert!(tried.insert(attempt.endpoint), "{} tried twice", attempt.endpoint);
                if attempt.endpoint == live {
                    assert!(matches!(plan.connect_succeeded(attempt.id), Placement::Serve { .. }));
                } else {
                    plan.connect_failed(attempt.id, now, refused());
                }
            }
            if served(&plan).contains(&Some(live)) {
                return round;
            }
            assert!(plan.next_deadline(now).is_none_or(|at| at > now), "round {round}: a spin");
        }
        unreachable!()
    }

    #[test]
    fn one_live_node_anywhere_in_ten_thousand_is_reached_within_bounded_rounds() {
        let list = nodes(10_000);
        let bound = list.len().div_ceil(CONNECT_FAN_OUT) + 2;
        for position in [0, 5_000, 9_999] {
            for shard in [0, 1] {
                let rounds = rounds_to_reach(shard, &list, list[position]);
                assert!(rounds <= bound, "shard {shard}, live node {position}: {rounds} rounds");
            }
        }
    }

    #[test]
    fn connects_that_never_complete_hold_the_fan_out_and_nothing_more() {
        let t0 = Instant::now();
        let list = nodes(21);
        let mut plan = EndpointPlan::new(1, list.clone());
        // The homes hang: nothing more is tried until one of them fails.
        let homes = plan.due_connects(t0);
        assert_eq!(targets(&homes), vec![list[1], list[2]]);
        assert!(plan.due_connects(t0).is_empty());
        assert_eq!(plan.next_deadline(t0), None, "the connect results wake the shard");
        // The first failure (a connect timeout) widens the search to the fan-out.
        let timeout = Duration::from_millis(300);
        let mut now = t0 + timeout;
        plan.connect_failed(homes[0].id, now, "connect timed out after 300ms".into());
        let wave = plan.due_connects(now);
        assert_eq!(wave.len(), CONNECT_FAN_OUT - 1, "{:?}", targets(&wave));
        assert!(plan.due_connects(now).is_empty(), "at most {CONNECT_FAN_OUT} at once");
        assert_eq!(plan.next_deadline(now), None);
        // Waves of timeouts until the live node (list[0], last of shard 1's ring) connects.
        let mut pending: Vec<Attempt> = wave;
        pending.push(homes[1]);
        let mut waves = 1;
        loop {
            now += timeout;
            let mut connected = false;
            for attempt in std::mem::take(&mut pending) {
                if attempt.endpoint == list[0] {
                    connected |=
                        matches!(plan.connect_succeeded(attempt.id), Placement::Serve { .. });
                } else {
                    plan.connect_failed(attempt.id, now, "connect timed out after 300ms".into());
                }
            }
            if connected {
                break;
            }
            pending = plan.due_connects(now);
            assert!(!pending.is_empty() && pending.len() <= CONNECT_FAN_OUT);
            waves += 1;
        }
        assert!(waves <= list.len().div_ceil(CONNECT_FAN_OUT) + 1, "{waves} waves");
        assert!(!plan.stranded());
    }

    #[test]
    fn a_slot_let_go_without_fault_reconnects_to_the_same_node_first() {
        let t0 = Instant::now();
        let list = nodes(5);
        let mut plan = EndpointPlan::new(0, list.clone());
        let first = plan.due_connects(t0);
        plan.connect_failed(first[0].id, t0, refused());
        plan.connect_succeeded(first[1].id);
        let next = plan.due_connects(t0);
        assert_eq!(targets(&next), vec![list[2]]);
        plan.connect_succeeded(next[0].id);
        // Slot 0's connection (to node 2) is rotated: back to node 2, not to untried node 3.
        plan.released(next[0].id);
        assert_eq!(targets(&plan.due_connects(t0)), vec![list[2]]);
    }

    #[test]
    fn nodes_that_accept_and_then_close_connections_are_not_hammered() {
        let t0 = Instant::now();
        let (a, b) = (node(0), node(1));
        let mut plan = EndpointPlan::new(0, vec![a, b]);
        let mut now = t0;
        let mut connects = 0;
        // Both nodes are going offline: every connect succeeds, every connection is closed
        // by the node at once (the shell reports it lost).
        while now < t0 + Duration::from_secs(3) {
            for attempt in plan.due_connects(now) {
                connects += 1;
                assert!(matches!(plan.connect_succeeded(attempt.id), Placement::Serve { .. }));
                assert!(plan.lost(attempt.id, now));
            }
            match plan.next_deadline(now) {
                Some(at) => now = at,
                None => break,
            }
        }
        assert!(connects <= 12, "{connects} connects in 3 s");
        assert!(connects >= 4, "{connects} connects in 3 s: the nodes are still tried");
    }

    /// A plan over two nodes after many short outages in a row: its failure streak, and so
    /// its pause, has grown to the longest. Returns it and the time of its next connect.
    fn plan_after_many_outages(t0: Instant) -> (EndpointPlan, Instant) {
        let mut plan = EndpointPlan::new(0, vec![node(0), node(1)]);
        let mut now = t0;
        for _ in 0..8 {
            for attempt in plan.due_connects(now) {
                plan.connect_failed(attempt.id, now, refused());
            }
            now = plan.next_deadline(now).expect("a paced retry");
        }
        let grown = plan.pause_ends().unwrap() - plan.streak.1.unwrap();
        assert_eq!(grown, RECONNECT_PAUSE_MAX);
        (plan, now)
    }

    #[test]
    fn a_connection_that_worked_ends_the_failure_streak() {
        let t0 = Instant::now();
        // A node is back and its connection works for a while, then breaks: the next
        // connects start from the shortest pause again.
        let (mut plan, mut now) = plan_after_many_outages(t0);
        let attempt = plan.due_connects(now)[0];
        assert!(matches!(plan.connect_succeeded_at(attempt.id, now), Placement::Serve { .. }));
        now += HEALTHY_AFTER;
        assert!(plan.lost(attempt.id, now));
        let pause = plan.pause_ends().unwrap() - now;
        assert_eq!(pause, RECONNECT_PAUSE, "the streak starts again");
        // A connection that breaks at once does not end it.
        let (mut plan, now) = plan_after_many_outages(t0);
        let attempt = plan.due_connects(now)[0];
        assert!(matches!(plan.connect_succeeded_at(attempt.id, now), Placement::Serve { .. }));
        assert!(plan.lost(attempt.id, now + Duration::from_millis(10)));
        assert_eq!(plan.pause_ends().unwrap() - plan.streak.1.unwrap(), RECONNECT_PAUSE_MAX);
    }

    #[test]
    fn quarantine_grows_and_is_capped() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(0, vec![node(1), node(2)]);
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            plan.quarantine(node(1), t0);
            let until = plan.health[&node(1)].quarantined_until.unwrap() - t0;
            assert!(until <= QUARANTINE_MAX.mul_f64(1.2));
            last = until;
        }
        assert!(last >= QUARANTINE_MAX.mul_f64(0.8));
    }

    #[test]
    fn a_single_node_is_never_quarantined_and_retries_back_off() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(0, vec![node(1)]);
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            let due = plan.due_connects(now);
            assert_eq!(targets(&due), vec![node(1)]);
            plan.connect_failed(due[0].id, now, refused());
            assert!(plan.due_connects(now).is_empty(), "paced");
            let next = plan.next_deadline(now).expect("the retry");
            pauses.push(next - now);
            now = next;
        }
        assert_eq!(pauses[0], RECONNECT_PAUSE);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), RECONNECT_PAUSE_MAX);
        assert!(!plan.quarantined(node(1), now));
    }

    #[test]
    fn a_new_list_adds_slots_probes_the_new_home_and_moves_off_removed_nodes() {
        let t0 = Instant::now();
        let (a, b, c) = (node(1), node(2), node(3));
        let mut plan = EndpointPlan::new(1, vec![a]);
        let first = plan.due_connects(t0);
        assert_eq!(
            plan.connect_succeeded(first[0].id),
            Placement::Serve { slot: 0, replaces: None }
        );
        plan.set_endpoints(vec![a, b], t0);
        assert_eq!(plan.slots().count(), 2);
        // Shard 1 prefers B now: slot 0 probes it (never tried); slot 1 doubles up on A.
        assert!(plan.take_misplaced().is_empty());
        let due = plan.due_connects(t0);
        assert_eq!(targets(&due), vec![b, a]);
        assert_eq!(
            plan.connect_succeeded(due[0].id),
            Placement::Serve { slot: 0, replaces: Some(first[0].id) }
        );
        assert_eq!(plan.connect_succeeded(due[1].id), Placement::Serve { slot: 1, replaces: None });
        assert_eq!(plan.take_primary_swap(), None);
        plan.set_endpoints(vec![c], t0);
        let mut drained = plan.take_misplaced();
        drained.sort_unstable();
        assert_eq!(drained, vec![due[0].id, due[1].id]);
        assert_eq!(plan.slots().count(), 1);
        assert_eq!(targets(&plan.due_connects(t0)), vec![c]);
        plan.set_endpoints(Vec::new(), t0);
        assert_eq!(plan.endpoints(), &[c], "an empty list keeps the old one");
    }

    #[test]
    fn slots_left_on_each_others_homes_by_a_list_change_trade_places() {
        let t0 = Instant::now();
        let (a, b, c) = (node(1), node(2), node(3));
        let mut plan = EndpointPlan::new(1, vec![a, b]);
        let first = plan.due_connects(t0);
        assert_eq!(targets(&first), vec![b, a]);
        for attempt in &first {
            plan.connect_succeeded(attempt.id);
        }
        // C is added: shard 1's second home is C now; slot 1 probes it and moves.
        plan.set_endpoints(vec![a, b, c], t0);
        let probe = plan.due_connects(t0);
        assert_eq!(targets(&probe), vec![c]);
        assert_eq!(
            plan.connect_succeeded(probe[0].id),
            Placement::Serve { slot: 1, replaces: Some(first[1].id) }
        );
        // A is removed: shard 1 prefers C, then B, which its slots serve the other way round.
        plan.set_endpoints(vec![b, c], t0);
        assert!(plan.take_misplaced().is_empty());
        assert_eq!(plan.take_primary_swap(), Some(probe[0].id));
        assert_eq!(served(&plan), vec![Some(c), Some(b)]);
        assert_eq!(plan.take_primary_swap(), None);
        assert!(plan.due_connects(t0).is_empty(), "no connect needed");
    }

    #[test]
    fn connect_failures_are_kept_newest_first_and_forgotten_on_success() {
        let t0 = Instant::now();
        let list = nodes(12);
        let mut plan = EndpointPlan::new(0, list.clone());
        assert_eq!(plan.take_connect_failures(), None);
        let mut failed = Vec::new();
        while failed.len() < 11 {
            for attempt in plan.due_connects(t0) {
                if failed.len() < 11 {
                    let reason: Arc<str> = format!("refused {}", attempt.endpoint).into();
                    plan.connect_failed(attempt.id, t0, reason);
                    failed.push(attempt.endpoint);
                }
            }
        }
        let causes = plan.take_connect_failures().expect("changed");
        assert_eq!(plan.take_connect_failures(), None, "reported once per change");
        assert_eq!((causes.iter().count(), causes.more()), (ConnectFailures::KEPT, 3));
        let newest = failed.last().copied().unwrap();
        let expected = crate::Error::ConnectFailed {
            endpoint: newest,
            reason: format!("refused {newest}").into(),
        };
        assert_eq!(causes.most_recent(), Some(&expected));
        // A failed node that connects later is no longer a cause.
        let later = t0 + QUARANTINE_MAX * 2;
        let mut retried = plan.due_connects(later);
        let back = retried.remove(0);
        assert!(matches!(plan.connect_succeeded(back.id), Placement::Serve { .. }));
        let causes = plan.take_connect_failures().expect("changed");
        assert_eq!(causes.nodes(), 10);
        assert!(causes.iter().all(|c| !c.to_string().contains(&format!("{} ", back.endpoint))));
    }
}
