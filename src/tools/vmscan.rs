//! vmscan: the reclaim summary of "BPF Performance Tools" (vmscan.bt) per
//! interval: time in slab shrinking, in direct and memory cgroup reclaim,
//! kswapd wake-ups and folios written by reclaim; latency histograms at the end.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use serde_json::json;

use crate::cli::{parse_seconds, CommonArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{log2_histogram, wall_clock_hms, Output};
use crate::{kernel, set_filter_rodata, skel};

crate::bpf_skeleton!("vmscan");
use bpf::VmscanSkelBuilder;

pub const ABOUT: &str =
    "Summarize reclaim each interval: slab shrinking, direct and memcg reclaim, kswapd, writes";

/// enum vmscan_total in vmscan.h.
const SLAB_NS: usize = 0;
const SLAB_CALLS: usize = 1;
const DIRECT_NS: usize = 2;
const DIRECT_CALLS: usize = 3;
const DIRECT_PAGES: usize = 4;
const MEMCG_NS: usize = 5;
const MEMCG_CALLS: usize = 6;
const MEMCG_PAGES: usize = 7;
const KSWAPD_WAKES: usize = 8;
const WRITE_FOLIO: usize = 9;
const TOTAL_NR: usize = 10;

/// enum vmscan_histogram and VMSCAN_HIST_BUCKETS in vmscan.h.
const HISTOGRAMS: [&str; 3] = [
    "shrink_slab latency",
    "direct reclaim latency",
    "memcg reclaim latency",
];
const HIST_BUCKETS: usize = 32;

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
    let (target, filter) = skel::prepare(&args.common)?;
    // the tracepoint was mm_vmscan_writepage before folios
    let write_folio = kernel::btf_tracepoint_exists("mm_vmscan_write_folio")?;
    let mut storage = MaybeUninit::uninit();
    let mut open = VmscanSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let object = open.open_object_mut();
    skel::choose_common_programs(object, &filter)?;
    skel::set_autoload(object, "vmscan_write_folio", write_folio)?;
    skel::set_autoload(object, "vmscan_writepage", !write_folio)?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let out = RefCell::new(Output::new(args.common.json));
    let last = RefCell::new(vec![0u64; TOTAL_NR]);
    let report = || -> Result<()> {
        let now = skel::percpu_sums(&skel.maps.totals, TOTAL_NR)?;
        let mut last = last.borrow_mut();
        let delta: Vec<u64> = now.iter().zip(last.iter()).map(|(n, l)| n - l).collect();
        *last = now;
        print_interval(&mut out.borrow_mut(), &delta)
    };
    let mut session = Session::start(target, args.common.duration, Some(args.interval), "reclaim")?;
    if !args.common.json {
        out.borrow_mut().line(&format!(
            "{:<8} {:>10} {:>12} {:>12} {:>7} {:>10}",
            "TIME", "S-SLABms", "D-RECLAIMms", "M-RECLAIMms", "KSWAPD", "WRITEPAGE"
        ))?;
    }
    let stop = session.run(None, || out.borrow_mut().flush(), report)?;
    // the part of an interval before the end counts too
    report()?;
    let histograms = skel::percpu_sums(&skel.maps.histograms, HISTOGRAMS.len() * HIST_BUCKETS)?;
    print_histograms(&mut out.borrow_mut(), &histograms)?;
    out.borrow_mut().flush()?;
    skel::report_drops("vmscan", skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn print_interval(out: &mut Output, d: &[u64]) -> Result<()> {
    if out.json {
        return out.json_line(&json!({
            "time_ns": monotonic_ns(),
            "slab_ns": d[SLAB_NS],
            "slab_calls": d[SLAB_CALLS],
            "direct_reclaim_ns": d[DIRECT_NS],
            "direct_reclaims": d[DIRECT_CALLS],
            "direct_reclaim_pages": d[DIRECT_PAGES],
            "memcg_reclaim_ns": d[MEMCG_NS],
            "memcg_reclaims": d[MEMCG_CALLS],
            "memcg_reclaim_pages": d[MEMCG_PAGES],
            "kswapd_wakes": d[KSWAPD_WAKES],
            "write_folio": d[WRITE_FOLIO],
        }));
    }
    out.line(&format!(
        "{:<8} {:>10.0} {:>12.0} {:>12.0} {:>7} {:>10}",
        wall_clock_hms(),
        ms(d[SLAB_NS]),
        ms(d[DIRECT_NS]),
        ms(d[MEMCG_NS]),
        d[KSWAPD_WAKES],
        d[WRITE_FOLIO]
    ))
}

fn print_histograms(out: &mut Output, buckets: &[u64]) -> Result<()> {
    for (kind, name) in HISTOGRAMS.iter().enumerate() {
        let counts = &buckets[kind * HIST_BUCKETS..(kind + 1) * HIST_BUCKETS];
        if counts.iter().all(|&c| c == 0) {
            continue;
        }
        if out.json {
            out.json_line(&json!({
                "histogram": name.replace(' ', "_"),
                "unit": "usecs",
                "log2_buckets": counts,
            }))?;
            continue;
        }
        out.line("")?;
        out.line(&format!("{name}:"))?;
        for line in log2_histogram("usecs", counts) {
            out.line(&line)?;
        }
    }
    Ok(())
}
