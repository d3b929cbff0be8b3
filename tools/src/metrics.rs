//! Prometheus metrics of the switch, computed at scrape time from the
//! datapath's counters, served over plain HTTP (`GET /metrics`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use datapath::extract::DropReason;
use datapath::shared::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Reads the switch's counters on each scrape.
#[derive(Debug)]
pub struct SwitchCollector {
    shared: Arc<Shared>,
}

type Labels = Vec<(String, String)>;

/// One counter family: integer counts, or seconds as `f64`.
fn counter_family<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    N: EncodeCounterValue + Default + Copy + std::fmt::Debug,
{
    let probe = ConstCounter::new(N::default());
    let mut fam = enc.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, v) in rows {
        let c = ConstCounter::new(*v);
        c.encode(fam.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SwitchCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sh = &self.shared;
        let pt = sh.ports.load_full();
        let l = |k: &str, v: String| vec![(k.to_string(), v)];
        let per_port =
            |f: fn(&datapath::shared::PortCountersSnapshot) -> u64| -> Vec<(Labels, u64)> {
                pt.ports
                    .iter()
                    .map(|p| (l("port", p.name.clone()), f(&p.counters.snapshot())))
                    .collect()
            };
        counter_family(
            &mut enc,
            "ferrovs_port_rx_packets",
            "Frames received per port",
            &per_port(|c| c.rx_packets),
        )?;
        counter_family(
            &mut enc,
            "ferrovs_port_rx_bytes",
            "Bytes received per port",
            &per_port(|c| c.rx_bytes),
        )?;
        counter_family(
            &mut enc,
            "ferrovs_port_tx_packets",
            "Frames sent per port",
            &per_port(|c| c.tx_packets),
        )?;
        counter_family(
            &mut enc,
            "ferrovs_port_tx_bytes",
            "Bytes sent per port",
            &per_port(|c| c.tx_bytes),
        )?;
        counter_family(
            &mut enc,
            "ferrovs_port_tx_dropped",
            "Frames not sent (ring full) per port",
            &per_port(|c| c.tx_dropped),
        )?;
        let sum = |f: fn(&datapath::shared::ThreadStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            sh.threads
                .iter()
                .map(|t| f(t).load(Ordering::Relaxed))
                .sum()
        };
        counter_family(
            &mut enc,
            "ferrovs_flow_cache_hits",
            "Exact-match cache hits",
            &[(vec![], sum(|t| &t.emc_hits))],
        )?;
        counter_family(
            &mut enc,
            "ferrovs_flow_cache_misses",
            "Exact-match cache misses",
            &[(vec![], sum(|t| &t.emc_misses))],
        )?;
        counter_family(
            &mut enc,
            "ferrovs_upcalls",
            "Packets translated through the pipeline (slow path)",
            &[(vec![], sum(|t| &t.upcalls))],
        )?;
        counter_family(
            &mut enc,
            "ferrovs_controller_punts",
            "Packets sent to 'controller' (counted only)",
            &[(vec![], sum(|t| &t.controller))],
        )?;
        counter_family(
            &mut enc,
            "ferrovs_replies_sent",
            "Frames the switch answered with (arp_reply, reject)",
            &[(vec![], sum(|t| &t.replies_sent))],
        )?;
        counter_family(
            &mut enc,
            "ferrovs_packets",
            "Packets processed by poll threads",
            &[(vec![], sum(|t| &t.packets))],
        )?;
        let drops: Vec<(Labels, u64)> = DropReason::ALL
            .iter()
            .map(|r| {
                let n = sh
                    .threads
                    .iter()
                    .map(|t| t.drops[*r as usize].load(Ordering::Relaxed))
                    .sum();
                (l("reason", r.name().to_string()), n)
            })
            .collect();
        counter_family(
            &mut enc,
            "ferrovs_drops",
            "Packets dropped, by reason",
            &drops,
        )?;
        let mut poll = Vec::with_capacity(3 * sh.threads.len());
        for (i, t) in sh.threads.iter().enumerate() {
            for (state, cell) in [
                ("busy", &t.busy_ns),
                ("idle", &t.idle_ns),
                ("asleep", &t.asleep_ns),
            ] {
                let labels = vec![
                    ("thread".to_string(), i.to_string()),
                    ("state".to_string(), state.to_string()),
                ];
                poll.push((labels, cell.load(Ordering::Relaxed) as f64 / 1e9));
            }
        }
        counter_family(
            &mut enc,
            "ferrovs_poll_seconds",
            "Poll thread time: busy (rounds that moved frames), idle (empty rounds, spinning), asleep",
            &poll,
        )?;
        let p = sh.pipeline.load_full();
        let g = ConstGauge::new(p.n_flows() as i64);
        g.encode(enc.encode_descriptor(
            "ferrovs_flows",
            "Installed flows",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serves `/metrics` on `addr` in a background thread.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let mut reg = Registry::default();
    reg.register_collector(Box::new(SwitchCollector { shared }));
    std::thread::Builder::new()
        .name("ferrovs-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let mut body = String::new();
                let (status, ctype) = match prometheus_client::encoding::text::encode(&mut body, &reg) {
                    Ok(()) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    Err(_) => ("500 Internal Server Error", "text/plain"),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datapath::conntrack::CtConfig;

    #[test]
    fn poll_seconds_per_thread_and_state() {
        let shared = Arc::new(Shared::new(2, CtConfig::default()));
        shared.threads[1]
            .busy_ns
            .store(1_500_000_000, Ordering::Relaxed);
        shared.threads[1]
            .asleep_ns
            .store(250_000_000, Ordering::Relaxed);
        let mut reg = Registry::default();
        reg.register_collector(Box::new(SwitchCollector { shared }));
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &reg).expect("encode");
        assert!(
            body.contains("# TYPE ferrovs_poll_seconds counter"),
            "{body}"
        );
        assert!(
            body.contains(r#"ferrovs_poll_seconds_total{thread="1",state="busy"} 1.5"#),
            "{body}"
        );
        assert!(
            body.contains(r#"ferrovs_poll_seconds_total{thread="1",state="asleep"} 0.25"#),
            "{body}"
        );
        assert!(
            body.contains(r#"ferrovs_poll_seconds_total{thread="0",state="idle"} 0.0"#),
            "{body}"
        );
    }
}
