//! Wake-up pacing: whether to wait a moment before a transmit wake-up.
//!
//! A copy-mode AF_XDP transmit on a veth delivers the frame, inside the
//! switch's `sendto`, all the way to the receiving socket and wakes the
//! process waiting on it. If that process's CPU is idle and polling, the
//! wake-up is cheap. If the CPU is still busy, typically still running the
//! process that sent the request a few microseconds earlier and is about to
//! wait for the answer, the kernel has to interrupt it. On a VM that
//! interrupt is an exit to the hypervisor: the `sendto` took 8 µs instead of
//! 3-4 µs, and a UDP round trip 24 µs instead of 17 µs, when the switch was
//! quicker than the sender's way to sleep.
//!
//! Whether waiting pays depends on the machine and the traffic, so the pacer
//! measures it. It tries each wait in [`WAITS_NS`] in turn for a short
//! trial, keeps the one with the lowest cost (wait plus the wake-up's own
//! time) until the next trial, and so turns itself off (wait 0) wherever
//! waiting does not shorten the wake-up: bare metal, or streams that wake
//! nobody. Pure logic: the caller times the wake-up.

/// The waits tried before a wake-up, in nanoseconds.
pub const WAITS_NS: [u64; 4] = [0, 500, 1_000, 1_500];
/// Wake-ups per wait in a trial (interleaved round robin).
const TRIAL_ROUNDS: u32 = 32;
/// Wake-ups between two trials.
const KEEP: u32 = 8_192;
/// A sample's cost is capped here, and each wait's dearest sample is left
/// out, so that a preemption does not decide a trial.
const CAP_NS: u64 = 20_000;

/// Per wait in [`WAITS_NS`]: (sum, max) of the trial's costs.
type Costs = [(u64, u64); WAITS_NS.len()];

/// The pacer of one output port in one poll thread.
#[derive(Debug, Clone)]
pub struct WakePacer {
    /// Index into [`WAITS_NS`] in use.
    chosen: usize,
    /// Wake-ups left until the next trial, or in the current trial.
    left: u32,
    /// In a trial: the wait being tried, and per wait the costs summed so
    /// far and the dearest one.
    trial: Option<(usize, Costs)>,
}

impl Default for WakePacer {
    fn default() -> Self {
        WakePacer {
            chosen: 0,
            // Start with a trial soon, not after a whole keep period.
            left: TRIAL_ROUNDS,
            trial: None,
        }
    }
}

impl WakePacer {
    /// The wait before the next wake-up, in nanoseconds.
    pub fn wait_ns(&self) -> u64 {
        match self.trial {
            Some((arm, _)) => WAITS_NS[arm],
            None => WAITS_NS[self.chosen],
        }
    }

    /// Whether the next wake-up's own time is wanted (during a trial);
    /// otherwise [`WakePacer::record`] ignores it and the caller need not
    /// read the clock.
    pub fn timing(&self) -> bool {
        self.trial.is_some()
    }

