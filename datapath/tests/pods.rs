//! Pipeline tests with simulated pods: smoltcp TCP/IP stacks on in-memory
//! ports of a running switch, so real TCP handshakes, ARP, ICMP and UDP go
//! through `normal`, conntrack, NAT, select groups and VLANs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::service::{self, GW_MAC, VIP};
use common::sim_pod::{run_for, run_until, SimPod};
use datapath::conntrack::{ConnTrack, CtConfig, CtTimeouts, TcpState};
use datapath::switch::{Switch, SwitchConfig};
use flows::pipeline::{FlowMod, VlanMode};
use flows::syntax::{parse_flow, parse_group, parse_packet};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpAddress, IpEndpoint};

const T: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn add(sw: &Switch, flows: &[&str]) {
    let mods: Vec<FlowMod> = flows
        .iter()
        .map(|f| FlowMod::Add(parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}"))))
        .collect();
    sw.apply(&mods).unwrap();
}

fn add_group(sw: &Switch, text: &str) {
    sw.apply(&[FlowMod::AddGroup(parse_group(text).unwrap())])
        .unwrap();
}

fn start() -> Switch {
    Switch::start(&SwitchConfig::default()).unwrap()
}

fn drops(sw: &Switch, reason: &str) -> u64 {
    sw.stats()
        .drops
        .iter()
        .find(|(n, _)| *n == reason)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// Polls `pods` until the switch has counted a flow drop beyond `before`
/// (drop counters are published once per batch, so poll rather than look).
fn wait_drop(sw: &Switch, pods: &mut [&mut SimPod], before: u64) {
    let ok = run_until(pods, |_| drops(sw, "action_drop") > before, T);
    assert!(ok, "no packet was dropped by a flow");
}

/// Deterministic test payload.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}

/// Waits until TCP sockets `ha` on pod 0 and `hb` on pod 1 are established.
fn establish(a: &mut SimPod, ha: SocketHandle, b: &mut SimPod, hb: SocketHandle) {
    establish_on(None, a, ha, b, hb)
}

/// Trunk pods 10.0.0.1 (port 1) and 10.0.0.2 (port 2) on `sw` with
/// `flows`, and a TCP connection from pod1's `sport` to pod2's port 80:
/// (pod1, its client socket, pod2, its server socket).
fn connected_pods(
    sw: &Switch,
    flows: &[&str],
    sport: u16,
) -> (SimPod, SocketHandle, SimPod, SocketHandle) {
    let mut p1 = SimPod::attach(sw, 1, "pod1", ip("10.0.0.1"), VlanMode::Trunk);
    let mut p2 = SimPod::attach(sw, 2, "pod2", ip("10.0.0.2"), VlanMode::Trunk);
    add(sw, flows);
    let server = p2.tcp_listen(80);
    let client = p1.tcp_connect(p2.ip, 80, sport);
    establish(&mut p1, client, &mut p2, server);
    (p1, client, p2, server)
}

/// [`establish`], printing the switch's state if it fails.
fn establish_on(
    sw: Option<&Switch>,
    a: &mut SimPod,
    ha: SocketHandle,
    b: &mut SimPod,
    hb: SocketHandle,
) {
    let ok = run_until(
        &mut [a, b],
        |ps| {
            ps[0].tcp(ha).state() == State::Established
                && ps[1].tcp(hb).state() == State::Established
        },
        T,
    );
    if !ok {
        if let Some(sw) = sw {
            let ct: Vec<String> = sw
                .shared()
                .ct
                .lock()
                .unwrap()
                .dump()
                .map(|c| c.to_string())
                .collect();
            eprintln!("stats {:?}\nct {ct:#?}", sw.stats());
        }
        panic!(
            "TCP handshake did not complete: {:?} {:?} / {:?} {:?}",
            a.tcp(ha).state(),
            a.now,
            b.tcp(hb).state(),
            b.now
        );
    }
}

/// Sends `data` from socket `ha` of pod 0 to socket `hb` of pod 1 and
/// returns what pod 1 received.
fn transfer(
    a: &mut SimPod,
    ha: SocketHandle,
    b: &mut SimPod,
    hb: SocketHandle,
    data: &[u8],
) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65536];
    run_until(
        &mut [a, b],
        |ps| {
            let s = ps[0].tcp(ha);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            let r = ps[1].tcp(hb);
            while r.can_recv() {
                let n = r.recv_slice(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= data.len()
        },
        T,
    );
    got
}

#[test]
fn tcp_through_a_napping_poll_thread() {
    // poll_max_sleep_us: the poll thread naps between small batches.
    let sw = Switch::start(&SwitchConfig {
        max_sleep: std::time::Duration::from_micros(50),
        ..SwitchConfig::default()
    })
    .unwrap();
    let (mut p1, client, mut p2, server) = connected_pods(&sw, &["actions=normal"], 40000);
    let data = payload(64 * 1024, 3);
    let got = transfer(&mut p1, client, &mut p2, server, &data);
    assert!(got == data, "64 KB intact through a napping poll thread");
}

#[test]
fn tcp_handshake_and_data_through_normal() {
    let sw = start();
    let (mut p1, client, mut p2, server) = connected_pods(&sw, &["actions=normal"], 40000);
    assert_eq!(
        p2.tcp(server).remote_endpoint(),
        Some(IpEndpoint::new(IpAddress::Ipv4(p1.ip), 40000))
    );

    let data = payload(100 * 1024, 7);
    let got = transfer(&mut p1, client, &mut p2, server, &data);
    assert_eq!(got.len(), data.len(), "all 100 KB arrived");
    assert!(got == data, "data intact");

    // Orderly close from both ends.
    p1.tcp(client).close();
    let ok = run_until(
        &mut [&mut p1, &mut p2],
        |ps| {
            if ps[1].tcp(server).state() == State::CloseWait {
                ps[1].tcp(server).close();
            }
            matches!(ps[0].tcp(client).state(), State::TimeWait | State::Closed)
                && ps[1].tcp(server).state() == State::Closed
        },
        T,
    );
    assert!(ok, "close did not complete");
    let st = sw.stats();
    assert_eq!(drops(&sw, "no_flow"), 0);
    assert!(st.emc_hits > st.upcalls, "cache serves the bulk: {st:?}");
}

#[test]
fn tcp_through_two_poll_threads() {
    // Ports spread over two poll threads: the pods' frames cross threads
    // and conntrack is shared.
    let sw = Switch::start(&SwitchConfig {
        threads: 2,
        ..SwitchConfig::default()
    })
    .unwrap();
    let (mut p1, client, mut p2, server) = connected_pods(&sw, FIREWALL, 40002);
    let data = payload(64 * 1024, 3);
    assert!(transfer(&mut p1, client, &mut p2, server, &data) == data);
    assert!(transfer(&mut p2, server, &mut p1, client, &data) == data);
}

/// OVS-style stateful ACL: only port 1 may open connections.
const FIREWALL: &[&str] = &[
    "table=0,priority=100,ip,ct_state=-trk actions=ct(table=1)",
    "table=0,priority=90,arp actions=normal",
    "table=1,priority=100,ip,ct_state=+trk+new,in_port=1 actions=ct(commit),normal",
    "table=1,priority=100,ip,ct_state=+trk+est actions=normal",
    "table=1,priority=90,ip,ct_state=+trk+new actions=drop",
];

#[test]
fn conntrack_firewall_allows_replies_only() {
    let sw = start();
    // Allowed direction: handshake, data, replies.
    let (mut p1, client, mut p2, server) = connected_pods(&sw, FIREWALL, 40001);
    let data = payload(20 * 1024, 1);
    assert!(transfer(&mut p1, client, &mut p2, server, &data) == data);
    let back = payload(5000, 2);
    assert!(transfer(&mut p2, server, &mut p1, client, &back) == back);

    // Denied direction: pod2's SYNs are dropped, pod1's listener never hears.
    let drops_before = drops(&sw, "action_drop");
    let l1 = p1.tcp_listen(22);
    let c2 = p2.tcp_connect(p1.ip, 22, 50000);
    wait_drop(&sw, &mut [&mut p1, &mut p2], drops_before);
    run_for(&mut [&mut p1, &mut p2], 1500);
    assert_eq!(p2.tcp(c2).state(), State::SynSent);
    assert_eq!(p1.tcp(l1).state(), State::Listen);

    // conntrack holds the established connection (and nothing for port 22,
    // since the denied SYN was never committed).
    let conns: Vec<_> = sw.shared().ct.lock().unwrap().dump().collect();
    let c = conns
        .iter()
        .find(|c| c.orig.dport == 80)
        .unwrap_or_else(|| panic!("no conn in {conns:?}"));
    assert_eq!((c.orig.src, c.orig.dst), (p1.ip, p2.ip));
    assert_eq!((c.orig.sport, c.reply.sport), (40001, 80));
    assert_eq!(c.tcp_state, Some(TcpState::Established), "{c}");
    assert!(conns.iter().all(|c| c.orig.dport != 22), "{conns:?}");
    let line = c.to_string();
    assert!(
        line.starts_with("tcp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=40001,dport=80)"),
        "{line}"
    );

    // Orderly close: conntrack follows both FINs to TIME_WAIT.
    p1.tcp(client).close();
    let ok = run_until(
        &mut [&mut p1, &mut p2],
        |ps| {
            if ps[1].tcp(server).state() == State::CloseWait {
                ps[1].tcp(server).close();
            }
            ps[1].tcp(server).state() == State::Closed
        },
        T,
    );
    assert!(ok, "close through the firewall");
    let c = sw
        .shared()
        .ct
        .lock()
        .unwrap()
        .dump()
        .find(|c| c.orig.dport == 80)
        .unwrap();
    assert_eq!(c.tcp_state, Some(TcpState::TimeWait), "{c}");

    // Reusing the same ports while conntrack is in TIME_WAIT: the new SYN
    // reopens the connection.
    p1.sockets.remove(client);
    p2.sockets.remove(server);
    let server = p2.tcp_listen(80);
    let client = p1.tcp_connect(p2.ip, 80, 40001);
    establish_on(Some(&sw), &mut p1, client, &mut p2, server);
    assert!(transfer(&mut p1, client, &mut p2, server, b"again") == b"again");

    // Trace of a recirculated reply packet: starts in table 1 with the
    // conntrack state the first pass gave it.
    let key = parse_packet(
        "recirc_id=2,ct_state=+trk+est,in_port=2,tcp,dl_src=02:00:00:00:00:02,\
         dl_dst=02:00:00:00:00:01,nw_src=10.0.0.2,nw_dst=10.0.0.1,tp_src=80,tp_dst=40001",
    )
    .unwrap();
    let (x, t) = sw.trace(&key);
    let text = flows::trace::format_trace("br0", &key, &x, &t);
    assert!(
        text.contains("recirc_id=0x2") || text.contains("recirc_id=2"),
        "{text}"
    );
    assert!(text.contains("ct_state=+est+trk"), "{text}");
    match t.events.first() {
        Some(flows::xlate::TraceEvent::Table { table, flow, .. }) => {
            assert_eq!(*table, 1, "{text}");
            let f = flow.as_ref().expect("matched a flow");
            let shown = flows::syntax::format_match(&f.spec.m, f.spec.priority);
            assert!(shown.contains("+est"), "{shown}");
        }
        e => panic!("unexpected first event {e:?}\n{text}"),
    }
    assert_eq!(x.actions, vec![flows::xlate::DpAction::Output(1)], "{text}");
}

/// TCP flags of an untagged IPv4/TCP frame, `None` for anything else.
fn tcp_flags(f: &[u8]) -> Option<u8> {
    if f.get(12..14)? != [0x08, 0x00] || *f.get(23)? != 6 {
        return None;
    }
    let ihl = (f.get(14)? & 0x0f) as usize * 4;
    f.get(14 + ihl + 13).copied()
}

#[test]
fn lost_handshake_ack_recovered_through_conntrack() {
    // The client's final ACK passes the switch (conntrack now says
    // ESTABLISHED) but is lost before the server. The server retransmits
    // its SYN+ACK; conntrack must let that through (as OVS and Linux do)
    // so that the client re-acknowledges it. The client sends nothing
    // else, as with server-speaks-first protocols (SSH, SMTP).
    let sw = start();
    let mut p1 = SimPod::attach(&sw, 1, "pod1", ip("10.0.0.1"), VlanMode::Trunk);
    let mut p2 = SimPod::attach(&sw, 2, "pod2", ip("10.0.0.2"), VlanMode::Trunk);
    add(&sw, FIREWALL);
    let mut lost = false;
    p2.dev.rx_loss = Some(Box::new(move |f| {
        if !lost && tcp_flags(f) == Some(0x10) {
            lost = true;
            return true;
        }
        false
    }));
    let server = p2.tcp_listen(22);
    let client = p1.tcp_connect(p2.ip, 22, 40100);
    establish_on(Some(&sw), &mut p1, client, &mut p2, server);
    let banner = b"SSH-2.0-ferrovs\r\n".to_vec();
    assert!(transfer(&mut p2, server, &mut p1, client, &banner) == banner);
    assert_eq!(drops(&sw, "action_drop"), 0);
}

fn vip_group(backends: &[u8]) -> String {
    let mut g = "group_id=1,type=select".to_string();
    for b in backends {
        g.push_str(&format!(
            ",bucket=actions=ct(commit,table=2,nat(dst=10.0.0.{b}:8080))"
        ));
    }
    g
}

#[test]
fn dnat_service_vip_to_backends_with_select_group() {
    let sw = start();
    let service::ServicePods {
        mut client,
        mut backends,
        flows,
    } = service::attach(&sw, 11..=13);
    let flows: Vec<&str> = flows.iter().map(String::as_str).collect();
    // The group first: flows may only name groups that exist (as in OVS).
    add_group(&sw, &vip_group(&[11, 12, 13]));
    add(&sw, &flows);

    // Each backend can accept every connection: 45 listeners on 8080.
    let listeners: Vec<Vec<SocketHandle>> = backends
        .iter_mut()
        .map(|b| (0..45).map(|_| b.tcp_listen_small(8080)).collect())
        .collect();
    let vip = ip(VIP);

    // Client connections from `ports` to the VIP.
    let open = |client: &mut SimPod, ports: std::ops::Range<u16>| -> Vec<(u16, SocketHandle)> {
        ports
            .map(|p| (p, client.tcp_connect_small(vip, 80, p)))
            .collect()
    };
    // Waits for `conns` to be established, echoes a message on each, and
    // returns how many of them each backend holds.
    let round =
        |client: &mut SimPod, backends: &mut [SimPod], conns: &[(u16, SocketHandle)], tag: &str| {
            let ports: Vec<u16> = conns.iter().map(|(p, _)| *p).collect();
            let msgs: HashMap<u16, Vec<u8>> = ports
                .iter()
                .map(|p| (*p, format!("{tag} from {p} ").repeat(50).into_bytes()))
                .collect();
            let mut sent: HashMap<u16, usize> = HashMap::new();
            let mut echoed: HashMap<u16, Vec<u8>> = HashMap::new();
            let mut pods: Vec<&mut SimPod> =
                std::iter::once(client).chain(backends.iter_mut()).collect();
            let ok = run_until(
                &mut pods,
                |ps| {
                    // Backends echo whatever they receive.
                    for (bi, ls) in listeners.iter().enumerate() {
                        for h in ls {
                            let s = ps[bi + 1].tcp(*h);
                            let mut buf = [0u8; 4096];
                            while s.can_recv() && s.can_send() {
                                let n = s.recv_slice(&mut buf).unwrap();
                                assert_eq!(s.send_slice(&buf[..n]).unwrap(), n);
                            }
                        }
                    }
                    let mut done = true;
                    for (p, h) in conns {
                        let s = ps[0].tcp(*h);
                        if s.state() != State::Established {
                            done = false;
                            continue;
                        }
                        // Un-NAT: the client only ever talks to the VIP.
                        assert_eq!(
                            s.remote_endpoint(),
                            Some(IpEndpoint::new(IpAddress::Ipv4(vip), 80))
                        );
                        let m = &msgs[p];
                        let at = sent.entry(*p).or_default();
                        if *at < m.len() && s.can_send() {
                            *at += s.send_slice(&m[*at..]).unwrap();
                        }
                        let e = echoed.entry(*p).or_default();
                        let mut buf = [0u8; 4096];
                        while s.can_recv() {
                            let n = s.recv_slice(&mut buf).unwrap();
                            e.extend_from_slice(&buf[..n]);
                        }
                        if e.len() < m.len() {
                            done = false;
                        }
                    }
                    done
                },
                Duration::from_secs(8),
            );
            assert!(
                ok,
                "not all connections echoed: {} of {}",
                echoed.values().filter(|e| !e.is_empty()).count(),
                conns.len()
            );
            for p in &ports {
                assert!(echoed[p] == msgs[p], "echo intact on port {p}");
            }
            // Which backend took which connection (backends see the client's
            // real address and port, and their own 8080).
            let client_ip = pods[0].ip;
            let mut per_backend = [0usize; 3];
            for (bi, ls) in listeners.iter().enumerate() {
                for h in ls {
                    let s = pods[bi + 1].tcp(*h);
                    if let Some(r) = s.remote_endpoint() {
                        let IpAddress::Ipv4(a) = r.addr;
                        if a == client_ip && ports.contains(&r.port) {
                            assert_eq!(s.local_endpoint().unwrap().port, 8080);
                            per_backend[bi] += 1;
                        }
                    }
                }
            }
            per_backend
        };

    let c1 = open(&mut client, 41000..41030);
    let first = round(&mut client, &mut backends, &c1, "hello");
    assert_eq!(first.iter().sum::<usize>(), 30, "{first:?}");
    assert!(
        first.iter().all(|&n| n >= 1),
        "every backend used: {first:?}"
    );

    // conntrack shows DNAT entries: orig to the VIP, reply from a backend.
    {
        let ct = sw.shared().ct.lock().unwrap();
        let nat: Vec<_> = ct.dump().filter(|c| c.orig.dst == vip).collect();
        assert!(nat.len() >= 30, "{nat:?}");
        for c in &nat {
            assert_eq!(c.reply.sport, 8080, "{c}");
            assert!([11, 12, 13].contains(&c.reply.src.octets()[3]), "{c}");
        }
    }

    // Keep the connections backend 13 holds; close the others.
    let on13: Vec<u16> = sw
        .shared()
        .ct
        .lock()
        .unwrap()
        .dump()
        .filter(|c| c.orig.dst == vip && c.reply.src == ip("10.0.0.13"))
        .map(|c| c.orig.sport)
        .collect();
    let (keep, close): (Vec<_>, Vec<_>) = c1.into_iter().partition(|(p, _)| on13.contains(p));
    assert_eq!(keep.len(), first[2]);
    for (_, h) in &close {
        client.tcp(*h).abort();
    }

    // Drop backend 13 from the service: new connections go to 11 and 12.
    add_group(&sw, &vip_group(&[11, 12]));
    let c2 = open(&mut client, 42000..42015);
    let second = round(&mut client, &mut backends, &c2, "hello again");
    assert_eq!(second.iter().sum::<usize>(), 15, "{second:?}");
    assert_eq!(
        second[2], 0,
        "removed backend got new connections: {second:?}"
    );
    // ... while its established connections keep working (conntrack, not
    // the group, decides for them, as in OVS).
    let again = round(&mut client, &mut backends, &keep, "still there");
    assert_eq!(again, [0, 0, keep.len()]);
}

#[test]
fn snat_masquerade_port_range() {
    let sw = start();
    let mut p1 = SimPod::attach(&sw, 1, "pod1", ip("10.0.0.1"), VlanMode::Trunk);
    let mut p2 = SimPod::attach(&sw, 2, "pod2", ip("10.0.0.2"), VlanMode::Trunk);
    // Nobody owns 10.0.0.100; pod2 sends replies to a router MAC the
    // switch rewrites.
    p2.add_static_neighbor(ip("10.0.0.100"), GW_MAC);
    add(
        &sw,
        &[
            "table=0,priority=100,ip,ct_state=-trk actions=ct(table=1,nat)",
            "table=0,priority=90,arp actions=normal",
            "table=1,ip,ct_state=+trk+new,in_port=1 actions=ct(commit,nat(src=10.0.0.100:40000-40010)),output:2",
            "table=1,ip,ct_state=+trk+est,in_port=1 actions=output:2",
            "table=1,ip,ct_state=+trk+est,in_port=2 actions=mod_dl_dst:02:00:00:00:00:01,output:1",
            "table=1,ip,ct_state=+trk+rel,in_port=2 actions=mod_dl_dst:02:00:00:00:00:01,output:1",
        ],
    );
    // ARP from pod1 for pod2 is answered by pod2 through `normal`.
    let servers: Vec<SocketHandle> = (0..3).map(|_| p2.tcp_listen(80)).collect();
    let mut seen = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let c = p1.tcp_connect(p2.ip, 80, 33000 + i as u16);
        establish_on(Some(&sw), &mut p1, c, &mut p2, *s);
        let r = p2.tcp(*s).remote_endpoint().unwrap();
        assert_eq!(
            r.addr,
            IpAddress::Ipv4(ip("10.0.0.100")),
            "pod2 sees the SNAT address"
        );
        assert!(
            (40000..=40010).contains(&r.port),
            "port {} in range",
            r.port
        );
        seen.push(r.port);
        let data = payload(3000, i as u8);
        assert!(transfer(&mut p1, c, &mut p2, *s, &data) == data);
        assert!(
            transfer(&mut p2, *s, &mut p1, c, &data) == data,
            "replies reach pod1"
        );
    }
    eprintln!("snat ports {seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "distinct SNAT ports: {seen:?}");

    // ICMP errors are related and un-NATed inside too: UDP from pod1 to a
    // closed port of pod2 goes out as 10.0.0.100:4000x; pod2's port
    // unreachable must come back with the embedded header rewritten to
    // pod1's own address and port (and every checksum right), or pod1's
    // stack does not relate it to its UDP socket.
    let u1 = p1.udp_bind(33100);
    let errs = p1.icmp_bind_udp(33100);
    p1.udp(u1)
        .send_slice(b"anyone?", IpEndpoint::new(IpAddress::Ipv4(p2.ip), 9999))
        .unwrap();
    let ok = run_until(&mut [&mut p1, &mut p2], |ps| ps[0].icmp(errs).can_recv(), T);
    assert!(ok, "port unreachable related to pod1's UDP socket");
    let (_, from) = p1.icmp(errs).recv().unwrap();
    assert_eq!(from, IpAddress::Ipv4(p2.ip));
    assert!(sw
        .shared()
        .ct
        .lock()
        .unwrap()
        .dump()
        .any(|c| c.orig.proto == 17 && c.orig.sport == 33100 && c.reply.dst == ip("10.0.0.100")));
}

#[test]
fn icmp_through_conntrack_and_vlan() {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};

    let sw = start();
    let mut p1 = SimPod::attach(&sw, 1, "pod1", ip("10.0.0.1"), VlanMode::Access(10));
    let mut p2 = SimPod::attach(&sw, 2, "pod2", ip("10.0.0.2"), VlanMode::Access(10));
    let mut p3 = SimPod::attach(&sw, 3, "pod3", ip("10.0.0.3"), VlanMode::Access(20));
    add(
        &sw,
        &[
            "table=0,priority=100,icmp,ct_state=-trk actions=ct(table=1)",
            "table=0,priority=90,arp actions=normal",
            "table=1,priority=100,icmp,icmp_type=8,ct_state=+trk+new actions=ct(commit),normal",
            // Later requests of the same id are +est too; an echo reply
            // passes only as +est.
            "table=1,priority=100,icmp,ct_state=+trk+est actions=normal",
            "table=1,priority=90,icmp actions=drop",
        ],
    );
    let echo = |ident: u16, seq_no: u16, reply: bool| {
        let data = b"ferrovs ping";
        let repr = if reply {
            Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            }
        } else {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
        };
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut b),
            &ChecksumCapabilities::default(),
        );
        b
    };
    let s1 = p1.icmp_bind(0x1234);
    let mut replies = 0;
    for seq in 0..3u16 {
        p1.icmp(s1)
            .send_slice(&echo(0x1234, seq, false), IpAddress::Ipv4(p2.ip))
            .unwrap();
        let ok = run_until(
            &mut [&mut p1, &mut p2, &mut p3],
            |ps| {
                let s = ps[0].icmp(s1);
                if s.can_recv() {
                    let (b, from) = s.recv().unwrap();
                    let pkt = Icmpv4Packet::new_checked(b).unwrap();
                    let r = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).unwrap();
                    assert_eq!(from, IpAddress::Ipv4(ip("10.0.0.2")));
                    assert!(
                        matches!(r, Icmpv4Repr::EchoReply { ident: 0x1234, seq_no, .. } if seq_no == seq),
                        "{r:?}"
                    );
                    replies += 1;
                    return true;
                }
                false
            },
            T,
        );
        assert!(ok, "echo reply {seq} arrived");
    }
    assert_eq!(replies, 3);
    let conns: Vec<_> = sw.shared().ct.lock().unwrap().dump().collect();
    assert!(
        conns
            .iter()
            .any(|c| c.orig.proto == 1 && c.orig.sport == 0x1234 && c.orig.src == p1.ip),
        "{conns:?}"
    );

    // pod3 is on VLAN 20: same subnet, but unreachable (ARP never answered).
    let s13 = p1.icmp_bind(0x3333);
    p1.icmp(s13)
        .send_slice(&echo(0x3333, 0, false), IpAddress::Ipv4(p3.ip))
        .unwrap();
    run_for(&mut [&mut p1, &mut p2, &mut p3], 300);
    assert!(!p1.icmp(s13).can_recv(), "VLAN 20 reached from VLAN 10");
    assert_eq!(p3.dev.rx_frames, 0, "pod3 saw VLAN 10 traffic");

    // An echo reply nobody asked for is not +est: dropped.
    let drops_before = drops(&sw, "action_drop");
    let s_unsolicited = p1.icmp_bind(0x2222);
    let s2 = p2.icmp_bind(0x2222);
    p2.icmp(s2)
        .send_slice(&echo(0x2222, 9, true), IpAddress::Ipv4(p1.ip))
        .unwrap();
    wait_drop(&sw, &mut [&mut p1, &mut p2, &mut p3], drops_before);
    run_for(&mut [&mut p1, &mut p2, &mut p3], 100);
    assert!(
        !p1.icmp(s_unsolicited).can_recv(),
        "unsolicited reply delivered"
    );
}

