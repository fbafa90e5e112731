//! Compact unwind tables for unwinding user stacks in BPF: an object's
//! .eh_frame evaluated ahead of time into one sorted array of rows, each the
//! rule from its pc up to the next row's pc, which a BPF program can binary
//! search (as the Parca agent and the OpenTelemetry eBPF profiler do). The
//! CFI programs are run here once per object, not per sample; unwind.rs
//! looks rules up one address at a time instead, for stacks the BPF side sent.
//!
//! x86-64 only: a row holds the rules x86-64 needs (CFA from RSP or RBP, the
//! caller's RBP, the return address always at CFA-8). Another architecture
//! (arm64: the return address in x30, the frame record at x29) would be
//! another row type built by another `rule_of`; from_elf refuses other ELF
//! machines.
//!
//! Rows are keyed by the object's ELF virtual addresses, as a u32: the
//! vaddrs of shared objects and PIE start at 0 and stay far below 4 GiB, so
//! rows at or past 4 GiB (a non-PIE executable linked there) are left out,
//! and the BPF side must not look such addresses up. A runtime address
//! becomes a vaddr through its mapping's file offset (LoadSegments::address_of).
//!
//! Every FDE of .eh_frame is read, not only those .eh_frame_hdr indexes. A
//! file without .eh_frame gets an empty table (the BPF side falls back to
//! frame pointers); a .debug_frame alone is not read, as it is not loaded.
//! A lazy PLT's CFA expression is recognised by its bytes (is_plt_expression),
//! not by the section it covers; any other expression is NONE.
//!
//! Built in release on Debian 12 (best of 5, the file already read; the test
//! build_times prints them): libc.so.6, 3,713 FDEs -> 28,270 rows in 1.8 ms;
//! ld-linux-x86-64.so.2, 293 FDEs -> 2,394 rows in 0.15 ms; libstdc++.so.6,
//! 4,867 FDEs -> 34,371 rows in 2.2 ms. At 12 bytes a row (16 in the
//! BPF array: values are 8-byte aligned), libc's is 442 KiB. engine::unwind
//! encodes the rows as unwind.h's struct unwind_row.
//!
//! Rows the BPF side cannot follow are NONE: in ld.so, _dl_runtime_resolve's
//! CFA from rbx; in libc, the signal trampoline's computed CFA.

use anyhow::Context;
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, FrameDescriptionEntry, NativeEndian, RegisterRule,
    UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use object::Object;

use crate::analysis::unwind::section_location;

type Reader<'a> = gimli::EndianSlice<'a, NativeEndian>;

/// How the caller's stack pointer (the CFA) is found; the return address is
/// at CFA-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cfa {
    /// CFA = rsp + offset.
    Rsp(i16),
    /// CFA = rbp + offset.
    Rbp(i16),
    /// A lazy PLT stub: CFA = rsp + 8, + 8 more from its push on.
    Plt,
    /// The return address is undefined: the outermost frame.
    End,
    /// No usable rule: a gap between FDEs, or one the BPF side cannot follow.
    None,
}

/// Where the caller's rbp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbpRule {
    /// Unchanged: the callee has not saved it (or the ABI does not restore it).
    Same,
    /// Saved at CFA + offset.
    AtCfa(i16),
}

/// The rule in effect from `pc` up to the next row's pc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa: Cfa,
    pub rbp: RbpRule,
}

/// A row's rule, which consecutive rows merge on.
type Rule = (Cfa, RbpRule);

/// The rule that stops unwinding; its rbp rule is fixed so that rows merge.
const NO_RULE: Rule = (Cfa::None, RbpRule::Same);

impl UnwindRow {
    fn rule(&self) -> Rule {
        (self.cfa, self.rbp)
    }
}

/// An object's rows, sorted by pc, strictly increasing, no two consecutive
/// rows with the same rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    pub rows: Vec<UnwindRow>,
}

/// One FDE's range and the rules its CFI gives, in address order.
struct FdeRules {
    start: u64,
    end: u64,
    rules: Vec<(u64, Rule)>,
}

