/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef EXITMAPS_H
#define EXITMAPS_H

#include "common.h"

enum exitmaps_kind {
	EXITMAPS_FILE = 0, /* a file mapping: path holds its path */
	EXITMAPS_VDSO = 1, /* the kernel's vDSO (no path) */
};

/*
 * An executable mapping of a process that is exiting. A record with
 * start == end == 0 ends a process's list.
 */
struct exitmaps_mapping {
	__u32 tgid;
	__u32 kind; /* enum exitmaps_kind */
	__u64 start;
	__u64 end;
	__u64 file_offset; /* of start */
	struct memtrace_path path_info;
	char path[MEMTRACE_PATH_BUF];
};

#endif
