/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * For tools that count user stacks: when a process whose stacks were counted
 * exits, its executable file mappings go to user space, so its stacks are
 * symbolized after /proc/PID/maps has gone. Needs the task's mm still
 * attached at sched_process_exit: a kernel that runs exit_mm() first sends
 * nothing, and user space falls back on the mappings it last read. A tool
 * calls exitmaps_note_owner() when it counts a new stack.
 */
#ifndef EXITMAPS_BPF_H
#define EXITMAPS_BPF_H

#include "paths.bpf.h"
#include "exitmaps.h"

#define VM_EXEC 0x00000004
#define PAGE_SHIFT 12

/* Processes whose stacks were counted: their mappings are wanted at exit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEMTRACE_MAX_TRACED);
	__type(key, __u32);
	__type(value, __u8);
} stack_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exitmaps_mapping);
} mapping_scratch SEC(".maps");

/*
 * A record is ~50 bytes and the path: ~1 KiB for a process's executable
 * mappings, so 1 MiB holds the exits of about a thousand processes between
 * two reads (the reader is woken by each). Mapped twice by the reader, as
 * every ring buffer is, it adds twice its size to memtrace's RSS.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} mappings SEC(".maps");

extern int bpf_iter_task_vma_new(struct bpf_iter_task_vma *it, struct task_struct *task,
				 __u64 addr) __weak __ksym;
extern struct vm_area_struct *bpf_iter_task_vma_next(struct bpf_iter_task_vma *it) __weak __ksym;
extern void bpf_iter_task_vma_destroy(struct bpf_iter_task_vma *it) __weak __ksym;

static __always_inline void exitmaps_note_owner(__u32 tgid)
{
	__u8 yes = 1;

	if (!bpf_map_lookup_elem(&stack_owners, &tgid))
		bpf_map_update_elem(&stack_owners, &tgid, &yes, BPF_ANY);
}

static __always_inline void exitmaps_send(struct exitmaps_mapping *m, __u64 size)
{
	if (size > sizeof(*m))
		size = sizeof(*m);
	if (bpf_ringbuf_output(&mappings, m, size, 0))
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
}

/*
 * Sends one executable mapping, its file's path walked in the kernel. A global
 * function: the verifier checks it once, not again at each step of the VMA loop
 * (inlined there, the path walk made the program take ~60 ms to verify).
 */
__noinline int exitmaps_send_mapping(struct exitmaps_mapping *m, __u64 file)
{
	if (!m)
		return 0;
	/* the task_vma iterator (6.7) this needs came after bpf_loop */
	memtrace_file_path((struct file *)file, m->path, &m->path_info, true);
	exitmaps_send(m, offsetof(struct exitmaps_mapping, path) + m->path_info.len);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exitmaps_send_mappings, struct task_struct *exiting)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct vm_area_struct *vma;
	struct exitmaps_mapping *m;
	__u32 tgid = BPF_CORE_READ(task, tgid), zero = 0;
	__u64 vdso;

	/* the task_vma iterator came in Linux 6.7: before, no records, and
	 * user space symbolizes with the mappings it last read */
	if (!bpf_ksym_exists(bpf_iter_task_vma_new))
		return 0;
	if (!memtrace_process_ends(task) ||
	    !bpf_map_lookup_elem(&stack_owners, &tgid))
		return 0;
	bpf_map_delete_elem(&stack_owners, &tgid);
	/* a kernel that ran exit_mm() before this tracepoint (Debian 13's
	 * 6.12 does; 6.18 does not) has no mappings to send: no record, and
	 * user space symbolizes with those it last read */
	if (!BPF_CORE_READ(task, mm))
		return 0;
	m = bpf_map_lookup_elem(&mapping_scratch, &zero);
	if (!m)
		return 0;
	m->tgid = tgid;
	vdso = (__u64)BPF_CORE_READ(task, mm, context.vdso);
	bpf_for_each(task_vma, vma, task, 0) {
		__u64 file = (__u64)BPF_CORE_READ(vma, vm_file);

		if (!(BPF_CORE_READ(vma, vm_flags) & VM_EXEC))
			continue;
		m->start = BPF_CORE_READ(vma, vm_start);
		m->end = BPF_CORE_READ(vma, vm_end);
		m->file_offset = BPF_CORE_READ(vma, vm_pgoff) << PAGE_SHIFT;
		if (file) {
			m->kind = EXITMAPS_FILE;
			exitmaps_send_mapping(m, file);
		} else if (m->start == vdso) {
			/* stacks unwound through it have frames there */
			m->kind = EXITMAPS_VDSO;
			m->path_info.len = 0;
			m->path_info.depth = 0;
			exitmaps_send(m, offsetof(struct exitmaps_mapping, path));
		}
	}
	/* the end of this process's list */
	m->kind = EXITMAPS_FILE;
	m->start = m->end = 0;
	m->path_info.len = 0;
	m->path_info.depth = 0;
	exitmaps_send(m, offsetof(struct exitmaps_mapping, path));
	return 0;
}

#endif
