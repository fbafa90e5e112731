/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * System calls seen two ways, by programs that share their bodies:
 *
 * - the classic per-call tracepoints (tp/syscalls/sys_enter_NAME and
 *   sys_exit_NAME, one program each), which cost a traced machine least per
 *   system call, but each of which takes the kernel an RCU grace period or
 *   two (tens of ms) to detach;
 * - the raw sys_enter and sys_exit tracepoints (one program each, for every
 *   system call of the machine, filtered here on the call's number), which
 *   detach at once but cost more per system call.
 *
 * engine/syscalls.rs attaches the raw ones first and moves to the classic
 * ones once a trace has lasted long enough, and says why.
 *
 * The numbers are this architecture's, set by user space (the libc crate's
 * SYS_* constants) before load; -1 for a call not traced.
 *
 * The raw tracepoints also see 32-bit (compat) system calls, numbered in
 * another table; the classic ones ignore them, and so do these. Telling one
 * apart takes the architecture's own flag: x86-64's is read here; on other
 * architectures user space never attaches the raw programs.
 */
#ifndef MEMTRACE_SYSCALLS_BPF_H
#define MEMTRACE_SYSCALLS_BPF_H

#include "common.bpf.h"

/* Whether a system call's number is `wanted`, a call the tool traces (-1: none). */
static __always_inline bool memtrace_syscall_is(long nr, long wanted)
{
	return wanted >= 0 && nr == wanted;
}

#if defined(__TARGET_ARCH_x86)

/* arch/x86/include/asm/thread_info.h: the running system call is a 32-bit one */
#define MEMTRACE_TS_COMPAT 0x0002

/* Whether the current system call is a native one, as the classic tracepoints see them. */
static __always_inline bool memtrace_native_syscall(void)
{
	struct task_struct *task = memtrace_current_task();

	return !(BPF_CORE_READ(task, thread_info.status) & MEMTRACE_TS_COMPAT);
}

/* The number of the system call returning, as syscall_get_nr() reads it at sys_exit. */
static __always_inline long memtrace_exit_syscall_nr(struct pt_regs *regs)
{
	return regs->orig_ax;
}

#else

static __always_inline bool memtrace_native_syscall(void)
{
	return false;
}

static __always_inline long memtrace_exit_syscall_nr(struct pt_regs *regs)
{
	return -1;
}

#endif

/* A system call's six arguments, as the classic sys_enter tracepoints give them. */
struct memtrace_syscall_args {
	__u64 arg[6];
};

/* The arguments of the system call entering, from its user registers (raw sys_enter). */
static __always_inline void memtrace_syscall_args(struct pt_regs *regs,
						  struct memtrace_syscall_args *a)
{
	a->arg[0] = PT_REGS_PARM1_CORE_SYSCALL(regs);
	a->arg[1] = PT_REGS_PARM2_CORE_SYSCALL(regs);
	a->arg[2] = PT_REGS_PARM3_CORE_SYSCALL(regs);
	a->arg[3] = PT_REGS_PARM4_CORE_SYSCALL(regs);
	a->arg[4] = PT_REGS_PARM5_CORE_SYSCALL(regs);
	a->arg[5] = PT_REGS_PARM6_CORE_SYSCALL(regs);
}

/* The same from a classic sys_enter_NAME tracepoint. */
static __always_inline void memtrace_classic_syscall_args(struct trace_event_raw_sys_enter *ctx,
							  struct memtrace_syscall_args *a)
{
	/* one load each: a loop could make the compiler move the context pointer, which the verifier refuses */
	a->arg[0] = ctx->args[0];
	a->arg[1] = ctx->args[1];
	a->arg[2] = ctx->args[2];
	a->arg[3] = ctx->args[3];
	a->arg[4] = ctx->args[4];
	a->arg[5] = ctx->args[5];
}

#endif
