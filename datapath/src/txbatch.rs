//! When a poll thread wakes the kernel to transmit: transmit batching
//! under load, OVS's `tx-flush-interval` made adaptive.
//!
//! A copy-mode AF_XDP socket on veth sends only when woken with `sendto`,
//! and each wake-up costs about as much as forwarding a frame (system call,
//! socket lock, softirq entry). Under light load a poll round moves one
//! frame, so every frame pays a wake-up of its own. Open vSwitch's
//! `tx-flush-interval` lets frames wait in the output batch for a fixed
//! time; that saves the wake-ups but adds the wait to every frame, also
//! to the lone request of a latency-bound exchange.
//!
//! [`TxBatching`] only lets frames wait while the thread is loaded: while
//! frames have kept arriving less than [`LOADED_NS_PER_FRAME`] apart
//! (above 200,000 per second). Then output waits until [`MAX_HELD`]
//! frames are held or the oldest has waited the configured interval,
//! whichever comes first. Below that load, or with interval 0, every
//! round wakes the kernel at once, as before. The thread also wakes the
//! kernel before it naps or sleeps, so no frame waits for traffic.
//!
//! Pure logic: the caller passes the time (nanoseconds on any monotonic
//! clock) it already read once per round.

use std::time::Duration;

/// Default for `tx_flush_interval_us`: how long a frame may wait under load.
pub const DEFAULT_TX_FLUSH_INTERVAL: Duration = Duration::from_micros(20);
/// Longest accepted interval (1 ms): longer waits only add latency.
pub const MAX_TX_FLUSH_INTERVAL: Duration = Duration::from_millis(1);
/// Mean gap between received frames below which the thread counts as
/// loaded (5 µs: 200,000 frames per second).
pub const LOADED_NS_PER_FRAME: u64 = 5_000;
/// Held frames that trigger a wake-up at once (a copy-mode `sendto` moves
/// up to 32 frames).
pub const MAX_HELD: u32 = 32;
/// Gaps longer than this count as this much in the average, so one burst
/// after a long silence does not count as load and a silence is
/// forgotten after a few frames.
const GAP_CAP_NS: u64 = 100_000;
/// No frame for this long means the load has stopped.
const LOAD_GONE_NS: u64 = 4 * LOADED_NS_PER_FRAME;

/// Per-thread transmit batching state; see the module documentation.
#[derive(Debug, Clone)]
pub struct TxBatching {
    interval_ns: u64,
    /// Moving average of the gap between received frames (1/8 weight).
    gap_ns: u64,
    /// End of the last round that received frames.
    last_busy: Option<u64>,
    /// End of the round in which the oldest held frame was held.
    held_since: Option<u64>,
    held: u32,
}

impl TxBatching {
    /// Batching that lets frames wait up to `interval` under load (zero:
    /// never wait). Intervals above [`MAX_TX_FLUSH_INTERVAL`] are capped.
    pub fn new(interval: Duration) -> Self {
        let interval = interval.min(MAX_TX_FLUSH_INTERVAL);
        TxBatching {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            gap_ns: GAP_CAP_NS,
            last_busy: None,
            held_since: None,
            held: 0,
        }
    }

    /// Whether output produced in a round starting at `now` may wait.
    #[inline]
    pub fn may_hold(&self, now: u64) -> bool {
        self.interval_ns > 0
            && self.gap_ns < LOADED_NS_PER_FRAME
            && self
                .last_busy
                .is_some_and(|t| now.saturating_sub(t) < LOAD_GONE_NS)
    }

    /// Accounts a round that ended at `now`, received `received` frames
    /// and left `held` frames waiting. Returns true when everything held
    /// must be sent now (the caller wakes its ports, and this state
    /// forgets them).
    #[inline]
    pub fn after_round(&mut self, now: u64, received: usize, held: usize) -> bool {
        if received > 0 {
            if let Some(t) = self.last_busy {
                let gap = now.saturating_sub(t).min(GAP_CAP_NS) / received as u64;
                self.gap_ns = self.gap_ns - self.gap_ns / 8 + gap / 8;
            }
            self.last_busy = Some(now);
        }
        if held > 0 {
            self.held = self
                .held
                .saturating_add(u32::try_from(held).unwrap_or(u32::MAX));
            self.held_since.get_or_insert(now);
        }
        let Some(since) = self.held_since else {
            return false;
        };
        let due = self.held >= MAX_HELD
            || now.saturating_sub(since) >= self.interval_ns
            || !self.may_hold(now);
        if due {
            self.sent();
        }
        due
    }

