//! [`EndpointPlan`]: which DataProxy nodes one shard connects to, and when.
//!
//! Sans-IO, like the engine: it takes events (connected, failed, lost, a new node list) and `now`,
//! and says which connections to open and which to drain. A shard keeps a primary connection and,
//! when there is more than one node, a second one for retries; shard *i* prefers nodes *i* and
//! *i+1* of the list, so shards spread evenly over the nodes and move back when the list changes.
//! A node whose connections fail is quarantined with a backoff (10 s doubling to 1 min, ±20 %) and
//! avoided while another node is usable; a single remaining node is never quarantined into
//! "no endpoints".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const QUARANTINE_FIRST: Duration = Duration::from_secs(10);
const QUARANTINE_MAX: Duration = Duration::from_secs(60);
/// Pause before reconnecting to the same node right after it failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause of a slot whose connections keep failing (every node down or refusing).
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);
/// Failures further apart than this do not add up.
const STREAK_WINDOW: Duration = Duration::from_secs(30);

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Waiting to connect at the given time.
    Down {
        /// When to try.
        retry_at: Instant,
    },
    /// A connect is in progress.
    Connecting,
    /// Connected.
    Up,
}

/// One wanted connection.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The node it points at.
    pub endpoint: SocketAddr,
    /// How it is doing.
    pub state: SlotState,
    /// Failures in a row (each within [`STREAK_WINDOW`] of the previous), and the last one.
    streak: (u32, Option<Instant>),
}

