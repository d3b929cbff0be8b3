//! Session affinity end to end: smoltcp pods on a running switch open TCP
//! connections to a service VIP whose select group has
//! `affinity_timeout`, and the test checks which backend accepts each.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::service::{self, VIP};
use common::sim_pod::{run_until, SimPod};
use datapath::switch::{Switch, SwitchConfig};
use flows::field::Field;
use flows::key::FlowKey;
use flows::pipeline::FlowMod;
use flows::syntax::{parse_flow, parse_group};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;

/// Seconds.
const TIMEOUT: u32 = 2;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The service group over `backends` as (last address byte, weight); the
/// bucket id is the address byte.
fn group(backends: &[(u8, u16)]) -> FlowMod {
    let mut g = format!(
        "group_id=1,type=select,selection_method=hash,fields(nw_src),affinity_timeout={TIMEOUT}"
    );
    for (b, w) in backends {
        g.push_str(&format!(
            ",bucket=bucket_id:{b},weight:{w},actions=ct(commit,table=2,nat(dst=10.0.0.{b}:8080))"
        ));
    }
    FlowMod::AddGroup(parse_group(&g).unwrap())
}

struct Rig {
    sw: Switch,
    client: SimPod,
    backends: Vec<SimPod>,
    listeners: Vec<Vec<SocketHandle>>,
}

impl Rig {
    fn new() -> Rig {
        let sw = Switch::start(&SwitchConfig::default()).unwrap();
        let service::ServicePods {
            client,
            mut backends,
            flows,
        } = service::attach(&sw, 11..=12);
        let mut mods = vec![group(&[(11, 1)])];
        mods.extend(flows.iter().map(|f| FlowMod::Add(parse_flow(f).unwrap())));
        sw.apply(&mods).unwrap();
        let listeners = backends
            .iter_mut()
            .map(|b| (0..20).map(|_| b.tcp_listen_small(8080)).collect())
            .collect();
        Rig {
            sw,
            client,
            backends,
            listeners,
        }
    }

    /// Opens a connection from `sport` to the VIP and returns the address
    /// byte of the backend that accepted it.
    fn connect(&mut self, sport: u16) -> u8 {
        let h = self.client.tcp_connect_small(ip(VIP), 80, sport);
        let mut pods: Vec<&mut SimPod> = std::iter::once(&mut self.client)
            .chain(self.backends.iter_mut())
            .collect();
        let ok = run_until(
            &mut pods,
            |ps| ps[0].tcp(h).state() == State::Established,
            Duration::from_secs(5),
        );
        assert!(ok, "connection from {sport} not established");
        let client_ip = pods[0].ip;
        for (bi, ls) in self.listeners.iter().enumerate() {
            for l in ls {
                let s = pods[bi + 1].tcp(*l);
                if let Some(r) = s.remote_endpoint() {
                    if r.addr == IpAddress::Ipv4(client_ip) && r.port == sport {
                        return pods[bi + 1].ip.octets()[3];
                    }
                }
            }
        }
        panic!("no backend holds the connection from {sport}");
    }
}

#[test]
fn client_keeps_its_backend_until_the_affinity_times_out() {
    let mut rig = Rig::new();
    // The plain hash of the client's address over weights 1 (11) and
    // 1000 (12) picks 12, unless it lands on the single slot of 11.
    let mut k = FlowKey::ZERO;
    k.set(Field::NwSrc, u64::from(u32::from(rig.client.ip)));
    assert_ne!(
        flows::xlate::hash_fields(&k, &[Field::NwSrc]) % 1001,
        0,
        "test assumption: the hash alone picks backend 12"
    );

    // Only backend 11: two connections land there.
    assert_eq!(rig.connect(40000), 11);
    assert_eq!(rig.connect(40001), 11);
    // Backend 12 joins with nearly all the weight: the client stays on 11,
    // and every new connection restarts the timer.
    rig.sw.apply(&[group(&[(11, 1), (12, 1000)])]).unwrap();
    for sport in 40002..40006 {
        assert_eq!(rig.connect(sport), 11, "affinity kept (port {sport})");
    }
    assert!(!rig.sw.shared().affinity.lock().unwrap().is_empty());

    // No new connection for longer than the timeout: the entry expires
    // and the next connection is chosen again, by hash (backend 12).
    std::thread::sleep(Duration::from_millis(u64::from(TIMEOUT) * 1000 + 300));
    rig.sw.expire();
    assert!(rig.sw.shared().affinity.lock().unwrap().is_empty());
    assert_eq!(rig.connect(40010), 12);
    assert_eq!(rig.connect(40011), 12);

    // The group loses affinity_timeout: its entries go at the next expire.
    assert_eq!(rig.sw.shared().affinity.lock().unwrap().len(), 1);
    let plain = parse_group(
        "group_id=1,type=select,bucket=bucket_id:11,actions=ct(commit,table=2,nat(dst=10.0.0.11:8080))",
    )
    .unwrap();
    rig.sw.apply(&[FlowMod::AddGroup(plain)]).unwrap();
    rig.sw.expire();
    assert!(rig.sw.shared().affinity.lock().unwrap().is_empty());
}
