//! Pure generators for the harness: trafgen packet configs (64-byte UDP
//! frames with precomputed, valid IPv4 and UDP checksums) and rule sets
//! (forwarding flows plus non-matching flows over several masks) in the
//! `ovs-ofctl` syntax that both ferrovs and `ovs-ofctl add-flows` read.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Addresses of the two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// Sender MAC.
    pub src_mac: [u8; 6],
    /// Receiver MAC.
    pub dst_mac: [u8; 6],
    /// Sender IPv4.
    pub src_ip: Ipv4Addr,
    /// Receiver IPv4.
    pub dst_ip: Ipv4Addr,
}

/// First UDP source port of the generated flows; flow `i` uses `BASE_SPORT + i`.
pub const BASE_SPORT: u16 = 10_000;
/// UDP destination port of the generated frames (discard).
pub const UDP_DPORT: u16 = 9;
/// Frame length without FCS: 60 bytes = 64 on the wire with the FCS.
pub const FRAME_LEN: usize = 60;

/// One's-complement sum of 16-bit big-endian words, folded.
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = match c {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        acc += u32::from(w);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Internet checksum of `data` (with `acc` as a pseudo-header sum).
pub fn checksum(acc: u32, data: &[u8]) -> u16 {
    !(ones_sum(acc, data) as u16)
}

/// A 60-byte Ethernet/IPv4/UDP frame from `ep.src` port `sport` to `ep.dst`
/// port [`UDP_DPORT`], with valid IPv4 and UDP checksums.
pub fn udp_frame(ep: &Endpoints, sport: u16) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&ep.dst_mac);
    f[6..12].copy_from_slice(&ep.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (FRAME_LEN - 14) as u16;
    let udp_len = ip_len - 20;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&ep.src_ip.octets());
    ip[16..20].copy_from_slice(&ep.dst_ip.octets());
    let c = checksum(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_DPORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in udp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = ones_sum(
        0,
        &[
            &ep.src_ip.octets()[..],
            &ep.dst_ip.octets()[..],
            &[0, 17],
            &udp_len.to_be_bytes()[..],
        ]
        .concat(),
    );
    let mut c = checksum(pseudo, udp);
    if c == 0 {
        c = 0xffff; // UDP: 0 means "no checksum"
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f
}

/// A trafgen configuration with `flows` packets, one per source port
/// `BASE_SPORT..BASE_SPORT+flows`; trafgen sends them round robin, so the
/// flows share the offered rate evenly.
pub fn trafgen_config(ep: &Endpoints, flows: u16) -> String {
    let mut out = format!(
        "# ferrovs-bench: {flows} UDP flow(s), {FRAME_LEN}-byte frames ({} on the wire)\n",
        FRAME_LEN + 4
    );
    for i in 0..flows.max(1) {
        let f = udp_frame(ep, BASE_SPORT.wrapping_add(i));
        out.push('{');
        for (j, b) in f.iter().enumerate() {
            let sep = if j == 0 { " " } else { ", " };
            let _ = write!(out, "{sep}0x{b:02x}");
        }
        out.push_str(" }\n");
    }
    out
}

/// A rule set of exactly `total` flows (at least 2): `in_port=1 -> 2` and
/// `in_port=2 -> 1` at priority 100, plus `total - 2` drop flows at
/// priority 200 that match none of the benchmark's traffic, spread round
/// robin over five masks (dl_src; nw_src/32; nw_dst/24; tcp tp_dst;
/// udp nw_src/16 + tp_src) so every lookup probes several subtables.
pub fn rule_set(total: u32) -> String {
    let mut out = String::new();
    out.push_str("priority=100,in_port=1 actions=output:2\n");
    out.push_str("priority=100,in_port=2 actions=output:1\n");
    for i in 0..total.saturating_sub(2) {
        let n = i / 5;
        let (hi, lo) = ((n >> 8) & 0xff, n & 0xff);
        let line = match i % 5 {
            0 => format!(
                "priority=200,dl_src=02:ee:{:02x}:{:02x}:{:02x}:01 actions=drop",
                (n >> 16) & 0xff,
                hi,
                lo
            ),
            1 => format!("priority=200,ip,nw_src=172.16.{hi}.{lo} actions=drop"),
            2 => format!(
                "priority=200,ip,nw_dst=172.{}.{}.0/24 actions=drop",
                17 + (hi & 7),
                lo
            ),
            3 => format!(
                "priority=200,tcp,nw_dst=172.24.{hi}.{lo},tp_dst={} actions=drop",
                20_000 + (n % 20_000)
            ),
            _ => format!(
                "priority=200,udp,nw_src=172.25.{hi}.0/24,tp_src={} actions=drop",
                1 + (n % 9_000)
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ep() -> Endpoints {
        Endpoints {
            src_mac: [2, 0xfb, 0, 0, 0, 1],
            dst_mac: [2, 0xfb, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 251, 0, 1),
            dst_ip: Ipv4Addr::new(10, 251, 0, 2),
        }
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example words sum to 0xddf2; checksum = !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(0, &data), !0xddf2);
    }

    #[test]
    fn frame_bytes_and_checksums_verify() {
        let f = udp_frame(&ep(), 10_000);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[14..16], &[0x45, 0x00]);
        assert_eq!(&f[16..18], &[0x00, 46]); // IP total length
        assert_eq!(&f[34..36], &[0x27, 0x10]); // sport 10000
        assert_eq!(&f[36..38], &[0x00, 0x09]);
        assert_eq!(&f[38..40], &[0x00, 26]); // UDP length
                                             // Verifying: the checksum over a header including its checksum is 0.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let pseudo = ones_sum(0, &[10, 251, 0, 1, 10, 251, 0, 2, 0, 17, 0, 26]);
        assert_eq!(checksum(pseudo, &f[34..]), 0);
        assert_ne!(&f[40..42], &[0, 0]);
    }

    #[test]
    fn frames_parse_as_udp_with_flows_parser() {
        // flows' own packet parser agrees on the 5-tuple.
        let f = udp_frame(&ep(), 10_999);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 10_999);
        assert_eq!(&f[26..30], &[10, 251, 0, 1]);
        assert_eq!(&f[30..34], &[10, 251, 0, 2]);
    }

    #[test]
    fn trafgen_config_one_block_per_flow() {
        let one = trafgen_config(&ep(), 1);
        assert_eq!(one.lines().filter(|l| l.starts_with('{')).count(), 1);
        let line = one.lines().nth(1).unwrap();
        assert!(line.starts_with("{ 0x02, 0xfb, 0x00, 0x00, 0x00, 0x02, 0x02, 0xfb"));
        assert_eq!(line.matches("0x").count(), 60);
        assert!(line.ends_with(" }"));
        let many = trafgen_config(&ep(), 1000);
        let blocks: Vec<&str> = many.lines().filter(|l| l.starts_with('{')).collect();
        assert_eq!(blocks.len(), 1000);
        // Distinct source ports 10000..10999: bytes 34,35 of each frame.
        let ports: std::collections::BTreeSet<String> = blocks
            .iter()
            .map(|b| b.split(", ").skip(34).take(2).collect::<Vec<_>>().join(","))
            .collect();
        assert_eq!(ports.len(), 1000);
        assert!(blocks[999].contains("0x2a, 0xf7")); // 10999 = 0x2af7
    }

    #[test]
    fn rule_sets_have_exact_size_and_parse() {
        for n in [2u32, 10, 10_000] {
            let text = rule_set(n);
            assert_eq!(text.lines().count(), n as usize);
            let specs = flows::syntax::parse_flows_file(&text).unwrap();
            assert_eq!(specs.len(), n as usize);
        }
        // Distinct matches: inserting all into a pipeline keeps all of them.
        let text = rule_set(10_000);
        let uniq: std::collections::HashSet<&str> = text.lines().collect();
        assert_eq!(uniq.len(), 10_000);
    }

    #[test]
    fn rule_set_parses_with_ovs_ofctl_if_present() {
        let dir = std::env::temp_dir().join(format!("fb-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.txt");
        std::fs::write(&path, rule_set(10_000)).unwrap();
        match std::process::Command::new("ovs-ofctl")
            .arg("parse-flows")
            .arg(&path)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "ovs-ofctl parse-flows: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("ovs-ofctl not installed: skipped"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
