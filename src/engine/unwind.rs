//! The tables unwind.bpf.h unwinds user stacks with: each executable object's
//! rows (built from its .eh_frame by analysis::unwind_table, written once
//! into `unwind_rows` through mmap) and each traced process's executable
//! mappings (`unwind_processes`). A process is read in when the trace starts
//! (`add_process`) or when the BPF side asks for it (`unwind_wanted`: a new
//! process, a fork, an exec, a dlopen), which `refresh` answers. A stack the
//! BPF side could not follow for want of a table comes here whole (registers
//! and the stack's top: `DeferredStacks`) and is unwound with
//! analysis::unwind once the process's mappings are read in, its result
//! stored where the BPF side keeps its stacks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, Object, OpenMapMut, RingBufferBuilder};
use object::Object as _;

use crate::analysis::debug_symbols::LoadSegments;
use crate::analysis::proc_maps::{self, MapsEntry};
use crate::analysis::symbolize::StackSymbolizer;
use crate::analysis::unwind::{Registers, Unwinder};
use crate::analysis::unwind_table::{Cfa, RbpRule, UnwindRow as Row, UnwindTable};
use crate::engine::maps::{map_named, take_entries, MappedArray};
use crate::engine::records;
use crate::engine::skeleton::{
    StackFlag, StackRecord, UnwindCfa, UnwindDeferred, UnwindMapping, UnwindObject, UnwindProcess,
    UnwindRbp, UnwindRow,
};
use crate::engine::target::Target;
use crate::engine::{kernel, loader};

/// --unwind: how the stack tools walk user stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// Frame pointers, the kernel's walk: code built without them (Debian's
    /// libc) shows one frame, or an address in no mapping
    Fp,
    /// Each object's .eh_frame, walked in the kernel (unwind.bpf.h): whole
    /// stacks through code built without frame pointers
    Cfi,
}

/// --unwind-rows: Debian's libc has ~28,000 rows, libstdc++ ~34,000; redis-server
/// with its libraries (libcrypto, libsystemd, ...) ~271,000.
pub const DEFAULT_ROWS: u32 = 1 << 20;

/// The stack tools' options for walking user stacks.
#[derive(Clone, Debug, clap::Args)]
pub struct UnwindArgs {
    /// How user stacks are walked: cfi (each object's .eh_frame, in the
    /// kernel: whole stacks through code built without frame pointers;
    /// needs Linux 5.17) or fp (frame pointers). Default: cfi where the
    /// kernel can, else fp
    #[arg(long, value_enum)]
    pub unwind: Option<Unwind>,

    /// Rows of unwind tables (from each object's .eh_frame) the kernel can
    /// hold; raise it if memtrace says they found no room
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ROWS)]
    pub unwind_rows: u32,
}

/// The kind of program that walks the stacks: what the kernel must allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walker {
    /// A uprobe or kprobe program.
    Probe,
    /// A perf_event program, which may use a hash map made as entries come
    /// (unwind_processes) only since 6.1.
    PerfEvent,
}

impl UnwindArgs {
    /// The walk to use: --unwind if given (an error if the kernel can't do
    /// it), else cfi where the kernel can, else fp (said on stderr).
    pub fn resolve(&self, tool: &str, walker: Walker) -> Result<Unwind> {
        let missing = match self.unwind {
            Some(Unwind::Fp) => return Ok(Unwind::Fp),
            _ => cfi_missing(walker),
        };
        match (self.unwind, missing) {
            (Some(_), Some(missing)) => {
                anyhow::bail!("--unwind cfi needs {missing}: use --unwind fp")
            }
            (None, Some(missing)) => {
                crate::say!(
                    "{tool}: user stacks are walked by frame pointers: .eh_frame needs {missing} (code built without frame pointers shows short stacks)"
                );
                Ok(Unwind::Fp)
            }
            (_, None) => Ok(Unwind::Cfi),
        }
    }

    /// Sizes the tables' maps before load: --unwind-rows, one entry each
    /// where the walk is fp.
    pub fn size_maps(
        &self,
        unwind: Unwind,
        rows: &mut OpenMapMut<'_>,
        pages: &mut OpenMapMut<'_>,
    ) -> Result<()> {
        let wanted = match unwind {
            Unwind::Cfi => self.unwind_rows,
            Unwind::Fp => 1,
        };
        loader::set_entries(rows, wanted)?;
        loader::set_entries(pages, page_entries(wanted))
    }
}

