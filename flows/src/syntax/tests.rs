//! Tests for the flow syntax: parsing, errors, OVS-exact printing,
//! round trips (proptest) and robustness against arbitrary input.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::action::{port, CtArgs, Nat, NatKind, SubField};
use crate::pipeline::FlowStats;

fn err(text: &str) -> String {
    parse_flow(text).unwrap_err().to_string()
}

fn roundtrip_text(text: &str) -> String {
    format_flow_spec(&parse_flow(text).unwrap())
}

// --- parsing ---------------------------------------------------------------

#[test]
fn parses_brief_examples() {
    let f = parse_flow(
        "table=0,priority=100,ip,nw_src=10.0.0.0/8,tcp,tp_dst=80 actions=ct(commit),output:2",
    )
    .unwrap();
    assert_eq!(f.table, 0);
    assert_eq!(f.priority, 100);
    assert_eq!(f.m.get(Field::DlType), (0x0800, 0xffff));
    assert_eq!(f.m.get(Field::NwProto), (6, 0xff));
    assert_eq!(f.m.get(Field::NwSrc), (0x0a00_0000, 0xff00_0000));
    assert_eq!(f.m.get(Field::TpDst), (80, 0xffff));
    assert_eq!(
        f.actions,
        vec![
            Action::Ct(CtArgs {
                commit: true,
                ..CtArgs::default()
            }),
            Action::Output(2)
        ]
    );

    let f = parse_flow(
        "cookie=0x5,idle_timeout=10,hard_timeout=30,in_port=1,dl_vlan=10,actions=strip_vlan,normal",
    )
    .unwrap();
    assert_eq!(f.cookie, 5);
    assert_eq!(f.idle_timeout, 10);
    assert_eq!(f.hard_timeout, 30);
    assert_eq!(f.priority, DEFAULT_PRIORITY);
    assert_eq!(f.m.get(Field::InPort), (1, 0xffff));
    assert_eq!(f.m.get(Field::VlanTci), (0x100a, 0x1fff));
    assert_eq!(f.actions, vec![Action::PopVlan, Action::Normal]);
}

#[test]
fn spaces_and_action_keyword() {
    let a = parse_flow("table=0, priority=50, ct_state=-trk, tcp, actions=ct(table=0)").unwrap();
    let b = parse_flow("table=0,priority=50,ct_state=-trk,tcp actions=ct(table=0)").unwrap();
    assert_eq!(a, b);
    let c = parse_flow("priority=50 action=drop").unwrap();
    assert!(c.actions.is_empty());
    assert_eq!(
        parse_flow("actions=output:1, output:2").unwrap().actions,
        vec![Action::Output(1), Action::Output(2)]
    );
}

#[test]
fn vlan_forms() {
    let m = parse_flow("dl_vlan=0xffff actions=drop").unwrap().m;
    assert_eq!(m.get(Field::VlanTci), (0, 0xffff));
    let m = parse_flow("dl_vlan_pcp=5 actions=drop").unwrap().m;
    assert_eq!(m.get(Field::VlanTci), (0xb000, 0xf000));
    let m = parse_flow("dl_vlan=10,dl_vlan_pcp=5 actions=drop")
        .unwrap()
        .m;
    assert_eq!(m.get(Field::VlanTci), (0xb00a, 0xffff));
    let m = parse_flow("vlan_tci=0x1000/0x1000 actions=drop").unwrap().m;
    assert_eq!(m.get(Field::VlanTci), (0x1000, 0x1000));
    assert_eq!(format_match(&m, DEFAULT_PRIORITY), "vlan_tci=0x1000/0x1000");
}

#[test]
fn field_values() {
    let f = parse_flow(
        "tcp,dl_src=00:11:22:33:44:55/ff:ff:ff:00:00:00,dl_dst=aa:bb:cc:dd:ee:ff,\
         tp_dst=0x1000/0xf000,reg0=0x5/0xff,reg7=9,metadata=0x10,tun_id=0x64,\
         tun_src=192.168.0.1,tun_dst=192.168.0.0/255.255.0.0,ct_state=+trk+est-new,\
         ct_zone=7,in_port=LOCAL,nw_tos=16 actions=drop",
    )
    .unwrap();
    let m = f.m;
    assert_eq!(m.get(Field::DlSrc), (0x0011_2200_0000, 0xffff_ff00_0000));
    assert_eq!(m.get(Field::TpDst), (0x1000, 0xf000));
    assert_eq!(m.get(Field::Reg(0)), (5, 0xff));
    assert_eq!(m.get(Field::Reg(7)), (9, 0xffff_ffff));
    assert_eq!(m.get(Field::Metadata), (0x10, u64::MAX));
    assert_eq!(m.get(Field::TunDst), (0xc0a8_0000, 0xffff_0000));
    assert_eq!(m.get(Field::CtState), (0x22, 0x23));
    assert_eq!(m.get(Field::InPort), (port::LOCAL as u64, 0xffff));
    assert_eq!(m.get(Field::NwTos), (16, 0xfc));
    let m = parse_flow("ct_state=0x22/0x3f actions=drop").unwrap().m;
    assert_eq!(m.get(Field::CtState), (0x22, 0x3f));
    let m = parse_flow("icmp,icmp_type=8,icmp_code=0 actions=drop")
        .unwrap()
        .m;
    assert_eq!(m.get(Field::TpSrc), (8, 0xffff));
    let m = parse_flow("arp,arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/24 actions=drop")
        .unwrap()
        .m;
    assert_eq!(m.get(Field::NwProto), (1, 0xff));
    assert_eq!(m.get(Field::NwSrc), (0x0a00_0001, 0xffff_ffff));
    // OXM-style names work as keys too.
    let m = parse_flow("udp,udp_dst=53,eth_type=0x0800 actions=drop")
        .unwrap()
        .m;
    assert_eq!(m.get(Field::TpDst), (53, 0xffff));
}

