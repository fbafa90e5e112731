//! Where to put a uprobe in a function so that a hit costs one trap, not two.
//!
//! The kernel emulates a few x86 instructions under a uprobe (push of a
//! register, relative jumps, calls and conditional jumps) and runs every
//! other one out of line, single-stepped: a second exception. Measured here
//! with an empty bpftrace program: a uprobe on malloc (`push %r12`) costs
//! ~0.9 µs a hit, one on free (`test %rdi,%rdi`) ~22 µs. So when a function
//! opens with instructions that only set flags (endbr64, test, cmp) and the
//! next is emulated, the probe goes on that one: the argument registers, the
//! stack pointer and so the return address are still as they were at entry,
//! and every path through the function passes there.
//!
//! x86-64 only: the instructions are decoded as x86-64 code. Elsewhere a
//! probe goes at the function's entry, which is always correct, if slower.

/// Longest run of skipped instructions looked at; glibc needs at most one.
const MAX_SKIPPED: usize = 2;

/// Bytes read from the start of a function: enough for the skipped
/// instructions and the opcode of the next.
pub const PROLOGUE_BYTES: usize = 32;

/// Offset from the function's start at which to probe it, given its first
/// bytes: 0 unless a cheaper site is known to be equivalent.
#[cfg(not(target_arch = "x86_64"))]
pub fn emulated_site(_code: &[u8]) -> u64 {
    0
}

/// Offset from the function's start at which to probe it, given its first
/// bytes: 0 unless a cheaper site is known to be equivalent.
#[cfg(target_arch = "x86_64")]
pub fn emulated_site(code: &[u8]) -> u64 {
    let rest = |at: usize| code.get(at..).unwrap_or_default();
    let mut at = 0;
    for _ in 0..=MAX_SKIPPED {
        if is_emulated(rest(at)) {
            return at as u64;
        }
        match flags_only_len(rest(at)) {
            Some(len) => at += len,
            None => break,
        }
    }
    0
}

#[cfg(target_arch = "x86_64")]
/// Whether the kernel's uprobe code emulates the instruction at the start of
/// `code` (arch/x86/kernel/uprobes.c: branch_setup_xol_ops, push_setup_xol_ops).
fn is_emulated(code: &[u8]) -> bool {
    match code {
        [0x50..=0x57, ..] => true,        // push %reg
        [0x41, 0x50..=0x57, ..] => true,  // push %r8-%r15
        [0x70..=0x7f, ..] => true,        // jcc rel8
        [0x0f, 0x80..=0x8f, ..] => true,  // jcc rel32
        [0xe8 | 0xe9 | 0xeb, ..] => true, // call, jmp rel32/rel8
        _ => false,
    }
}

#[cfg(target_arch = "x86_64")]
/// Length of an instruction that changes nothing but the flags, or None.
fn flags_only_len(code: &[u8]) -> Option<usize> {
    let register_pair = |modrm: u8| modrm >= 0xc0;
    match code {
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4), // endbr64
        // test/cmp %reg,%reg (85, 84, 39, 3b, 38, 3a), with or without REX
        [0x84 | 0x85 | 0x38 | 0x39 | 0x3a | 0x3b, m, ..] if register_pair(*m) => Some(2),
        [0x40..=0x4f, 0x84 | 0x85 | 0x38 | 0x39 | 0x3a | 0x3b, m, ..] if register_pair(*m) => {
            Some(3)
        }
        // cmpb $imm8, disp32(%rip): a load and a compare
        [0x80, 0x3d, ..] => Some(7),
        _ => None,
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::emulated_site;

    #[test]
    fn probes_at_the_first_emulated_instruction() {
        // malloc: push %r12 - already emulated
        assert_eq!(emulated_site(&[0x41, 0x54, 0x55, 0x53]), 0);
        // free: test %rdi,%rdi; je rel32
        assert_eq!(
            emulated_site(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0]),
            3
        );
        // memalign: cmpb $0x0,x(%rip); je rel8
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(emulated_site(&memalign), 7);
        // endbr64; push %rbp
        assert_eq!(emulated_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
        // endbr64; test %rdi,%rdi; je rel8
        assert_eq!(
            emulated_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10]),
            7
        );
    }

    #[test]
    fn stays_at_entry_when_unsure() {
        // munmap: mov $0xb,%eax; syscall - changes a register
        assert_eq!(emulated_site(&[0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05]), 0);
        // mremap: sub $0x58,%rsp - moves the stack pointer
        assert_eq!(emulated_site(&[0x48, 0x83, 0xec, 0x58, 0x55]), 0);
        // test %rdi,%rdi followed by something not emulated
        assert_eq!(emulated_site(&[0x48, 0x85, 0xff, 0x48, 0x89, 0xfb]), 0);
        // test with a memory operand is not skipped
        assert_eq!(emulated_site(&[0x48, 0x85, 0x07, 0x55]), 0);
        // too short to decide
        assert_eq!(emulated_site(&[0x48, 0x85]), 0);
        assert_eq!(emulated_site(&[]), 0);
    }
}
