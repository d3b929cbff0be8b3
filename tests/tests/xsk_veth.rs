//! AF_XDP ports on veth pairs between two namespaces, joined by a tiny
//! test-only forwarding loop:
//!
//! ns A (10.99.N.1) -- veth -- [XskPort] loop [XskPort] -- veth -- ns B (10.99.N.2)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use datapath::port::{Port, PortRx, PortTx};
use datapath::xsk::{XskError, XskMode, XskOptions, XskPort, XskStats};
use tests::{
    add_addr, iperf3_tcp, ping_rtt, ping_until, require_root, tx_checksum_off, xdp_attached, Netns,
    VethPair,
};

/// Moves every frame from `rx` to `tx` in batches of 32; returns how many.
fn pump(rx: &mut dyn PortRx, tx: &mut dyn PortTx) -> usize {
    let n = rx.recv(32);
    for i in 0..n {
        tx.send(rx.frame(i));
    }
    rx.release();
    tx.flush();
    n
}

/// The forwarding thread; stops and drops the ports when the guard drops.
struct Forwarder {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(p1: XskPort, p2: XskPort) -> Forwarder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (mut rx1, mut tx1) = Box::new(p1).split();
        let (mut rx2, mut tx2) = Box::new(p2).split();
        let handle = thread::spawn(move || {
            let mut idle = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let moved = pump(rx1.as_mut(), tx2.as_mut()) + pump(rx2.as_mut(), tx1.as_mut());
                if moved == 0 {
                    idle += 1;
                    if idle > 1000 {
                        thread::sleep(Duration::from_micros(50));
                    } else {
                        thread::yield_now();
                    }
                } else {
                    idle = 0;
                }
            }
        });
        Forwarder {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Topology {
    // Field order = drop order: ports (in the forwarder) before the veths,
    // veths before the namespaces.
    fwd: Option<Forwarder>,
    stats: (XskStats, XskStats),
    va: VethPair,
    vb: VethPair,
    ns_b: Netns,
    ns_a: Netns,
    addr_a: String,
    addr_b: String,
    mode: XskMode,
}

fn topology(mode: XskMode) -> Topology {
    let ns_a = Netns::new("fxna");
    let ns_b = Netns::new("fxnb");
    let va = VethPair::new("fxha", "fxpa", Some(&ns_a));
    let vb = VethPair::new("fxhb", "fxpb", Some(&ns_b));
    let n = tests::unique_subnet();
    let addr_a = format!("10.99.{n}.1");
    let addr_b = format!("10.99.{n}.2");
    add_addr(Some(&ns_a), &va.peer, &format!("{addr_a}/24"));
    add_addr(Some(&ns_b), &vb.peer, &format!("{addr_b}/24"));
    tx_checksum_off(Some(&ns_a), &va.peer);
    tx_checksum_off(Some(&ns_b), &vb.peer);
    let opts = XskOptions {
        mode,
        ..XskOptions::default()
    };
    let p1 = XskPort::open(&va.host, opts).expect("open AF_XDP port on host side of veth A");
    let p2 = XskPort::open(&vb.host, opts).expect("open AF_XDP port on host side of veth B");
    let actual = p1.mode();
    assert_eq!(p2.mode(), actual);
    assert!(xdp_attached(None, &va.host));
    assert!(xdp_attached(None, &vb.host));
    let stats = (p1.stats(), p2.stats());
    Topology {
        fwd: Some(Forwarder::start(p1, p2)),
        stats,
        va,
        vb,
        ns_b,
        ns_a,
        addr_a,
        addr_b,
        mode: actual,
    }
}

impl Topology {
    /// Stops the forwarder (dropping the ports) and checks no XDP program is left.
    fn close_and_check(&mut self) {
        drop(self.fwd.take());
        assert!(
            !xdp_attached(None, &self.va.host),
            "XDP program left on {}",
            self.va.host
        );
        assert!(
            !xdp_attached(None, &self.vb.host),
            "XDP program left on {}",
            self.vb.host
        );
    }
}

fn ping_both_ways(t: &Topology) {
    assert!(
        ping_until(&t.ns_a, &t.addr_b, Duration::from_secs(10)),
        "no ping reply A -> B at all ({:?})",
        t.stats.0.get()
    );
    let ab = ping_rtt(&t.ns_a, &t.addr_b, 5).expect("ping A -> B lost replies");
    let ba = ping_rtt(&t.ns_b, &t.addr_a, 5).expect("ping B -> A lost replies");
    println!(
        "ping ok ({:?} mode): A -> B avg {ab:.3} ms, B -> A avg {ba:.3} ms",
        t.mode
    );
}

#[test]
fn xsk_veth_native_ping_and_tcp() {
    if !require_root() {
        return;
    }
    let mut t = topology(XskMode::Auto);
    assert_eq!(t.mode, XskMode::Native, "veth supports native XDP");
    ping_both_ways(&t);
    let gbps = iperf3_tcp(&t.ns_b, &t.addr_b, &t.ns_a, 3).expect("iperf3 A -> B");
    println!("iperf3 TCP A -> B through AF_XDP (native): {gbps:.2} Gbit/s");
    println!("port A counters: {:?}", t.stats.0.get());
    println!("port B counters: {:?}", t.stats.1.get());
    assert!(gbps > 0.05, "TCP rate too low: {gbps} Gbit/s");
    let c = t.stats.0.get();
    assert!(c.rx_packets > 1000 && c.tx_packets > 100, "{c:?}");
    t.close_and_check();
}

#[test]
fn xsk_veth_skb_ping_and_tcp() {
    if !require_root() {
        return;
    }
    let mut t = topology(XskMode::Skb);
    assert_eq!(t.mode, XskMode::Skb);
    ping_both_ways(&t);
    let gbps = iperf3_tcp(&t.ns_b, &t.addr_b, &t.ns_a, 2).expect("iperf3 A -> B");
    println!("iperf3 TCP A -> B through AF_XDP (skb mode): {gbps:.2} Gbit/s");
    assert!(gbps > 0.05, "TCP rate too low: {gbps} Gbit/s");
    t.close_and_check();
}

#[test]
fn missing_interface_gives_clear_error() {
    let e = XskPort::open("fxnoexist9", XskOptions::default()).expect_err("must fail");
    assert!(matches!(e, XskError::NoSuchInterface(_)));
    assert_eq!(e.to_string(), "no such interface 'fxnoexist9'");
}

#[test]
fn second_socket_on_same_queue_is_busy() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fxnc");
    let v = VethPair::new("fxhc", "fxpc", Some(&ns));
    let opts = XskOptions {
        mode: XskMode::Native,
        ..XskOptions::default()
    };
    let p1 = XskPort::open(&v.host, opts).expect("first open");
    let e = XskPort::open(&v.host, opts).expect_err("second open must fail");
    let msg = e.to_string();
    println!("second open: {msg}");
    assert!(
        msg.starts_with(&format!("{}: bind AF_XDP socket (native mode): ", v.host)),
        "{msg}"
    );
    // The failed open must not have removed the first port's program.
    assert!(xdp_attached(None, &v.host));
    drop(p1);
    assert!(!xdp_attached(None, &v.host), "XDP program left behind");
}