impl UnwindTable {
    #[cfg(test)]
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<UnwindTable> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        UnwindTable::from_elf(&data).with_context(|| format!("unwind table of {}", path.display()))
    }

    pub fn from_elf(data: &[u8]) -> anyhow::Result<UnwindTable> {
        let file = object::File::parse(data)?;
        anyhow::ensure!(
            file.architecture() == object::Architecture::X86_64,
            "unwind tables are built for x86-64 objects only, not {:?}",
            file.architecture()
        );
        let Some((range, address)) = section_location(&file, ".eh_frame") else {
            return Ok(UnwindTable::default());
        };
        let section = data.get(range).context(".eh_frame lies outside the file")?;
        UnwindTable::from_eh_frame(section, address)
    }

    /// The table of an .eh_frame section's bytes, loaded at `address`.
    pub fn from_eh_frame(section: &[u8], address: u64) -> anyhow::Result<UnwindTable> {
        let fdes = read_fdes(section, address)?;
        Ok(UnwindTable {
            rows: assemble(fdes),
        })
    }

    /// The page index the BPF side narrows its search with: the first page
    /// (the first row's pc >> `page_shift`) and, for each page from there to
    /// the last row's, the index of the row in effect at the page's start
    /// (0 where none is). The rows for a pc in page p are those from
    /// `index[p]` to `index[p + 1]` inclusive (to the last row for the last
    /// page). Empty for an empty table.
    pub fn page_index(&self, page_shift: u32) -> (u32, Vec<u32>) {
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return (0, Vec::new());
        };
        let (first_page, last_page) = (first.pc >> page_shift, last.pc >> page_shift);
        let index = (first_page..=last_page)
            .map(|page| {
                let start = page << page_shift;
                let after = self.rows.partition_point(|row| row.pc <= start);
                after.saturating_sub(1) as u32
            })
            .collect();
        (first_page, index)
    }

    /// The row in effect at an ELF virtual address: the last row at or below
    /// it, as the BPF side's binary search finds it.
    #[cfg(test)]
    pub fn rule_at(&self, address: u64) -> Option<&UnwindRow> {
        let address = u32::try_from(address).ok()?;
        let after = self.rows.partition_point(|row| row.pc <= address);
        self.rows.get(after.checked_sub(1)?)
    }
}

/// Every FDE of .eh_frame with a nonzero range, and its rules. An FDE whose
/// CFI does not parse is left out: its addresses become a gap.
fn read_fdes(section: &[u8], address: u64) -> anyhow::Result<Vec<FdeRules>> {
    let eh_frame = EhFrame::new(section, NativeEndian);
    let bases = BaseAddresses::default().set_eh_frame(address);
    let mut ctx = UnwindContext::new();
    let mut fdes = Vec::new();
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next().context("reading .eh_frame")? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        if fde.len() == 0 {
            continue; // left by a linker for a discarded function
        }
        if let Ok(rules) = fde_rules(&eh_frame, &bases, &mut ctx, &fde) {
            fdes.push(FdeRules {
                start: fde.initial_address(),
                end: fde.end_address(),
                rules,
            });
        }
    }
    Ok(fdes)
}

fn fde_rules(
    eh_frame: &EhFrame<Reader<'_>>,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde: &FrameDescriptionEntry<Reader<'_>>,
) -> gimli::Result<Vec<(u64, Rule)>> {
    let mut rows = fde.rows(eh_frame, bases, ctx)?;
    let mut rules = Vec::new();
    while let Some(row) = rows.next_row()? {
        rules.push((row.start_address(), rule_of(row, eh_frame)));
    }
    Ok(rules)
}

/// One CFI row as the BPF side can follow it, or NO_RULE.
fn rule_of(row: &UnwindTableRow<usize>, eh_frame: &EhFrame<Reader<'_>>) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return (Cfa::End, RbpRule::Same),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return NO_RULE,
    }
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i16::try_from(*offset) else {
                return NO_RULE;
            };
            match *register {
                X86_64::RSP => Cfa::Rsp(offset),
                X86_64::RBP => Cfa::Rbp(offset),
                _ => return NO_RULE,
            }
        }
        CfaRule::Expression(expression) => match expression.get(eh_frame) {
            Ok(bytes) if is_plt_expression(bytes.0.slice()) => Cfa::Plt,
            _ => return NO_RULE,
        },
    };
    let rbp = match row.register(X86_64::RBP) {
        // undefined: not restored by the ABI; what the register holds is as good
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => RbpRule::Same,
        Some(RegisterRule::Offset(offset)) => match i16::try_from(offset) {
            Ok(offset) => RbpRule::AtCfa(offset),
            Err(_) => return NO_RULE,
        },
        // in a register, or computed: a wrong rbp would mislead the frames above
        Some(_) => return NO_RULE,
    };
    (cfa, rbp)
}