#[test]
fn actions_parse() {
    let f = parse_flow(
        "ip actions=3,output:4,in_port,normal,flood,all,controller,controller:128,\
         controller(max_len=64),push_vlan:0x8100,pop_vlan,mod_vlan_vid:10,mod_vlan_pcp:3,\
         mod_dl_src:00:00:00:00:00:01,mod_dl_dst:00:00:00:00:00:02,mod_nw_src:1.2.3.4,\
         mod_nw_dst:5.6.7.8,mod_tp_src:1,mod_tp_dst:2,set_tunnel:0x5,set_tunnel64:0x100000000,\
         set_field:10.0.0.1->ip_dst,load:0x1->NXM_NX_REG0[0..15],load:1->reg1[5],\
         load:0xff->reg2[],move:NXM_OF_IP_SRC[]->NXM_NX_REG1[],resubmit:5,resubmit(,2),\
         resubmit(1,3),goto_table:9,group:7,ct_clear,dec_ttl,LOCAL,output:IN_PORT",
    )
    .unwrap();
    use Action::*;
    assert_eq!(
        f.actions,
        vec![
            Output(3),
            Output(4),
            InPort,
            Normal,
            Flood,
            All,
            Controller { max_len: 65535 },
            Controller { max_len: 128 },
            Controller { max_len: 64 },
            PushVlan(0x8100),
            PopVlan,
            SetVlanVid(10),
            SetVlanPcp(3),
            SetDlSrc([0, 0, 0, 0, 0, 1]),
            SetDlDst([0, 0, 0, 0, 0, 2]),
            SetNwSrc(Ipv4Addr::new(1, 2, 3, 4)),
            SetNwDst(Ipv4Addr::new(5, 6, 7, 8)),
            SetTpSrc(1),
            SetTpDst(2),
            SetTunnel(5),
            SetTunnel(1 << 32),
            SetField {
                field: Field::NwDst,
                value: 0x0a00_0001,
                mask: 0xffff_ffff
            },
            Load {
                value: 1,
                dst: SubField {
                    field: Field::Reg(0),
                    ofs: 0,
                    n_bits: 16
                }
            },
            Load {
                value: 1,
                dst: SubField {
                    field: Field::Reg(1),
                    ofs: 5,
                    n_bits: 1
                }
            },
            Load {
                value: 0xff,
                dst: SubField::whole(Field::Reg(2))
            },
            Move {
                src: SubField::whole(Field::NwSrc),
                dst: SubField::whole(Field::Reg(1))
            },
            Resubmit {
                port: Some(5),
                table: None
            },
            Resubmit {
                port: None,
                table: Some(2)
            },
            Resubmit {
                port: Some(1),
                table: Some(3)
            },
            GotoTable(9),
            Group(7),
            CtClear,
            DecTtl,
            Output(port::LOCAL),
            InPort,
        ]
    );
}

#[test]
fn ct_and_nat() {
    let f = parse_flow(
        "ip actions=ct(commit,zone=1,table=2,nat(dst=10.0.0.1:80)),\
         ct(nat(src=10.0.0.1-10.0.0.9:1000-2000)),ct(nat),ct,ct()",
    )
    .unwrap();
    let nat = |kind, a: [u8; 4], b: [u8; 4], p: u16, q: u16| Nat {
        kind,
        ip_min: a.into(),
        ip_max: b.into(),
        port_min: p,
        port_max: q,
    };
    assert_eq!(
        f.actions,
        vec![
            Action::Ct(CtArgs {
                commit: true,
                zone: 1,
                table: Some(2),
                nat: Some(nat(
                    Some(NatKind::Dst),
                    [10, 0, 0, 1],
                    [10, 0, 0, 1],
                    80,
                    80
                )),
            }),
            Action::Ct(CtArgs {
                nat: Some(nat(
                    Some(NatKind::Src),
                    [10, 0, 0, 1],
                    [10, 0, 0, 9],
                    1000,
                    2000
                )),
                ..CtArgs::default()
            }),
            Action::Ct(CtArgs {
                nat: Some(nat(None, [0; 4], [0; 4], 0, 0)),
                ..CtArgs::default()
            }),
            Action::Ct(CtArgs::default()),
            Action::Ct(CtArgs::default()),
        ]
    );
    assert_eq!(
        format_actions(&f.actions),
        "ct(commit,table=2,zone=1,nat(dst=10.0.0.1:80)),\
         ct(nat(src=10.0.0.1-10.0.0.9:1000-2000)),ct(nat),ct(),ct()"
    );
}

#[test]
fn drop_forms() {
    assert!(parse_flow("actions=drop").unwrap().actions.is_empty());
    assert!(parse_flow("actions=").unwrap().actions.is_empty());
    assert_eq!(
        err("actions=drop,output:1"),
        "column 9, action drop: must be the only action"
    );
}

// --- errors ----------------------------------------------------------------

#[test]
fn conjunction_syntax() {
    let f =
        parse_flow("priority=5,ip,nw_src=10.0.0.1 actions=conjunction(7,1/2),conjunction(9, 3/3)")
            .unwrap();
    assert_eq!(
        f.actions,
        vec![
            Action::Conjunction {
                id: 7,
                clause: 1,
                n_clauses: 2
            },
            Action::Conjunction {
                id: 9,
                clause: 3,
                n_clauses: 3
            }
        ]
    );
    assert_eq!(
        format_actions(&f.actions),
        "conjunction(7,1/2),conjunction(9,3/3)"
    );
    assert_eq!(
        roundtrip_text("conj_id=7,priority=5 actions=output:2"),
        "priority=5,conj_id=7 actions=output:2"
    );
    assert_eq!(
        roundtrip_text("ip,conj_id=4294967295 actions=drop"),
        "conj_id=4294967295,ip actions=drop"
    );
    assert_eq!(
        err("ip actions=conjunction(1,3/2)"),
        "column 26, action conjunction: '3' is above 2"
    );
    assert_eq!(
        err("ip actions=conjunction(1,0/2)"),
        "column 26, action conjunction: '0': clauses are numbered from 1"
    );
    assert_eq!(
        err("ip actions=conjunction(1,1/1)"),
        "column 28, action conjunction: '1': a conjunction has 2 to 64 clauses"
    );
    assert_eq!(
        err("ip actions=conjunction(1,1/65)"),
        "column 28, action conjunction: '65' is above 64"
    );
    assert_eq!(
        err("ip actions=conjunction(1)"),
        "column 24, action conjunction: '1': expected ID,K/N"
    );
    assert_eq!(
        err("ip actions=conjunction(x,1/2)"),
        "column 24, action conjunction: 'x' is not a number"
    );
    assert_eq!(
        err("ip actions=conjunction:1"),
        "column 12, action conjunction: write conjunction(ID,K/N)"
    );
    assert_eq!(
        err("ip actions=conjunction(1,1/2),output:3"),
        "column 31, action conjunction: cannot be mixed with other actions \
         (a conjunctive flow's actions are all conjunction(...))"
    );
    assert_eq!(
        err("conj_id=1/0xff actions=drop"),
        "column 9, field conj_id: '1/0xff': conj_id cannot be masked"
    );
    assert_eq!(
        err("ip actions=load:1->conj_id[]"),
        "column 20, action load: field conj_id is read-only"
    );
    assert!(parse_group("group_id=1,type=all,bucket=conjunction(1,1/2)")
        .unwrap_err()
        .to_string()
        .contains("not allowed in a group bucket"));
}

