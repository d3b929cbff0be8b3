//! Field values in flow text: numbers, MACs, IPv4 addresses with masks or
//! prefixes, port names and `ct_state` flags — parsing and OVS-style printing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::action::{port, PortNo};
use crate::field::{Field, ValueFormat};
use crate::key::{ct_state, mac_from_u64, mac_to_u64, width_mask};

/// Parses an unsigned integer: decimal or `0x` hexadecimal.
pub(crate) fn parse_num(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("missing value".into());
    }
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("'{s}' is not a number"));
    }
    u64::from_str_radix(digits, radix).map_err(|_| format!("'{s}' is too large"))
}

/// Parses a number no larger than `max` (error names the decimal limit).
pub(crate) fn parse_max(s: &str, max: u64) -> Result<u64, String> {
    let v = parse_num(s)?;
    if v > max {
        return Err(format!("'{s}' is above {max}"));
    }
    Ok(v)
}

/// Parses a number that must fit in `width` bits.
fn parse_width(s: &str, width: u32, decimal: bool) -> Result<u64, String> {
    let v = parse_num(s)?;
    let max = width_mask(width);
    if v > max {
        return Err(if decimal {
            format!("'{s}' is above {max}")
        } else {
            format!("'{s}' does not fit in {width} bits")
        });
    }
    Ok(v)
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("'{s}' is not a MAC address (xx:xx:xx:xx:xx:xx)");
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    Ok(out)
}

/// Parses a dotted-quad IPv4 address.
pub(crate) fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| format!("'{s}' is not an IPv4 address"))
}

/// Formats a MAC address the way OVS does (`00:11:22:aa:bb:cc`).
pub(crate) fn fmt_mac(out: &mut String, mac: [u8; 6]) {
    let _ = write!(
        out,
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
}

/// Reserved port names, as `ovs-ofctl` prints them.
const PORT_NAMES: [(&str, PortNo); 8] = [
    ("IN_PORT", port::IN_PORT),
    ("TABLE", 0xfff9),
    ("NORMAL", port::NORMAL),
    ("FLOOD", port::FLOOD),
    ("ALL", port::ALL),
    ("CONTROLLER", port::CONTROLLER),
    ("LOCAL", port::LOCAL),
    ("ANY", port::NONE),
];

/// The reserved name of `p`, if it has one.
pub(crate) fn port_name(p: PortNo) -> Option<&'static str> {
    PORT_NAMES.iter().find(|(_, n)| *n == p).map(|(s, _)| *s)
}

/// Resolves a port name (`veth0`) to its number, for [`Parser`](super::Parser).
pub type PortNames<'a> = &'a dyn Fn(&str) -> Option<PortNo>;

/// Parses a port: a number (0..=65535), a reserved name (any case), or a
/// name that `names` knows.
pub(crate) fn parse_port_with(s: &str, names: Option<PortNames<'_>>) -> Result<PortNo, String> {
    match (parse_port(s), names) {
        (Ok(p), _) => Ok(p),
        (Err(_), Some(f)) if !s.starts_with(|c: char| c.is_ascii_digit()) => {
            f(s).ok_or_else(|| format!("unknown port '{s}'"))
        }
        (Err(e), _) => Err(e),
    }
}

/// Parses a port: a number (0..=65535) or a reserved name (any case).
pub(crate) fn parse_port(s: &str) -> Result<PortNo, String> {
    if let Some((_, p)) = PORT_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        return Ok(*p);
    }
    if s.eq_ignore_ascii_case("NONE") {
        return Ok(port::NONE);
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_max(s, u16::MAX as u64).map(|v| v as PortNo);
    }
    Err(format!(
        "'{s}' is not a port number or a reserved port name (LOCAL, IN_PORT, ...)"
    ))
}

/// Formats a port number, by its reserved name if it has one.
pub(crate) fn fmt_port(out: &mut String, p: PortNo) {
    match port_name(p) {
        Some(n) => out.push_str(n),
        None => {
            let _ = write!(out, "{p}");
        }
    }
}

/// `ct_state` bits that exist (OVS's "all flags" mask).
const CT_ALL: u64 = 0xff;

