//! [`Backoff`]: the one policy behind every wait that grows with failures, and the parameters of
//! each of them, here and nowhere else.
//!
//! A pure value type: it reads no clock and owns no random state. The caller says how many
//! failures it counts (`attempt`, 1 for the first) and, when the policy has jitter, passes its
//! own seeded [`fastrand::Rng`], so the state machines that use it stay deterministic in tests.
//!
//! Every policy multiplies its delay by 2 per attempt:
//!
//! | Policy (caller) | First | Cap | Jitter | `attempt` counts |
//! |---|---|---|---|---|
//! | [`Backoff::retry`] (engine) | 100 ms¹ | 10 s¹, [`Cap::Hard`] | ±20 % | the batch's attempts |
//! | [`Backoff::QUARANTINE`] (shard) | 10 s | 60 s, [`Cap::Nominal`]² | ±20 % | a node's failures |
//! | [`Backoff::RECONNECT_PAUSE`] (shard) | 100 ms | 5 s | none | failures in the streak |
//! | [`Backoff::MANAGER_LOOKUP`] (discovery) | 200 ms | 2 s | none | the attempt that failed |
//!
//! ¹ The defaults of `retry_initial_interval` and `retry_max_interval`. ² So 48–72 s at the cap.
//! Each caller counts from 1: a batch's first retry follows its first attempt, a Manager lookup's
//! first wait follows its first try, and so on.
//!
//! Growth stops after [`MAX_STEPS`] steps and every product saturates, so no attempt count,
//! however large, overflows.

use std::time::Duration;

/// The most times a delay is multiplied by the factor (2^30 × the first delay is far beyond any
/// cap in use); past it the nominal delay no longer grows.
pub(crate) const MAX_STEPS: u32 = 30;

/// Where the cap applies with respect to the jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// The jittered delay is capped: no delay ever exceeds `max` (a configured longest wait,
    /// which the engine's delivery deadline adds up).
    Hard,
    /// The nominal delay is capped, then jittered: at the cap delays still spread over
    /// `max` ± jitter, so nodes that failed together do not all come back at once.
    Nominal,
}

/// A delay that starts at `initial`, is multiplied by `factor` per attempt up to `max`, and is
/// spread uniformly over ±`jitter` (a fraction of the delay, below 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    /// The delay after the first failure, before jitter.
    pub initial: Duration,
    /// The cap (see `cap` for how it meets the jitter).
    pub max: Duration,
    /// The growth per attempt.
    pub factor: u32,
    /// The spread, as a fraction of the delay: 0.2 draws from [0.8, 1.2) times the delay.
    pub jitter: f64,
    /// Whether the cap bounds the jittered delay or the nominal one.
    pub cap: Cap,
}

impl Backoff {
    /// A shard's quarantine of a node that failed (see the module docs).
    pub(crate) const QUARANTINE: Backoff = Backoff {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(60),
        factor: 2,
        jitter: 0.2,
        cap: Cap::Nominal,
    };