#[test]
fn wait_fd_becomes_readable_when_frames_arrive() {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    if !require_root() {
        return;
    }
    let ns = Netns::new("fxnw");
    let v = VethPair::new("fxhw", "fxpw", Some(&ns));
    let n = tests::unique_subnet();
    add_addr(Some(&ns), &v.peer, &format!("10.99.{n}.1/24"));
    let port = XskPort::open(&v.host, XskOptions::default()).expect("open");
    let (mut rx, _tx) = Box::new(port).split();
    let fd = rx.wait_fd().expect("AF_XDP ports have a wait fd");
    let mut poll = Poll::new().expect("mio poll");
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .expect("register xsk fd");
    assert_eq!(rx.recv(32), 0);
    // ARP requests for an address nobody has leave ns A through the veth.
    let target = format!("10.99.{n}.2");
    let _pinger = ns
        .spawn(&["ping", "-n", "-c", "5", "-i", "0.2", &target])
        .expect("start ping");
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::from_secs(5)))
        .expect("poll");
    assert!(!events.is_empty(), "wait fd never became readable");
    assert!(rx.recv(32) > 0, "readable but nothing received");
    rx.release();
    // Among what arrives there is an ARP request: broadcast, ethertype 0x0806
    // (IPv6 neighbour discovery frames may come first).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen_arp = false;
    while !seen_arp && std::time::Instant::now() < deadline {
        let got = rx.recv(32);
        for i in 0..got {
            let f = rx.frame(i);
            seen_arp |= f.len() >= 42 && f[0..6] == [0xff; 6] && f[12..14] == [0x08, 0x06];
        }
        rx.release();
        if got == 0 {
            thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(seen_arp, "no ARP request received");
}

#[test]
fn detach_xdp_removes_program() {
    assert!(matches!(
        datapath::xsk::detach_xdp("fxnoexist8"),
        Err(XskError::NoSuchInterface(_))
    ));
    if !require_root() {
        return;
    }
    let ns = Netns::new("fxnd");
    let v = VethPair::new("fxhd", "fxpd", Some(&ns));
    let port = XskPort::open(&v.host, XskOptions::default()).expect("open");
    assert!(xdp_attached(None, &v.host));
    datapath::xsk::detach_xdp(&v.host).expect("detach");
    assert!(!xdp_attached(None, &v.host));
    drop(port);
    assert!(!xdp_attached(None, &v.host));
    // Nothing attached: detaching again is fine.
    datapath::xsk::detach_xdp(&v.host).expect("detach again");
}
