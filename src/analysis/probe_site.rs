//! Where to put a uprobe in a function so that a hit costs one trap, not two,
//! and where the function's arguments are there.
//!
//! The kernel emulates a few x86 instructions under a uprobe (push of a
//! register, relative jumps, calls and conditional jumps) and runs every
//! other one out of line, single-stepped: a second exception. Measured here
//! with an empty bpftrace program: a uprobe on malloc (`push %r12`) costs
//! ~0.9 µs a hit, one on free (`test %rdi,%rdi`) ~22 µs. Allocators open
//! with a few instructions that only compute: jemalloc's free moves and
//! masks the pointer through rax, rcx and rdx for 48 bytes before its first
//! branch; mimalloc's malloc copies the size from rdi to rsi and loads its
//! heap into rdi. So the probe goes on the first emulated instruction after
//! a run of such instructions, provided that at that point
//! - the stack pointer and rbp (which the stack walk starts from) are as at
//!   entry, and no instruction of the run wrote memory: the return address
//!   and the caller's frame are untouched;
//! - every argument the probe reads is still in a register (where it is now
//!   is returned: a plain 64-bit move is followed);
//! - no branch of the function lands inside the run: every path through the
//!   function passes the site once, as it passes its entry.
//!
//! A jump from another function into the run can't be seen from here; the
//! compilers' tail calls jump to a function's start.
//!
//! x86-64 only: elsewhere a probe goes at the function's entry, which is
//! always right, if slower.

/// A probe's place in a function, and the registers its arguments are in
/// there (x86 register numbers: 0 rax, 1 rcx, 2 rdx, ... 7 rdi, 8-15 r8-r15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Bytes from the function's start.
    pub offset: u64,
    /// Where the first four integer arguments are (unread ones: their ABI register).
    pub args: [u8; 4],
}

/// The System V x86-64 registers of the first four integer arguments: rdi,
/// rsi, rdx, rcx.
pub const ABI_ARGS: [u8; 4] = [7, 6, 2, 1];

/// The function's entry, where nothing has moved yet.
pub const ENTRY: ProbeSite = ProbeSite {
    offset: 0,
    args: ABI_ARGS,
};

/// Bytes of a function read to place its probe, whose branches are checked
/// against the skipped run (`branch_targets`): allocators' functions are a
/// few hundred bytes; a longer one's branches past this are not seen.
pub const FUNCTION_BYTES: usize = 64 * 1024;

/// Longest run of instructions looked at before an emulated one.
#[cfg(target_arch = "x86_64")]
const MAX_SKIPPED: usize = 16;

/// The cheapest site in a function given its code, for a probe that reads
/// the arguments whose indexes are set in `args_read` (bit 0: the first).
#[cfg(not(target_arch = "x86_64"))]
pub fn cheap_site(_code: &[u8], _args_read: u8) -> ProbeSite {
    ENTRY
}

/// The cheapest site in a function given its code, for a probe that reads
/// the arguments whose indexes are set in `args_read` (bit 0: the first).
#[cfg(target_arch = "x86_64")]
pub fn cheap_site(code: &[u8], args_read: u8) -> ProbeSite {
    use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory};

    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    // which registers hold each argument (a bit per register)
    let mut holders = ABI_ARGS.map(|reg| 1u16 << reg);
    let mut at = 0usize;
    for _ in 0..=MAX_SKIPPED {
        if is_emulated(&code[at..]) {
            let site = ProbeSite {
                offset: at as u64,
                // its own register while it still holds it, else a copy
                args: std::array::from_fn(|n| match holders[n] {
                    held if held == 0 || held & (1 << ABI_ARGS[n]) != 0 => ABI_ARGS[n],
                    held => held.trailing_zeros() as u8,
                }),
            };
            let args_kept = (0..4).all(|n| args_read & (1 << n) == 0 || holders[n] != 0);
            let entered_inside = || branch_targets(code).any(|to| (1..=at as u64).contains(&to));
            if at == 0 || (args_kept && !entered_inside()) {
                return site;
            }
            return ENTRY;
        }
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        match register_writes(&instruction, info.info(&instruction)) {
            Some(written) => {
                let copied_from = plain_move_source(&instruction);
                for held in &mut holders {
                    let had_source = copied_from.is_some_and(|src| *held & (1 << src) != 0);
                    *held &= !written;
                    if had_source {
                        *held |= written;
                    }
                }
            }
            None => break,
        }
        at += instruction.len();
    }
    ENTRY
}