    /// Records one wake-up that waited [`WakePacer::wait_ns`] and then took
    /// `took_ns` itself (any value when not [`WakePacer::timing`]).
    pub fn record(&mut self, took_ns: u64) {
        let Some((arm, mut costs)) = self.trial else {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                self.trial = Some((0, [(0, 0); WAITS_NS.len()]));
                self.left = TRIAL_ROUNDS * WAITS_NS.len() as u32;
            }
            return;
        };
        let cost = (WAITS_NS[arm] + took_ns).min(CAP_NS);
        let (sum, max) = &mut costs[arm];
        *sum += cost;
        *max = (*max).max(cost);
        self.left -= 1;
        if self.left == 0 {
            // Lowest total without its dearest sample wins, but a wait
            // must save a fifth of the cost of not waiting: it is spent
            // poll time, and small differences are noise.
            let score = |i: usize| costs[i].0 - costs[i].1;
            let best = (0..WAITS_NS.len())
                .min_by_key(|&i| (score(i), i))
                .unwrap_or(0);
            self.chosen = if score(best) * 5 <= score(0) * 4 {
                best
            } else {
                0
            };
            self.trial = None;
            self.left = KEEP;
        } else {
            self.trial = Some(((arm + 1) % WAITS_NS.len(), costs));
        }
    }

    /// The wait chosen by the last trial, in nanoseconds.
    pub fn chosen_ns(&self) -> u64 {
        WAITS_NS[self.chosen]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` wake-ups whose own time is `took(wait)`.
    fn drive(p: &mut WakePacer, n: u32, mut took: impl FnMut(u64) -> u64) {
        for _ in 0..n {
            let w = p.wait_ns();
            p.record(took(w));
        }
    }

    const TRIAL: u32 = TRIAL_ROUNDS * WAITS_NS.len() as u32;

    #[test]
    fn waits_when_waiting_shortens_the_wake_up() {
        let mut p = WakePacer::default();
        // The VM case: a wake-up 1 µs or more after the frame finds the
        // receiver idle (3.5 µs), a quicker one must interrupt it (8 µs).
        drive(&mut p, TRIAL_ROUNDS + TRIAL, |w| {
            if w >= 1_000 {
                3_500
            } else {
                8_000
            }
        });
        assert_eq!(p.chosen_ns(), 1_000, "the shortest wait that pays");
        assert_eq!(p.wait_ns(), 1_000);
    }

    #[test]
    fn does_not_wait_when_it_does_not_pay() {
        let mut p = WakePacer::default();
        // Bare metal, or a stream nobody waits for: the same either way.
        drive(&mut p, TRIAL_ROUNDS + TRIAL, |_| 3_000);
        assert_eq!(p.chosen_ns(), 0);
        assert_eq!(p.wait_ns(), 0);
    }

    #[test]
    fn a_small_saving_is_not_worth_waiting_for() {
        let mut p = WakePacer::default();
        // Waiting 0.5 µs makes the wake-up 0.6 µs shorter: 3 % cheaper in
        // total, within the noise of a stream's wake-ups.
        drive(&mut p, TRIAL_ROUNDS + TRIAL, |w| {
            if w == 500 {
                2_400
            } else {
                3_000
            }
        });
        assert_eq!(p.chosen_ns(), 0);
    }

    #[test]
    fn retries_and_follows_a_change() {
        let mut p = WakePacer::default();
        drive(&mut p, TRIAL_ROUNDS + TRIAL, |w| {
            if w >= 500 {
                3_000
            } else {
                9_000
            }
        });
        assert_eq!(p.chosen_ns(), 500);
        // The machine changes: waiting no longer helps. After the keep
        // period the next trial notices.
        drive(&mut p, KEEP + TRIAL, |_| 3_000);
        assert_eq!(p.chosen_ns(), 0);
    }

    #[test]
    fn one_preemption_does_not_decide() {
        let mut p = WakePacer::default();
        let mut k = 0;
        drive(&mut p, TRIAL_ROUNDS, |_| 3_000);
        // In the trial, one 5 ms outlier lands on wait 0.
        drive(&mut p, TRIAL, |w| {
            k += 1;
            if w == 0 && k == 1 {
                5_000_000
            } else {
                3_000
            }
        });
        assert_eq!(p.chosen_ns(), 0);
    }

    #[test]
    fn times_only_in_trials() {
        let mut p = WakePacer::default();
        let mut timed = 0;
        for _ in 0..TRIAL_ROUNDS + TRIAL + KEEP {
            timed += u32::from(p.timing());
            p.record(if p.timing() { 3_000 } else { 0 });
        }
        assert_eq!(timed, TRIAL, "one trial's wake-ups, no others");
        assert_eq!(p.chosen_ns(), 0);
    }

    #[test]
    fn trials_are_a_small_share() {
        // Wake-ups that waited, out of all, in the steady state where
        // waiting never pays: under 1.5 %.
        let mut p = WakePacer::default();
        let (mut waited, n) = (0u64, 10 * (KEEP + TRIAL));
        for _ in 0..n {
            let w = p.wait_ns();
            waited += u64::from(w > 0);
            p.record(3_000);
        }
        assert!(waited * 1000 / u64::from(n) < 15, "{waited} of {n}");
    }
}
