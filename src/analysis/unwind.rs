//! User stacks unwound from a copy of the stack's top and the registers, with
//! the call frame information (.eh_frame) of each mapped file, as `perf
//! --call-graph dwarf` does. The kernel's own user stack walk follows frame
//! pointers, which libraries built without them (Debian's libc) break: a
//! syscall made from libc then shows no caller at all.
//!
//! Stacks the BPF unwinder (unwind.bpf.h) could not follow for want of a
//! table (a library mapped since the process was read in) come here.
//!
//! x86-64 only: the register rules below are x86-64's (RSP, RBP, the return
//! address); elsewhere no rule is found, and stacks end at their first frame.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, NativeEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection};

use crate::analysis::debug_symbols::LoadSegments;

/// The user registers unwinding starts from.
#[derive(Clone, Copy, Debug)]
pub struct Registers {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Frames beyond this are not followed (as the kernel's PERF_MAX_STACK_DEPTH).
const MAX_FRAMES: usize = 127;

/// What one file offers for unwinding: its bytes and where its sections are.
struct UnwindObject {
    data: Vec<u8>,
    eh_frame: Range<usize>,
    eh_frame_addr: u64,
    eh_frame_hdr: Option<(Range<usize>, u64)>,
    loads: LoadSegments,
}

/// Where a section's bytes lie in its file, and its virtual address: what
/// gimli needs to read .eh_frame and to resolve its pc-relative pointers.
pub fn section_location(file: &object::File<'_>, name: &str) -> Option<(Range<usize>, u64)> {
    let section = file.section_by_name(name)?;
    let (offset, size) = section.file_range()?;
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    Some((start..end, section.address()))
}

impl UnwindObject {
    fn load(path: &Path) -> Option<UnwindObject> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let (eh_frame, eh_frame_addr) = section_location(&file, ".eh_frame")?;
        let eh_frame_hdr = section_location(&file, ".eh_frame_hdr");
        let loads = LoadSegments::of(&file);
        Some(UnwindObject {
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr,
            loads,
            data,
        })
    }

    /// How to find the caller's frame at `address`: (CFA register, CFA
    /// offset, where RA is, where RBP is), from the file's CFI.
    fn frame_rule(&self, address: u64) -> Option<FrameRule> {
        let eh_frame = EhFrame::new(self.data.get(self.eh_frame.clone())?, NativeEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame_addr);
        let mut ctx = UnwindContext::new();
        let row = match &self.eh_frame_hdr {
            Some((range, addr)) => {
                bases = bases.set_eh_frame_hdr(*addr);
                let hdr = EhFrameHdr::new(self.data.get(range.clone())?, NativeEndian)
                    .parse(&bases, 8)
                    .ok()?;
                let table = hdr.table()?;
                table
                    .unwind_info_for_address(
                        &eh_frame,
                        &bases,
                        &mut ctx,
                        address,
                        EhFrame::cie_from_offset,
                    )
                    .ok()?
                    .clone()
            }
            None => eh_frame
                .unwind_info_for_address(&bases, &mut ctx, address, EhFrame::cie_from_offset)
                .ok()?
                .clone(),
        };
        let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else {
            return None; // DWARF expressions (PLT stubs): not followed
        };
        Some(FrameRule {
            cfa_register: register,
            cfa_offset: offset,
            ra: row.register(X86_64::RA)?,
            rbp: row.register(X86_64::RBP),
        })
    }
}

#[derive(Clone)]
struct FrameRule {
    cfa_register: gimli::Register,
    cfa_offset: i64,
    ra: RegisterRule<usize>,
    rbp: Option<RegisterRule<usize>>,
}

/// A file read for unwinding, and the rules looked up in it so far: stacks
/// repeat, and a rule's lookup (the CFI program run to the address) is the
/// costly part.
struct CachedObject {
    object: Option<UnwindObject>,
    rules: HashMap<u64, Option<FrameRule>>,
}

/// Unwinds stacks; keeps each file it has read and each rule it has found.
#[derive(Default)]
pub struct Unwinder {
    objects: HashMap<PathBuf, CachedObject>,
}

impl Unwinder {
    /// The rule at a file offset of a file.
    fn rule(&mut self, path: &Path, file_offset: u64) -> Option<FrameRule> {
        if !self.objects.contains_key(path) {
            let object = UnwindObject::load(path);
            self.objects.insert(
                path.to_path_buf(),
                CachedObject {
                    object,
                    rules: HashMap::new(),
                },
            );
        }
        let cached = self.objects.get_mut(path)?;
        let object = cached.object.as_ref()?;
        cached
            .rules
            .entry(file_offset)
            .or_insert_with(|| object.frame_rule(object.loads.address_of(file_offset)?))
            .clone()
    }

