/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef MMAPFILES_H
#define MMAPFILES_H

#include "common.h"

#define MMAPFILES_NAME_MAX 256

/* Counted key: the book's [grandparent dir, parent dir, file]; all empty but file = "[anon]" for anonymous maps. */
struct mmapfiles_key {
	char grandparent[MMAPFILES_NAME_MAX];
	char parent[MMAPFILES_NAME_MAX];
	char file[MMAPFILES_NAME_MAX];
};

/*
 * Before 5.11 a hash key is at most 512 bytes: names_numbered counts by the
 * numbers of the three names (0: none), each name numbered once a run.
 */
struct mmapfiles_numbered_key {
	__u64 grandparent;
	__u64 parent;
	__u64 file;
};

struct mmapfiles_name {
	char name[MMAPFILES_NAME_MAX];
};

#endif