#[test]
fn error_messages() {
    assert_eq!(
        err("table=0,priority=100,tcp,tp_dst=70000 actions=drop"),
        "column 33, field tp_dst: '70000' is above 65535"
    );
    assert_eq!(err("foo=1 actions=drop"), "column 1, unknown field 'foo'");
    assert_eq!(
        err("ip,ct_mark=1 actions=drop"),
        "column 4, field ct_mark: not supported by ferrovs"
    );
    assert_eq!(
        err("ip actions=frobnicate"),
        "column 12, unknown action 'frobnicate'"
    );
    assert_eq!(
        err("ip actions=ct(comit)"),
        "column 15, action ct: unknown argument 'comit'"
    );
    assert_eq!(
        err("priority=1,tp_dst=80 actions=drop"),
        "column 12, field tp_dst needs tcp, udp or sctp"
    );
    assert_eq!(
        err("in_port=1,dl_vlan=4096 actions=drop"),
        "column 19, field dl_vlan: '4096' is above 4095 (0xffff means no VLAN)"
    );
    assert_eq!(
        err("in_port=1"),
        "column 10, missing actions= (write actions=drop to drop)"
    );
    assert_eq!(
        err("nw_src=10.0.0.300 actions=drop"),
        "column 8, field nw_src: '10.0.0.300' is not an IPv4 address"
    );
    assert_eq!(
        err("icmp,tp_src=1 actions=drop"),
        "column 6, field tp_src needs tcp, udp or sctp"
    );
    assert_eq!(
        err("ip,arp_spa=1.2.3.4 actions=drop"),
        "column 4, field arp_spa needs arp"
    );
    assert_eq!(
        err("table=255 actions=drop"),
        "column 7, field table: '255' is above 254"
    );
    assert_eq!(
        err("in_port=1/0xff actions=drop"),
        "column 9, field in_port: '1/0xff': in_port cannot be masked"
    );
    assert_eq!(
        err("cookie=1/1 actions=drop"),
        "column 8, field cookie: flow additions cannot use a cookie mask"
    );
    assert_eq!(
        err("ct_state=+trk+bogus actions=drop"),
        "column 10, field ct_state: unknown ct_state flag 'bogus' (flags: new, est, rel, rpl, inv, trk, snat, dnat)"
    );
    assert_eq!(
        err("tcp actions=mod_tp_dst:65536"),
        "column 24, action mod_tp_dst: '65536' is above 65535"
    );
    assert_eq!(
        err("actions=load:0x10000->NXM_NX_REG0[0..15]"),
        "column 14, action load: value 0x10000 does not fit in 16 bits"
    );
    assert_eq!(
        err("actions=load:1->reg0[16..40]"),
        "column 17, action load: 'reg0[16..40]': bit 40 is outside reg0, which is 32 bits wide"
    );
    assert_eq!(
        err("actions=move:reg0[0..7]->reg1[0..15]"),
        "column 14, action move: source is 8 bits wide but destination is 16 bits wide"
    );
    assert_eq!(
        err("actions=set_field:10.0.0.1->ip_dst"),
        "column 29, action set_field: field nw_dst needs ip or arp in the flow's match"
    );
    assert_eq!(err("actions=output:1,(x"), "column 20, missing ')'");
    assert_eq!(err("actions=ct(commit))"), "column 19, unbalanced ')'");
    assert_eq!(
        err("actions=output:1,,2"),
        "column 18, empty item between commas"
    );
    assert_eq!(
        err("actions=learn(table=1)"),
        "column 9, action learn: not supported by ferrovs"
    );
    assert_eq!(
        err("ip actions=ct(nat(src=10.0.0.9-10.0.0.1))"),
        "column 23, action nat: address range '10.0.0.9-10.0.0.1' is backwards"
    );
    assert_eq!(
        err("tcp=1 actions=drop"),
        "column 1, field tcp: protocol shorthand takes no value"
    );
    assert_eq!(
        err("tp_dst actions=drop"),
        "column 1, field tp_dst: missing value (write tp_dst=VALUE)"
    );
    assert_eq!(
        err("=5 actions=drop"),
        "column 1, missing field name before '='"
    );
    assert_eq!(
        err("nw_tos=3,ip actions=drop"),
        "column 8, field nw_tos: '3' has ECN bits set (nw_tos is the DSCP byte, a multiple of 4)"
    );
    assert_eq!(
        err("actions=push_vlan:0x800"),
        "column 19, action push_vlan: ethertype '0x800' is not 0x8100 or 0x88a8"
    );
    assert_eq!(
        err("actions=output"),
        "column 9, action output: missing argument (write output:VALUE)"
    );
    assert_eq!(
        err("actions=normal:3"),
        "column 9, action normal: takes no argument"
    );
    assert_eq!(
        err("actions=goto_table:255"),
        "column 20, action goto_table: '255' is above 254"
    );
}

#[test]
fn file_errors_have_lines() {
    let text = "# comment\n\ntable=0,tcp,tp_dst=80 actions=output:1\n  \nip,nw_src=1.2.3.4.5 actions=drop\n";
    let e = parse_flows_file(text).unwrap_err();
    assert_eq!(e.line, Some(5));
    assert_eq!(
        e.to_string(),
        "line 5, column 11, field nw_src: '1.2.3.4.5' is not an IPv4 address"
    );
    let ok = parse_flows_file("# x\ntcp,tp_dst=1 actions=1\n\nip actions=2\n").unwrap();
    assert_eq!(ok.len(), 2);
}

// --- filters, mod-flows, packets -------------------------------------------

#[test]
fn filters() {
    assert_eq!(parse_filter("", false).unwrap(), FlowFilter::default());
    let f = parse_filter("table=3,cookie=0x10/0xf0,out_port=2,priority=7,tcp", true).unwrap();
    assert_eq!(f.table, Some(3));
    assert_eq!((f.cookie, f.cookie_mask), (0x10, 0xf0));
    assert_eq!(f.out_port, Some(2));
    assert_eq!(f.priority, 7);
    assert!(f.strict);
    assert_eq!(f.m.get(Field::NwProto), (6, 0xff));
    let f = parse_filter("cookie=0x5", false).unwrap();
    assert_eq!((f.cookie, f.cookie_mask), (5, u64::MAX));
    let f = parse_filter("cookie=0x5/-1,table=255", false).unwrap();
    assert_eq!((f.cookie, f.cookie_mask, f.table), (5, u64::MAX, None));
    assert_eq!(
        parse_filter("tcp actions=drop", false)
            .unwrap_err()
            .to_string(),
        "column 13, actions are not allowed in a flow filter"
    );
    assert_eq!(
        parse_filter("idle_timeout=5", false)
            .unwrap_err()
            .to_string(),
        "column 1, field idle_timeout: not allowed in a flow filter"
    );
    assert_eq!(
        parse_filter("tp_dst=80", false).unwrap_err().to_string(),
        "column 1, field tp_dst needs tcp, udp or sctp"
    );
    let (f, a) = parse_mod_flow("in_port=1 actions=output:3").unwrap();
    assert_eq!(f.m.get(Field::InPort), (1, 0xffff));
    assert_eq!(a, vec![Action::Output(3)]);
    assert!(parse_mod_flow("in_port=1").is_err());
}

#[test]
fn packets() {
    let k =
        parse_packet("in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=80,dl_vlan=10").unwrap();
    assert_eq!(k.get(Field::InPort), 1);
    assert_eq!(k.get(Field::DlType), 0x0800);
    assert_eq!(k.get(Field::NwProto), 6);
    assert_eq!(k.get(Field::NwSrc), 0x0a00_0001);
    assert_eq!(k.get(Field::TpDst), 80);
    assert_eq!(k.get(Field::VlanTci), 0x100a);
    assert_eq!(k.get(Field::TpSrc), 0);
    let k = parse_packet("ct_state=+trk+est,ip").unwrap();
    assert_eq!(k.get(Field::CtState), 0x22);
    assert_eq!(
        parse_packet("ip,nw_src=10.0.0.0/8")
            .unwrap_err()
            .to_string(),
        "column 11, field nw_src: '10.0.0.0/8': masks are not allowed in a packet description"
    );
    assert!(parse_packet("priority=5").is_err());
    assert_eq!(parse_packet("").unwrap(), FlowKey::ZERO);
}

// --- groups ----------------------------------------------------------------