/// What the running kernel lacks for unwind.bpf.h's walk; None if nothing.
pub fn cfi_missing(walker: Walker) -> Option<&'static str> {
    // bpf_find_vma is the newest helper the walk calls (bpf_loop is 5.17
    // too, bpf_task_pt_regs 5.15)
    let prog_type = match walker {
        Walker::Probe => libbpf_sys::BPF_PROG_TYPE_KPROBE,
        Walker::PerfEvent => libbpf_sys::BPF_PROG_TYPE_PERF_EVENT,
    };
    // SAFETY: a plain call; a null options pointer is allowed.
    let found = unsafe {
        libbpf_sys::libbpf_probe_bpf_helper(
            prog_type,
            libbpf_sys::BPF_FUNC_find_vma,
            std::ptr::null(),
        )
    };
    if found != 1 {
        return Some("Linux 5.17 (bpf_loop, bpf_find_vma)");
    }
    if walker == Walker::PerfEvent && !kernel::release_at_least(6, 1) {
        return Some("Linux 6.1 (a perf_event program's map made as entries come)");
    }
    None
}

/// The entries of `unwind_pages` for `rows` rows of tables: an object's
/// index has one per KiB of its code, and code has ~20 rows a KiB (libc:
/// 28,270 rows, 1,446 KiB).
fn page_entries(rows: u32) -> u32 {
    (rows / 2).max(1)
}

/// The code each entry of a page index covers: 1 << 10 bytes
/// (UNWIND_PAGE_SHIFT), ~20 rows, which a search goes through in 5 steps
/// where one through libc's 28,270 takes 15.
const PAGE_SHIFT: u32 = 10;

/// The programs of unwind.bpf.h that keep the processes' mappings current.
pub const UNWIND_PROGRAMS: &[&str] = &[
    "unwind_inherit_fork",
    "unwind_forget_exec",
    "unwind_forget_exit",
];

/// The object id of code without a table (no file, no .eh_frame): frame pointers.
const FRAME_POINTERS: u32 = 0;

/// What a file gave: its object id and how its file offsets become the
/// addresses its table uses.
#[derive(Clone)]
struct LoadedObject {
    id: u32,
    segments: LoadSegments,
}

/// Stacks the BPF side sent to be unwound here, queued by the ring buffer's
/// callback until `UnwindTables::resolve`.
#[derive(Default)]
struct DeferredStacks(RefCell<Vec<UnwindDeferred>>);

impl DeferredStacks {
    fn add_to<'slf>(
        &'slf self,
        builder: &mut RingBufferBuilder<'slf, 'slf>,
        ring: &'slf dyn MapCore,
    ) -> Result<()> {
        builder
            .add(ring, move |data| {
                self.0.borrow_mut().push(records::decode(data));
                0
            })
            .context("adding the deferred stacks to the ring buffer")?;
        Ok(())
    }
}

/// The maps of a stack tool's skeleton that its user side reads besides
/// its own (stacks.bpf.h's, exitmaps.bpf.h's and unwind.bpf.h's rings).
#[derive(Clone, Copy)]
pub struct StackMaps<'a> {
    pub stack_store: &'a dyn MapCore,
    pub mappings: &'a dyn MapCore,
    pub requests: &'a dyn MapCore,
    pub deferred: &'a dyn MapCore,
}

/// The StackMaps of a skeleton's `maps`: every stack tool's has these fields.
#[macro_export]
macro_rules! stack_maps {
    ($maps:expr) => {
        $crate::engine::unwind::StackMaps {
            stack_store: &$maps.stack_store,
            mappings: &$maps.mappings,
            requests: &$maps.unwind_requests,
            deferred: &$maps.unwind_deferred_ring,
        }
    };
}

/// What a tool that unwinds user stacks in BPF keeps: the tables and the
/// stacks sent to be unwound here. Shared by the session's callbacks. Off
/// (every call does nothing) with `--unwind fp`.
pub struct UserStacks<'obj> {
    tables: Option<RefCell<UnwindTables<'obj>>>,
    deferred: DeferredStacks,
}