    /// The return addresses of a stack, leaf (the registers' ip) first, and
    /// whether they reach the outermost frame (the CFI says the return
    /// address is undefined, or it is zero). `locate` gives the file and
    /// file offset of an address; `stack` holds the bytes from `regs.sp` up.
    /// Unwinding stops where the CFI ends (the program's entry point), where
    /// a read falls outside the copy, or where no file or rule is known; a
    /// frame without CFI is tried with the frame pointer.
    pub fn unwind_whole(
        &mut self,
        regs: Registers,
        stack: &[u8],
        mut locate: impl FnMut(u64) -> Option<(PathBuf, u64)>,
    ) -> (Vec<u64>, bool) {
        let read = |addr: u64| read_word(regs.sp, stack, addr);
        let Registers {
            mut ip,
            mut sp,
            mut bp,
        } = regs;
        let mut ips = vec![ip];
        let mut whole = false;
        while ips.len() < MAX_FRAMES {
            // a return address points after the call: look up the call itself
            let lookup = if ips.len() == 1 { ip } else { ip - 1 };
            let rule = locate(lookup).and_then(|(path, offset)| self.rule(&path, offset));
            let (next_ip, next_sp, next_bp) = match rule {
                Some(rule) => {
                    let base = if rule.cfa_register == X86_64::RSP {
                        sp
                    } else if rule.cfa_register == X86_64::RBP {
                        bp
                    } else {
                        break;
                    };
                    let cfa = base.wrapping_add_signed(rule.cfa_offset);
                    let RegisterRule::Offset(ra_at) = rule.ra else {
                        whole = true; // undefined: the outermost frame
                        break;
                    };
                    let next_bp = match rule.rbp {
                        Some(RegisterRule::Offset(at)) => read(cfa.wrapping_add_signed(at)),
                        _ => Some(bp),
                    };
                    (read(cfa.wrapping_add_signed(ra_at)), cfa, next_bp)
                }
                None => (read(bp.wrapping_add(8)), bp.wrapping_add(16), read(bp)),
            };
            let (Some(next_ip), Some(next_bp)) = (next_ip, next_bp) else {
                break;
            };
            if next_ip == 0 {
                whole = true; // a zero return address: the outermost frame
                break;
            }
            // the stack grows down: a caller's frame is above its callee's
            if next_sp <= sp {
                break;
            }
            (ip, sp, bp) = (next_ip, next_sp, next_bp);
            ips.push(ip);
        }
        (ips, whole)
    }
}

/// The word at `addr` in a copy of the stack from `sp` up.
fn read_word(sp: u64, stack: &[u8], addr: u64) -> Option<u64> {
    let at = usize::try_from(addr.checked_sub(sp)?).ok()?;
    let bytes = stack.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Unwinds this test's own stack: a copy of it from a known sp, and the
    /// addresses of this process's mappings; the test function must be found.
    #[inline(never)]
    fn capture() -> (Registers, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers into locals; touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        // At most 16 KiB, and never past the end of the mapping that holds
        // sp: a thread's stack top can be a few KiB above a shallow frame.
        let maps = crate::analysis::proc_maps::read_maps(std::process::id()).unwrap();
        let top = maps
            .iter()
            .find(|m| (m.start..m.end).contains(&sp))
            .map(|m| m.end)
            .unwrap();
        let len = (top - sp).min(16 * 1024) as usize;
        // SAFETY: [sp, sp + len) lies inside this thread's mapped stack: the
        // live frames of this function's callers.
        let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        (Registers { ip, sp, bp }, stack)
    }

    #[test]
    fn unwinds_own_stack_through_eh_frame() {
        let (regs, stack) = capture();
        let maps = crate::analysis::proc_maps::read_maps(std::process::id()).unwrap();
        let locate = |addr: u64| {
            let m = maps.iter().find(|m| (m.start..m.end).contains(&addr))?;
            Some((m.path()?.to_path_buf(), addr - m.start + m.offset))
        };
        let mut unwinder = Unwinder::default();
        let (ips, _) = unwinder.unwind_whole(regs, &stack, locate);
        assert!(ips.len() >= 3, "{ips:x?}");
        // every frame lies in a file mapping of this process
        assert!(ips.iter().all(|&ip| locate(ip).is_some()), "{ips:x?}");
        // the caller of capture() is this test function
        let me = unwinds_own_stack_through_eh_frame as *const () as usize as u64;
        assert!(
            ips.iter().any(|&ip| (me..me + 4096).contains(&ip)),
            "{me:x} not among {ips:x?}"
        );
    }
}