#[test]
fn group_selection_fields() {
    let g = parse_group(
        "group_id=1,type=select,selection_method=hash,fields(ip_src),bucket=output:1,bucket=output:2",
    )
    .unwrap();
    assert_eq!(g.selection, Some(vec![Field::NwSrc]));
    assert_eq!(
        format_group(&g),
        "group_id=1,type=select,selection_method=hash,fields(nw_src),\
         bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,actions=output:2"
    );
    assert_eq!(parse_group(&format_group(&g)).unwrap(), g);
    let g = parse_group(
        "group_id=2,type=select,fields(nw_src, nw_dst,tcp_dst),selection_method=hash,bucket=output:1",
    )
    .unwrap();
    assert_eq!(
        g.selection,
        Some(vec![Field::NwSrc, Field::NwDst, Field::TpDst])
    );
    assert!(format_group(&g).starts_with(
        "group_id=2,type=select,selection_method=hash,fields(nw_src,nw_dst,tp_dst),bucket="
    ));
    // dp_hash is the default method (5-tuple hash here).
    let g = parse_group("group_id=3,type=select,selection_method=dp_hash,bucket=output:1").unwrap();
    assert_eq!(g.selection, None);
    let e = |t: &str| parse_group(t).unwrap_err().to_string();
    assert_eq!(
        e("group_id=1,type=select,selection_method=hash,fields(nw_srcx),bucket=output:1"),
        "column 53, field fields: unknown field 'nw_srcx'"
    );
    assert_eq!(
        e("group_id=1,type=select,selection_method=hash,fields(nw_src=255.0.0.0),bucket=output:1"),
        "column 53, field fields: 'nw_src=255.0.0.0': masks are not supported"
    );
    assert_eq!(
        e("group_id=1,type=select,fields(nw_src),bucket=output:1"),
        "column 24, field fields: needs selection_method=hash"
    );
    assert_eq!(
        e("group_id=1,type=select,selection_method=hash,bucket=output:1"),
        "column 41, field selection_method: hash needs the fields to hash, e.g. fields(nw_src)"
    );
    assert_eq!(
        e("group_id=1,type=all,selection_method=hash,fields(nw_src),bucket=output:1"),
        "column 38, field selection_method: only select groups have a selection method"
    );
    assert_eq!(
        e("group_id=1,type=select,selection_method=random,bucket=output:1"),
        "column 41, field selection_method: unknown selection method 'random' (hash or dp_hash)"
    );
}

#[test]
fn group_affinity_timeout() {
    let g = parse_group(
        "group_id=4,type=select,selection_method=hash,fields(nw_src),affinity_timeout=10800,\
         bucket=output:1",
    )
    .unwrap();
    assert_eq!(g.affinity_timeout, Some(10800));
    assert_eq!(
        format_group(&g),
        "group_id=4,type=select,selection_method=hash,fields(nw_src),affinity_timeout=10800,\
         bucket=bucket_id:0,actions=output:1"
    );
    assert_eq!(parse_group(&format_group(&g)).unwrap(), g);
    // Any order of the header items.
    let g2 = parse_group(
        "affinity_timeout=10800,group_id=4,fields(nw_src),type=select,selection_method=hash,\
         bucket=output:1",
    )
    .unwrap();
    assert_eq!(g2, g);
    let g = parse_group("group_id=1,type=select,bucket=output:1").unwrap();
    assert_eq!(g.affinity_timeout, None);
    let e = |t: &str| parse_group(t).unwrap_err().to_string();
    assert_eq!(
        e("group_id=1,type=select,affinity_timeout=60,bucket=output:1"),
        "column 24, field affinity_timeout: needs selection_method=hash,fields(...) \
         (the client to remember)"
    );
    assert_eq!(
        e(
            "group_id=1,type=select,selection_method=hash,fields(nw_src),affinity_timeout=0,\
           bucket=output:1"
        ),
        "column 78, field affinity_timeout: must be at least 1 (seconds)"
    );
    assert_eq!(
        e(
            "group_id=1,type=select,selection_method=hash,fields(nw_src),affinity_timeout=x,\
           bucket=output:1"
        ),
        "column 78, field affinity_timeout: 'x' is not a number"
    );
    assert_eq!(
        e(
            "group_id=1,type=select,selection_method=hash,fields(nw_src),affinity_timeout=,\
           bucket=output:1"
        ),
        "column 61, field affinity_timeout: missing value (write affinity_timeout=VALUE)"
    );
}

#[test]
fn groups() {
    let g =
        parse_group("group_id=1,type=select,bucket=weight:100,output:1,bucket=output:2").unwrap();
    assert_eq!(g.id, 1);
    assert_eq!(g.kind, GroupType::Select);
    assert_eq!(
        g.buckets,
        vec![
            Bucket {
                id: 0,
                weight: 100,
                actions: vec![Action::Output(1)]
            },
            Bucket {
                id: 1,
                weight: 1,
                actions: vec![Action::Output(2)]
            },
        ]
    );
    assert_eq!(
        format_group(&g),
        "group_id=1,type=select,bucket=bucket_id:0,weight:100,actions=output:1,\
         bucket=bucket_id:1,actions=output:2"
    );
    assert_eq!(parse_group(&format_group(&g)).unwrap(), g);

    let g = parse_group("group_id=5,type=all,bucket=actions=mod_dl_dst:00:00:00:00:00:01,output:1,bucket=actions=output:2,output:3").unwrap();
    assert_eq!(g.buckets.len(), 2);
    assert_eq!(
        g.buckets[1].actions,
        vec![Action::Output(2), Action::Output(3)]
    );
    assert_eq!(
        format_group(&g),
        "group_id=5,type=all,bucket=bucket_id:0,actions=mod_dl_dst:00:00:00:00:00:01,output:1,\
         bucket=bucket_id:1,actions=output:2,output:3"
    );
    let g = parse_group("group_id=2,type=indirect,bucket=bucket_id:7,actions=drop").unwrap();
    assert_eq!(g.buckets[0].id, 7);
    assert!(g.buckets[0].actions.is_empty());
    assert_eq!(
        format_group(&g),
        "group_id=2,type=indirect,bucket=bucket_id:7,actions=drop"
    );
    assert_eq!(
        parse_group("group_id=2,type=all,bucket=weight:5,output:1")
            .unwrap_err()
            .to_string(),
        "column 28, field weight: only select groups have bucket weights"
    );
    assert_eq!(
        parse_group("group_id=2,type=xyz").unwrap_err().to_string(),
        "column 17, field type: unknown group type 'xyz' (all, select or indirect)"
    );
    assert!(parse_group("type=all,bucket=output:1").is_err());
    assert!(parse_group("group_id=1,type=indirect,bucket=output:1,bucket=output:2").is_err());
    assert!(
        parse_group("group_id=1,bucket=bucket_id:1,output:1,bucket=bucket_id:1,output:2").is_err()
    );
    assert_eq!(
        parse_groups_file("# g\ngroup_id=1,type=all\n")
            .unwrap()
            .len(),
        1
    );
}

// --- printing --------------------------------------------------------------