impl<'obj> UserStacks<'obj> {
    /// For a loaded object whose BPF side includes unwind.bpf.h, with the
    /// processes traced from the start read in; off unless `unwind` is cfi.
    pub fn start(object: &'obj Object, pids: &[u32], unwind: Unwind) -> Result<UserStacks<'obj>> {
        let tables = match unwind {
            Unwind::Cfi => Some(RefCell::new(UnwindTables::start(object, pids)?)),
            Unwind::Fp => None,
        };
        Ok(UserStacks {
            tables,
            deferred: DeferredStacks::default(),
        })
    }

    pub fn is_on(&self) -> bool {
        self.tables.is_some()
    }

    /// Gives the BPF side a process's mappings (see UnwindTables::set_mappings).
    pub fn set_mappings(&self, pid: u32, maps: &[MapsEntry]) {
        if let Some(tables) = &self.tables {
            tables.borrow_mut().set_mappings(pid, maps);
        }
    }

    /// For a `-- COMMAND` trace, with the walk on: the command execs,
    /// stopped under ptrace at each system call of its loader, so that each
    /// library's table is in before its code runs (what it does meanwhile is
    /// traced: the programs are attached). It stays stopped until the
    /// session starts. With the walk off, the same where no exit record will
    /// bring a gone command's mappings (records::exit_mappings_sent): the
    /// symbolizer keeps them as the last known.
    pub fn follow_loader(
        &self,
        target: &mut Target,
        symbolizer: &RefCell<StackSymbolizer>,
    ) -> Result<()> {
        let Target::Command(cmd) = target else {
            return Ok(());
        };
        if !self.is_on() && records::exit_mappings_sent() {
            return Ok(());
        }
        let pid = cmd.pid.as_raw() as u32;
        cmd.exec_until_mapped(|maps| {
            self.set_mappings(pid, maps);
            symbolizer.borrow_mut().note_mappings(pid, maps);
            None::<()>
        })?;
        Ok(())
    }

    /// Adds to a ring buffer what a stack tool's skeleton sends for its
    /// stacks: exiting processes' mappings (`mappings`, given to
    /// `symbolizer`), and with the walk on, `unwind_requests` (which wake
    /// the session's poll when the BPF side asks for a process) and
    /// `unwind_deferred_ring`.
    pub fn add_to<'slf>(
        &'slf self,
        builder: &mut RingBufferBuilder<'slf, 'slf>,
        symbolizer: &'slf RefCell<StackSymbolizer>,
        maps: StackMaps<'slf>,
    ) -> Result<()> {
        records::add_exit_mappings(builder, maps.mappings, |pid, mapping| {
            symbolizer.borrow_mut().add_exited_mapping(pid, mapping)
        })?;
        if !self.is_on() {
            return Ok(());
        }
        builder
            .add(maps.requests, |_| 0)
            .context("adding the unwind requests to the ring buffer")?;
        self.deferred.add_to(builder, maps.deferred)
    }

    /// After each poll and before each report: reads in the processes the
    /// BPF side asked for and unwinds the stacks it sent (stored in `stack_store`).
    pub fn catch_up(&self, stack_store: &dyn MapCore, symbolizer: &RefCell<StackSymbolizer>) {
        if let Some(tables) = &self.tables {
            let mut tables = tables.borrow_mut();
            tables.refresh();
            let mut symbolizer = symbolizer.borrow_mut();
            // the last mappings known of each process, for one gone before
            // a report without an exit record (before Linux 6.7)
            for (pid, maps) in tables.noted.drain(..) {
                symbolizer.note_mappings(pid, &maps);
            }
            tables.resolve(&self.deferred, stack_store, &mut symbolizer);
        }
    }

    /// At the end, on stderr: the table rows that found no room, if any.
    pub fn say_lost(&self, tool: &str) {
        if let Some(tables) = &self.tables {
            tables.borrow().say_lost(tool);
        }
    }
}

struct UnwindTables<'obj> {
    rows_map: libbpf_rs::Map<'obj>,
    pages_map: libbpf_rs::Map<'obj>,
    objects_map: libbpf_rs::Map<'obj>,
    processes_map: libbpf_rs::Map<'obj>,
    wanted_map: libbpf_rs::Map<'obj>,
    /// By (device, inode): None for a file that gave no table.
    objects: HashMap<((u32, u32), u64), Option<LoadedObject>>,
    next_row: usize,
    next_page: usize,
    next_object: u32,
    /// Rows that found no room (said once, at the end).
    rows_lost: usize,
    /// Unwinds deferred stacks.
    unwinder: Unwinder,
    /// The mappings read in since catch_up last handed them to the
    /// symbolizer (StackSymbolizer::note_mappings).
    noted: Vec<(u32, Vec<MapsEntry>)>,
}

