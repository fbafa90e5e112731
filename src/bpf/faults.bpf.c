// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * faults: page faults counted by user stack (and kernel stack with -K),
 * process and kind, on the software perf events page-faults-min/-maj, as the
 * book's faults.bt. When a process with counted stacks exits, its executable
 * mappings are sent to user space (the mm is still there at
 * sched_process_exit on this kernel), so its stacks are symbolized after
 * /proc/PID/maps has gone.
 */
#include "common.bpf.h"
#include "faults.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define VM_EXEC 0x00000004
#define PAGE_SHIFT 12

const volatile bool kernel_stacks = false;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384); /* user space may resize before load */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, FAULTS_MAX_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct faults_key);
	__type(value, struct faults_value);
} counts SEC(".maps");

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
	__type(value, struct faults_mapping);
} mapping_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} mappings SEC(".maps");

extern int bpf_iter_task_vma_new(struct bpf_iter_task_vma *it, struct task_struct *task,
				 __u64 addr) __weak __ksym;
extern struct vm_area_struct *bpf_iter_task_vma_next(struct bpf_iter_task_vma *it) __weak __ksym;
extern void bpf_iter_task_vma_destroy(struct bpf_iter_task_vma *it) __weak __ksym;

static __always_inline int count_fault(struct bpf_perf_event_data *ctx, __u32 kind)
{
	struct faults_key key = { .kind = kind, .kernel_stack = FAULTS_NO_STACK };
	struct faults_value first = { .count = 1 }, *value;
	__u8 yes = 1;

	if (!memtrace_wanted())
		return 0;
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	/* FAST_STACK_CMP: a stack is known by its 32-bit hash, not compared frame by frame */
	key.user_stack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP);
	if (kernel_stacks)
		key.kernel_stack = bpf_get_stackid(ctx, &stacks, BPF_F_FAST_STACK_CMP);

	value = bpf_map_lookup_elem(&counts, &key);
	if (value) { /* the hot path: a stack seen before */
		__sync_fetch_and_add(&value->count, 1);
		return 0;
	}
	bpf_get_current_comm(first.comm, sizeof(first.comm));
	if (bpf_map_update_elem(&counts, &key, &first, BPF_NOEXIST)) {
		value = bpf_map_lookup_elem(&counts, &key);
		if (value) /* another CPU added it first */
			__sync_fetch_and_add(&value->count, 1);
		else
			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return 0;
	}
	/* a new stack: its process's mappings will be wanted when it exits */
	if (!bpf_map_lookup_elem(&stack_owners, &key.tgid))
		bpf_map_update_elem(&stack_owners, &key.tgid, &yes, BPF_ANY);
	return 0;
}

SEC("perf_event")
int faults_minor(struct bpf_perf_event_data *ctx)
{
	return count_fault(ctx, 0);
}

SEC("perf_event")
int faults_major(struct bpf_perf_event_data *ctx)
{
	return count_fault(ctx, 1);
}

static __always_inline void send_mapping(struct faults_mapping *m, __u64 size)
{
	if (size > sizeof(*m))
		size = sizeof(*m);
	if (bpf_ringbuf_output(&mappings, m, size, 0))
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(faults_exit_mappings, struct task_struct *exiting)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct vm_area_struct *vma;
	struct faults_mapping *m;
	__u32 tgid = task->tgid, zero = 0;

	if (task->signal->live.counter != 0 || !bpf_map_lookup_elem(&stack_owners, &tgid))
		return 0;
	bpf_map_delete_elem(&stack_owners, &tgid);
	m = bpf_map_lookup_elem(&mapping_scratch, &zero);
	if (!m)
		return 0;
	m->tgid = tgid;
	bpf_for_each(task_vma, vma, task, 0) {
		struct file *file = vma->vm_file;

		if (!(vma->vm_flags & VM_EXEC) || !file)
			continue;
		m->start = vma->vm_start;
		m->end = vma->vm_end;
		m->file_offset = vma->vm_pgoff << PAGE_SHIFT;
		memtrace_file_path(file, m->path, &m->path_info);
		send_mapping(m, offsetof(struct faults_mapping, path) + m->path_info.len);
	}
	m->start = m->end = 0;
	m->path_info.len = 0;
	m->path_info.depth = 0;
	send_mapping(m, offsetof(struct faults_mapping, path));
	return 0;
}