impl Slot {
    fn down(endpoint: SocketAddr, retry_at: Instant) -> Slot {
        Slot { endpoint, state: SlotState::Down { retry_at }, streak: (0, None) }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    failures: u32,
    quarantined_until: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct EndpointPlan {
    shard: usize,
    endpoints: Vec<SocketAddr>,
    health: HashMap<SocketAddr, Health>,
    slots: Vec<Slot>,
    rng: u64,
}

impl EndpointPlan {
    /// The plan of shard `shard` over `endpoints` (not empty).
    pub fn new(shard: usize, endpoints: Vec<SocketAddr>, now: Instant) -> EndpointPlan {
        let mut plan = EndpointPlan {
            shard,
            endpoints,
            health: HashMap::new(),
            slots: Vec::new(),
            rng: 0x2545_f491_4f6c_dd1d ^ (shard as u64 + 1),
        };
        let wanted = plan.endpoints.len().min(2);
        for k in 0..wanted {
            let endpoint = plan.best_for(k, now);
            plan.slots.push(Slot::down(endpoint, now));
        }
        plan
    }

    /// The slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The current node list.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    fn quarantined(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.health
            .get(&endpoint)
            .and_then(|h| h.quarantined_until)
            .is_some_and(|until| until > now)
    }

    /// The node each slot should use: slot `k` prefers node `shard + k` of the list; a
    /// quarantined node is replaced by the next usable one not already chosen, then by any usable
    /// one (two connections to one node beat one to a dead node), then kept if nothing is usable.
    fn desired(&self, now: Instant) -> [Option<SocketAddr>; 2] {
        let n = self.endpoints.len();
        let usable = |e: SocketAddr| !self.quarantined(e, now);
        // An array, not a Vec: the shard asks on every turn of its loop.
        let mut out = [None; 2];
        for k in 0..n.min(2) {
            let ring = || (0..n).map(move |step| self.endpoints[(self.shard + k + step) % n]);
            let preferred = self.endpoints[(self.shard + k) % n];
            let pick = ring()
                .find(|&e| usable(e) && !out.contains(&Some(e)))
                .or_else(|| ring().find(|&e| usable(e)))
                .unwrap_or(preferred);
            out[k] = Some(pick);
        }
        out
    }

    /// The node slot `k` should use now.
    fn best_for(&self, k: usize, now: Instant) -> SocketAddr {
        self.desired(now)
            .get(k)
            .copied()
            .flatten()
            .unwrap_or_else(|| self.endpoints[(self.shard + k) % self.endpoints.len()])
    }

    /// Slots due for a connect; they move to `Connecting`.
    pub fn due_connects(&mut self, now: Instant) -> Vec<(usize, SocketAddr)> {
        let mut due = Vec::new();
        for (k, slot) in self.slots.iter_mut().enumerate() {
            if let SlotState::Down { retry_at } = slot.state {
                if retry_at <= now {
                    slot.state = SlotState::Connecting;
                    due.push((k, slot.endpoint));
                }
            }
        }
        due
    }

    /// The next time something is due after `now` (a connect, or a quarantine ending).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let connects = self.slots.iter().filter_map(|slot| match slot.state {
            SlotState::Down { retry_at } => Some(retry_at),
            _ => None,
        });
        // Only quarantines still running: an ended one must not wake the shard again and again.
        let quarantines =
            self.health.values().filter_map(|h| h.quarantined_until).filter(|&until| until > now);
        connects.chain(quarantines).min()
    }

    /// Slot `k` connected to `endpoint`.
    pub fn connected(&mut self, k: usize, endpoint: SocketAddr) {
        if let Some(slot) = self.slots.get_mut(k) {
            slot.endpoint = endpoint;
            slot.state = SlotState::Up;
        }
        self.health.remove(&endpoint);
    }

    /// Slot `k`'s connect failed, or its connection broke: quarantine the node (unless it is the
    /// only one) and point the slot at the best node.
    pub fn failed(&mut self, k: usize, now: Instant) {
        let Some(slot) = self.slots.get(k) else { return };
        let endpoint = slot.endpoint;
        let streak = match slot.streak {
            (count, Some(last)) if now.saturating_duration_since(last) < STREAK_WINDOW => count + 1,
            _ => 1,
        };
        self.quarantine(endpoint, now);
        let next = self.best_for(k, now);
        // The first failure moves on at once; a slot that keeps failing (every node down or
        // refusing) backs off, so clients do not hammer nodes that are going away.
        let pause = if streak >= 2 {
            RECONNECT_PAUSE.saturating_mul(1 << (streak - 1).min(6)).min(RECONNECT_PAUSE_MAX)
        } else if next == endpoint {
            RECONNECT_PAUSE
        } else {
            Duration::ZERO
        };
        self.slots[k] = Slot {
            endpoint: next,
            state: SlotState::Down { retry_at: now + pause },
            streak: (streak, Some(now)),
        };
    }

    /// Slot `k`'s connection ended without fault (drained, lifetime): reconnect to the best node.
    pub fn released(&mut self, k: usize, now: Instant) {
        if k < self.slots.len() {
            let endpoint = self.best_for(k, now);
            let streak = self.slots[k].streak;
            self.slots[k] = Slot { endpoint, state: SlotState::Down { retry_at: now }, streak };
        }
    }

    fn quarantine(&mut self, endpoint: SocketAddr, now: Instant) {
        if self.endpoints.len() <= 1 {
            return;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        #[allow(clippy::cast_precision_loss)]
        let jitter = 0.8 + 0.4 * ((self.rng >> 11) as f64 / (1u64 << 53) as f64);
        let health = self.health.entry(endpoint).or_default();
        health.failures += 1;
        let exponent = health.failures.saturating_sub(1).min(6);
        let base = (QUARANTINE_FIRST * (1 << exponent)).min(QUARANTINE_MAX);
        health.quarantined_until = Some(now + base.mul_f64(jitter));
        tracing::info!(%endpoint, failures = health.failures, until_secs = base.as_secs(), "endpoint quarantined");
    }

    /// Replaces the node list (ignored when empty: the old list is kept).
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>, now: Instant) {
        if endpoints.is_empty() {
            return;
        }
        self.endpoints = endpoints;
        self.health.retain(|endpoint, _| self.endpoints.contains(endpoint));
        let wanted = self.endpoints.len().min(2);
        while self.slots.len() < wanted {
            let k = self.slots.len();
            let endpoint = self.best_for(k, now);
            self.slots.push(Slot::down(endpoint, now));
        }
        // Surplus slots (the list shrank to one node) are retired by `rebalance`.
    }

    /// Slots connected (or waiting to connect) to a node they should leave: removed from the
    /// list, or not the node they should use now that it is usable; plus surplus slots. The caller
    /// drains their connections and calls [`EndpointPlan::released`] (surplus slots are dropped by
    /// [`EndpointPlan::retire_surplus`]). Slots still connecting are left alone.
    pub fn misplaced(&self, now: Instant) -> Vec<usize> {
        let desired = self.desired(now);
        let mut out = Vec::new();
        for (k, slot) in self.slots.iter().enumerate() {
            if slot.state == SlotState::Connecting {
                continue;
            }
            let Some(want) = desired.get(k).copied().flatten() else {
                out.push(k);
                continue;
            };
            let gone = !self.endpoints.contains(&slot.endpoint);
            if gone || (want != slot.endpoint && !self.quarantined(want, now)) {
                out.push(k);
            }
        }
        out
    }

    /// Drops slots beyond what the node list needs.
    pub fn retire_surplus(&mut self) {
        let wanted = self.endpoints.len().min(2);
        self.slots.truncate(wanted);
    }

    /// Points a slot that is down at the best node now (a quarantine may have ended).
    pub fn refresh_down_slots(&mut self, now: Instant) {
        for k in 0..self.slots.len() {
            if let SlotState::Down { .. } = self.slots[k].state {
                // Only the target changes: a slot backing off keeps its pause.
                let best = self.best_for(k, now);
                if best != self.slots[k].endpoint {
                    self.slots[k].endpoint = best;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn shards_spread_over_nodes() {
        let now = Instant::now();
        let nodes = vec![addr(1), addr(2), addr(3)];
        let firsts: Vec<SocketAddr> = (0..3)
            .map(|shard| EndpointPlan::new(shard, nodes.clone(), now).slots()[0].endpoint)
            .collect();
        assert_eq!(firsts, nodes);
        let plan = EndpointPlan::new(0, nodes, now);
        assert_eq!(plan.slots().len(), 2);
        assert_eq!(plan.slots()[1].endpoint, addr(2));
        let single = EndpointPlan::new(5, vec![addr(1)], now);
        assert_eq!(single.slots().len(), 1);
    }

    #[test]
    fn a_failing_node_is_quarantined_and_avoided_then_used_again() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(0, vec![addr(1), addr(2), addr(3)], t0);
        assert_eq!(plan.due_connects(t0), vec![(0, addr(1)), (1, addr(2))]);
        plan.connected(1, addr(2));
        plan.failed(0, t0);
        assert_eq!(plan.slots()[0].endpoint, addr(2), "the next usable node");
        assert_eq!(plan.misplaced(t0), vec![1], "slot 1 moves on to keep the two slots apart");
        plan.released(1, t0);
        assert_eq!(plan.slots()[1].endpoint, addr(3));
        plan.connected(1, addr(3));
        assert_eq!(plan.due_connects(t0), vec![(0, addr(2))]);
        plan.connected(0, addr(2));
        // Two nodes, one dead: both slots use the live one rather than one dead one.
        let mut two = EndpointPlan::new(0, vec![addr(1), addr(2)], t0);
        two.due_connects(t0);
        two.connected(1, addr(2));
        two.failed(0, t0);
        assert_eq!(two.slots()[0].endpoint, addr(2));
        // Back to the three-node plan: slot 0 rides node 2 while node 1 is quarantined.
        let mut plan = EndpointPlan::new(0, vec![addr(1), addr(2), addr(3)], t0);
        plan.due_connects(t0);
        plan.connected(1, addr(2));
        plan.failed(0, t0);
        plan.released(1, t0);
        assert_eq!(plan.due_connects(t0), vec![(0, addr(2)), (1, addr(3))]);
        plan.connected(0, addr(2));
        plan.connected(1, addr(3));
        // While node 1 is quarantined nothing moves; after it, slot 0 goes home.
        assert!(plan.misplaced(t0 + Duration::from_secs(5)).is_empty());
        let ends = plan.next_deadline(t0).unwrap();
        assert!(ends > t0 + Duration::from_secs(7), "the quarantine's end wakes the shard");
        assert_eq!(plan.next_deadline(ends), None, "an ended quarantine never wakes it again");
        let later = t0 + Duration::from_secs(13);
        assert_eq!(plan.misplaced(later), vec![0, 1], "both slots go home");
        plan.released(0, later);
        assert_eq!(plan.slots()[0].endpoint, addr(1));
    }

    #[test]
    fn quarantine_grows_and_is_capped() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(0, vec![addr(1), addr(2)], t0);
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            plan.quarantine(addr(1), t0);
            let until = plan.health[&addr(1)].quarantined_until.unwrap() - t0;
            assert!(until <= QUARANTINE_MAX.mul_f64(1.2));
            last = until;
        }
        assert!(last >= QUARANTINE_MAX.mul_f64(0.8));
    }

    #[test]
    fn a_single_node_is_never_quarantined() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(0, vec![addr(1)], t0);
        plan.due_connects(t0);
        plan.failed(0, t0);
        assert_eq!(plan.slots()[0].endpoint, addr(1));
        assert_eq!(plan.slots()[0].state, SlotState::Down { retry_at: t0 + RECONNECT_PAUSE });
        // A slot that keeps failing backs off, up to the cap.
        let mut pauses = Vec::new();
        for _ in 0..8 {
            plan.due_connects(t0 + Duration::from_secs(60));
            plan.failed(0, t0);
            if let SlotState::Down { retry_at } = plan.slots()[0].state {
                pauses.push(retry_at - t0);
            }
        }
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), RECONNECT_PAUSE_MAX);
        assert!(!plan.quarantined(addr(1), t0));
    }

    #[test]
    fn a_new_list_adds_slots_and_moves_off_removed_nodes() {
        let t0 = Instant::now();
        let mut plan = EndpointPlan::new(1, vec![addr(1)], t0);
        plan.due_connects(t0);
        plan.connected(0, addr(1));
        plan.set_endpoints(vec![addr(1), addr(2)], t0);
        assert_eq!(plan.slots().len(), 2);
        // Shard 1 prefers node 2 now: slot 0 moves there, the new slot 1 takes node 1.
        assert_eq!(plan.misplaced(t0), vec![0]);
        plan.set_endpoints(vec![addr(3)], t0);
        assert_eq!(plan.misplaced(t0), vec![0, 1]);
        plan.retire_surplus();
        plan.released(0, t0);
        assert_eq!(plan.slots().len(), 1);
        assert_eq!(plan.slots()[0].endpoint, addr(3));
        plan.set_endpoints(Vec::new(), t0);
        assert_eq!(plan.endpoints(), &[addr(3)], "an empty list keeps the old one");
    }
}