impl<'obj> UnwindTables<'obj> {
    fn start(object: &'obj Object, pids: &[u32]) -> Result<UnwindTables<'obj>> {
        let mut tables = UnwindTables::new(object)?;
        for &pid in pids {
            tables.add_process(pid);
        }
        Ok(tables)
    }

    fn new(object: &'obj Object) -> Result<UnwindTables<'obj>> {
        Ok(UnwindTables {
            rows_map: map_named(object, "unwind_rows")?,
            pages_map: map_named(object, "unwind_pages")?,
            objects_map: map_named(object, "unwind_objects")?,
            processes_map: map_named(object, "unwind_processes")?,
            wanted_map: map_named(object, "unwind_wanted")?,
            objects: HashMap::new(),
            next_row: 0,
            next_page: 0,
            next_object: FRAME_POINTERS + 1,
            rows_lost: 0,
            unwinder: Unwinder::default(),
            noted: Vec::new(),
        })
    }

    /// Reads a process's executable mappings in, with the tables of the
    /// objects not seen before. A process that is gone is left out.
    fn add_process(&mut self, pid: u32) {
        if let Ok(maps) = proc_maps::read_maps(pid) {
            self.set_mappings(pid, &maps);
        }
    }

    /// Gives the BPF side a process's mappings, as read from /proc/PID/maps.
    /// Mappings past UNWIND_MAX_MAPPINGS are left out: stacks through them
    /// end truncated.
    fn set_mappings(&mut self, pid: u32, maps: &[MapsEntry]) {
        self.noted.push((pid, maps.to_vec()));
        let mut process = UnwindProcess::default();
        let executable = maps.iter().filter(|m| m.executable());
        for (slot, entry) in process.maps.iter_mut().zip(executable) {
            *slot = self.mapping(pid, entry);
            process.nr += 1;
        }
        // SAFETY: a C struct of integers: its bytes are its value.
        let bytes = unsafe { plain::as_bytes(&process) };
        let _ = self
            .processes_map
            .update(&pid.to_ne_bytes(), bytes, MapFlags::ANY);
    }

    /// Reads in the processes the BPF side asked for since the last call.
    fn refresh(&mut self) {
        let Ok(wanted) = take_entries::<u32, u8>(&self.wanted_map) else {
            return;
        };
        for (pid, _) in wanted {
            self.add_process(pid);
        }
    }

    /// Unwinds the deferred stacks queued, after reading their processes in
    /// anew, and stores each under its key in `stack_store` (the BPF side
    /// made it pending and truncated, which it stays if this fails).
    /// `symbolizer` knows the mappings of processes that exited meanwhile.
    fn resolve(
        &mut self,
        deferred: &DeferredStacks,
        stack_store: &dyn MapCore,
        symbolizer: &mut StackSymbolizer,
    ) {
        let queued = std::mem::take(&mut *deferred.0.borrow_mut());
        let mut read_in = std::collections::HashSet::new();
        for stack in queued {
            // the symbolizer reads a live process's maps again itself when
            // an address is in none it knows
            if read_in.insert(stack.tgid) {
                self.add_process(stack.tgid);
            }
            let regs = Registers {
                ip: stack.ip,
                sp: stack.sp,
                bp: stack.bp,
            };
            let copied = &stack.stack[..(stack.stack_len as usize).min(stack.stack.len())];
            let (ips, whole) = self
                .unwinder
                .unwind_whole(regs, copied, |addr| symbolizer.locate(stack.tgid, addr));
            let mut record = StackRecord::default();
            let frames = ips.len().min(record.ips.len());
            record.ips[..frames].copy_from_slice(&ips[..frames]);
            record.nr = frames as u32;
            if !whole {
                record.flags = StackFlag::MEMTRACE_STACK_TRUNCATED.0;
            }
            // SAFETY: a C struct of integers: its bytes are its value.
            let bytes = unsafe { plain::as_bytes(&record) };
            let _ = stack_store.update(&stack.key.to_ne_bytes(), bytes, MapFlags::EXIST);
        }
    }

    fn say_lost(&self, tool: &str) {
        if self.rows_lost > 0 {
            crate::say!(
                "{tool}: {} rows of unwind tables found no room; stacks through their objects end [truncated]: raise --unwind-rows",
                self.rows_lost
            );
        }
    }

    /// One executable mapping as the BPF side reads it.
    fn mapping(&mut self, pid: u32, entry: &MapsEntry) -> UnwindMapping {
        let object = match entry.path() {
            Some(_) => self.object(pid, entry),
            None => None,
        };
        let (id, bias) = match object {
            Some(object) => match object.segments.address_of(entry.offset) {
                Some(address) => (object.id, entry.start.wrapping_sub(address)),
                None => (FRAME_POINTERS, 0),
            },
            None => (FRAME_POINTERS, 0),
        };
        UnwindMapping {
            start: entry.start,
            end: entry.end,
            bias,
            object: id,
            ..Default::default()
        }
    }

    /// The object of a file mapping, its table loaded the first time.
    fn object(&mut self, pid: u32, entry: &MapsEntry) -> Option<LoadedObject> {
        let key = (entry.device, entry.inode);
        if let Some(known) = self.objects.get(&key) {
            return known.clone();
        }
        // the file this process maps, whatever its mount namespace
        let path = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            entry.start, entry.end
        ));
        let loaded = std::fs::read(&path)
            .ok()
            .and_then(|data| self.load_object(&data));
        self.objects.insert(key, loaded.clone());
        loaded
    }

