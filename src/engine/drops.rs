//! What the BPF side could not record (common.h's memtrace_drop_reason),
//! counted per CPU by reason and told on stderr at the end of a trace, with
//! the option that gives more room.

use anyhow::Result;
use libbpf_rs::Object;

use crate::engine::maps::{map_named, percpu_sums};
use crate::engine::skeleton::DropReason;

fn what_was_lost(reason: DropReason) -> &'static str {
    match reason {
        DropReason::MEMTRACE_DROP_RINGBUF => "events lost: the ring buffer was full",
        DropReason::MEMTRACE_DROP_PENDING => "calls not traced: too many in flight at once",
        DropReason::MEMTRACE_DROP_COUNTS => "counts lost: the counting map was full",
        DropReason::MEMTRACE_DROP_STACKS => "stacks lost: the stack store was full",
        _ => "records lost",
    }
}

/// The hint of the event tools, whose only loss is a full ring buffer.
pub const RING_BUFFER_HINT: &[(DropReason, &str)] =
    &[(DropReason::MEMTRACE_DROP_RINGBUF, "raise --buffer-size")];

/// Tells on stderr what was lost, by reason, each with its hint (which
/// option gives more room) where the tool gives one; true if anything was.
pub fn report(tool: &str, object: &Object, hints: &[(DropReason, &str)]) -> Result<bool> {
    let reasons = DropReason::MEMTRACE_DROP_NR.0 as usize;
    let counts = percpu_sums(&map_named(object, "drop_counts")?, reasons)?;
    let mut lost = false;
    for (reason, count) in counts.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        lost = true;
        let reason = DropReason(reason as u32);
        let hint = hints
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, h)| format!(" ({h})"))
            .unwrap_or_default();
        crate::say!("{tool}: {count} {}{hint}", what_was_lost(reason));
    }
    Ok(lost)
}