#[test]
fn match_printing_order() {
    let cases = [
        (
            "table=0,priority=100,ip,nw_src=10.0.0.0/8,tcp,tp_dst=80 actions=ct(commit),output:2",
            "priority=100,tcp,nw_src=10.0.0.0/8,tp_dst=80 actions=ct(commit),output:2",
        ),
        (
            "cookie=0x5,idle_timeout=10,hard_timeout=30,in_port=1,dl_vlan=10,actions=strip_vlan,normal",
            "cookie=0x5,idle_timeout=10,hard_timeout=30,in_port=1,dl_vlan=10 actions=strip_vlan,NORMAL",
        ),
        (
            "tcp,tp_dst=80,ct_state=+trk+est,priority=7,in_port=3,reg1=0x5,metadata=0x1,tun_id=0x9 actions=drop",
            "priority=7,ct_state=+est+trk,tcp,reg1=0x5,tun_id=0x9,metadata=0x1,in_port=3,tp_dst=80 actions=drop",
        ),
        (
            "arp,arp_op=2,arp_spa=10.0.0.1,nw_dst=10.0.0.0/255.0.255.0 actions=flood",
            "arp,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/255.0.255.0,arp_op=2 actions=FLOOD",
        ),
        (
            "icmp,icmp_type=8,icmp_code=0,dl_src=00:00:00:00:00:01 actions=all",
            "icmp,dl_src=00:00:00:00:00:01,icmp_type=8,icmp_code=0 actions=ALL",
        ),
        (
            "dl_type=0x0800,nw_proto=47,nw_tos=32 actions=in_port",
            "ip,nw_proto=47,nw_tos=32 actions=IN_PORT",
        ),
        ("dl_type=0x88cc actions=controller", "dl_type=0x88cc actions=CONTROLLER:65535"),
        ("dl_vlan=0xffff actions=drop", "vlan_tci=0x0000 actions=drop"),
        ("vlan_tci=0x1005/0x1fff actions=drop", "dl_vlan=5 actions=drop"),
        ("dl_vlan_pcp=3,dl_vlan=4 actions=drop", "dl_vlan=4,dl_vlan_pcp=3 actions=drop"),
        ("udp,tp_src=0x1000/0xf000 actions=drop", "udp,tp_src=0x1000/0xf000 actions=drop"),
        ("sctp,reg0=0/0x1 actions=drop", "sctp,reg0=0/0x1 actions=drop"),
        ("ct_state=trk|est,ipv6 actions=drop", "ct_state=est|trk,ipv6 actions=drop"),
        ("ct_state=0 actions=drop", "ct_state=0 actions=drop"),
        ("in_port=local,priority=0 actions=drop", "priority=0,in_port=LOCAL actions=drop"),
        ("ct_zone=5,tun_src=1.1.1.1,tun_dst=2.2.0.0/16 actions=drop", "ct_zone=5,tun_src=1.1.1.1,tun_dst=2.2.0.0/16 actions=drop"),
        (
            "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
            "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
        ),
        ("actions=drop", "actions=drop"),
    ];
    for (input, want) in cases {
        assert_eq!(roundtrip_text(input), want, "input: {input}");
        // And the printed form parses back to the same flow.
        assert_eq!(
            parse_flow(want).unwrap(),
            parse_flow(input).unwrap(),
            "{want}"
        );
    }
}

#[test]
fn action_printing() {
    let cases = [
        ("ip actions=3", "output:3"),
        ("ip actions=LOCAL,output:65534", "LOCAL,LOCAL"),
        ("ip actions=controller(max_len=128)", "CONTROLLER:128"),
        (
            "ip actions=push_vlan:0x8100,pop_vlan,mod_vlan_vid:10,mod_vlan_pcp:2",
            "push_vlan:0x8100,strip_vlan,mod_vlan_vid:10,mod_vlan_pcp:2",
        ),
        (
            "ip actions=mod_dl_src:0:1:2:3:4:5,mod_nw_dst:9.9.9.9,mod_tp_src:7",
            "mod_dl_src:00:01:02:03:04:05,mod_nw_dst:9.9.9.9,mod_tp_src:7",
        ),
        (
            "ip actions=set_field:10.0.0.1->nw_dst",
            "set_field:10.0.0.1->ip_dst",
        ),
        (
            "ip actions=set_field:10.0.0.0/8->ip_src",
            "set_field:10.0.0.0/8->ip_src",
        ),
        (
            "ip actions=set_field:0x5/0xf->reg3,set_field:00:00:00:00:00:07->dl_dst",
            "set_field:0x5/0xf->reg3,set_field:00:00:00:00:00:07->eth_dst",
        ),
        (
            "ip actions=load:1->NXM_NX_REG0[0..15]",
            "load:0x1->NXM_NX_REG0[0..15]",
        ),
        (
            "ip actions=load:0->reg0[3],load:5->tun_id[]",
            "load:0->NXM_NX_REG0[3],load:0x5->NXM_NX_TUN_ID[]",
        ),
        (
            "ip actions=move:NXM_OF_IP_SRC[]->NXM_NX_REG1[]",
            "move:NXM_OF_IP_SRC[]->NXM_NX_REG1[]",
        ),
        (
            "ip actions=move:reg0[0..7]->reg1[8..15]",
            "move:NXM_NX_REG0[0..7]->NXM_NX_REG1[8..15]",
        ),
        (
            "ip actions=resubmit(,2),resubmit:3,resubmit(4,5),resubmit(LOCAL),resubmit(in_port,1)",
            "resubmit(,2),resubmit:3,resubmit(4,5),resubmit:LOCAL,resubmit(,1)",
        ),
        ("ip actions=goto_table:2", "goto_table:2"),
        ("ip actions=group:1", "group:1"),
        (
            "ip actions=set_tunnel:5,set_tunnel64:0x1ffffffff,set_tunnel:0",
            "set_tunnel:0x5,set_tunnel64:0x1ffffffff,set_tunnel:0",
        ),
        (
            "ip actions=ct(zone=1,commit,table=2,nat(dst=10.0.0.1:80))",
            "ct(commit,table=2,zone=1,nat(dst=10.0.0.1:80))",
        ),
        ("ip actions=ct(commit,nat(src))", "ct(commit,nat(src))"),
        (
            "ip actions=ct(commit,nat(src=10.0.0.1-10.0.0.1:5-5))",
            "ct(commit,nat(src=10.0.0.1:5))",
        ),
        ("ip actions=ct_clear,dec_ttl", "ct_clear,dec_ttl"),
        ("ip actions=drop", "drop"),
    ];
    for (input, want) in cases {
        let f = parse_flow(input).unwrap();
        assert_eq!(format_actions(&f.actions), want, "input: {input}");
        assert_eq!(
            parse_flow(&format!("ip actions={want}")).unwrap().actions,
            f.actions
        );
    }
    assert_eq!(format_actions(&[Action::Drop]), "drop");
    assert_eq!(format_actions(&[]), "drop");
}

fn entry(text: &str, created_ms: u64) -> FlowEntry {
    FlowEntry::new(
        parse_flow(text).unwrap(),
        created_ms,
        Arc::new(FlowStats::default()),
    )
}

