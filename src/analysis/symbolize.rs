//! Stacks to `func+0xoff [module]` with blazesym. User addresses go through
//! mapping tables memtrace keeps itself (from /proc/PID/maps while a process
//! lives, from the BPF side's records when it exits) and are symbolized by
//! file offset in the ELF file, so a process that exited before the report
//! is still symbolized.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use crate::analysis::debug_symbols::{build_id_hex, DebugSymbols};
use crate::analysis::proc_maps::{self, MapsEntry};
use crate::present::escape::escape_bytes;
use crate::present::profile::{ProfileFrame, ProfileLine, ProfileMapping};
use crate::present::stack_report::TRUNCATED_FRAME;

/// Ends the addresses of a stack the unwinder could not follow to its
/// outermost frame (engine::maps::stored_stack puts it); no user address is this.
pub const TRUNCATED_IP: u64 = u64::MAX;

/// The path a mapping of the kernel's vDSO has here (it has no file): its
/// frames print as `0xOFFSET [vdso]`.
pub const VDSO: &str = "[vdso]";

/// An executable file mapping of a process (or its vDSO: VDSO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    pub path: PathBuf,
}

/// A function at a file offset: the one the offset is in, or one inlined
/// there. Names and files as the debug information has them (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Symbol {
    name: String,
    /// The offset into the function (0 for an inlined one).
    offset: u64,
    inlined: bool,
    /// The source file's path and the line, where asked for (`with_source`)
    /// and known.
    file: Option<String>,
    line: Option<u32>,
}

/// Processes whose last known mappings are kept (StackSymbolizer::known).
const KNOWN_PROCESSES: usize = 8192;

pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    /// Mappings of processes that exited, as the BPF side sent them.
    exited: HashMap<u32, Vec<Mapping>>,
    /// Mappings of live processes, read at the last report.
    live: HashMap<u32, Vec<Mapping>>,
    /// The last mappings read of each process (here, or by the unwinder:
    /// note_mappings): a process gone without an exit record (kernels
    /// before 6.7 send none: exitmaps.bpf.h) is symbolized with them. At
    /// most KNOWN_PROCESSES, the oldest noted going first (`known_order`).
    known: HashMap<u32, Vec<Mapping>>,
    known_order: VecDeque<u32>,
    with_source: bool,
    /// Each mapped file's separate debug file, looked for once (names only).
    debug_files: HashMap<PathBuf, Option<DebugSymbols>>,
    /// Each mapped file's build id in hex ("" for none), read once for profiles.
    build_ids: HashMap<PathBuf, String>,
    /// Each file's functions at an offset, symbolized once: see symbols_at.
    symbols_memo: HashMap<PathBuf, HashMap<u64, Option<Vec<Symbol>>>>,
}

/// The executable file mappings of a live process, from /proc/PID/maps;
/// None for one that has none left (it is exiting: its mappings come from
/// the BPF side's exit records instead).
fn read_maps(pid: u32) -> Option<Vec<Mapping>> {
    let maps = proc_maps::read_maps(pid).ok()?;
    if maps.is_empty() {
        return None;
    }
    Some(executable_mappings(&maps))
}

/// The executable file mappings (and the vDSO) among a process's.
fn executable_mappings(maps: &[MapsEntry]) -> Vec<Mapping> {
    maps.iter()
        .filter(|m| m.executable())
        .filter_map(|m| {
            let path = match m.path() {
                Some(path) => path.to_path_buf(),
                None if m.name == VDSO.as_bytes() => PathBuf::from(VDSO),
                None => return None,
            };
            Some(Mapping {
                start: m.start,
                end: m.end,
                file_offset: m.offset,
                path,
            })
        })
        .collect()
}

fn module_name(path: &Path) -> String {
    if path == Path::new(VDSO) {
        return "vdso".into();
    }
    path.file_name()
        .map(|n| escape_bytes(n.as_encoded_bytes()))
        .unwrap_or_else(|| "?".into())
}

impl StackSymbolizer {
    pub fn new(with_source: bool) -> StackSymbolizer {
        StackSymbolizer {
            symbolizer: Symbolizer::builder().enable_code_info(with_source).build(),
            exited: HashMap::new(),
            live: HashMap::new(),
            known: HashMap::new(),
            known_order: VecDeque::new(),
            with_source,
            debug_files: HashMap::new(),
            build_ids: HashMap::new(),
            symbols_memo: HashMap::new(),
        }
    }

    /// Records a mapping of an exiting process (engine::records::exit_mapping
    /// decodes them); None ends its list, or says it had none.
    pub fn add_exited_mapping(&mut self, pid: u32, mapping: Option<Mapping>) {
        // the exit record supersedes what was read before
        self.known.remove(&pid);
        let maps = self.exited.entry(pid).or_default();
        if let Some(mapping) = mapping {
            maps.push(mapping);
        }
    }