    /// Whether frames are being held.
    pub fn holding(&self) -> bool {
        self.held_since.is_some()
    }

    /// Forgets held frames (the caller has sent them).
    pub fn sent(&mut self) {
        self.held = 0;
        self.held_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// Feeds rounds of one frame every `gap` ns from `t`, holding each
    /// when allowed; returns the new time and the rounds that flushed.
    fn rounds(b: &mut TxBatching, t: &mut u64, gap: u64, n: usize) -> Vec<bool> {
        (0..n)
            .map(|_| {
                let hold = b.may_hold(*t);
                *t += gap;
                b.after_round(*t, 1, usize::from(hold))
            })
            .collect()
    }

    #[test]
    fn light_load_never_holds() {
        let mut b = TxBatching::new(DEFAULT_TX_FLUSH_INTERVAL);
        let mut t = 0;
        // 100,000 frames per second, and one request in flight (15 µs).
        for gap in [10 * US, 15 * US] {
            rounds(&mut b, &mut t, gap, 100);
            assert!(!b.may_hold(t));
            assert!(!b.holding());
        }
    }

    #[test]
    fn heavy_load_holds_until_the_interval() {
        let mut b = TxBatching::new(Duration::from_micros(20));
        let mut t = 0;
        // 300,000 frames per second: loaded after a few frames.
        rounds(&mut b, &mut t, 3_300, 40);
        assert!(b.may_hold(t));
        b.sent();
        let flushed = rounds(&mut b, &mut t, 3_300, 14);
        // Held frame by frame, sent once the first has waited 20 µs: one
        // wake-up for 8 frames.
        assert_eq!(flushed.iter().position(|&f| f), Some(7));
        assert_eq!(flushed.iter().filter(|&&f| f).count(), 1);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut b = TxBatching::new(MAX_TX_FLUSH_INTERVAL);
        let mut t = 0;
        rounds(&mut b, &mut t, 1_000, 40);
        b.sent();
        assert!(b.may_hold(t));
        t += US;
        assert!(!b.after_round(t, 8, 8));
        t += US;
        assert!(b.after_round(t, 30, 30), "38 held >= 32");
        assert!(!b.holding());
    }

    #[test]
    fn idle_rounds_send_what_waited_too_long() {
        let mut b = TxBatching::new(Duration::from_micros(20));
        let mut t = 0;
        rounds(&mut b, &mut t, 1_000, 40);
        b.sent();
        t += US;
        assert!(!b.after_round(t, 1, 1));
        // The load stops: an empty round sends once it is gone (well
        // before the 20 µs interval), not with the next frame.
        t += US;
        assert!(!b.after_round(t, 0, 0));
        t += LOAD_GONE_NS;
        assert!(b.after_round(t, 0, 0));
        assert!(!b.may_hold(t));
    }

    #[test]
    fn a_burst_after_silence_is_not_load() {
        let mut b = TxBatching::new(DEFAULT_TX_FLUSH_INTERVAL);
        let mut t = 0;
        rounds(&mut b, &mut t, 1_000, 40);
        assert!(b.may_hold(t));
        b.sent();
        // 1 ms of silence, then one frame: sent at once.
        t += 1_000 * US;
        assert!(!b.may_hold(t));
        assert!(!b.after_round(t, 1, 0));
        assert!(!b.may_hold(t + US), "one frame after a silence is not load");
    }

    #[test]
    fn zero_interval_never_holds() {
        let mut b = TxBatching::new(Duration::ZERO);
        let mut t = 0;
        rounds(&mut b, &mut t, 100, 100);
        assert!(!b.may_hold(t));
        let b = TxBatching::new(Duration::from_secs(5));
        assert_eq!(b.interval_ns, 1_000_000, "capped at 1 ms");
    }
}
