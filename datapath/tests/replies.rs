//! The ferrovs extension actions `arp_reply:MAC` and `reject` with
//! simulated pods (smoltcp TCP/IP stacks on in-memory ports): a pod
//! resolves its gateway and a neighbour through the switch's proxy ARP,
//! and connections to a Service address without endpoints are refused at
//! once (TCP RST, ICMP port unreachable) instead of timing out.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use common::sim_pod::{mac_str, run_until, SimPod};
use datapath::switch::{Switch, SwitchConfig};
use flows::pipeline::{FlowMod, VlanMode};
use flows::syntax::parse_flow;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpAddress, IpEndpoint};

const T: Duration = Duration::from_secs(5);
const GW_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x01];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn add(sw: &Switch, flows: &[String]) {
    let mods: Vec<FlowMod> = flows
        .iter()
        .map(|f| FlowMod::Add(parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}"))))
        .collect();
    sw.apply(&mods).unwrap();
}

/// Counts the ARP requests the switch delivers to `pod`.
fn count_arp(pod: &mut SimPod) -> Rc<Cell<u32>> {
    let n = Rc::new(Cell::new(0));
    let c = n.clone();
    pod.dev.rx_loss = Some(Box::new(move |f: &[u8]| {
        if f.get(12..14) == Some(&[0x08, 0x06]) && f.get(20..22) == Some(&[0, 1]) {
            c.set(c.get() + 1);
        }
        false
    }));
    n
}

/// Two pods on 10.244.1.0/24, gateway 10.244.1.1 (answered by the switch),
/// Service 10.96.0.10 without endpoints (rejected).
fn setup() -> (Switch, SimPod, SimPod) {
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let mut p1 = SimPod::attach(&sw, 1, "pod1", ip("10.244.1.5"), VlanMode::Trunk);
    let p2 = SimPod::attach(&sw, 2, "pod2", ip("10.244.1.6"), VlanMode::Trunk);
    p1.set_gateway(ip("10.244.1.1"));
    let gw = mac_str(GW_MAC);
    add(
        &sw,
        &[
            format!("table=0,priority=200,arp,arp_op=1,arp_tpa=10.244.1.1 actions=arp_reply:{gw}"),
            format!(
                "table=0,priority=200,arp,arp_op=1,arp_tpa={} actions=arp_reply:{}",
                p1.ip,
                mac_str(p1.mac)
            ),
            format!(
                "table=0,priority=200,arp,arp_op=1,arp_tpa={} actions=arp_reply:{}",
                p2.ip,
                mac_str(p2.mac)
            ),
            "table=0,priority=100,ip,nw_dst=10.96.0.10 actions=resubmit(,1)".into(),
            "table=0,priority=0 actions=normal".into(),
            "table=1,priority=10,tcp,tp_dst=80 actions=reject,output:2".into(),
            "table=1,priority=10,udp actions=reject".into(),
        ],
    );
    (sw, p1, p2)
}

#[test]
fn pods_resolve_through_arp_reply() {
    let (sw, mut p1, mut p2) = setup();
    let arp_to_p2 = count_arp(&mut p2);
    let server = p2.tcp_listen(8080);
    let client = p1.tcp_connect(p2.ip, 8080, 41000);
    let ok = run_until(
        &mut [&mut p1, &mut p2],
        |ps| {
            ps[0].tcp(client).state() == State::Established
                && ps[1].tcp(server).state() == State::Established
        },
        T,
    );
    assert!(ok, "handshake after proxy ARP: {:?}", sw.stats());
    assert_eq!(
        arp_to_p2.get(),
        0,
        "pod1's ARP request was answered by the switch, not flooded"
    );
    // Both pods asked (each for the other), the switch answered both.
    wait_stats(&sw, |st| st.replies_sent >= 2);
    assert_eq!(
        p2.tcp(server).remote_endpoint(),
        Some(IpEndpoint::new(IpAddress::Ipv4(p1.ip), 41000))
    );
}

#[test]
fn tcp_to_rejected_service_fails_fast_with_rst() {
    let (sw, mut p1, p2) = setup();
    let start = p1.now;
    let h = p1.tcp_connect(ip("10.96.0.10"), 80, 42000);
    let ok = run_until(
        &mut [&mut p1],
        |ps| ps[0].tcp(h).state() == State::Closed,
        T,
    );
    assert!(
        ok,
        "connect not refused: {:?} {:?}",
        p1.tcp(h).state(),
        sw.stats()
    );
    // A refused SYN, not a timeout (smoltcp retransmits a SYN after 1 s).
    let took = (p1.now - start).total_millis();
    assert!(took < 100, "refused after {took} ms of simulated time");
    // The gateway's ARP reply and the RST.
    wait_stats(&sw, |st| st.replies_sent >= 2);
    let st = sw.stats();
    assert!(
        p2.port.sent.lock().unwrap().is_empty(),
        "reject ends processing: the output after it never happens"
    );
    let no_reply = st.drops.iter().find(|d| d.0 == "no_reply").unwrap().1;
    assert_eq!(no_reply, 0, "{st:?}");
}

#[test]
fn udp_to_rejected_service_gets_port_unreachable() {
    let (sw, mut p1, _p2) = setup();
    let u = p1.udp_bind(5353);
    let errs = p1.icmp_bind_udp(5353);
    p1.udp(u)
        .send_slice(
            b"service?",
            IpEndpoint::new(IpAddress::Ipv4(ip("10.96.0.10")), 53),
        )
        .unwrap();
    let ok = run_until(&mut [&mut p1], |ps| ps[0].icmp(errs).can_recv(), T);
    assert!(ok, "no ICMP error: {:?}", sw.stats());
    let (msg, from) = p1.icmp(errs).recv().unwrap();
    assert_eq!(
        from,
        IpAddress::Ipv4(ip("10.96.0.10")),
        "refused by the ClusterIP"
    );
    assert_eq!(
        &msg[..2],
        &[3, 3],
        "destination unreachable, port unreachable"
    );
    // The quoted datagram is pod1's: its addresses and UDP ports.
    assert_eq!(&msg[8 + 12..8 + 20], &[10, 244, 1, 5, 10, 96, 0, 10]);
    assert_eq!(&msg[28..32], &[0x14, 0xe9, 0, 53]);
    wait_stats(&sw, |st| st.replies_sent >= 2);
}

/// Waits for `n` frames on a port's transmit queue.
fn wait_sent(q: &datapath::port::FrameQueue, n: usize) -> Vec<Vec<u8>> {
    let t = std::time::Instant::now();
    while t.elapsed() < T && q.lock().unwrap().len() < n {
        std::thread::sleep(Duration::from_millis(2));
    }
    q.lock().unwrap().drain(..).collect()
}

/// Waits until the switch's counters satisfy `cond` (they are published
/// once per batch, after its frames are sent).
fn wait_stats(sw: &Switch, cond: impl Fn(&datapath::switch::SwitchStats) -> bool) {
    let t = std::time::Instant::now();
    while t.elapsed() < T && !cond(&sw.stats()) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(cond(&sw.stats()), "{:?}", sw.stats());
}

/// ARP request who-has 10.244.1.1 tell 10.244.1.5 from 02:00:00:00:00:05.
fn arp_request(vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 5]);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 5, 10, 244, 1, 5]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    f
}