#[test]
fn udp_conntrack_timeout() {
    let sw = start();
    // Short UDP timeouts so the switch's own clock can expire the entry.
    *sw.shared().ct.lock().unwrap() = ConnTrack::new(CtConfig {
        timeouts: CtTimeouts {
            udp_first: 300,
            udp_multiple: 300,
            ..CtTimeouts::default()
        },
        ..CtConfig::default()
    });
    let mut p1 = SimPod::attach(&sw, 1, "pod1", ip("10.0.0.1"), VlanMode::Trunk);
    let mut p2 = SimPod::attach(&sw, 2, "pod2", ip("10.0.0.2"), VlanMode::Trunk);
    add(&sw, FIREWALL);
    let u1 = p1.udp_bind(5000);
    let u2 = p2.udp_bind(6000);
    let to2 = IpEndpoint::new(IpAddress::Ipv4(p2.ip), 6000);
    let to1 = IpEndpoint::new(IpAddress::Ipv4(p1.ip), 5000);

    // Request from pod1, reply from pod2: both pass.
    p1.udp(u1).send_slice(b"ping", to2).unwrap();
    let ok = run_until(
        &mut [&mut p1, &mut p2],
        |ps| {
            let s = ps[1].udp(u2);
            if s.can_recv() {
                let (d, meta) = s.recv().unwrap();
                assert_eq!(d, b"ping");
                assert_eq!(meta.endpoint, to1);
                s.send_slice(b"pong", to1).unwrap();
            }
            let s = ps[0].udp(u1);
            s.can_recv() && s.recv().unwrap().0 == b"pong"
        },
        T,
    );
    assert!(ok, "UDP request/reply through the firewall");
    let udp_conns = |sw: &Switch| {
        sw.shared()
            .ct
            .lock()
            .unwrap()
            .dump()
            .filter(|c| c.orig.proto == 17)
            .count()
    };
    assert_eq!(udp_conns(&sw), 1);

    // Before the timeout a reply still passes.
    p2.udp(u2).send_slice(b"pong2", to1).unwrap();
    assert!(run_until(
        &mut [&mut p1, &mut p2],
        |ps| ps[0].udp(u1).can_recv(),
        T
    ));
    p1.udp(u1).recv().unwrap();

    // After it, expire() sweeps the entry (the switch's wall clock).
    std::thread::sleep(Duration::from_millis(400));
    sw.expire();
    assert_eq!(udp_conns(&sw), 0, "entry expired");

    // pod2's next packet is a new connection from the wrong side: dropped.
    let drops_before = drops(&sw, "action_drop");
    p2.udp(u2).send_slice(b"late", to1).unwrap();
    wait_drop(&sw, &mut [&mut p1, &mut p2], drops_before);
    run_for(&mut [&mut p1, &mut p2], 100);
    assert!(!p1.udp(u1).can_recv(), "late reply passed after expiry");
    assert_eq!(udp_conns(&sw), 0, "the drop committed nothing");
}