/// The registers an instruction writes (a bit per x86 register number), if
/// it does nothing else: no branch, no system call, no memory written, no
/// stack pointer or rbp changed. None otherwise.
#[cfg(target_arch = "x86_64")]
fn register_writes(
    instruction: &iced_x86::Instruction,
    info: &iced_x86::InstructionInfo,
) -> Option<u16> {
    use iced_x86::{FlowControl, Mnemonic, OpAccess};

    if instruction.is_invalid() || instruction.flow_control() != FlowControl::Next {
        return None;
    }
    // instructions that only compute (other ones, such as cpuid, rdtsc,
    // string or locked ones, are not worth the thought)
    let computes = matches!(
        instruction.mnemonic(),
        Mnemonic::Mov
            | Mnemonic::Movzx
            | Mnemonic::Movsx
            | Mnemonic::Movsxd
            | Mnemonic::Lea
            | Mnemonic::Add
            | Mnemonic::Sub
            | Mnemonic::And
            | Mnemonic::Or
            | Mnemonic::Xor
            | Mnemonic::Cmp
            | Mnemonic::Test
            | Mnemonic::Shl
            | Mnemonic::Shr
            | Mnemonic::Sar
            | Mnemonic::Not
            | Mnemonic::Neg
            | Mnemonic::Inc
            | Mnemonic::Dec
            | Mnemonic::Mul
            | Mnemonic::Imul
            | Mnemonic::Endbr64
            | Mnemonic::Nop
    );
    if !computes || instruction.has_lock_prefix() {
        return None;
    }
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return None;
    }
    let mut written = 0u16;
    for used in info.used_registers().iter().filter(|u| writes(u.access())) {
        let number = register_number(used.register())?;
        // the stack walk starts from rsp and rbp
        if number == 4 || number == 5 {
            return None;
        }
        written |= 1 << number;
    }
    Some(written)
}

/// The source register of a 64-bit register-to-register move: the
/// destination then holds what the source held (a 32-bit move truncates).
#[cfg(target_arch = "x86_64")]
fn plain_move_source(instruction: &iced_x86::Instruction) -> Option<u8> {
    use iced_x86::{Code, OpKind};

    let moves = matches!(instruction.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64);
    if moves
        && instruction.op0_kind() == OpKind::Register
        && instruction.op1_kind() == OpKind::Register
    {
        register_number(instruction.op1_register())
    } else {
        None
    }
}

/// A general-purpose register's x86 number (of its 64-bit whole), or None.
#[cfg(target_arch = "x86_64")]
fn register_number(register: iced_x86::Register) -> Option<u8> {
    use iced_x86::Register;

    let full = register.full_register();
    (Register::RAX..=Register::R15)
        .contains(&full)
        .then(|| (full as u32 - Register::RAX as u32) as u8)
}

