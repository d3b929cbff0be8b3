//! A Service in front of backend pods, as the service tests build it: a
//! client behind a gateway, backends 10.0.0.N on ports N, and the DNAT
//! pipeline (new connections to the VIP go to select group 1, replies are
//! un-NATed by conntrack, table 2 delivers by destination address).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use datapath::switch::Switch;
use flows::pipeline::VlanMode;

use super::sim_pod::{mac_str, SimPod};

/// The Service's virtual IP (port 80, backends listen on 8080).
pub const VIP: &str = "10.96.0.10";
/// The client's gateway MAC (10.0.0.1).
pub const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

/// The attached pods and the flows to install (after group 1 exists).
pub struct ServicePods {
    /// 10.0.0.2 on port 1, routing through 10.0.0.1.
    pub client: SimPod,
    /// 10.0.0.N on port N.
    pub backends: Vec<SimPod>,
    /// The DNAT pipeline, `ovs-ofctl` syntax.
    pub flows: Vec<String>,
}

/// Attaches the client and the backends `ns` to `sw` and writes the flows.
pub fn attach(sw: &Switch, ns: RangeInclusive<u8>) -> ServicePods {
    let gw = Ipv4Addr::new(10, 0, 0, 1);
    let mut client = SimPod::attach(sw, 1, "client", Ipv4Addr::new(10, 0, 0, 2), VlanMode::Trunk);
    client.add_static_neighbor(gw, GW_MAC);
    client.set_gateway(gw);
    let backends: Vec<SimPod> = ns
        .map(|n| {
            SimPod::attach(
                sw,
                u16::from(n),
                &format!("be{n}"),
                Ipv4Addr::new(10, 0, 0, n),
                VlanMode::Trunk,
            )
        })
        .collect();
    let mut flows = vec![
        "table=0,priority=100,ip,ct_state=-trk actions=ct(table=1,nat)".to_string(),
        "table=0,priority=90,arp actions=normal".to_string(),
        format!(
            "table=1,priority=100,tcp,ct_state=+trk+new,nw_dst={VIP},tp_dst=80 actions=group:1"
        ),
        "table=1,priority=90,ip,ct_state=+trk+est actions=goto_table:2".to_string(),
        // A retransmitted SYN is still +new, now already DNATed.
        "table=1,priority=90,ip,ct_state=+trk+new+dnat actions=goto_table:2".to_string(),
        format!(
            "table=2,ip,nw_dst={} actions=mod_dl_dst:{},output:1",
            client.ip,
            mac_str(client.mac)
        ),
    ];
    for b in &backends {
        flows.push(format!(
            "table=2,ip,nw_dst={} actions=mod_dl_dst:{},output:{}",
            b.ip,
            mac_str(b.mac),
            b.ip.octets()[3]
        ));
    }
    ServicePods {
        client,
        backends,
        flows,
    }
}
