/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef FAULTS_H
#define FAULTS_H

#include "common.h"

/* The kernel_stack of a count when kernel stacks were not asked for (stack keys are > 0). */
enum faults_stack_key {
	FAULTS_NO_STACK = 0,
};

/* Faults counted by process, kind and stacks. */
struct faults_key {
	__u32 tgid;
	__u32 kind;         /* enum memtrace_fault_kind */
	__u32 pad;
	__s64 user_stack;   /* key in stack_store, or -errno */
	__s64 kernel_stack; /* key, -errno, or FAULTS_NO_STACK */
};

/* The comm is kept at a stack's first fault, not read on every fault. */
struct faults_value {
	__u64 count;
	char comm[MEMTRACE_COMM_LEN];
};

#endif