/// The targets (offsets from the function's start) of the relative
/// branches in `code`.
#[cfg(target_arch = "x86_64")]
fn branch_targets(code: &[u8]) -> impl Iterator<Item = u64> + '_ {
    use iced_x86::{Decoder, DecoderOptions, OpKind};

    Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| matches!(i.op0_kind(), OpKind::NearBranch64))
        .map(|i| i.near_branch64())
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::{cheap_site, ProbeSite, ABI_ARGS, ENTRY};

    const FIRST: u8 = 0b1;

    fn at(offset: u64) -> ProbeSite {
        ProbeSite {
            offset,
            args: ABI_ARGS,
        }
    }

    #[test]
    fn probes_at_the_first_emulated_instruction() {
        // glibc's malloc: push %r12 - already emulated
        assert_eq!(cheap_site(&[0x41, 0x54, 0x55, 0x53], FIRST), ENTRY);
        // glibc's free: test %rdi,%rdi; je rel32
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0];
        assert_eq!(cheap_site(&free, FIRST), at(3));
        // glibc's memalign: cmpb $0x0,x(%rip); je rel8
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(cheap_site(&memalign, 0b10), at(7));
        // endbr64; push %rbp
        assert_eq!(cheap_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], FIRST), at(4));
        // jemalloc's malloc: cmp $0x1000,%rdi; ja rel32
        let malloc = [0x48, 0x81, 0xff, 0, 0x10, 0, 0, 0x0f, 0x87, 0x93, 0, 0, 0];
        assert_eq!(cheap_site(&malloc, FIRST), at(7));
    }

    #[test]
    fn follows_an_argument_moved_out_of_its_register() {
        // mimalloc's malloc: mov x(%rip),%rax; mov %rdi,%rsi;
        // mov %fs:(%rax),%rdi; cmp $0x400,%rsi; ja rel8
        let malloc = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, // mov x(%rip),%rax
            0x48, 0x89, 0xfe, // mov %rdi,%rsi
            0x64, 0x48, 0x8b, 0x38, // mov %fs:(%rax),%rdi
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, // cmp $0x400,%rsi
            0x77, 0x29, // ja
        ];
        let site = cheap_site(&malloc, FIRST);
        assert_eq!(site.offset, 21);
        assert_eq!(site.args[0], 6, "the size is in rsi there");
        // jemalloc's free: three registers written, rdi kept, then jne
        let free = [
            0x48, 0x89, 0xf8, // mov %rdi,%rax
            0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, // mov x(%rip),%rdx
            0x48, 0x89, 0xf9, // mov %rdi,%rcx
            0x48, 0xc1, 0xe8, 0x1a, // shr $0x1a,%rax
            0x0f, 0x85, 0x8a, 0, 0, 0, // jne
        ];
        assert_eq!(cheap_site(&free, FIRST), at(17));
    }

    #[test]
    fn stays_at_entry_when_unsure() {
        // munmap: mov $0xb,%eax; syscall - a system call is no computation
        let munmap = [
            0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05, 0x48, 0x3d, 1, 0xf0, 0xff, 0xff, 0x73, 1,
        ];
        assert_eq!(cheap_site(&munmap, FIRST), ENTRY);
        // mremap: sub $0x58,%rsp - moves the stack pointer
        assert_eq!(cheap_site(&[0x48, 0x83, 0xec, 0x58, 0x55], FIRST), ENTRY);
        // the argument overwritten, not kept: mov (%rax),%rdi; je
        assert_eq!(cheap_site(&[0x48, 0x8b, 0x38, 0x74, 0x10], FIRST), ENTRY);
        // unless the probe does not read it
        assert_eq!(cheap_site(&[0x48, 0x8b, 0x38, 0x74, 0x10], 0b10), at(3));
        // a store to memory: mov %rdi,(%rax); je
        assert_eq!(cheap_site(&[0x48, 0x89, 0x38, 0x74, 0x10], FIRST), ENTRY);
        // a branch of the function back into the skipped run:
        // test %rdi,%rdi; je +0; jmp back to offset 3 (the je)
        let looped = [0x48, 0x85, 0xff, 0x74, 0x00, 0xeb, 0xfc];
        assert_eq!(cheap_site(&looped, FIRST), ENTRY);
        // test with a memory operand then something not emulated
        assert_eq!(cheap_site(&[0x48, 0x85, 0x07, 0x0f, 0x05], FIRST), ENTRY);
        // too short to decide
        assert_eq!(cheap_site(&[0x48, 0x85], FIRST), ENTRY);
        assert_eq!(cheap_site(&[], FIRST), ENTRY);
    }
}
