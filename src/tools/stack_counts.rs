//! What the tools that count by user stack in the kernel (faults, brkstack)
//! share around their session: the unwinder's tables read in (the command's
//! loader followed), its requests and deferred stacks answered after each
//! poll, a full counting map said as it starts losing, the symbolizer told
//! of processes that exited; and, with memleak, a profile's stacks and
//! labels.

use std::cell::{RefCell, RefMut};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, Object, RingBuffer, RingBufferBuilder};

use crate::analysis::symbolize::StackSymbolizer;
use crate::engine::drops::LossWatch;
use crate::engine::maps::stored_stack;
use crate::engine::records::ready_symbolizer;
use crate::engine::skeleton::DropReason;
use crate::engine::target::Target;
use crate::engine::unwind::{StackMaps, Unwind, UserStacks};
use crate::present::profile::{LabelValue, Labels, ProfileFrame};
use crate::present::stack_report::STORE_FULL_FRAME;

/// What a full counting map loses, and what to do about it.
pub const MAX_ENTRIES_HINT: &str = "raise --max-entries";

/// What a full ring of exiting processes' mappings loses.
pub const EXIT_MAPPINGS_HINT: &str = "exited processes' mappings: their stacks show addresses";

pub struct StackCounting<'obj> {
    tool: &'static str,
    object: &'obj Object,
    maps: StackMaps<'obj>,
    user_stacks: UserStacks<'obj>,
    symbolizer: RefCell<StackSymbolizer>,
    watch: RefCell<LossWatch>,
}

impl<'obj> StackCounting<'obj> {
    /// For a loaded object with stacks.bpf.h, exitmaps.bpf.h, unwind.bpf.h
    /// and a counting map whose losses (MEMTRACE_DROP_COUNTS) `hint` says
    /// how to avoid; the target's processes read in, a command's loader
    /// followed (see UserStacks::follow_loader). `with_source`: --source.
    pub fn start(
        tool: &'static str,
        object: &'obj Object,
        maps: StackMaps<'obj>,
        target: &mut Target,
        unwind: Unwind,
        with_source: bool,
        hint: &'static str,
    ) -> Result<StackCounting<'obj>> {
        let user_stacks = UserStacks::start(object, &target.live_pids(), unwind)?;
        let symbolizer = RefCell::new(StackSymbolizer::new(with_source));
        user_stacks.follow_loader(target, &symbolizer)?;
        Ok(StackCounting {
            tool,
            object,
            maps,
            user_stacks,
            symbolizer,
            watch: RefCell::new(LossWatch::new(tool, DropReason::MEMTRACE_DROP_COUNTS, hint)),
        })
    }

    /// The ring buffer the session polls: see UserStacks::add_to.
    pub fn ring(&self) -> Result<RingBuffer<'_>> {
        let mut builder = RingBufferBuilder::new();
        self.user_stacks
            .add_to(&mut builder, &self.symbolizer, self.maps)?;
        builder.build().context("setting up the ring buffer")
    }

    /// After each poll.
    pub fn after_poll(&self) -> Result<()> {
        self.user_stacks
            .catch_up(self.maps.stack_store, &self.symbolizer);
        self.watch.borrow_mut().check(self.object, false)
    }

    /// Before each report, with the processes of the counts it shows: the
    /// symbolizer to symbolize them with.
    pub fn before_report(
        &self,
        ring: &RingBuffer<'_>,
        pids: impl IntoIterator<Item = u32>,
    ) -> Result<RefMut<'_, StackSymbolizer>> {
        let mut watch = self.watch.borrow_mut();
        watch.check(self.object, true)?;
        watch.end_interval();
        ready_symbolizer(&self.symbolizer, ring, pids);
        self.user_stacks
            .catch_up(self.maps.stack_store, &self.symbolizer);
        Ok(self.symbolizer.borrow_mut())
    }

    /// At the end, on stderr: the unwind tables' rows that found no room.
    pub fn say_lost(&self) {
        self.user_stacks.say_lost(self.tool);
    }
}

/// The frames of the user stack kept under `key` in `stack_store`
/// (memtrace_user_stack_of's result), leaf first, symbolized for `pid`; a
/// frame saying why where there is none.
pub fn user_frames(
    symbolizer: &mut StackSymbolizer,
    stack_store: &dyn MapCore,
    pid: u32,
    key: i64,
) -> Vec<String> {
    match stored_stack(stack_store, key) {
        Some(ips) => symbolizer.user_frames(pid, &ips),
        None if key == -i64::from(libc::ENOSPC) => {
            vec![STORE_FULL_FRAME.into()]
        }
        None => vec!["[no user stack]".into()],
    }
}

/// user_frames for a profile (--pprof): the stack's addresses with their
/// mappings and functions.
pub fn user_profile_frames(
    symbolizer: &mut StackSymbolizer,
    stack_store: &dyn MapCore,
    pid: u32,
    key: i64,
) -> Vec<ProfileFrame> {
    match stored_stack(stack_store, key) {
        Some(ips) => symbolizer.user_profile_frames(pid, &ips),
        None => user_frames(symbolizer, stack_store, pid, key)
            .into_iter()
            .map(ProfileFrame::Named)
            .collect(),
    }
}

/// A profile sample's labels for process `pid`: its pid, its name (`comm`
/// where the BPF side gave it, else /proc's), and its cgroup while /proc
/// still has it (a process gone by the end has only what was given).
pub fn process_labels(pid: u32, comm: Option<&str>) -> Labels {
    let mut labels = vec![("pid", LabelValue::Number(i64::from(pid)))];
    let process = procfs::process::Process::new(pid as i32).ok();
    let comm = comm
        .map(str::to_string)
        .or_else(|| Some(process.as_ref()?.stat().ok()?.comm));
    if let Some(comm) = comm {
        labels.push(("comm", LabelValue::Text(comm)));
    }
    // the unified hierarchy's (v2) path, else the first v1 hierarchy's
    if let Some(cgroups) = process.and_then(|p| p.cgroups().ok()) {
        let cgroups = cgroups.0;
        let chosen = cgroups
            .iter()
            .find(|cgroup| cgroup.hierarchy == 0)
            .or_else(|| cgroups.first());
        if let Some(cgroup) = chosen {
            labels.push(("cgroup", LabelValue::Text(cgroup.pathname.clone())));
        }
    }
    labels
}
