//! Simulated pods: a smoltcp TCP/IP stack on an in-memory switch port.
//!
//! A [`SimPod`] owns a smoltcp [`Interface`] whose [`Device`] reads the
//! frames the switch sends to its [`MemPort`] (`sent`) and writes the frames
//! it transmits into the port's `inject` queue, so real TCP handshakes,
//! retransmissions, ARP, ICMP echo and UDP run through the switch's
//! pipeline, conntrack and NAT without namespaces or root.
//!
//! Time is simulated: [`run_until`] advances each pod's smoltcp clock by
//! 1 ms per step, but only when the network is quiet (no frame waiting in
//! the pods' queues and the switch has counted every frame the pods sent as
//! received), so the simulated clock never races ahead of the switch's poll
//! thread however slowly that thread is scheduled: a test sees the same
//! sequence of events on a loaded machine as on an idle one.
//!
//! Static neighbours (for addresses nobody on the segment answers ARP for,
//! such as a service VIP or a virtual gateway) are answered inside the
//! device itself: an ARP request for one is turned into a reply locally and
//! never reaches the switch.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use datapath::port::{FrameQueue, MemPort};
use datapath::shared::PortState;
use datapath::switch::Switch;
use flows::pipeline::VlanMode;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpEndpoint,
};

/// Frames a device may hold before it stops taking more from the switch
/// in one poll (keeps one poll bounded).
const MAX_RX_PER_POLL: usize = 256;

/// Decides whether a frame arriving at a pod is lost (true = drop).
pub type RxLoss = Box<dyn FnMut(&[u8]) -> bool>;

/// The smoltcp device of a pod: the far end of a [`MemPort`].
pub struct PodDevice {
    /// Frames the pod transmits (the switch receives them).
    to_switch: FrameQueue,
    /// Frames the switch sent to the pod.
    from_switch: FrameQueue,
    /// Frames produced inside the device (static ARP replies).
    local: VecDeque<Vec<u8>>,
    /// Addresses answered for locally.
    static_neigh: Vec<(Ipv4Addr, [u8; 6])>,
    /// Frames taken from the switch in the current poll.
    rx_this_poll: usize,
    /// Frames transmitted so far (to the switch; static ARP replies
    /// excluded).
    pub tx_frames: u64,
    /// Frames received so far.
    pub rx_frames: u64,
    /// Loses frames from the switch that it selects (to simulate loss
    /// between the switch and the pod).
    pub rx_loss: Option<RxLoss>,
}

impl std::fmt::Debug for PodDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodDevice")
            .field("tx_frames", &self.tx_frames)
            .field("rx_frames", &self.rx_frames)
            .field("static_neigh", &self.static_neigh)
            .finish()
    }
}

/// Receive token: owns the frame.
#[derive(Debug)]
pub struct PodRx(Vec<u8>);

/// Transmit token: borrows the device's outgoing queues.
#[derive(Debug)]
pub struct PodTx<'a> {
    to_switch: &'a FrameQueue,
    local: &'a mut VecDeque<Vec<u8>>,
    static_neigh: &'a [(Ipv4Addr, [u8; 6])],
    tx_frames: &'a mut u64,
}

impl phy::RxToken for PodRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for PodTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        match static_arp_reply(&buf, self.static_neigh) {
            Some(reply) => self.local.push_back(reply),
            None => {
                *self.tx_frames += 1;
                self.to_switch.lock().unwrap().push_back(buf);
            }
        }
        r
    }
}

/// If `frame` is an ARP request for a static neighbour, the reply.
fn static_arp_reply(frame: &[u8], neigh: &[(Ipv4Addr, [u8; 6])]) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp
    else {
        return None;
    };
    let (_, mac) = neigh.iter().find(|(ip, _)| *ip == target_protocol_addr)?;
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(*mac),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth_repr = EthernetRepr {
        src_addr: EthernetAddress(*mac),
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    };
    let mut out = vec![0u8; eth_repr.buffer_len() + reply.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
    eth_repr.emit(&mut f);
    reply.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    Some(out)
}