#[test]
fn dump_flows_lines() {
    let e = entry(
        "cookie=0x0,table=0,idle_timeout=10,priority=100,tcp,nw_src=10.0.0.0/8 actions=output:2",
        1_000,
    );
    e.stats.add(5, 420, 10_345);
    assert_eq!(
        format_flow(&e, 13_345, true),
        " cookie=0x0, duration=12.345s, table=0, n_packets=5, n_bytes=420, idle_timeout=10, idle_age=3, priority=100,tcp,nw_src=10.0.0.0/8 actions=output:2"
    );
    assert_eq!(
        format_flow(&e, 13_345, false),
        " idle_timeout=10, priority=100,tcp,nw_src=10.0.0.0/8 actions=output:2"
    );
    let e = entry("cookie=0x5,table=1,priority=100,ip actions=drop", 0);
    assert_eq!(
        format_flow(&e, 0, false),
        " cookie=0x5, table=1, priority=100,ip actions=drop"
    );
    assert_eq!(
        format_flow(&e, 2_000, true),
        " cookie=0x5, duration=2s, table=1, n_packets=0, n_bytes=0, idle_age=2, priority=100,ip actions=drop"
    );
    // Empty match at the default priority: no space before actions.
    let e = entry("hard_timeout=30 actions=normal", 0);
    e.stats.last_used_ms.store(500, Ordering::Relaxed);
    assert_eq!(
        format_flow(&e, 1_500, true),
        " cookie=0x0, duration=1.500s, table=0, n_packets=0, n_bytes=0, hard_timeout=30, idle_age=1, actions=NORMAL"
    );
    assert_eq!(
        format_flow(&e, 1_500, false),
        " hard_timeout=30, actions=NORMAL"
    );
    // Clock behind creation: no underflow.
    assert!(format_flow(&e, 0, true).contains("duration=0s"));
}

// --- property tests --------------------------------------------------------

fn arb_ip() -> impl Strategy<Value = u64> {
    any::<u32>().prop_map(|v| v as u64)
}

fn arb_masked(width: u32) -> impl Strategy<Value = (u64, u64)> {
    let full = width_mask(width);
    (any::<u64>(), prop_oneof![Just(full), any::<u64>()]).prop_filter_map(
        "zero mask",
        move |(v, m)| {
            let m = m & full;
            (m != 0).then_some((v & m, m))
        },
    )
}

fn arb_prefix_ip() -> impl Strategy<Value = (u64, u64)> {
    (arb_ip(), 1u32..=32).prop_map(|(v, n)| {
        let m = (u32::MAX << (32 - n)) as u64;
        (v & m, m)
    })
}

fn arb_ip_masked() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![arb_prefix_ip(), arb_masked(32)]
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    None,
    Ip,
    Arp,
    Ipv6,
    Other,
    L4(u8),
    Nonstandard(u8),
}

fn arb_match() -> impl Strategy<Value = Match> {
    let proto = prop_oneof![
        Just(Proto::None),
        Just(Proto::Ip),
        Just(Proto::Arp),
        Just(Proto::Ipv6),
        Just(Proto::Other),
        Just(Proto::L4(6)),
        Just(Proto::L4(17)),
        Just(Proto::L4(132)),
        Just(Proto::L4(1)),
        Just(Proto::Nonstandard(47)),
    ];
    let meta = (
        proptest::option::of(arb_masked(16)),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(proptest::option::of(arb_masked(32)), 8),
        proptest::option::of(arb_masked(64)),
        proptest::option::of(arb_ip_masked()),
        proptest::option::of(arb_ip_masked()),
        proptest::option::of(arb_masked(64)),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
    );
    let l2 = (
        0u8..6,
        0u64..4096,
        0u64..8,
        arb_masked(16),
        proptest::option::of(arb_masked(48)),
        proptest::option::of(arb_masked(48)),
    );
    let l3 = (
        proptest::option::of(arb_ip_masked()),
        proptest::option::of(arb_ip_masked()),
        proptest::option::of(0u64..64),
        proptest::option::of(any::<u8>()),
        proptest::option::of(arb_masked(16)),
        proptest::option::of(arb_masked(16)),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
    );
    (proto, meta, l2, l3).prop_map(|(proto, meta, l2, l3)| {
        let mut m = Match::ANY;
        let (ct_state, ct_zone, regs, tun_id, tun_src, tun_dst, metadata, in_port, conj_id) = meta;
        if let Some(c) = conj_id {
            m.set(Field::ConjId, c as u64);
        }
        if let Some((v, k)) = ct_state {
            m.set_masked(Field::CtState, v, k);
        }
        if let Some(z) = ct_zone {
            m.set(Field::CtZone, z as u64);
        }
        for (i, r) in regs.iter().enumerate() {
            if let Some((v, k)) = r {
                m.set_masked(Field::Reg(i as u8), *v, *k);
            }
        }
        for (f, x) in [
            (Field::TunId, tun_id),
            (Field::TunSrc, tun_src),
            (Field::TunDst, tun_dst),
            (Field::Metadata, metadata),
        ] {
            if let Some((v, k)) = x {
                m.set_masked(f, v, k);
            }
        }
        if let Some(p) = in_port {
            m.set(Field::InPort, p as u64);
        }
        let (vlan_kind, vid, pcp, (tci, tci_m), dl_src, dl_dst) = l2;
        let cfi = VLAN_CFI as u64;
        match vlan_kind {
            1 => m.set_masked(Field::VlanTci, vid | cfi, 0x1fff),
            2 => m.set_masked(Field::VlanTci, (pcp << 13) | cfi, 0xf000),
            3 => m.set_masked(Field::VlanTci, (pcp << 13) | vid | cfi, 0xffff),
            4 => m.set_masked(Field::VlanTci, tci, tci_m),
            5 => m.set_masked(Field::VlanTci, 0, 0xffff),
            _ => {}
        }
        if let Some((v, k)) = dl_src {
            m.set_masked(Field::DlSrc, v, k);
        }
        if let Some((v, k)) = dl_dst {
            m.set_masked(Field::DlDst, v, k);
        }
        let (nw_src, nw_dst, tos, arp_op, tp_src, tp_dst, icmp_type, icmp_code) = l3;
        let ip_like = |m: &mut Match| {
            if let Some((v, k)) = nw_src {
                m.set_masked(Field::NwSrc, v, k);
            }
            if let Some((v, k)) = nw_dst {
                m.set_masked(Field::NwDst, v, k);
            }
        };
        match proto {
            Proto::None => {}
            Proto::Ipv6 => m.set(Field::DlType, 0x86dd),
            Proto::Other => m.set(Field::DlType, 0x88cc),
            Proto::Arp => {
                m.set(Field::DlType, 0x0806);
                ip_like(&mut m);
                if let Some(op) = arp_op {
                    m.set(Field::NwProto, op as u64);
                }
            }
            Proto::Ip | Proto::Nonstandard(_) | Proto::L4(_) => {
                m.set(Field::DlType, 0x0800);
                ip_like(&mut m);
                if let Some(t) = tos {
                    m.set_masked(Field::NwTos, t << 2, 0xfc);
                }
                match proto {
                    Proto::Nonstandard(p) => m.set(Field::NwProto, p as u64),
                    Proto::L4(1) => {
                        m.set(Field::NwProto, 1);
                        if let Some(t) = icmp_type {
                            m.set(Field::IcmpType, t as u64);
                        }
                        if let Some(c) = icmp_code {
                            m.set(Field::IcmpCode, c as u64);
                        }
                    }
                    Proto::L4(p) => {
                        m.set(Field::NwProto, p as u64);
                        if let Some((v, k)) = tp_src {
                            m.set_masked(Field::TpSrc, v, k);
                        }
                        if let Some((v, k)) = tp_dst {
                            m.set_masked(Field::TpDst, v, k);
                        }
                    }
                    _ => {}
                }
            }
        }
        m
    })
}