/// Parses `ct_state` text: `+trk+est-new`, `trk|est`, `0x22` or `0x22/0x3f`.
/// Returns `(value, mask)`. The flag-list form `a|b` and a bare number up to
/// 0xff pin the eight defined flags (mask 0xff), as in OVS.
pub(crate) fn parse_ct_state(s: &str) -> Result<(u64, u64), String> {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let (v, m) = match s.split_once('/') {
            Some((v, m)) => (v, Some(m)),
            None => (s, None),
        };
        let v = parse_width(v, 16, false)?;
        let m = match m {
            Some(m) => parse_width(m, 16, false)?,
            None if v <= CT_ALL => CT_ALL,
            None => width_mask(16),
        };
        return Ok((v & m, m));
    }
    let flag = |name: &str| -> Result<u64, String> {
        ct_state::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                format!(
                    "unknown ct_state flag '{name}' (flags: new, est, rel, rpl, inv, trk, snat, dnat)"
                )
            })
    };
    if s.starts_with(['+', '-']) {
        let (mut value, mut mask) = (0, 0);
        let mut rest = s;
        while !rest.is_empty() {
            let plus = rest.starts_with('+');
            if !plus && !rest.starts_with('-') {
                return Err(format!("'{s}': expected '+' or '-' before '{rest}'"));
            }
            let body = &rest[1..];
            let end = body.find(['+', '-']).unwrap_or(body.len());
            let bit = flag(&body[..end])?;
            if mask & bit != 0 {
                return Err(format!("'{s}': flag '{}' given twice", &body[..end]));
            }
            mask |= bit;
            if plus {
                value |= bit;
            }
            rest = &body[end..];
        }
        return Ok((value, mask));
    }
    let mut value = 0;
    for name in s.split('|') {
        value |= flag(name)?;
    }
    Ok((value, CT_ALL))
}

/// Formats `ct_state` like OVS: `est|trk` (or `0`) when all eight flags are
/// pinned, `-new+est+trk` (lowest bit first) when some are, and hex with
/// a mask for anything outside the defined flags.
pub(crate) fn fmt_ct_state(out: &mut String, value: u64, mask: u64) {
    if mask == CT_ALL && value & !CT_ALL == 0 {
        if value == 0 {
            out.push('0');
            return;
        }
        let mut first = true;
        for (name, bit) in ct_state::NAMES {
            if value & bit != 0 {
                if !first {
                    out.push('|');
                }
                out.push_str(name);
                first = false;
            }
        }
    } else if mask != 0 && mask & !CT_ALL == 0 {
        for (name, bit) in ct_state::NAMES {
            if mask & bit != 0 {
                out.push(if value & bit != 0 { '+' } else { '-' });
                out.push_str(name);
            }
        }
    } else {
        let _ = write!(out, "{value:#x}/{mask:#x}");
    }
}

/// True if OVS lets this field be matched with an arbitrary mask.
pub(crate) fn maskable(f: Field) -> bool {
    matches!(
        f,
        Field::DlSrc
            | Field::DlDst
            | Field::VlanTci
            | Field::NwSrc
            | Field::NwDst
            | Field::ArpSpa
            | Field::ArpTpa
            | Field::TpSrc
            | Field::TpDst
            | Field::TunId
            | Field::TunSrc
            | Field::TunDst
            | Field::Metadata
            | Field::Reg(_)
            | Field::CtState
    )
}

/// Parses `VALUE[/MASK]` for `field`. The mask is `None` when absent.
/// Does not apply the `dl_vlan`/`nw_tos` special cases (see the match parser).
pub(crate) fn parse_field_value(
    field: Field,
    s: &str,
    names: Option<PortNames<'_>>,
) -> Result<(u64, Option<u64>), String> {
    if s.is_empty() {
        return Err("missing value".into());
    }
    let width = field.width();
    let full = width_mask(width);
    if field == Field::CtState {
        let (v, m) = parse_ct_state(s)?;
        return Ok((v, (m != full).then_some(m)));
    }
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    if m == Some("") {
        return Err(format!("'{s}': missing mask after '/'"));
    }
    let value = match field.format() {
        ValueFormat::Mac => mac_to_u64(parse_mac(v)?),
        ValueFormat::Ipv4 => u32::from(parse_ip(v)?) as u64,
        _ if field == Field::InPort => parse_port_with(v, names)? as u64,
        ValueFormat::Decimal => parse_width(v, width, true)?,
        _ => parse_width(v, width, false)?,
    };
    let mask = match m {
        None => None,
        Some(m) => Some(match field.format() {
            ValueFormat::Mac => mac_to_u64(parse_mac(m)?),
            ValueFormat::Ipv4 if !m.contains('.') => {
                let n = parse_max(m, 32).map_err(|_| {
                    format!("'/{m}' is not a prefix length (0..32) or a dotted-quad mask")
                })?;
                if n == 0 {
                    0
                } else {
                    (u32::MAX << (32 - n)) as u64
                }
            }
            ValueFormat::Ipv4 => u32::from(parse_ip(m)?) as u64,
            ValueFormat::Decimal => parse_width(m, width, true)?,
            _ => parse_width(m, width, false)?,
        }),
    };
    Ok((value, mask.map(|m| m & full)))
}

/// `%#x` as C prints it: `0` for zero, `0x..` otherwise.
pub(crate) fn hash_hex(out: &mut String, v: u64) {
    if v == 0 {
        out.push('0');
    } else {
        let _ = write!(out, "{v:#x}");
    }
}