    /// Builds an ELF file's table and writes its rows; None if it has none
    /// or there is no room for it (counted).
    fn load_object(&mut self, data: &[u8]) -> Option<LoadedObject> {
        let elf = object::File::parse(data).ok()?;
        let segments = LoadSegments::of(&elf);
        let table = UnwindTable::from_elf(data).ok()?;
        if table.rows.is_empty() {
            return Some(LoadedObject {
                id: FRAME_POINTERS,
                segments,
            });
        }
        let id = self.next_object;
        let first = self.next_row;
        let capacity = self.rows_map.max_entries() as usize;
        if first + table.rows.len() > capacity || id >= self.objects_map.max_entries() {
            self.rows_lost += table.rows.len();
            return None;
        }
        let rows =
            MappedArray::<UnwindRow>::window(&self.rows_map, first..first + table.rows.len())
                .ok()?;
        for (index, row) in table.rows.iter().enumerate() {
            let record = row_record(row);
            rows.update(first + index, |slot| *slot = record);
        }
        let mut object = UnwindObject {
            first_row: first as u32,
            rows: table.rows.len() as u32,
            entry: u32::try_from(elf.entry()).unwrap_or(0),
            ..Default::default()
        };
        self.write_page_index(&table, &mut object);
        // SAFETY: a C struct of integers: its bytes are its value.
        let bytes = unsafe { plain::as_bytes(&object) };
        self.objects_map
            .update(&id.to_ne_bytes(), bytes, MapFlags::ANY)
            .ok()?;
        self.next_row += table.rows.len();
        self.next_object += 1;
        Some(LoadedObject { id, segments })
    }

    /// Writes an object's page index after those before it and says where
    /// it is in `object`. Without room, the object has none: its searches
    /// go through all its rows, slower but the same.
    fn write_page_index(&mut self, table: &UnwindTable, object: &mut UnwindObject) {
        let (first_pc_page, index) = table.page_index(PAGE_SHIFT);
        let first = self.next_page;
        if index.is_empty() || first + index.len() > self.pages_map.max_entries() as usize {
            return;
        }
        let Ok(pages) = MappedArray::<u32>::window(&self.pages_map, first..first + index.len())
        else {
            return;
        };
        for (page, row) in index.iter().enumerate() {
            pages.update(first + page, |slot| *slot = object.first_row + row);
        }
        object.first_page = first as u32;
        object.first_pc_page = first_pc_page;
        object.pages = index.len() as u32;
        self.next_page += index.len();
    }
}

/// A row as unwind.bpf.h reads it (struct unwind_row).
fn row_record(row: &Row) -> UnwindRow {
    let (cfa_register, cfa_offset) = match row.cfa {
        Cfa::Rsp(offset) => (UnwindCfa::UNWIND_CFA_RSP, offset),
        Cfa::Rbp(offset) => (UnwindCfa::UNWIND_CFA_RBP, offset),
        Cfa::Plt => (UnwindCfa::UNWIND_CFA_PLT, 0),
        Cfa::End => (UnwindCfa::UNWIND_END, 0),
        Cfa::None => (UnwindCfa::UNWIND_NONE, 0),
    };
    let (rbp_rule, rbp_offset) = match row.rbp {
        RbpRule::Same => (UnwindRbp::UNWIND_RBP_SAME, 0),
        RbpRule::AtCfa(offset) => (UnwindRbp::UNWIND_RBP_AT_CFA, offset),
    };
    UnwindRow {
        pc: row.pc,
        cfa_offset,
        rbp_offset,
        cfa_register: cfa_register.0 as u8,
        rbp_rule: rbp_rule.0 as u8,
        ..Default::default()
    }
}