/// ld's CFA expression for a lazy PLT: rsp + 8 + ((rip & 15) >= 11) << 3, the
/// stub's push having moved rsp from its 11th byte on. Matched by its bytes:
/// ld writes exactly these. IBT PLTs (`lit10`) differ and are left as NONE.
fn is_plt_expression(bytes: &[u8]) -> bool {
    use gimli::constants::*;
    const RIP: u8 = DW_OP_breg0.0 + 16;
    bytes
        == [
            DW_OP_breg7.0, // rsp
            8,
            RIP,
            0,
            DW_OP_lit15.0,
            DW_OP_and.0,
            DW_OP_lit11.0,
            DW_OP_ge.0,
            DW_OP_lit3.0,
            DW_OP_shl.0,
            DW_OP_plus.0,
        ]
}

/// The rows of all FDEs in address order: a gap after an FDE gets NO_RULE,
/// an FDE that overlaps the next gives way at the next one's start (as a
/// lookup by the greatest start at or below an address would).
fn assemble(mut fdes: Vec<FdeRules>) -> Vec<UnwindRow> {
    fdes.sort_by_key(|fde| fde.start);
    let mut rows = Vec::with_capacity(fdes.iter().map(|fde| fde.rules.len()).sum());
    for (i, fde) in fdes.iter().enumerate() {
        let next_start = fdes.get(i + 1).map(|next| next.start);
        let end = next_start.map_or(fde.end, |next| next.min(fde.end));
        for &(pc, rule) in fde.rules.iter().take_while(|(pc, _)| *pc < end) {
            push_row(&mut rows, pc, rule);
        }
        if next_start != Some(end) {
            push_row(&mut rows, end, NO_RULE);
        }
    }
    rows
}

