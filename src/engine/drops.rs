//! What the BPF side could not record (common.h's memtrace_drop_reason),
//! counted per CPU by reason and told on stderr at the end of a trace, with
//! the option that gives more room; `LossWatch` tells when losses start.

use std::time::{Duration, Instant};

use anyhow::Result;
use libbpf_rs::Object;

use crate::engine::maps::{map_named, percpu_sums};
use crate::engine::skeleton::DropReason;
use crate::present::format::wall_clock_hms;

fn what_was_lost(reason: DropReason) -> &'static str {
    match reason {
        DropReason::MEMTRACE_DROP_RINGBUF => "events lost: the ring buffer was full",
        DropReason::MEMTRACE_DROP_PENDING => "calls not traced: too many in flight at once",
        DropReason::MEMTRACE_DROP_COUNTS => "counts lost: the counting map was full",
        DropReason::MEMTRACE_DROP_STACKS => "stacks lost: the stack store was full",
        _ => "records lost",
    }
}

/// What is lost while it is being lost, and why.
fn what_is_lost(reason: DropReason) -> (&'static str, &'static str) {
    match reason {
        DropReason::MEMTRACE_DROP_RINGBUF => ("events lost", "the ring buffer is full"),
        DropReason::MEMTRACE_DROP_PENDING => ("calls not traced", "too many are in flight at once"),
        DropReason::MEMTRACE_DROP_COUNTS => ("counts lost", "the counting map is full"),
        DropReason::MEMTRACE_DROP_STACKS => ("stacks lost", "the stack store is full"),
        _ => ("records lost", "no room"),
    }
}

/// How often a LossWatch reads the counters between reports.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Watches one reason of loss while a trace runs, to say on stderr as soon as
/// losses start (`ffaults: counts lost since 10:02:07: the counting map is
/// full (raise --max-entries)`), not only in the total at the end: once when
/// they start, and again only if they start again after a report interval
/// that lost nothing.
pub struct LossWatch {
    tool: &'static str,
    reason: DropReason,
    hint: &'static str,
    /// The losses counted so far.
    seen: u64,
    /// The wall-clock time of the last reading that found no new loss.
    clean_at: String,
    /// Told of the losses going on (since the last interval without any).
    told: bool,
    /// Losses seen in the current report interval.
    lost_in_interval: bool,
    next_check: Instant,
}

impl LossWatch {
    pub fn new(tool: &'static str, reason: DropReason, hint: &'static str) -> LossWatch {
        LossWatch {
            tool,
            reason,
            hint,
            seen: 0,
            clean_at: wall_clock_hms(),
            told: false,
            lost_in_interval: false,
            next_check: Instant::now(),
        }
    }

    /// Reads the loss counter (between reports at most every 200 ms; always
    /// when `now`) and tells if losses have just started.
    pub fn check(&mut self, object: &Object, now: bool) -> Result<()> {
        let at = Instant::now();
        if !now && at < self.next_check {
            return Ok(());
        }
        self.next_check = at + WATCH_EVERY;
        let index = self.reason.0 as usize;
        let counts = percpu_sums(&map_named(object, "drop_counts")?, index + 1)?;
        let total = counts.get(index).copied().unwrap_or(0);
        if total == self.seen {
            if !self.lost_in_interval {
                self.clean_at = wall_clock_hms();
            }
            return Ok(());
        }
        self.seen = total;
        self.lost_in_interval = true;
        if !self.told {
            self.told = true;
            let (what, why) = what_is_lost(self.reason);
            crate::say!(
                "{}: {what} since {}: {why} ({})",
                self.tool,
                self.clean_at,
                self.hint
            );
        }
        Ok(())
    }

    /// At each report: after an interval that lost nothing, losses that
    /// start again are told again.
    pub fn end_interval(&mut self) {
        if !self.lost_in_interval {
            self.told = false;
        }
        self.lost_in_interval = false;
    }
}

/// The hint of the event tools, whose only loss is a full ring buffer.
pub const RING_BUFFER_HINT: &[(DropReason, &str)] =
    &[(DropReason::MEMTRACE_DROP_RINGBUF, "raise --buffer-size")];

/// What was lost so far, by reason (DropReason's values), with each
/// reason's few words ("events lost: the ring buffer was full").
pub fn counts(object: &Object) -> Result<Vec<(DropReason, &'static str, u64)>> {
    let reasons = DropReason::MEMTRACE_DROP_NR.0 as usize;
    let counts = percpu_sums(&map_named(object, "drop_counts")?, reasons)?;
    Ok(counts
        .into_iter()
        .enumerate()
        .map(|(reason, count)| {
            let reason = DropReason(reason as u32);
            (reason, what_was_lost(reason), count)
        })
        .collect())
}

/// Tells on stderr what was lost, by reason, each with its hint (which
/// option gives more room) where the tool gives one; true if anything was.
pub fn report(tool: &str, object: &Object, hints: &[(DropReason, &str)]) -> Result<bool> {
    let mut lost = false;
    for (reason, what, count) in counts(object)? {
        if count == 0 {
            continue;
        }
        lost = true;
        let hint = hints
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, h)| format!(" ({h})"))
            .unwrap_or_default();
        crate::say!("{tool}: {count} {what}{hint}");
    }
    Ok(lost)
}
