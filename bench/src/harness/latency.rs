//! UDP request/response latency: a server that echoes datagrams and a
//! client that keeps one request in flight, rotating over `flows` sockets
//! (one source port each), and reports the round-trip time p50/p99. Both
//! run as hidden subcommands of `ferrovs-bench` inside the namespaces.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Server port.
pub const PORT: u16 = 7000;
/// First client source port; socket `i` uses `BASE_PORT + i`.
pub const BASE_PORT: u16 = 30_000;

/// Result of a client run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Completed round trips.
    pub count: u64,
    /// Requests without a response within the timeout.
    pub lost: u64,
    /// Median, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile, µs.
    pub p99_us: Option<f64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    /// From round-trip times in µs and the number lost.
    pub fn from_rtts(mut rtts: Vec<f64>, lost: u64) -> Summary {
        rtts.sort_by(|a, b| a.total_cmp(b));
        Summary {
            count: rtts.len() as u64,
            lost,
            p50_us: percentile(&rtts, 50.0),
            p99_us: percentile(&rtts, 99.0),
        }
    }

    /// One line: `count lost p50 p99` (`-` for none).
    pub fn line(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        format!(
            "{} {} {} {}",
            self.count,
            self.lost,
            f(self.p50_us),
            f(self.p99_us)
        )
    }

    /// Parses [`Summary::line`].
    pub fn parse(s: &str) -> Option<Summary> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let opt = |x: &str| {
            if x == "-" {
                Some(None)
            } else {
                x.parse::<f64>().ok().map(Some)
            }
        };
        match f.as_slice() {
            [c, l, p50, p99] => Some(Summary {
                count: c.parse().ok()?,
                lost: l.parse().ok()?,
                p50_us: opt(p50)?,
                p99_us: opt(p99)?,
            }),
            _ => None,
        }
    }
}

/// Echoes every datagram on `port` back to its sender, forever.
pub fn serve(port: u16) -> std::io::Result<()> {
    let sock = UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
    }
}

/// Requests over `flows` sockets in turn for `dur` after one warm-up
/// round over all sockets (not counted: it sets up flows and caches).
pub fn client(dst: SocketAddr, flows: u16, dur: Duration) -> std::io::Result<Summary> {
    let mut socks = Vec::with_capacity(flows.into());
    for i in 0..flows.max(1) {
        let s = UdpSocket::bind(("0.0.0.0", BASE_PORT + i))?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        socks.push(s);
    }
    let mut buf = [0u8; 64];
    let mut seq: u64 = 0;
    let mut once = |s: &UdpSocket, seq: u64| -> std::io::Result<Option<Duration>> {
        let req = seq.to_be_bytes();
        let t0 = Instant::now();
        s.send(&req)?;
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 8 && buf[..8] == req => return Ok(Some(t0.elapsed())),
                Ok(_) => continue, // a late answer to an earlier request
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    };
    for s in &socks {
        seq += 1;
        once(s, seq)?;
    }
    let mut rtts = Vec::new();
    let mut lost = 0;
    let end = Instant::now() + dur;
    let mut i = 0;
    while Instant::now() < end {
        seq += 1;
        match once(&socks[i % socks.len()], seq)? {
            Some(d) => rtts.push(d.as_secs_f64() * 1e6),
            None => lost += 1,
        }
        i += 1;
    }
    Ok(Summary::from_rtts(rtts, lost))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_line_round_trips() {
        let s = Summary::from_rtts(vec![30.0, 10.0, 20.0], 2);
        assert_eq!(s.line(), "3 2 20.00 30.00");
        assert_eq!(Summary::parse(&s.line()), Some(s));
        let none = Summary::from_rtts(vec![], 5);
        assert_eq!(Summary::parse(&none.line()), Some(none));
        assert_eq!(Summary::parse("x"), None);
    }

    #[test]
    fn loopback_round_trips() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        });
        // Ports BASE_PORT.. may be taken on a busy box; one flow is enough.
        let r = client(addr, 1, Duration::from_millis(100)).unwrap();
        assert!(r.count > 10, "{r:?}");
        assert!(r.p50_us.unwrap() <= r.p99_us.unwrap());
    }
}
