/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types of the user-stack unwinder (unwind.bpf.h) shared with user space,
 * which builds the tables (analysis/unwind_table.rs) and loads them
 * (engine/unwind.rs). x86-64's register rules: arm64 would need its own
 * enum unwind_cfa (CFA from sp or x29), the return address from x30 or the
 * CFA, and x29 in place of rbp.
 */
#ifndef MEMTRACE_UNWIND_H
#define MEMTRACE_UNWIND_H

#include "common.h"

/* One row of an object's table: the rule from pc (an ELF virtual address of
 * the object) up to the next row's pc. The return address is at CFA - 8 and
 * the caller's stack pointer is the CFA. */
struct unwind_row {
	__u32 pc;
	__s16 cfa_offset;  /* CFA = register + cfa_offset */
	__s16 rbp_offset;  /* UNWIND_RBP_AT_CFA: the caller's rbp is saved at CFA + rbp_offset */
	__u8 cfa_register; /* enum unwind_cfa */
	__u8 rbp_rule;     /* enum unwind_rbp */
	__u8 pad[2];
};

enum unwind_cfa {
	UNWIND_CFA_RSP = 0, /* CFA = rsp + cfa_offset */
	UNWIND_CFA_RBP = 1, /* CFA = rbp + cfa_offset */
	UNWIND_CFA_PLT = 2, /* a PLT stub: CFA = rsp + 8, + 8 more past the stub's push */
	UNWIND_END = 3,     /* the outermost frame (_start, a thread's entry): the stack is whole */
	UNWIND_NONE = 4,    /* no usable rule: the walk stops, truncated */
};

enum unwind_rbp {
	UNWIND_RBP_SAME = 0,   /* rbp unchanged */
	UNWIND_RBP_AT_CFA = 1, /* saved at CFA + rbp_offset */
};

/* An object's rows in unwind_rows; rows == 0: it has no CFI, frame pointers
 * are followed. A call from its entry point's first bytes (a dynamic loader's
 * _start has no CFI) is the outermost frame. */
struct unwind_object {
	__u32 first_row;
	__u32 rows;
	__u32 entry; /* ELF entry point (virtual address); 0: none */
	/* The page index (unwind_pages[first_page ..][pages]): for each
	 * UNWIND_PAGE_BYTES of code from first_pc_page on, the row that covers
	 * its start, so that a search looks at a page's rows only. pages 0: none. */
	__u32 first_page;
	__u32 first_pc_page; /* pc >> UNWIND_PAGE_SHIFT of the first page */
	__u32 pages;
};

#define UNWIND_PAGE_SHIFT 10
#define UNWIND_PAGE_BYTES (1 << UNWIND_PAGE_SHIFT)

/* How far past an entry point a call still counts as the entry's own. */
#define UNWIND_ENTRY_BYTES 64

/* An executable mapping of a process: an address ip in it is ELF virtual
 * address ip - bias of object `object`. */
struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;
	__u32 object; /* 0: code of no file, or of a file without CFI: frame pointers */
	__u32 pad;
};

#define UNWIND_MAX_MAPPINGS 256

/* A process's executable mappings, sorted by start. */
struct unwind_process {
	__u32 nr;
	__u32 pad;
	struct unwind_mapping maps[UNWIND_MAX_MAPPINGS];
};

/* A stack the walk could not follow for want of a table (a library mapped
 * since user space read the process, a process not read yet): its registers
 * and the top of its stack, which user space unwinds, storing the result
 * under `key` in stack_store (memtrace_stack.flags UNWIND_PENDING until then). */
struct unwind_deferred {
	__s64 key;
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 tgid;
	__u32 stack_len;
	__u8 stack[MEMTRACE_STACK_COPY_BYTES];
};

#endif