/// Formats `value` (with `mask` when not all-ones) the way `ovs-ofctl`
/// prints it in matches and `set_field`.
pub(crate) fn fmt_field_value(out: &mut String, field: Field, value: u64, mask: u64) {
    let full = width_mask(field.width());
    let exact = mask & full == full;
    match field.format() {
        ValueFormat::Mac => {
            fmt_mac(out, mac_from_u64(value));
            if !exact {
                out.push('/');
                fmt_mac(out, mac_from_u64(mask));
            }
        }
        ValueFormat::Ipv4 => {
            let _ = write!(out, "{}", Ipv4Addr::from(value as u32));
            if !exact {
                let m = mask as u32;
                if m.leading_ones() + m.trailing_zeros() == 32 {
                    let _ = write!(out, "/{}", m.leading_ones());
                } else {
                    let _ = write!(out, "/{}", Ipv4Addr::from(m));
                }
            }
        }
        ValueFormat::CtState => fmt_ct_state(out, value, mask),
        _ if field == Field::InPort && exact => fmt_port(out, value as PortNo),
        _ if matches!(field, Field::DlType | Field::VlanTci) => {
            let _ = write!(out, "{value:#06x}");
            if !exact {
                let _ = write!(out, "/{mask:#06x}");
            }
        }
        ValueFormat::Hex => {
            hash_hex(out, value);
            if !exact {
                out.push('/');
                hash_hex(out, mask);
            }
        }
        ValueFormat::Decimal => {
            if exact {
                let _ = write!(out, "{value}");
            } else {
                let _ = write!(out, "{value:#x}/{mask:#x}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num("80"), Ok(80));
        assert_eq!(parse_num("0x1F"), Ok(31));
        assert!(parse_num("0x").is_err());
        assert!(parse_num("-1").is_err());
        assert!(parse_num("+1").is_err());
        assert!(parse_num("99999999999999999999999").is_err());
        assert_eq!(
            parse_max("70000", 65535),
            Err("'70000' is above 65535".into())
        );
    }

    #[test]
    fn macs_and_ips() {
        assert_eq!(
            parse_mac("0:1:22:a:BB:cc"),
            Ok([0, 1, 0x22, 0xa, 0xbb, 0xcc])
        );
        assert!(parse_mac("00:11:22:33:44").is_err());
        assert!(parse_mac("00:11:22:33:44:55:66").is_err());
        assert!(parse_mac("00:11:22:33:44:5g").is_err());
        assert_eq!(
            parse_field_value(Field::NwSrc, "10.1.2.3/8", None),
            Ok((0x0a01_0203, Some(0xff00_0000)))
        );
        assert_eq!(
            parse_field_value(Field::NwSrc, "10.1.2.3/255.0.255.0", None),
            Ok((0x0a01_0203, Some(0xff00_ff00)))
        );
        assert!(parse_field_value(Field::NwSrc, "10.1.2.3/33", None).is_err());
        assert!(parse_field_value(Field::NwSrc, "10.1.2", None).is_err());
        let mut s = String::new();
        fmt_field_value(&mut s, Field::NwSrc, 0x0a00_0000, 0xff00_ff00);
        assert_eq!(s, "10.0.0.0/255.0.255.0");
    }

    #[test]
    fn ct_state_text() {
        assert_eq!(parse_ct_state("+trk+est-new"), Ok((0x22, 0x23)));
        assert_eq!(parse_ct_state("trk|est"), Ok((0x22, 0xff)));
        assert_eq!(parse_ct_state("0x22"), Ok((0x22, 0xff)));
        assert_eq!(parse_ct_state("0x122"), Ok((0x122, 0xffff)));
        assert_eq!(parse_ct_state("0x22/0x3f"), Ok((0x22, 0x3f)));
        assert!(parse_ct_state("+trk+bogus").is_err());
        assert!(parse_ct_state("+trk+trk").is_err());
        assert!(parse_ct_state("+").is_err());
        let mut s = String::new();
        fmt_ct_state(&mut s, 0x22, 0x23);
        assert_eq!(s, "-new+est+trk");
        s.clear();
        fmt_ct_state(&mut s, 0x22, 0xff);
        assert_eq!(s, "est|trk");
        s.clear();
        fmt_ct_state(&mut s, 0, 0xff);
        assert_eq!(s, "0");
        s.clear();
        fmt_ct_state(&mut s, 0x22, 0xffff);
        assert_eq!(s, "0x22/0xffff");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("local"), Ok(port::LOCAL));
        assert_eq!(parse_port("65534"), Ok(port::LOCAL));
        assert!(parse_port("65536").is_err());
        assert!(parse_port("eth0").is_err());
    }
}