impl Device for PodDevice {
    type RxToken<'a> = PodRx;
    type TxToken<'a> = PodTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(PodRx, PodTx<'_>)> {
        let frame = match self.local.pop_front() {
            Some(f) => f,
            None => {
                if self.rx_this_poll >= MAX_RX_PER_POLL {
                    return None;
                }
                let f = loop {
                    let f = self.from_switch.lock().unwrap().pop_front()?;
                    self.rx_this_poll += 1;
                    let lost = self.rx_loss.as_mut().is_some_and(|lose| lose(&f));
                    if !lost {
                        break f;
                    }
                };
                f
            }
        };
        self.rx_frames += 1;
        Some((
            PodRx(frame),
            PodTx {
                to_switch: &self.to_switch,
                local: &mut self.local,
                static_neigh: &self.static_neigh,
                tx_frames: &mut self.tx_frames,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<PodTx<'_>> {
        Some(PodTx {
            to_switch: &self.to_switch,
            local: &mut self.local,
            static_neigh: &self.static_neigh,
            tx_frames: &mut self.tx_frames,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// A pod: IP stack, sockets, and the in-memory port it sits on.
pub struct SimPod {
    /// Name (also the port's name).
    pub name: String,
    /// Address (/24).
    pub ip: Ipv4Addr,
    /// MAC.
    pub mac: [u8; 6],
    /// The switch port (clone; the switch owns the other).
    pub port: MemPort,
    /// Device.
    pub dev: PodDevice,
    /// smoltcp interface.
    pub iface: Interface,
    /// Sockets.
    pub sockets: SocketSet<'static>,
    /// This pod's simulated clock.
    pub now: Instant,
    /// The switch's state of the port, once attached.
    pub state: Option<Arc<PortState>>,
}

impl std::fmt::Debug for SimPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPod")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .field("now", &self.now)
            .finish()
    }
}

/// `02:00:00:00:00:<last octet of ip>`.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    [2, 0, 0, 0, 0, ip.octets()[3]]
}

/// `02:00:00:00:00:0b` as ovs-ofctl prints it.
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl SimPod {
    /// A pod with address `ip`/24 and MAC [`pod_mac`]`(ip)`, not attached yet.
    pub fn new(name: &str, ip: Ipv4Addr) -> SimPod {
        let mac = pod_mac(ip);
        let port = MemPort::new(name);
        let mut dev = PodDevice {
            to_switch: port.inject.clone(),
            from_switch: port.sent.clone(),
            local: VecDeque::new(),
            static_neigh: Vec::new(),
            rx_this_poll: 0,
            tx_frames: 0,
            rx_frames: 0,
            rx_loss: None,
        };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        cfg.random_seed = u32::from(ip) as u64;
        let now = Instant::from_millis(0);
        let mut iface = Interface::new(cfg, &mut dev, now);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(ip), 24)).unwrap();
        });
        SimPod {
            name: name.to_string(),
            ip,
            mac,
            port,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            now,
            state: None,
        }
    }

    /// Creates the pod and adds its port to `sw` as OpenFlow port `no`.
    pub fn attach(sw: &Switch, no: u16, name: &str, ip: Ipv4Addr, vlan: VlanMode) -> SimPod {
        let mut pod = SimPod::new(name, ip);
        sw.add_port(no, Box::new(pod.port.clone()), vlan).unwrap();
        pod.state = sw.ports().get(no).cloned();
        pod
    }

    /// Answers ARP for `ip` with `mac` inside the pod (a static neighbour).
    pub fn add_static_neighbor(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.dev.static_neigh.push((ip, mac));
    }

    /// Default route via `gw` (give `gw` a static neighbour if nobody
    /// answers ARP for it).
    pub fn set_gateway(&mut self, gw: Ipv4Addr) {
        self.iface.routes_mut().add_default_ipv4_route(gw).unwrap();
    }

    /// A listening TCP socket on `port` (64 KiB buffers).
    pub fn tcp_listen(&mut self, port: u16) -> SocketHandle {
        self.tcp_listen_buf(port, 65535)
    }

    /// A listening TCP socket on `port` with 4 KiB buffers (for many).
    pub fn tcp_listen_small(&mut self, port: u16) -> SocketHandle {
        self.tcp_listen_buf(port, 4096)
    }

    fn tcp_listen_buf(&mut self, port: u16, buf: usize) -> SocketHandle {
        let mut s = new_tcp(buf);
        s.listen(port).unwrap();
        self.sockets.add(s)
    }

    /// A TCP socket connecting from `sport` to `dst:dport` (64 KiB buffers).
    pub fn tcp_connect(&mut self, dst: Ipv4Addr, dport: u16, sport: u16) -> SocketHandle {
        self.tcp_connect_buf(dst, dport, sport, 65535)
    }

    /// Like [`SimPod::tcp_connect`] with 4 KiB buffers.
    pub fn tcp_connect_small(&mut self, dst: Ipv4Addr, dport: u16, sport: u16) -> SocketHandle {
        self.tcp_connect_buf(dst, dport, sport, 4096)
    }

    fn tcp_connect_buf(
        &mut self,
        dst: Ipv4Addr,
        dport: u16,
        sport: u16,
        buf: usize,
    ) -> SocketHandle {
        let mut s = new_tcp(buf);
        s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(dst), dport),
            sport,
        )
        .unwrap();
        self.sockets.add(s)
    }

    /// A UDP socket bound to `port`.
    pub fn udp_bind(&mut self, port: u16) -> SocketHandle {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(port).unwrap();
        self.sockets.add(s)
    }

    /// An ICMP socket bound to echo identifier `ident`.
    pub fn icmp_bind(&mut self, ident: u16) -> SocketHandle {
        let buf = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
        let mut s = icmp::Socket::new(buf(), buf());
        s.bind(icmp::Endpoint::Ident(ident)).unwrap();
        self.sockets.add(s)
    }

    /// An ICMP socket receiving the errors about UDP sent from `port`.
    pub fn icmp_bind_udp(&mut self, port: u16) -> SocketHandle {
        let buf = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
        let mut s = icmp::Socket::new(buf(), buf());
        s.bind(icmp::Endpoint::Udp(port.into())).unwrap();
        self.sockets.add(s)
    }

    /// The TCP socket `h`.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// The UDP socket `h`.
    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// The ICMP socket `h`.
    pub fn icmp(&mut self, h: SocketHandle) -> &mut icmp::Socket<'static> {
        self.sockets.get_mut::<icmp::Socket>(h)
    }

    /// Runs the stack once at the pod's current time.
    pub fn poll(&mut self) {
        self.dev.rx_this_poll = 0;
        self.iface.poll(self.now, &mut self.dev, &mut self.sockets);
    }

    /// True if frames are waiting in either direction of the pod's port,
    /// or the switch has not finished processing all the pod sent.
    fn busy(&self) -> bool {
        let unprocessed = self
            .state
            .as_ref()
            .is_some_and(|st| st.counters.rx_packets.load(Ordering::Relaxed) < self.dev.tx_frames);
        unprocessed
            || !self.port.inject.lock().unwrap().is_empty()
            || !self.port.sent.lock().unwrap().is_empty()
            || !self.dev.local.is_empty()
    }
}

