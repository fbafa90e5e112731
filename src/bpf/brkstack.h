/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef BRKSTACK_H
#define BRKSTACK_H

#include "common.h"

/* brk(2) calls are counted by process and user stack, in the kernel. */
struct brkstack_key {
	__u32 tgid;
	__u32 pad;
	__s64 user_stack; /* stack_store's key, or a negative errno (no stack kept) */
};

struct brkstack_value {
	__u64 calls;
	__u64 grown;  /* bytes the heap's end moved up */
	__u64 shrunk; /* and down */
	char comm[MEMTRACE_COMM_LEN];
};

#endif