/// Appends a rule from `pc` on, unless the last row has it already; one at
/// the same pc as the last row replaces it (the last covered no address).
fn push_row(rows: &mut Vec<UnwindRow>, pc: u64, (cfa, rbp): Rule) {
    let Ok(pc) = u32::try_from(pc) else {
        return; // beyond what the BPF side's u32 pcs hold
    };
    if rows.last().is_some_and(|last| last.pc == pc) {
        rows.pop();
    }
    if rows.last().is_some_and(|last| last.rule() == (cfa, rbp)) {
        return;
    }
    rows.push(UnwindRow { pc, cfa, rbp });
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimli::write::{self, Address, CallFrameInstruction as Cfi, CommonInformationEntry};
    use gimli::{EhFrameHdr, Encoding, Format};
    use std::path::PathBuf;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";
    const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

    /// ld's lazy-PLT CFA expression, as readelf shows it in libc.
    const PLT_BYTES: [u8; 11] = [
        0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
    ];

    fn row(pc: u32, cfa: Cfa, rbp: RbpRule) -> UnwindRow {
        UnwindRow { pc, cfa, rbp }
    }

    /// An FDE to write: start, length, [(offset, instruction)].
    type FdeSpec = (u64, u32, Vec<(u32, Cfi)>);

    /// An .eh_frame of FDEs under
    /// one CIE with x86-64's entry rules (CFA = rsp+8, RA at CFA-8).
    fn eh_frame_of(fdes: Vec<FdeSpec>) -> Vec<u8> {
        let encoding = Encoding {
            format: Format::Dwarf32,
            version: 1,
            address_size: 8,
        };
        let mut cie = CommonInformationEntry::new(encoding, 1, -8, X86_64::RA);
        cie.add_instruction(Cfi::Cfa(X86_64::RSP, 8));
        cie.add_instruction(Cfi::Offset(X86_64::RA, -8));
        let mut frames = write::FrameTable::default();
        let cie = frames.add_cie(cie);
        for (start, length, instructions) in fdes {
            let mut fde = write::FrameDescriptionEntry::new(Address::Constant(start), length);
            for (offset, instruction) in instructions {
                fde.add_instruction(offset, instruction);
            }
            frames.add_fde(cie, fde);
        }
        let mut section = write::EhFrame(write::EndianVec::new(NativeEndian));
        frames.write_eh_frame(&mut section).unwrap();
        section.0.into_vec()
    }

    #[test]
    fn hand_built_eh_frame_gives_merged_rows_and_gaps() {
        let signal_frame = write::Expression::raw(vec![0x77, 0xa0, 0x01, 0x06]); // rsp+160, deref
        let eh_frame = eh_frame_of(vec![
            // out of order: the table sorts
            (0x1020, 0x10, vec![]), // the same rule as the end of the one before
            (
                0x1000,
                0x20,
                vec![
                    (1, Cfi::CfaOffset(16)),
                    (1, Cfi::Offset(X86_64::RBP, -16)),
                    (4, Cfi::CfaRegister(X86_64::RBP)),
                    (0x1f, Cfi::Cfa(X86_64::RSP, 8)),
                    (0x1f, Cfi::SameValue(X86_64::RBP)),
                ],
            ),
            (
                0x1040,
                0x10,
                vec![
                    (
                        0,
                        Cfi::CfaExpression(write::Expression::raw(PLT_BYTES.to_vec())),
                    ),
                    (8, Cfi::CfaExpression(signal_frame)),
                ],
            ),
            (0x1050, 0x10, vec![(0, Cfi::Undefined(X86_64::RA))]),
            (
                0x2000,
                0x10,
                vec![(0, Cfi::CfaOffset(40000)), (4, Cfi::Cfa(X86_64::RSP, 8))],
            ),
            (
                0x2010,
                0x10,
                vec![
                    (0, Cfi::Offset(X86_64::RA, -16)),
                    (8, Cfi::Offset(X86_64::RA, -8)),
                    (0xc, Cfi::Register(X86_64::RBP, X86_64::RBX)),
                ],
            ),
            (0x3000, 0, vec![]),     // empty: left out
            (1 << 32, 0x10, vec![]), // past u32 pcs: left out
        ]);
        let table = UnwindTable::from_eh_frame(&eh_frame, 0).unwrap();
        use Cfa::{Rbp, Rsp};
        use RbpRule::{AtCfa, Same};
        let expected = vec![
            row(0x1000, Rsp(8), Same),
            row(0x1001, Rsp(16), AtCfa(-16)),
            row(0x1004, Rbp(16), AtCfa(-16)),
            row(0x101f, Rsp(8), Same),    // 0x1020's FDE merged into it
            row(0x1030, Cfa::None, Same), // the gap up to 0x1040
            row(0x1040, Cfa::Plt, Same),
            row(0x1048, Cfa::None, Same), // another expression
            row(0x1050, Cfa::End, Same),
            row(0x1060, Cfa::None, Same), // the gap, and 0x2000's offset past i16
            row(0x2004, Rsp(8), Same),
            row(0x2010, Cfa::None, Same), // RA not at CFA-8
            row(0x2018, Rsp(8), Same),
            row(0x201c, Cfa::None, Same), // rbp in another register
        ];
        assert_eq!(table.rows, expected);
        assert_eq!(table.rule_at(0xfff), None);
        assert_eq!(table.rule_at(0x1025), Some(&expected[3]));
        assert_eq!(table.rule_at(0x1030).unwrap().cfa, Cfa::None);
        assert_eq!(table.rule_at(0x5000).unwrap().cfa, Cfa::None);
        assert_eq!(table.rule_at(1 << 32), None);
        assert_eq!(UnwindTable::from_eh_frame(&[], 0).unwrap().rows, []);
    }

    fn real_files() -> Vec<PathBuf> {
        let mut files = vec![std::env::current_exe().unwrap()];
        files.extend(
            [LIBC, LD_SO, LIBSTDCXX]
                .iter()
                .map(PathBuf::from)
                .filter(|path| path.exists()),
        );
        files
    }

    #[test]
    fn real_tables_are_sorted_merged_and_start_with_nothing() {
        for path in real_files() {
            let table = UnwindTable::from_file(&path).unwrap();
            let rows = &table.rows;
            assert!(rows.len() > 100, "{}: {} rows", path.display(), rows.len());
            for pair in rows.windows(2) {
                assert!(pair[0].pc < pair[1].pc, "{}: {pair:x?}", path.display());
                assert_ne!(pair[0].rule(), pair[1].rule(), "{}", path.display());
            }
            // the last FDE has no next: past it, nothing
            assert_eq!(rows.last().unwrap().cfa, Cfa::None);
            let first = rows[0].pc;
            assert!(first > 0, "{}", path.display());
            assert_eq!(table.rule_at(u64::from(first) - 1), None);
            assert_eq!(table.rule_at(0), None);
        }
    }

    /// What gimli's own lookup gives at an address, through .eh_frame_hdr's
    /// binary search (a linear search where the index lacks it).
    struct Oracle<'a> {
        eh_frame: EhFrame<Reader<'a>>,
        hdr: Option<gimli::ParsedEhFrameHdr<Reader<'a>>>,
        bases: BaseAddresses,
        ctx: UnwindContext<usize>,
    }

    impl<'a> Oracle<'a> {
        fn new(data: &'a [u8]) -> Oracle<'a> {
            let file = object::File::parse(data).unwrap();
            let (range, address) = section_location(&file, ".eh_frame").unwrap();
            let mut bases = BaseAddresses::default().set_eh_frame(address);
            let hdr = section_location(&file, ".eh_frame_hdr").map(|(range, address)| {
                bases = bases.clone().set_eh_frame_hdr(address);
                EhFrameHdr::new(&data[range], NativeEndian)
                    .parse(&bases, 8)
                    .unwrap()
            });
            Oracle {
                eh_frame: EhFrame::new(&data[range], NativeEndian),
                hdr,
                bases,
                ctx: UnwindContext::new(),
            }
        }

        fn row_at(&mut self, address: u64) -> Option<UnwindTableRow<usize>> {
            let (eh_frame, bases) = (&self.eh_frame, &self.bases);
            let cie = EhFrame::cie_from_offset;
            let indexed = self.hdr.as_ref().and_then(|hdr| {
                let table = hdr.table()?;
                let row =
                    table.unwind_info_for_address(eh_frame, bases, &mut self.ctx, address, cie);
                row.ok().cloned()
            });
            indexed.or_else(|| {
                let row = eh_frame.unwind_info_for_address(bases, &mut self.ctx, address, cie);
                row.ok().cloned()
            })
        }

        /// Addresses across each FDE, its last byte and the byte past it.
        fn sample_addresses(&self) -> Vec<u64> {
            let mut addresses = Vec::new();
            let mut entries = self.eh_frame.entries(&self.bases);
            while let Some(entry) = entries.next().unwrap() {
                let CieOrFde::Fde(partial) = entry else {
                    continue;
                };
                let fde = partial.parse(EhFrame::cie_from_offset).unwrap();
                let (start, len) = (fde.initial_address(), fde.len());
                // every 13th byte: an odd stride meets rows at any alignment
                let inside = (0..len).step_by(13).chain([len.saturating_sub(1), len]);
                addresses.extend(inside.map(|offset| start + offset));
            }
            addresses
        }
    }

    /// Whether the table's row says what gimli's row does; a row the table
    /// calls None must be one the BPF side cannot follow.
    fn agrees(
        got: Option<&UnwindRow>,
        expected: Option<&UnwindTableRow<usize>>,
        oracle: &Oracle,
    ) -> bool {
        let got = got.map_or(NO_RULE, UnwindRow::rule);
        let Some(expected) = expected else {
            return got == NO_RULE;
        };
        let ra = expected.register(X86_64::RA);
        if ra == Some(RegisterRule::Undefined) {
            return got == (Cfa::End, RbpRule::Same);
        }
        let cfa_agrees = match (got.0, expected.cfa()) {
            (Cfa::Rsp(x), CfaRule::RegisterAndOffset { register, offset }) => {
                *register == X86_64::RSP && *offset == i64::from(x)
            }
            (Cfa::Rbp(x), CfaRule::RegisterAndOffset { register, offset }) => {
                *register == X86_64::RBP && *offset == i64::from(x)
            }
            (Cfa::Plt, CfaRule::Expression(e)) => {
                e.get(&oracle.eh_frame).unwrap().0.slice() == PLT_BYTES
            }
            (Cfa::None, _) => return !followable(expected, oracle),
            _ => false,
        };
        let rbp_agrees = match (got.1, expected.register(X86_64::RBP)) {
            (RbpRule::Same, None | Some(RegisterRule::SameValue | RegisterRule::Undefined)) => true,
            (RbpRule::AtCfa(x), Some(RegisterRule::Offset(offset))) => offset == i64::from(x),
            _ => false,
        };
        ra == Some(RegisterRule::Offset(-8)) && cfa_agrees && rbp_agrees
    }

    /// Whether a row fits the BPF row: RA at CFA-8, CFA from rsp or rbp (or
    /// the PLT's expression) with an i16 offset, rbp kept or saved near the CFA.
    fn followable(expected: &UnwindTableRow<usize>, oracle: &Oracle) -> bool {
        let fits = |offset: i64| (-32768..=32767).contains(&offset);
        let cfa = match expected.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                [X86_64::RSP, X86_64::RBP].contains(register) && fits(*offset)
            }
            CfaRule::Expression(e) => e.get(&oracle.eh_frame).unwrap().0.slice() == PLT_BYTES,
        };
        let rbp = match expected.register(X86_64::RBP) {
            None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => true,
            Some(RegisterRule::Offset(offset)) => fits(offset),
            _ => false,
        };
        expected.register(X86_64::RA) == Some(RegisterRule::Offset(-8)) && cfa && rbp
    }

    #[test]
    fn rules_equal_gimlis_lookup_at_every_fde() {
        for path in real_files() {
            let data = std::fs::read(&path).unwrap();
            let table = UnwindTable::from_elf(&data).unwrap();
            let mut oracle = Oracle::new(&data);
            let addresses = oracle.sample_addresses();
            let (mut checked, mut unfollowable) = (0, 0);
            for address in addresses.into_iter().filter(|&a| a <= u64::from(u32::MAX)) {
                let expected = oracle.row_at(address);
                let got = table.rule_at(address);
                assert!(
                    agrees(got, expected.as_ref(), &oracle),
                    "{} at {address:#x}: table {got:?}, gimli {expected:?}",
                    path.display()
                );
                checked += 1;
                unfollowable += usize::from(expected.is_some() && got.unwrap().cfa == Cfa::None);
            }
            eprintln!(
                "{}: {checked} addresses agree, {unfollowable} in FDEs but not followable",
                path.display()
            );
            assert!(checked > 1000, "{}: {checked}", path.display());
        }
    }

    /// Prints each table's build time and size (`--nocapture`), for the doc
    /// comment above.
    #[test]
    fn build_times() {
        for path in real_files() {
            let data = std::fs::read(&path).unwrap();
            let mut best = std::time::Duration::MAX;
            let mut rows = 0;
            for _ in 0..5 {
                let started = std::time::Instant::now();
                rows = UnwindTable::from_elf(&data).unwrap().rows.len();
                best = best.min(started.elapsed());
            }
            eprintln!("{}: {rows} rows in {best:.2?}", path.display());
        }
    }

    /// The BPF side's search through the page index (unwind_rows_for and
    /// unwind_find_row in unwind.bpf.h), here, finds the row a search of
    /// all rows finds, at every address of libc's code and around it.
    #[test]
    fn page_index_narrows_to_the_same_row() {
        let table = UnwindTable::from_file(std::path::Path::new(LIBC)).unwrap();
        let shift = 10;
        let (first_page, index) = table.page_index(shift);
        let with_index = |pc: u32| -> Option<usize> {
            let (mut first, mut end) = (0usize, table.rows.len());
            if pc >> shift >= first_page {
                let page = ((pc >> shift) - first_page) as usize;
                if page >= index.len() {
                    first = end - 1;
                } else {
                    first = index[page] as usize;
                    if let Some(next) = index.get(page + 1) {
                        end = *next as usize + 1;
                    }
                }
            }
            let after = first + table.rows[first..end].partition_point(|row| row.pc <= pc);
            (after != first).then(|| after - 1)
        };
        let start = table.rows[0].pc.saturating_sub(4096);
        let end = table.rows.last().unwrap().pc + 4096;
        for pc in start..end {
            let all = table
                .rows
                .partition_point(|row| row.pc <= pc)
                .checked_sub(1);
            assert_eq!(with_index(pc), all, "pc {pc:#x}");
        }
        assert!(index.len() > 100, "libc's code spans {} pages", index.len());
    }
}