/// Fields without prerequisites, which any flow may write.
fn arb_free_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        (0u8..8).prop_map(Field::Reg),
        Just(Field::Metadata),
        Just(Field::TunId),
        Just(Field::TunSrc),
        Just(Field::DlSrc),
        Just(Field::DlDst),
        Just(Field::VlanTci),
        Just(Field::InPort),
        Just(Field::CtZone),
        Just(Field::DlType),
    ]
}

fn arb_subfield() -> impl Strategy<Value = SubField> {
    arb_free_field().prop_flat_map(|f| {
        let w = f.width();
        (0..w).prop_flat_map(move |ofs| {
            (1..=(w - ofs)).prop_map(move |n| SubField {
                field: f,
                ofs,
                n_bits: n,
            })
        })
    })
}

fn arb_nat() -> impl Strategy<Value = Nat> {
    let kind = prop_oneof![Just(NatKind::Src), Just(NatKind::Dst)];
    prop_oneof![
        Just(Nat {
            kind: None,
            ip_min: Ipv4Addr::UNSPECIFIED,
            ip_max: Ipv4Addr::UNSPECIFIED,
            port_min: 0,
            port_max: 0
        }),
        kind.clone().prop_map(|k| Nat {
            kind: Some(k),
            ip_min: Ipv4Addr::UNSPECIFIED,
            ip_max: Ipv4Addr::UNSPECIFIED,
            port_min: 0,
            port_max: 0
        }),
        (
            kind,
            1u32..,
            0u32..100,
            proptest::option::of((1u16.., 0u16..100))
        )
            .prop_map(|(k, a, d, ports)| {
                let (pmin, pmax) = ports
                    .map(|(p, d)| (p, p.saturating_add(d)))
                    .unwrap_or((0, 0));
                Nat {
                    kind: Some(k),
                    ip_min: a.into(),
                    ip_max: a.saturating_add(d).into(),
                    port_min: pmin,
                    port_max: pmax,
                }
            }),
    ]
}

fn arb_action() -> impl Strategy<Value = Action> {
    let mac = any::<[u8; 6]>();
    let ip = any::<u32>().prop_map(Ipv4Addr::from);
    let port = prop_oneof![0u16..0xff00, Just(port::LOCAL)];
    let any_port = any::<u16>().prop_filter("IN_PORT means none", |p| *p != port::IN_PORT);
    prop_oneof![
        port.prop_map(Action::Output),
        Just(Action::InPort),
        Just(Action::Normal),
        Just(Action::Flood),
        Just(Action::All),
        any::<u16>().prop_map(|max_len| Action::Controller { max_len }),
        prop_oneof![Just(0x8100u16), Just(0x88a8)].prop_map(Action::PushVlan),
        Just(Action::PopVlan),
        (0u16..4096).prop_map(Action::SetVlanVid),
        (0u8..8).prop_map(Action::SetVlanPcp),
        mac.prop_map(Action::SetDlSrc),
        mac.prop_map(Action::SetDlDst),
        ip.clone().prop_map(Action::SetNwSrc),
        ip.prop_map(Action::SetNwDst),
        any::<u16>().prop_map(Action::SetTpSrc),
        any::<u16>().prop_map(Action::SetTpDst),
        any::<u64>().prop_map(Action::SetTunnel),
        (arb_free_field(), any::<u64>(), any::<u64>()).prop_map(|(field, v, m)| {
            let full = width_mask(field.width());
            let mask = if maskable(field) && m & full != 0 {
                m & full
            } else {
                full
            };
            Action::SetField {
                field,
                value: v & full,
                mask,
            }
        }),
        (arb_subfield(), any::<u64>()).prop_map(|(dst, v)| Action::Load {
            value: v & width_mask(dst.n_bits),
            dst
        }),
        (arb_subfield(), arb_free_field(), any::<u32>()).prop_map(|(src, f, o)| {
            let w = f.width();
            let n = src.n_bits.min(w);
            let ofs = o % (w - n + 1);
            Action::Move {
                src: SubField { n_bits: n, ..src },
                dst: SubField {
                    field: f,
                    ofs,
                    n_bits: n,
                },
            }
        }),
        (
            proptest::option::of(any_port),
            proptest::option::of(0u8..255)
        )
            .prop_map(|(port, table)| Action::Resubmit { port, table }),
        (0u8..255).prop_map(Action::GotoTable),
        any::<u32>().prop_map(Action::Group),
        (
            any::<bool>(),
            any::<u16>(),
            proptest::option::of(0u8..255),
            proptest::option::of(arb_nat())
        )
            .prop_map(|(commit, zone, table, nat)| Action::Ct(CtArgs {
                commit,
                zone,
                table,
                nat
            })),
        Just(Action::CtClear),
        Just(Action::DecTtl),
        any::<[u8; 6]>().prop_map(|m| Action::ArpReply([
            m[0] & 0xfe | 0x02,
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        ])),
        Just(Action::Reject),
    ]
}

fn arb_conjunction() -> impl Strategy<Value = Action> {
    (any::<u32>(), 2u8..=64).prop_flat_map(|(id, n)| {
        (1..=n).prop_map(move |clause| Action::Conjunction {
            id,
            clause,
            n_clauses: n,
        })
    })
}

fn arb_spec() -> impl Strategy<Value = FlowSpec> {
    (
        0u8..255,
        any::<u16>(),
        arb_match(),
        prop_oneof![
            4 => proptest::collection::vec(arb_action(), 0..6),
            1 => proptest::collection::vec(arb_conjunction(), 1..4),
        ],
        any::<u64>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            |(table, priority, m, actions, cookie, idle_timeout, hard_timeout)| FlowSpec {
                table,
                priority,
                m,
                actions,
                cookie,
                idle_timeout,
                hard_timeout,
            },
        )
}

