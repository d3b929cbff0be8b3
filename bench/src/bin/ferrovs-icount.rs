//! Runs N packets of a pipeline case through the datapath engine after a
//! warm-up, for counting instructions under callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*icount_measure*' ferrovs-icount l2 1000000
//! ```
//!
//! Only `icount_measure` (the measured loop: batches of 32 frames, each
//! refreshed, processed and flushed) is counted; the receive-buffer
//! reloads between rounds happen outside it, in `icount_reload`. Prints
//! the case and the number of packets processed; `scripts/icount.sh`
//! divides the callgrind total by it.

use bench::pipeline::{Bench, Case};

#[inline(never)]
fn icount_measure(b: &mut Bench) -> usize {
    b.process_all()
}

#[inline(never)]
fn icount_reload(b: &mut Bench) {
    b.reload();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case_name = args.next().unwrap_or_else(|| "l2".into());
    let Some(case) = Case::from_name(&case_name) else {
        eprintln!("unknown case '{case_name}' (l2, normal_vlan, k8s)");
        std::process::exit(2);
    };
    let n: usize = match args.next().map(|s| s.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("packet count: {e}");
            std::process::exit(2);
        }
    };
    let mut b = Bench::new(case);
    let st0 = b.switch.stats();
    let mut done = 0;
    while done < n {
        icount_reload(&mut b);
        done += icount_measure(&mut b);
    }
    let st = b.switch.stats();
    let upcalls = st.upcalls - st0.upcalls;
    let drops: u64 = st.drops.iter().map(|d| d.1).sum();
    println!(
        "case={} packets={done} upcalls={upcalls} drops={drops}",
        case.name()
    );
}
