//! vmscan: the reclaim summary of "BPF Performance Tools" (vmscan.bt) per
//! interval: time in slab shrinking, in direct and memory cgroup reclaim,
//! kswapd wake-ups and folios written by reclaim; latency histograms at the end.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel;
use serde::Serialize;

use crate::cli::{parse_seconds, CommonArgs};
use crate::engine::drops;
use crate::engine::loader::{self, Choice, Trace, Without};
use crate::engine::maps::percpu_sums;
use crate::engine::session::{monotonic_ns, Session};
use crate::present::format::wall_clock_hms;
use crate::present::output::Output;
use crate::present::table::log2_histogram;

crate::bpf_skeleton!("vmscan", OpenVmscanSkel);
use bpf::types::{vmscan_hist_size, vmscan_histogram as Histogram, vmscan_total as Total};
use bpf::VmscanSkelBuilder;

pub const ABOUT: &str =
    "Summarize reclaim each interval: slab shrinking, direct and memcg reclaim, kswapd, writes";

const TOTALS: usize = Total::VMSCAN_TOTAL_NR.0 as usize;
const HIST_BUCKETS: usize = vmscan_hist_size::VMSCAN_HIST_BUCKETS.0 as usize;

/// The latency histograms, by enum vmscan_histogram, as they are printed.
const HISTOGRAMS: [(Histogram, &str); 3] = [
    (Histogram::VMSCAN_HIST_SLAB, "shrink_slab latency"),
    (Histogram::VMSCAN_HIST_DIRECT, "direct reclaim latency"),
    (Histogram::VMSCAN_HIST_MEMCG, "memcg reclaim latency"),
];

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Columns: S-SLABms, D-RECLAIMms and M-RECLAIMms are milliseconds spent in slab
shrinking, in direct reclaim and in memory cgroup reclaim during the interval
(summed over tasks); KSWAPD counts kswapd wake-ups, WRITEPAGE the folios reclaim
wrote out itself (mm_vmscan_write_folio). -p, -n and -- COMMAND restrict the
first three to those tasks; KSWAPD and WRITEPAGE are the machine's.

Examples:
  vmscan                    # a line a second until Ctrl-C, then histograms
  vmscan -i 5 --json        # JSON lines every 5 s")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print a summary each SECS seconds
    #[arg(short = 'i', long, value_name = "SECS", value_parser = parse_seconds, default_value = "1")]
    pub interval: Duration,
}

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let skel = loader::load(
        VmscanSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |_, programs| {
            programs.choose(Choice {
                job: "folios written by reclaim",
                // older kernels name the tracepoint mm_vmscan_writepage
                programs: &["vmscan_write_folio", "vmscan_writepage"],
                without: Without::Fail,
            });
            Ok(())
        },
    )?;
    let out = RefCell::new(Output::new(args.common.json));
    let last = RefCell::new(vec![0u64; TOTALS]);
    let report = || -> Result<()> {
        let now = percpu_sums(&skel.maps.totals, TOTALS)?;
        let mut last = last.borrow_mut();
        let delta: Vec<u64> = now.iter().zip(last.iter()).map(|(n, l)| n - l).collect();
        *last = now;
        let row = IntervalRow::new(&delta);
        out.borrow_mut().record(&row, IntervalRow::table_line)
    };
    let mut session = Session::start(trace, Some(args.interval), "reclaim")?;
    out.borrow_mut().heading(&format!(
        "{:<8} {:>10} {:>12} {:>12} {:>7} {:>10}",
        "TIME", "S-SLABms", "D-RECLAIMms", "M-RECLAIMms", "KSWAPD", "WRITEPAGE"
    ))?;
    let stop = session.run(None, || out.borrow_mut().flush(), report)?;
    // the part of an interval before the end counts too
    report()?;
    let histograms = percpu_sums(&skel.maps.histograms, HISTOGRAMS.len() * HIST_BUCKETS)?;
    print_histograms(&mut out.borrow_mut(), &histograms)?;
    out.borrow_mut().flush()?;
    drops::report(args.common.tool, skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

/// One interval's reclaim; the JSON fields are documented in the README.
#[derive(Serialize)]
struct IntervalRow {
    time_ns: u64,
    slab_ns: u64,
    slab_calls: u64,
    direct_reclaim_ns: u64,
    direct_reclaims: u64,
    direct_reclaim_pages: u64,
    memcg_reclaim_ns: u64,
    memcg_reclaims: u64,
    memcg_reclaim_pages: u64,
    kswapd_wakes: u64,
    write_folio: u64,
}

impl IntervalRow {
    /// From the interval's deltas of the totals array (indexed by enum vmscan_total).
    fn new(delta: &[u64]) -> IntervalRow {
        let total = |which: Total| delta[which.0 as usize];
        IntervalRow {
            time_ns: monotonic_ns(),
            slab_ns: total(Total::VMSCAN_SLAB_NS),
            slab_calls: total(Total::VMSCAN_SLAB_CALLS),
            direct_reclaim_ns: total(Total::VMSCAN_DIRECT_NS),
            direct_reclaims: total(Total::VMSCAN_DIRECT_CALLS),
            direct_reclaim_pages: total(Total::VMSCAN_DIRECT_PAGES),
            memcg_reclaim_ns: total(Total::VMSCAN_MEMCG_NS),
            memcg_reclaims: total(Total::VMSCAN_MEMCG_CALLS),
            memcg_reclaim_pages: total(Total::VMSCAN_MEMCG_PAGES),
            kswapd_wakes: total(Total::VMSCAN_KSWAPD_WAKES),
            write_folio: total(Total::VMSCAN_WRITE_FOLIO),
        }
    }

    fn table_line(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "{:<8} {:>10.0} {:>12.0} {:>12.0} {:>7} {:>10}",
            wall_clock_hms(),
            ms(self.slab_ns),
            ms(self.direct_reclaim_ns),
            ms(self.memcg_reclaim_ns),
            self.kswapd_wakes,
            self.write_folio
        )
    }
}

/// A latency histogram at the end of the trace.
#[derive(Serialize)]
struct HistogramRow<'a> {
    histogram: String,
    unit: &'static str,
    log2_buckets: &'a [u64],
}

fn print_histograms(out: &mut Output, buckets: &[u64]) -> Result<()> {
    for (which, name) in HISTOGRAMS {
        let first = which.0 as usize * HIST_BUCKETS;
        let counts = &buckets[first..first + HIST_BUCKETS];
        if counts.iter().all(|&c| c == 0) {
            continue;
        }
        let row = HistogramRow {
            histogram: name.replace(' ', "_"),
            unit: "usecs",
            log2_buckets: counts,
        };
        out.record(&row, |row| {
            let mut lines = vec![String::new(), format!("{name}:")];
            lines.extend(log2_histogram(row.unit, row.log2_buckets));
            lines.join("\n")
        })?;
    }
    Ok(())
}