#[test]
fn packet_printing() {
    let text = "in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=80,dl_vlan=10";
    let k = parse_packet(text).unwrap();
    assert_eq!(
        format_packet(&k),
        "tcp,in_port=1,dl_vlan=10,dl_vlan_pcp=0,dl_src=00:00:00:00:00:00,dl_dst=00:00:00:00:00:00,\
         nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_tos=0,tp_src=0,tp_dst=80"
    );
    assert_eq!(parse_packet(&format_packet(&k)).unwrap(), k);
    let k = parse_packet("arp,arp_op=1,reg3=0x5,ct_state=trk|new").unwrap();
    assert_eq!(
        format_packet(&k),
        "ct_state=new|trk,arp,reg3=0x5,in_port=0,vlan_tci=0x0000,dl_src=00:00:00:00:00:00,\
         dl_dst=00:00:00:00:00:00,arp_spa=0.0.0.0,arp_tpa=0.0.0.0,arp_op=1"
    );
    assert_eq!(parse_packet(&format_packet(&k)).unwrap(), k);
    assert_eq!(
        format_packet(&FlowKey::ZERO),
        "in_port=0,vlan_tci=0x0000,dl_src=00:00:00:00:00:00,dl_dst=00:00:00:00:00:00,dl_type=0x0000"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn packet_roundtrip(m in arb_match()) {
        // Any valid match's key is a packet; tos ECN bits are zero there.
        let k = m.key;
        let text = format_packet(&k);
        let back = parse_packet(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, k, "text: {}", text);
    }

    #[test]
    fn flow_roundtrip(spec in arb_spec()) {
        let text = format_flow_spec(&spec);
        let back = parse_flow(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, spec, "text: {}", text);
    }

    #[test]
    fn match_text_parses_as_filter(m in arb_match(), prio in any::<u16>()) {
        let text = format_match(&m, prio);
        let f = parse_filter(&text, true).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(f.m, m);
        prop_assert_eq!(f.priority, prio);
    }

    #[test]
    fn group_roundtrip(
        id in 0u32..0xffff_ff00,
        kind in prop_oneof![Just(GroupType::All), Just(GroupType::Select), Just(GroupType::Indirect)],
        buckets in proptest::collection::vec((any::<u16>(), proptest::collection::vec(arb_action(), 0..4)), 0..4),
        selection in proptest::option::of(proptest::collection::vec(arb_free_field(), 1..4)),
        affinity in proptest::option::of(1u32..),
    ) {
        let selection = selection.filter(|_| kind == GroupType::Select).map(|mut f| {
            f.dedup();
            let mut seen = Vec::new();
            f.retain(|x| if seen.contains(x) { false } else { seen.push(*x); true });
            f
        });
        let n = if kind == GroupType::Indirect { buckets.len().min(1) } else { buckets.len() };
        let g = Group {
            id,
            kind,
            buckets: buckets
                .into_iter()
                .take(n)
                .enumerate()
                .map(|(i, (w, actions))| Bucket {
                    id: i as u32 * 3,
                    weight: if kind == GroupType::Select { w } else { 0 },
                    actions,
                })
                .collect(),
            affinity_timeout: affinity.filter(|_| selection.is_some()),
            selection,
        };
        let text = format_group(&g);
        let back = parse_group(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, g, "text: {}", text);
    }

    #[test]
    fn never_panics_on_noise(s in "[a-z0-9_=,:/()\\[\\]. +|>\\-]{0,80}") {
        let _ = parse_flow(&s);
        let _ = parse_filter(&s, false);
        let _ = parse_mod_flow(&s);
        let _ = parse_packet(&s);
        let _ = parse_group(&s);
        let _ = parse_flows_file(&s);
    }

    #[test]
    fn never_panics_on_any_string(s in any::<String>()) {
        let _ = parse_flow(&s);
        let _ = parse_group(&s);
        let _ = parse_packet(&s);
    }

    #[test]
    fn never_panics_on_truncated_flows(spec in arb_spec(), cut in any::<prop::sample::Index>(), junk in "[(),=:/\\[\\]>-]{0,3}") {
        let text = format_flow_spec(&spec);
        let at = cut.index(text.len() + 1);
        let mut t = text[..at].to_string();
        t.push_str(&junk);
        t.push_str(&text[at..]);
        if let Err(e) = parse_flow(&t) {
            prop_assert!(e.column >= 1 && e.column <= t.len() + 1, "{}: {}", t, e);
        }
    }
}

#[test]
fn port_names() {
    let table = |name: &str| match name {
        "veth0" => Some(1),
        "veth1" => Some(2),
        _ => None,
    };
    let p = Parser::with_port_names(&table);
    let f = p
        .flow("in_port=veth0 actions=output:veth1,veth0,resubmit(veth1,3),LOCAL")
        .unwrap();
    assert_eq!(f.m.get(Field::InPort), (1, 0xffff));
    assert_eq!(
        f.actions,
        vec![
            Action::Output(2),
            Action::Output(1),
            Action::Resubmit {
                port: Some(2),
                table: Some(3)
            },
            Action::Output(port::LOCAL)
        ]
    );
    assert_eq!(p.filter("out_port=veth1", false).unwrap().out_port, Some(2));
    assert_eq!(p.packet("in_port=veth1").unwrap().get(Field::InPort), 2);
    assert_eq!(
        p.flow("in_port=veth9 actions=drop")
            .unwrap_err()
            .to_string(),
        "column 9, field in_port: unknown port 'veth9'"
    );
    assert_eq!(
        p.flow("actions=veth9").unwrap_err().to_string(),
        "column 9, unknown action 'veth9'"
    );
    let g = p.group("group_id=1,type=all,bucket=output:veth0").unwrap();
    assert_eq!(g.buckets[0].actions, vec![Action::Output(1)]);
    // Without a resolver, names are errors.
    assert_eq!(
        err("in_port=veth0 actions=drop"),
        "column 9, field in_port: 'veth0' is not a port number or a reserved port name (LOCAL, IN_PORT, ...)"
    );
    assert_eq!(format!("{p:?}"), "Parser { port_names: true }");
}

/// The ferrovs extension actions `arp_reply:MAC` and `reject`.
#[test]
fn reply_actions() {
    let f = parse_flow("table=1,arp,arp_op=1 actions=arp_reply:02:fe:00:00:00:01").unwrap();
    assert_eq!(f.actions, vec![Action::ArpReply([0x02, 0xfe, 0, 0, 0, 1])]);
    assert_eq!(
        format_flow_spec(&f),
        "table=1,arp,arp_op=1 actions=arp_reply:02:fe:00:00:00:01"
    );
    let f = parse_flow("tcp,nw_dst=10.96.0.10 actions=REJECT").unwrap();
    assert_eq!(f.actions, vec![Action::Reject]);
    assert_eq!(format_actions(&f.actions), "reject");
    // Short MAC forms print in full; other actions may come first.
    assert_eq!(
        roundtrip_text("arp actions=load:1->reg0[],arp_reply:2:0:0:0:0:a"),
        roundtrip_text("arp actions=load:0x1->NXM_NX_REG0[],arp_reply:02:00:00:00:00:0a")
    );
    assert_eq!(
        format_actions(
            &parse_flow("ip actions=mod_nw_dst:1.2.3.4,reject")
                .unwrap()
                .actions
        ),
        "mod_nw_dst:1.2.3.4,reject"
    );
    assert_eq!(
        err("arp actions=arp_reply"),
        "column 13, action arp_reply: missing argument (write arp_reply:VALUE)"
    );
    assert_eq!(
        err("arp actions=arp_reply:02:00:00:00:01"),
        "column 23, action arp_reply: '02:00:00:00:01' is not a MAC address (xx:xx:xx:xx:xx:xx)"
    );
    assert_eq!(
        err("arp actions=arp_reply:ff:ff:ff:ff:ff:ff"),
        "column 23, action arp_reply: 'ff:ff:ff:ff:ff:ff' is not a unicast MAC address"
    );
    assert_eq!(
        err("arp actions=arp_reply:00:00:00:00:00:00"),
        "column 23, action arp_reply: '00:00:00:00:00:00' is not a unicast MAC address"
    );
    assert_eq!(
        err("ip actions=reject:5"),
        "column 12, action reject: takes no argument"
    );
    assert_eq!(
        err("ip actions=reject(tcp)"),
        "column 12, action reject: takes no argument"
    );
}