    /// A shard's pause between connects to nodes that failed before (see the module docs).
    pub(crate) const RECONNECT_PAUSE: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        factor: 2,
        jitter: 0.0,
        cap: Cap::Hard,
    };

    /// The wait between Manager lookup attempts (see the module docs).
    pub(crate) const MANAGER_LOOKUP: Backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(2),
        factor: 2,
        jitter: 0.0,
        cap: Cap::Hard,
    };

    /// A batch's retry backoff with the producer's `retry_initial_interval` and
    /// `retry_max_interval` (see the module docs).
    pub(crate) const fn retry(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, factor: 2, jitter: 0.2, cap: Cap::Hard }
    }

    /// `initial × factor^(attempt − 1)`, uncapped, saturating (attempt 0 counts as 1).
    fn grown(&self, attempt: u32) -> Duration {
        let steps = attempt.saturating_sub(1).min(MAX_STEPS);
        self.initial.saturating_mul(self.factor.saturating_pow(steps))
    }

    /// The delay after `attempt` failures before jitter: `initial × factor^(attempt − 1)`, at
    /// most `max`. Without jitter it is the delay itself.
    pub(crate) fn nominal(&self, attempt: u32) -> Duration {
        self.grown(attempt).min(self.max)
    }

    /// The delay after `attempt` failures: the nominal delay times a uniform draw from
    /// [1 − jitter, 1 + jitter), capped as `cap` says. A policy without jitter draws nothing.
    pub(crate) fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        if self.jitter == 0.0 {
            return self.nominal(attempt);
        }
        self.scaled(attempt, 1.0 + self.jitter * (rng.f64() * 2.0 - 1.0))
    }

    /// The longest [`delay`](Self::delay) can be after `attempt` failures (the upper end of its
    /// jitter), for deadlines that must cover every wait.
    pub(crate) fn longest(&self, attempt: u32) -> Duration {
        if self.jitter == 0.0 {
            return self.nominal(attempt);
        }
        self.scaled(attempt, 1.0 + self.jitter)
    }

    /// The delay with the jitter multiplier `scale` applied where `cap` says.
    fn scaled(&self, attempt: u32, scale: f64) -> Duration {
        debug_assert!((0.0..1.0).contains(&self.jitter), "jitter {} out of [0, 1)", self.jitter);
        let scale = |delay: Duration| {
            Duration::try_from_secs_f64(delay.as_secs_f64() * scale).unwrap_or(Duration::MAX)
        };
        match self.cap {
            // A product past `Duration::MAX` is the cap.
            Cap::Hard => scale(self.grown(attempt)).min(self.max),
            Cap::Nominal => scale(self.nominal(attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Backoff; 4] = [
        Backoff::QUARANTINE,
        Backoff::RECONNECT_PAUSE,
        Backoff::MANAGER_LOOKUP,
        Backoff::retry(Duration::from_millis(100), Duration::from_secs(10)),
    ];

    #[test]
    fn the_nominal_delay_doubles_from_the_first_up_to_the_cap() {
        let retry = Backoff::retry(Duration::from_millis(100), Duration::from_millis(350));
        let nominal: Vec<u64> =
            (1..=6).map(|a| u64::try_from(retry.nominal(a).as_millis()).unwrap()).collect();
        assert_eq!(nominal, [100, 200, 350, 350, 350, 350]);
        assert_eq!(retry.nominal(0), retry.nominal(1), "attempt 0 counts as the first");
        let pauses: Vec<u64> = (1..=8)
            .map(|a| u64::try_from(Backoff::RECONNECT_PAUSE.nominal(a).as_millis()).unwrap())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let quarantine = Backoff::QUARANTINE;
        assert_eq!(quarantine.nominal(3), Duration::from_secs(40));
        assert_eq!(quarantine.nominal(4), Duration::from_secs(60));
    }

    #[test]
    fn policies_without_jitter_wait_exactly_the_nominal_delay() {
        let mut rng = fastrand::Rng::with_seed(1);
        for policy in [Backoff::RECONNECT_PAUSE, Backoff::MANAGER_LOOKUP] {
            for attempt in 0..40 {
                assert_eq!(policy.delay(attempt, &mut rng), policy.nominal(attempt));
                assert_eq!(policy.longest(attempt), policy.nominal(attempt));
            }
        }
        // Nothing was drawn.
        assert_eq!(rng.u64(..), fastrand::Rng::with_seed(1).u64(..));
    }

    #[test]
    fn jittered_delays_stay_within_twenty_percent_and_use_the_whole_range() {
        let mut rng = fastrand::Rng::with_seed(42);
        let retry = Backoff::retry(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 1..=4 {
            let nominal = retry.nominal(attempt).as_secs_f64();
            let draws: Vec<f64> =
                (0..10_000).map(|_| retry.delay(attempt, &mut rng).as_secs_f64()).collect();
            let (low, high) =
                draws.iter().fold((f64::MAX, 0.0f64), |(l, h), &d| (l.min(d), h.max(d)));
            assert!(low >= nominal * 0.8 - 1e-9 && high < nominal * 1.2, "{attempt}: {low} {high}");
            // The draws reach both ends of the range, not just a narrow middle.
            assert!(low < nominal * 0.81 && high > nominal * 1.19, "{attempt}: {low} {high}");
            assert!(high <= retry.longest(attempt).as_secs_f64(), "{attempt}");
        }
    }

    #[test]
    fn a_hard_cap_bounds_the_jittered_delay() {
        let retry = Backoff::retry(Duration::from_millis(100), Duration::from_millis(350));
        let mut rng = fastrand::Rng::with_seed(3);
        let mut under_cap = false;
        for _ in 0..10_000 {
            // Nominal 400 ms uncapped: jittered to 320..480 ms, then capped at 350 ms.
            let delay = retry.delay(3, &mut rng);
            assert!(delay >= Duration::from_millis(320) && delay <= Duration::from_millis(350));
            under_cap |= delay < Duration::from_millis(350);
            // Far past the cap: the cap itself.
            assert_eq!(retry.delay(10, &mut rng), Duration::from_millis(350));
        }
        assert!(under_cap, "a low draw below the cap stays below it");
        assert_eq!(retry.longest(3), Duration::from_millis(350));
        assert_eq!(retry.longest(2), Duration::from_millis(240));
    }

    #[test]
    fn a_nominal_cap_is_jittered_around() {
        let mut rng = fastrand::Rng::with_seed(5);
        let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let delay = Backoff::QUARANTINE.delay(20, &mut rng);
            low = low.min(delay);
            high = high.max(delay);
        }
        assert!(low >= Duration::from_secs(48) && low < Duration::from_secs(49), "{low:?}");
        assert!(high < Duration::from_secs(72) && high > Duration::from_secs(71), "{high:?}");
        assert_eq!(Backoff::QUARANTINE.longest(20), Duration::from_secs(72));
    }

    #[test]
    fn a_seeded_rng_draws_the_same_delays() {
        let draws = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (1..=50).map(|a| Backoff::QUARANTINE.delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(9), draws(9));
        assert_ne!(draws(9), draws(10));
    }

    #[test]
    fn huge_attempt_counts_and_durations_do_not_overflow() {
        let mut rng = fastrand::Rng::with_seed(11);
        let huge = Backoff::retry(Duration::MAX, Duration::MAX);
        let nominal_huge = Backoff { cap: Cap::Nominal, ..huge };
        for attempt in [u32::MAX - 1, u32::MAX, 1_000_000, 64, 31] {
            for policy in ALL {
                let delay = policy.delay(attempt, &mut rng);
                assert!(delay <= policy.longest(attempt), "{policy:?} {attempt}");
                assert!(delay >= policy.max.mul_f64(0.8), "{policy:?} {attempt}: {delay:?}");
            }
            assert_eq!(huge.delay(attempt, &mut rng), Duration::MAX);
            assert_eq!(huge.longest(attempt), Duration::MAX);
            assert!(nominal_huge.delay(attempt, &mut rng) >= Duration::MAX.mul_f64(0.8));
            assert_eq!(nominal_huge.longest(attempt), Duration::MAX);
        }
    }

    #[test]
    fn growth_stops_after_max_steps() {
        let tiny = Backoff::retry(Duration::from_nanos(1), Duration::MAX);
        let last = Duration::from_nanos(1 << MAX_STEPS);
        assert_eq!(tiny.nominal(MAX_STEPS + 1), last);
        assert_eq!(tiny.nominal(MAX_STEPS + 2), last);
        assert_eq!(tiny.nominal(u32::MAX), last);
    }
}
