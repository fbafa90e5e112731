/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef BRKSTACK_H
#define BRKSTACK_H

#include "common.h"

/* One brk(2) call as it returned, with what user space needs to unwind its stack. */
struct brkstack_event {
	__u64 time_ns;
	__u64 old_brk;   /* the heap's end before the call */
	__u64 new_brk;   /* and after (the return value) */
	__u64 ip;        /* user registers at the syscall */
	__u64 sp;
	__u64 bp;        /* the frame pointer (rbp on x86-64) */
	__u32 pid;
	__u32 tid;
	__u32 stack_len; /* bytes of stack[] copied from sp up */
	__u32 pad;
	char comm[MEMTRACE_COMM_LEN];
	__u8 stack[MEMTRACE_STACK_COPY_BYTES]; /* the top of the user stack, for unwinding */
};

#endif
