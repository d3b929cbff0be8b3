//! Fuzz target: arbitrary text through the `ovs-ofctl` flow, filter, group
//! and packet parsers. Nothing may panic, and whatever parses must print
//! back to text that parses to the same flow.
//!
//! Run: `cargo +nightly fuzz run flow_text fuzz/corpus/flow_text`.
#![no_main]

use flows::syntax;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = syntax::parse_flow(text) {
        let printed = syntax::format_flow_spec(&spec);
        let again = syntax::parse_flow(&printed).expect("printed flow must parse");
        assert_eq!(again, spec, "round trip of {printed}");
    }
    let _ = syntax::parse_flows_file(text);
    let _ = syntax::parse_filter(text, false);
    let _ = syntax::parse_mod_flow(text);
    let _ = syntax::parse_group(text);
    let _ = syntax::parse_packet(text);
});
