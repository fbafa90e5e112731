/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SHMSNOOP_H
#define SHMSNOOP_H

#include "common.h"

enum shmsnoop_sys {
	SHMSNOOP_SHMGET = 0,
	SHMSNOOP_SHMAT = 1,
	SHMSNOOP_SHMDT = 2,
	SHMSNOOP_SHMCTL = 3,
};

/* One completed System V shared memory call; only the fields of its call are set. */
struct shmsnoop_event {
	__u64 time_ns; /* bpf_ktime_get_ns() at return */
	__s64 ret;     /* shmid, attach address, 0, or -errno */
	__u64 size;    /* shmget */
	__u64 shmaddr; /* shmat: the address asked for; shmdt: the address detached */
	__u64 buf;     /* shmctl: the struct shmid_ds pointer */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 key;     /* shmget: key_t, as unsigned so it prints as ipcs does */
	__s32 shmid;   /* shmat, shmctl */
	__u32 shmflg;  /* shmget: IPC_*, SHM_* and the mode; shmat: SHM_RDONLY, ... */
	__s32 cmd;     /* shmctl: IPC_RMID, ..., maybe with IPC_64 */
	enum shmsnoop_sys sys;
	char comm[MEMTRACE_COMM_LEN];
};

#endif
