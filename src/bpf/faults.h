/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef FAULTS_H
#define FAULTS_H

#include "common.h"

#define FAULTS_MAX_DEPTH 127      /* PERF_MAX_STACK_DEPTH */
#define FAULTS_NO_STACK (-100000) /* kernel stacks not asked for */

/* Faults counted by process, kind and stacks. */
struct faults_key {
	__u32 tgid;
	__u32 kind;         /* 0 minor, 1 major */
	__s32 user_stack;   /* id in the stacks map, or -errno */
	__s32 kernel_stack; /* id, -errno, or FAULTS_NO_STACK */
};

/* The comm is kept at a stack's first fault, not read on every fault. */
struct faults_value {
	__u64 count;
	char comm[MEMTRACE_COMM_LEN];
};

#endif
