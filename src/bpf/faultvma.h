/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types of the fault -> VMA engine (faultvma.bpf.h) shared with user space. */
#ifndef FAULTVMA_H
#define FAULTVMA_H

#include "common.h"

/* What a faulting address was: a file, or a kind of anonymous memory. */
enum faultvma_label {
	FAULTVMA_FILE = 0,
	FAULTVMA_ANON = 1,
	FAULTVMA_HEAP = 2,
	FAULTVMA_STACK = 3,
	FAULTVMA_UNKNOWN = 4, /* no VMA there, or the mm was busy: counted, not dropped */
	FAULTVMA_SWAP_READ = 5, /* swapin: pages read from swap (kind MINOR), not faults */
};

/* What else is known of the memory: bits of faultvma_file.flags. */
enum faultvma_flag {
	FAULTVMA_HUGETLB = 0x1, /* VM_HUGETLB */
	FAULTVMA_SHARED = 0x2,  /* VM_SHARED */
	FAULTVMA_SHMEM = 0x4,   /* a file on tmpfs/shmem: SysV shm, memfd, /dev/shm, shared anonymous */
};

/* Identity of what a fault hit; dev and ino are 0 unless label is FAULTVMA_FILE. */
struct faultvma_file {
	__u64 ino;
	__u32 dev;
	__u16 label; /* enum faultvma_label */
	__u16 flags; /* enum faultvma_flag bits */
};

/* The file's name, read once per file (not per fault) from the VMA's dentry. */
struct faultvma_name {
	char name[MEMTRACE_NAME_MAX_LEN];
};

/* What a count slot counts: faults of one kind, by one process, in one image of it, on one file. */
struct faultvma_count_key {
	__u32 tgid;
	__u32 kind;  /* enum memtrace_fault_kind */
	__u64 start; /* the process's start time (task_struct.start_time): tells reused pids apart */
	__u64 image; /* the address space's number (faultvma_images): tells execs and reused mm apart */
	struct faultvma_file file;
};

/* A count slot's description, written before the slot is published. */
struct faultvma_slot_info {
	struct faultvma_count_key key;
	char comm[MEMTRACE_COMM_LEN]; /* at the slot's first fault */
	__u32 valid;                  /* 0: free, or lost a race for its key (never counted) */
	__u32 pad;
	__u64 cgroup; /* serve, --show-cgroup: the process's cgroup at the slot's first fault (memtrace_cgroup_label) */
};

/* What is gone, in a faultvma_gone record. */
enum faultvma_gone_what {
	FAULTVMA_GONE_IMAGE = 1,   /* an address space with count slots (exit_mmap) */
	FAULTVMA_GONE_PROCESS = 2, /* a process (its task freed): its slots in images it shared too */
};

/*
 * Something whose count slots can count no more: user space reads their last
 * counts and frees them.
 */
struct faultvma_gone {
	__u32 what; /* enum faultvma_gone_what */
	__u32 tgid; /* FAULTVMA_GONE_PROCESS: the process */
	__u64 start;
	__u64 image; /* FAULTVMA_GONE_IMAGE: the image's number */
};

/* A VMA as the caches keep it (each CPU's last, and the region cache). */
struct faultvma_cached {
	__u64 mm;
	__u64 start;
	__u64 end;
	__u32 seq;
	__u32 valid;
	struct faultvma_file file;
	__u32 tgid;    /* whose count slots these are */
	__u32 slot[2]; /* count slot + 1 per enum memtrace_fault_kind; 0: not looked up yet */
};

/* Cache statistics, indexes of the per-CPU vma_stats array. */
enum faultvma_stat {
	FAULTVMA_STAT_HIT_REGION = 0, /* found in the region cache */
	FAULTVMA_STAT_LOOKUP = 1,     /* looked up with bpf_find_vma() */
	FAULTVMA_STAT_NR = 2,
};

#endif