    /// Forgets what was read from /proc: call before symbolizing a report.
    pub fn refresh(&mut self) {
        self.live.clear();
    }

    /// Records the mappings of a process as the unwinder read them (at its
    /// start, a fork, an exec, a dlopen): the last known, if it is gone
    /// before a report and no exit record comes.
    pub fn note_mappings(&mut self, pid: u32, maps: &[MapsEntry]) {
        self.know(pid, executable_mappings(maps));
    }

    /// Keeps `maps` as the last known of `pid` (see `known`): a long
    /// system-wide trace sees processes without end.
    fn know(&mut self, pid: u32, maps: Vec<Mapping>) {
        if self.known.insert(pid, maps).is_none() {
            self.known_order.push_back(pid);
        }
        while self.known_order.len() > KNOWN_PROCESSES {
            if let Some(oldest) = self.known_order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }

    /// A process's mappings: its exit record's, else its live ones, else
    /// the last known.
    fn mappings(&mut self, pid: u32) -> Option<&Vec<Mapping>> {
        if !self.has_mappings(pid) {
            return self.known.get(&pid);
        }
        self.exited.get(&pid).or_else(|| self.live.get(&pid))
    }

    /// Whether the process's mappings are known for sure: it lives, or its
    /// exit was recorded.
    pub fn has_mappings(&mut self, pid: u32) -> bool {
        if self.exited.contains_key(&pid) || self.live.contains_key(&pid) {
            return true;
        }
        let Some(maps) = read_maps(pid) else {
            return false;
        };
        self.know(pid, maps.clone());
        self.live.insert(pid, maps);
        true
    }

    /// The file mapped at a user address of a process, and the address's offset in it.
    pub fn locate(&mut self, pid: u32, addr: u64) -> Option<(PathBuf, u64)> {
        let find = |maps: &Vec<Mapping>| {
            let map = maps.iter().find(|m| (m.start..m.end).contains(&addr))?;
            Some((map.path.clone(), addr - map.start + map.file_offset))
        };
        if let Some(found) = self.mappings(pid).and_then(find) {
            return Some(found);
        }
        // a live process may have mapped the file since its maps were read
        if self.live.remove(&pid).is_some() {
            return self.mappings(pid).and_then(find);
        }
        None
    }

    /// User-space frames, leaf first, as `func+0xoff [module]`; with source
    /// information, a call inlined at an address adds a frame for each
    /// function inlined there, `func (inlined) (file:line) [module]`,
    /// before the one of the function it was inlined into.
    pub fn user_frames(&mut self, pid: u32, ips: &[u64]) -> Vec<String> {
        // the file and offset of each address, found before any is symbolized
        let located: Option<Vec<Option<(PathBuf, u64)>>> = self.mappings(pid).map(|maps| {
            ips.iter()
                .map(|&ip| {
                    let map = maps.iter().find(|m| (m.start..m.end).contains(&ip))?;
                    Some((map.path.clone(), ip - map.start + map.file_offset))
                })
                .collect()
        });
        let Some(located) = located else {
            return ips.iter().map(|ip| format!("{ip:#x} [unknown]")).collect();
        };
        let mut frames = Vec::with_capacity(ips.len());
        for (depth, (&ip, place)) in ips.iter().zip(located).enumerate() {
            if ip == TRUNCATED_IP {
                frames.push(TRUNCATED_FRAME.to_string());
                continue;
            }
            let Some((path, offset)) = place else {
                frames.push(format!("{ip:#x} [unknown]"));
                continue;
            };
            // a caller's address is its call's return address: the call,
            // its line and what was inlined there are the byte before
            let after_call = u64::from(depth > 0 && offset > 0);
            frames.extend(self.frames_at(&path, offset - after_call, after_call));
        }
        frames
    }

    /// The frames of a file offset as `user_frames` prints them: the
    /// functions there (symbols_at), `shown_past` added to the offset shown
    /// (a return address's byte).
    fn frames_at(&mut self, path: &Path, offset: u64, shown_past: u64) -> Vec<String> {
        let module = module_name(path);
        let with_source = self.with_source;
        // a frame shows the file's name; a profile gets its whole path
        let location = |symbol: &Symbol| {
            let file = symbol.file.as_deref().filter(|_| with_source).map(|path| {
                let name = Path::new(path).file_name().unwrap_or(path.as_ref());
                escape_bytes(name.as_encoded_bytes())
            });
            match (file, symbol.line) {
                (Some(file), Some(line)) => format!(" ({file}:{line})"),
                (Some(file), None) => format!(" ({file})"),
                (None, _) => String::new(),
            }
        };
        match self.symbols_at(path, offset) {
            Some(symbols) => symbols
                .iter()
                .map(|symbol| {
                    let name = escape_bytes(symbol.name.as_bytes());
                    match symbol.inlined {
                        true => format!("{name} (inlined){} [{module}]", location(symbol)),
                        false => format!(
                            "{name}+{:#x}{} [{module}]",
                            symbol.offset + shown_past,
                            location(symbol)
                        ),
                    }
                })
                .collect(),
            None => vec![format!("{:#x} [{module}]", offset + shown_past)],
        }
    }

    /// The functions at a file offset, innermost first (symbolize_offset),
    /// each offset symbolized once: a report's thousands of stacks share a
    /// few thousand frames (a final report of 8192 stacks took 1.1 s
    /// symbolizing each frame of each stack).
    fn symbols_at(&mut self, path: &Path, offset: u64) -> Option<&[Symbol]> {
        let known = self
            .symbols_memo
            .get(path)
            .is_some_and(|memo| memo.contains_key(&offset));
        if !known {
            let symbols = self.symbolize_offset(path, offset);
            self.symbols_memo
                .entry(path.to_path_buf())
                .or_default()
                .insert(offset, symbols);
        }
        self.symbols_memo
            .get(path)
            .and_then(|memo| memo.get(&offset))
            .and_then(Option::as_deref)
    }

    /// A user stack, leaf first, as a profile (pprof) records it: each
    /// address with its mapping (file, build id) and the functions there,
    /// their source lines with `with_source`. An address in no known
    /// mapping is a frame named by its address; the truncation mark, by its
    /// own name.
    pub fn user_profile_frames(&mut self, pid: u32, ips: &[u64]) -> Vec<ProfileFrame> {
        let maps = self.mappings(pid).cloned().unwrap_or_default();
        let with_source = self.with_source;
        let mut frames = Vec::with_capacity(ips.len());
        for (depth, &ip) in ips.iter().enumerate() {
            if ip == TRUNCATED_IP {
                frames.push(ProfileFrame::Named(TRUNCATED_FRAME.to_string()));
                continue;
            }
            let Some(mapping) = maps.iter().find(|m| (m.start..m.end).contains(&ip)) else {
                frames.push(ProfileFrame::Named(format!("{ip:#x} [unknown]")));
                continue;
            };
            let offset = ip - mapping.start + mapping.file_offset;
            // a caller's address is its return address: the call is the byte before
            let before = u64::from(depth > 0 && offset > 0);
            let lines = self
                .symbols_at(&mapping.path, offset - before)
                .unwrap_or_default()
                .iter()
                .map(|symbol| ProfileLine {
                    function: symbol.name.clone(),
                    file: symbol.file.clone().filter(|_| with_source),
                    line: symbol.line.filter(|_| with_source),
                })
                .collect();
            let build_id = self
                .build_ids
                .entry(mapping.path.clone())
                .or_insert_with(|| build_id_hex(&mapping.path).unwrap_or_default())
                .clone();
            frames.push(ProfileFrame::Address {
                address: ip,
                mapping: ProfileMapping {
                    start: mapping.start,
                    end: mapping.end,
                    file_offset: mapping.file_offset,
                    path: mapping.path.to_string_lossy().into_owned(),
                    build_id,
                },
                lines,
            });
        }
        frames
    }

    /// The functions at a file offset, the ones inlined there first, with
    /// their source lines if asked for. Names alone come from a separate
    /// debug file's ELF symbols where one is installed (see
    /// analysis::debug_symbols), else through blazesym's own search, which
    /// loads DWARF (a separate debug file found by build ID or debug link).
    fn symbolize_offset(&mut self, path: &Path, offset: u64) -> Option<Vec<Symbol>> {
        if path == Path::new(VDSO) {
            return None; // no file to read its symbols from
        }
        let debug_file = match self.with_source {
            true => None,
            false => self
                .debug_files
                .entry(path.to_path_buf())
                .or_insert_with(|| DebugSymbols::find(path))
                .as_ref(),
        };
        let symbolized = match debug_file {
            Some(debug) => {
                let mut elf = Elf::new(&debug.path);
                elf.debug_syms = false;
                let address = debug.loads.address_of(offset)?;
                self.symbolizer
                    .symbolize_single(&Source::Elf(elf), Input::VirtOffset(address))
            }
            None => self
                .symbolizer
                .symbolize_single(&Source::Elf(Elf::new(path)), Input::FileOffset(offset)),
        };
        let Ok(Symbolized::Sym(sym)) = symbolized else {
            return None;
        };
        let source = |info: Option<&CodeInfo>| match info {
            Some(info) => (
                Some(info.to_path().to_string_lossy().into_owned()),
                info.line,
            ),
            None => (None, None),
        };
        // blazesym lists inlined calls outermost first; each one's code
        // information is where in it the address (or the next call) is
        let mut symbols: Vec<Symbol> = sym
            .inlined
            .iter()
            .rev()
            .map(|inlined| {
                let (file, line) = source(inlined.code_info.as_ref());
                Symbol {
                    name: inlined.name.to_string(),
                    offset: 0,
                    inlined: true,
                    file,
                    line,
                }
            })
            .collect();
        let (file, line) = source(sym.code_info.as_deref());
        symbols.push(Symbol {
            name: sym.name.to_string(),
            offset: sym.offset as u64,
            inlined: false,
            file,
            line,
        });
        Some(symbols)
    }

    /// Kernel frames, leaf first, from /proc/kallsyms; the tracing program's
    /// own frames (bpf_prog_*, bpf_trace_run*) are left out.
    pub fn kernel_frames(&self, ips: &[u64]) -> Vec<String> {
        let frames = self.kernel_frames_all(ips);
        let own = frames
            .iter()
            .take_while(|f| {
                f.starts_with("bpf_prog_")
                    || f.starts_with("bpf_trace_run")
                    || f.starts_with("__bpf_trace_")
            })
            .count();
        frames[own..].to_vec()
    }

    fn kernel_frames_all(&self, ips: &[u64]) -> Vec<String> {
        let kernel = Kernel {
            vmlinux: MaybeDefault::None,
            ..Kernel::default()
        };
        let source = Source::Kernel(kernel);
        match self.symbolizer.symbolize(&source, Input::AbsAddr(ips)) {
            Ok(syms) => syms
                .iter()
                .zip(ips)
                .map(|(sym, ip)| match sym {
                    Symbolized::Sym(sym) => format!("{}+{:#x} [kernel]", sym.name, sym.offset),
                    _ => format!("{ip:#x} [kernel]"),
                })
                .collect(),
            Err(_) => ips.iter().map(|ip| format!("{ip:#x} [kernel]")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_binary_is_symbolized_by_file_offset() {
        // this test's own function, through the same path as a traced process
        let ip = own_binary_is_symbolized_by_file_offset as *const () as u64;
        let mut symbolizer = StackSymbolizer::new(false);
        let frames = symbolizer.user_frames(std::process::id(), &[ip]);
        assert!(
            frames[0].contains("own_binary_is_symbolized_by_file_offset"),
            "{frames:?}"
        );
        // an exited process: only the recorded mappings count
        let maps = read_maps(std::process::id()).unwrap();
        symbolizer.add_exited_mapping(1, None);
        for map in maps {
            symbolizer.add_exited_mapping(1, Some(map));
        }
        let frames = symbolizer.user_frames(1, &[ip, 8]);
        assert!(
            frames[0].contains("own_binary_is_symbolized_by_file_offset"),
            "{frames:?}"
        );
        assert_eq!(frames[1], "0x8 [unknown]");
    }

    #[test]
    fn the_oldest_known_mappings_go_first() {
        let mut symbolizer = StackSymbolizer::new(false);
        for pid in 0..=KNOWN_PROCESSES as u32 {
            symbolizer.note_mappings(pid, &[]);
        }
        assert_eq!(symbolizer.known.len(), KNOWN_PROCESSES);
        assert!(!symbolizer.known.contains_key(&0));
        assert!(symbolizer.known.contains_key(&(KNOWN_PROCESSES as u32)));
        // an exit record supersedes them
        symbolizer.add_exited_mapping(1, None);
        assert!(!symbolizer.known.contains_key(&1));
    }

    #[test]
    fn a_process_gone_without_an_exit_record_has_its_last_known_mappings() {
        let ip = own_binary_is_symbolized_by_file_offset as *const () as u64;
        // pid_max itself is never a process's pid
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
        let gone: u32 = pid_max.trim().parse().unwrap();
        let mut symbolizer = StackSymbolizer::new(false);
        assert!(!symbolizer.has_mappings(gone));
        assert_eq!(
            symbolizer.user_frames(gone, &[ip])[0],
            format!("{ip:#x} [unknown]")
        );
        // as the unwinder read them before it went
        let maps = proc_maps::read_maps(std::process::id()).unwrap();
        symbolizer.note_mappings(gone, &maps);
        // not known for sure: an exit record, if one comes, is still wanted
        assert!(!symbolizer.has_mappings(gone));
        let frames = symbolizer.user_frames(gone, &[ip]);
        assert!(
            frames[0].contains("own_binary_is_symbolized_by_file_offset"),
            "{frames:?}"
        );
    }
}