/// A TCP socket with `buf`-byte buffers, ACKs not delayed.
fn new_tcp(buf: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buf]),
        tcp::SocketBuffer::new(vec![0; buf]),
    );
    s.set_ack_delay(None);
    s
}

/// Polls `pods` until `cond` holds or `timeout` (wall clock) passes;
/// returns whether `cond` held. Each pod's simulated clock advances by
/// 1 ms whenever all queues of the pods are empty after a round.
pub fn run_until(
    pods: &mut [&mut SimPod],
    mut cond: impl FnMut(&mut [&mut SimPod]) -> bool,
    timeout: Duration,
) -> bool {
    let start = std::time::Instant::now();
    loop {
        for p in pods.iter_mut() {
            p.poll();
        }
        if cond(pods) {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        // The switch counts a batch as received just before it sends the
        // batch's output: look twice, a moment apart, before calling the
        // network quiet and letting simulated time pass.
        if pods.iter().any(|p| p.busy()) {
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        std::thread::sleep(Duration::from_micros(20));
        if !pods.iter().any(|p| p.busy()) {
            for p in pods.iter_mut() {
                p.now += smoltcp::time::Duration::from_millis(1);
            }
        }
    }
}

/// Polls `pods` for `sim_ms` simulated milliseconds (or 5 s wall clock).
pub fn run_for(pods: &mut [&mut SimPod], sim_ms: u64) {
    let end = pods
        .first()
        .map(|p| p.now.total_millis() as u64 + sim_ms)
        .unwrap_or(0);
    run_until(
        pods,
        |ps| {
            ps.first()
                .is_none_or(|p| p.now.total_millis() as u64 >= end)
        },
        Duration::from_secs(5),
    );
}