/// The ARP reply the switch must send for [`arp_request`] (untagged).
fn arp_reply() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 5];
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[10, 244, 1, 1, 2, 0, 0, 0, 0, 5, 10, 244, 1, 5]);
    f
}

#[test]
fn tagged_request_gets_tagged_reply_on_the_same_port() {
    use datapath::port::MemPort;
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let (a, b) = (MemPort::new("trunk"), MemPort::new("other"));
    let (ai, as_, bs) = (a.inject.clone(), a.sent.clone(), b.sent.clone());
    sw.add_port(1, Box::new(a), VlanMode::Trunk).unwrap();
    sw.add_port(2, Box::new(b), VlanMode::Trunk).unwrap();
    add(
        &sw,
        &[
            format!(
                "priority=10,arp,arp_op=1,arp_tpa=10.244.1.1 actions=arp_reply:{}",
                mac_str(GW_MAC)
            ),
            "priority=0 actions=normal".into(),
        ],
    );
    // Twice: the second one is served by the flow cache.
    for _ in 0..2 {
        ai.lock().unwrap().push_back(arp_request(Some(0x2064)));
    }
    let got = wait_sent(&as_, 2);
    assert_eq!(got.len(), 2);
    let want = arp_reply();
    for g in &got {
        assert_eq!(&g[..12], &want[..12]);
        assert_eq!(&g[12..16], &[0x81, 0x00, 0x20, 0x64], "same tag");
        assert_eq!(&g[16..], &want[12..]);
    }
    wait_stats(&sw, |st| {
        (st.replies_sent, st.upcalls, st.emc_hits) == (2, 1, 1)
    });
    // An ARP reply matching the flow's arp_tpa is not answered.
    let mut not_request = arp_request(None);
    not_request[21] = 2;
    add(
        &sw,
        &[format!(
            "priority=20,arp,arp_tpa=10.244.1.1 actions=arp_reply:{}",
            mac_str(GW_MAC)
        )],
    );
    ai.lock().unwrap().push_back(not_request);
    wait_stats(&sw, |st| st.drops.contains(&("no_reply", 1)));
    assert!(as_.lock().unwrap().is_empty() && bs.lock().unwrap().is_empty());
}

#[test]
fn reply_to_vxlan_goes_back_through_the_tunnel() {
    use datapath::port::MemPort;
    use datapath::shared::VxlanConfig;
    use datapath::vxlan::{decap, encap, TunnelEndpoint};
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let local = ip("192.168.50.1");
    let remote = ip("192.168.50.2");
    let (local_mac, remote_mac) = ([2, 0x50, 0, 0, 0, 1], [2, 0x50, 0, 0, 0, 2]);
    let under = MemPort::new("eth1");
    let (ui, us) = (under.inject.clone(), under.sent.clone());
    let cfg = VxlanConfig {
        underlay: "eth1".into(),
        local_ip: local,
        local_mac,
        remote_ip: None,
        key: None,
        udp_port: 4789,
    };
    sw.add_vxlan_port(10, "vx0", cfg, Some(Box::new(under)), VlanMode::Trunk)
        .unwrap();
    add(
        &sw,
        &[format!(
            "tun_id=77,arp,arp_op=1 actions=arp_reply:{}",
            mac_str(GW_MAC)
        )],
    );
    let inner = arp_request(None);
    let mut outer = vec![0u8; 200];
    let n = encap(
        &inner,
        &mut outer,
        &TunnelEndpoint::new(remote, remote_mac),
        local,
        local_mac,
        77,
        1,
    )
    .unwrap();
    outer.truncate(n);
    ui.lock().unwrap().push_back(outer);
    let got = wait_sent(&us, 1);
    assert_eq!(got.len(), 1, "{:?}", sw.stats());
    let d = decap(&got[0], remote, 4789).expect("a VXLAN packet to the remote");
    assert_eq!((d.vni, d.outer_src), (77, local));
    assert_eq!(&got[0][..6], &remote_mac, "to the learned neighbour");
    assert_eq!(&got[0][d.inner_offset..], &arp_reply()[..]);
    wait_stats(&sw, |st| st.replies_sent == 1);
}
