//! The paced UDP generator for the fixed-rate tests, and by default for
//! the maximum-rate tests too (rate 0: no limit): the harness's own
//! AF_XDP sender, run in the sender namespace (`ferrovs-bench pace`).
//!
//! Why not `trafgen -b RATEpps`: trafgen's rate shaper sends RATE packets
//! as fast as it can and then sleeps out the rest of the second, so a
//! "100 kpps" run is one burst at full speed per second. Both AF_XDP
//! switches then lose the part of each burst their rings cannot hold,
//! which measures ring size, not forwarding at 100 kpps. This sender
//! spreads packets evenly: it sends whatever is due every few
//! microseconds, at most [`MAX_BURST`] frames at once.
//!
//! The schedule ([`Pacer`]) is pure; [`run`] does the I/O through the
//! datapath's AF_XDP port (copy mode on a veth), so no unsafe code here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datapath::port::Port;
use datapath::xsk::{XskOptions, XskPort};

use super::gen::{udp_frame, Endpoints, BASE_SPORT, FRAME_LEN};

/// Most frames sent back to back. When the sender falls further behind
/// than this (the CPU was busy elsewhere), the missed slots are skipped
/// rather than sent as one large burst, and counted in [`Pacer::skipped`].
pub const MAX_BURST: u64 = 32;

/// Even pacing at a fixed rate: how many frames are due at a given time.
/// Rate 0 means no limit: [`MAX_BURST`] frames are always due (the
/// maximum-rate tests).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    sent: u64,
    skipped: u64,
}

impl Pacer {
    /// A schedule of `rate` frames per second starting at elapsed time 0
    /// (0: as fast as frames can be sent).
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            sent: 0,
            skipped: 0,
        }
    }

    /// Frames due now, `elapsed` after the start (at most [`MAX_BURST`]).
    pub fn due(&mut self, elapsed: Duration) -> u64 {
        if self.rate == 0 {
            return MAX_BURST;
        }
        let target = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        let behind = target.saturating_sub(self.sent + self.skipped);
        if behind > MAX_BURST {
            self.skipped += behind - MAX_BURST;
            return MAX_BURST;
        }
        behind
    }

    /// Records `n` frames sent.
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// Frames sent so far.
    pub fn total_sent(&self) -> u64 {
        self.sent
    }

    /// Slots skipped because the sender fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Time until the next frame is due, `elapsed` after the start.
    pub fn until_next(&self, elapsed: Duration) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let next = self.sent + self.skipped + 1;
        let at = Duration::from_nanos(
            (u128::from(next) * 1_000_000_000 / u128::from(self.rate)).min(u64::MAX as u128) as u64,
        );
        at.saturating_sub(elapsed)
    }
}

/// What a [`run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceReport {
    /// Frames handed to the kernel.
    pub sent: u64,
    /// Slots skipped (the sender fell behind).
    pub skipped: u64,
    /// Frames refused by a full TX ring (sent again in a later slot).
    pub ring_full: u64,
}

/// Errors of the paced sender.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    /// The AF_XDP port could not be opened.
    #[error("pace: {0}")]
    Open(#[from] datapath::xsk::XskError),
}

/// Sends `flows` UDP flows (round robin, source ports from
/// [`BASE_SPORT`]) from `ep` out of `dev` at `rate` frames/s for `dur`
/// or until `stop` is set.
pub fn run(
    dev: &str,
    ep: &Endpoints,
    flows: u16,
    rate: u64,
    dur: Duration,
    stop: &AtomicBool,
) -> Result<PaceReport, PaceError> {
    let frames: Vec<[u8; FRAME_LEN]> = (0..flows.max(1))
        .map(|i| udp_frame(ep, BASE_SPORT.wrapping_add(i)))
        .collect();
    let port = Box::new(XskPort::open(dev, XskOptions::default())?);
    // The receive half stays open (the socket needs it) but is never read:
    // nothing is sent back to the generator.
    let (_rx, mut tx) = port.split();
    let mut pacer = Pacer::new(rate);
    let mut ring_full = 0u64;
    let mut next_flow = 0usize;
    let mut batch: Vec<&[u8]> = Vec::with_capacity(MAX_BURST as usize);
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= dur || stop.load(Ordering::Relaxed) {
            break;
        }
        let due = pacer.due(elapsed);
        if due == 0 {
            let wait = pacer.until_next(elapsed);
            if wait > Duration::from_micros(200) {
                std::thread::sleep(wait - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        batch.clear();
        for _ in 0..due {
            batch.push(&frames[next_flow]);
            next_flow = (next_flow + 1) % frames.len();
        }
        let (n, _) = tx.send_batch(&batch);
        tx.flush();
        // Refused frames stay due; rewind the flow cursor over them.
        let refused = batch.len() - n;
        ring_full += refused as u64;
        next_flow = (next_flow + frames.len() - refused % frames.len()) % frames.len();
        pacer.sent(n as u64);
    }
    Ok(PaceReport {
        sent: pacer.total_sent(),
        skipped: pacer.skipped(),
        ring_full,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let mut p = Pacer::new(0);
        for t in [0, 1, 1000] {
            assert_eq!(p.due(ms(t)), MAX_BURST);
            assert_eq!(p.until_next(ms(t)), Duration::ZERO);
            p.sent(MAX_BURST);
        }
        assert_eq!((p.total_sent(), p.skipped()), (3 * MAX_BURST, 0));
    }

    #[test]
    fn due_follows_the_rate_evenly() {
        let mut p = Pacer::new(100_000);
        assert_eq!(p.due(Duration::ZERO), 0);
        // 10 µs per frame at 100 kpps.
        assert_eq!(p.due(Duration::from_micros(10)), 1);
        p.sent(1);
        assert_eq!(p.due(Duration::from_micros(15)), 0);
        assert_eq!(p.due(Duration::from_micros(30)), 2);
        p.sent(2);
        assert_eq!(
            p.until_next(Duration::from_micros(30)),
            Duration::from_micros(10)
        );
    }

    #[test]
    fn falling_behind_skips_instead_of_bursting() {
        let mut p = Pacer::new(1_000_000);
        // 10 ms late: 10,000 frames due, only MAX_BURST are sent at once.
        assert_eq!(p.due(ms(10)), MAX_BURST);
        assert_eq!(p.skipped(), 10_000 - MAX_BURST);
        p.sent(MAX_BURST);
        assert_eq!(p.due(ms(10)), 0);
        // Back on schedule afterwards: 1 µs per frame.
        assert_eq!(p.due(ms(10) + Duration::from_micros(5)), 5);
    }

    #[test]
    fn a_second_at_the_rate_sends_the_rate() {
        let mut p = Pacer::new(300_000);
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(1) {
            let n = p.due(t);
            p.sent(n);
            t += Duration::from_micros(7);
        }
        let n = p.due(Duration::from_secs(1));
        p.sent(n);
        assert_eq!(p.total_sent(), 300_000);
        assert_eq!(p.skipped(), 0);
    }
}
