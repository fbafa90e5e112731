// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The kernel side of ffaults, fmapfault, hfaults and swapin: page faults counted by
 * process image, kind (minor, major) and what they hit (a file, or a kind of
 * anonymous memory). The tools differ only in options (only_files,
 * only_hugetlb, only_swap) and in how user space groups the counts; swapin
 * also counts the pages each process reads from swap (faultvma_swap_read).
 *
 * Which VMA did a page fault hit? bpf_find_vma() answers, but costs ~12 us a
 * call (measured on a 2-vCPU VM): on every fault it slows a fault storm ~6x. So answers are
 * cached, in two levels:
 *   1. each CPU's last VMA (a per-CPU array: no hashing, no sharing);
 *   2. an LRU hash of (mm, 2 MiB region) -> the VMA last found there.
 * An entry is valid while mm->mm_lock_seq is what it was when the entry was
 * filled: the kernel bumps that sequence at every mmap write lock and unlock,
 * i.e. around every munmap, mremap, mprotect, brk, MAP_FIXED mmap and exec, so
 * a cached VMA can't outlive a change to the address space. An odd sequence
 * (a writer in the middle of a change) is never cached.
 *
 * Before mm_lock_seq (6.4) nothing tells a cached VMA is still right, and a
 * lookup per fault is the price, unless the kernel has BPF trampolines
 * (distribution kernels do): then an fentry program on handle_mm_fault,
 * which is given the VMA, describes it for the perf event that
 * mm_account_fault() raises at the end of the same call (vma_from_fentry).
 *
 * Before 5.17 there is no bpf_find_vma, and often no BPF cookies (5.15) or
 * atomic fetch-and-add (5.12): the programs named *_pre517 do without all
 * three (each function below takes `pre517`, a constant, to say which it is).
 * The fentry program is then the only VMA source; it keeps its description
 * per thread, as a fault that sleeps may end on another CPU.
 */
#include "common.bpf.h"
#include "faultvma.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define FAULTVMA_REGION_SHIFT 21
#define VM_SHARED 0x00000008
#define VM_HUGETLB 0x00400000
#define TMPFS_MAGIC 0x01021994

/* Options: which faults a tool counts. */
const volatile bool only_files = false;   /* fmapfault: file-backed VMAs */
const volatile bool only_hugetlb = false; /* hfaults: VM_HUGETLB VMAs */
const volatile bool only_swap = false;    /* swapin: major faults on anonymous or shmem memory */
const volatile __u32 max_slots = 10240;   /* entries of the slot maps below */
const volatile __u32 page_shift = 12;     /* swapin: bytes read from swap to pages */
const volatile bool vma_from_fentry = false; /* faultvma_handle_fault describes each fault's VMA */

struct faultvma_region_key {
	__u64 mm;
	__u64 region;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct faultvma_cached);
} last_vma SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct faultvma_region_key);
	__type(value, struct faultvma_cached);
} region_vmas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct faultvma_file);
	__type(value, struct faultvma_name);
} file_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct faultvma_name);
} name_scratch SEC(".maps");

/*
 * Counts live in an array, one slot per (process, image, kind, file). The hot
 * path finds its slot through the CPU's last VMA and adds to it: no hashing.
 * User space reports differences between readings, so nothing is reset; it
 * reads the arrays through mmap(), with no system call per slot.
 *
 * Slots are reused. When an address space is gone (exit_mmap), or a process
 * (its task freed: for the slots it had in an address space it shared, as a
 * vfork child does), the ring buffer gone_ring tells user space, which reads
 * their last counts, then frees each slot no CPU's last VMA still names: it
 * clears the slot, deletes its key from slot_of and queues it in free_slots,
 * where the next new key takes it. Never-used slots are handed out first
 * (slots_used).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240); /* user space sizes the slot maps together */
	__type(key, struct faultvma_count_key);
	__type(value, __u32);
} slot_of SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 10240);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct faultvma_slot_info);
} slot_info SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 10240);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} slot_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} slots_used SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 10240);
	__type(value, __u32);
} free_slots SEC(".maps");

/*
 * Each address space with count slots has a number, never reused: the slots
 * of an exited process (or of the image an exec replaced) can't be mistaken
 * for those of a new mm_struct at the same address.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);   /* the mm_struct's address */
	__type(value, __u64); /* its number, from 1 */
} faultvma_images SEC(".maps");

__u64 faultvma_last_image = 0;

/* pre517: image numbers from memtrace_unique_number (no fetch-and-add before 5.12) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} images_numbered SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 512 * 1024); /* 13,000 records: user space reads them every 200 ms */
} gone_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FAULTVMA_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} vma_stats SEC(".maps");

/* Put the enums user space decodes slots with into the skeleton's generated types. */
enum faultvma_label faultvma_label_layout;
enum faultvma_flag faultvma_flag_layout;
enum faultvma_stat faultvma_stat_layout;
struct faultvma_gone faultvma_gone_layout = {};
enum faultvma_gone_what faultvma_gone_what_layout;

static __always_inline void faultvma_stat(__u32 stat)
{
	memtrace_percpu_inc(&vma_stats, stat);
}

/* Remembers a file's name the first time one of its pages faults. */
static __always_inline void faultvma_remember_name(struct faultvma_file *file, struct file *vm_file)
{
	struct faultvma_name *name;
	__u32 zero = 0;

	if (bpf_map_lookup_elem(&file_names, file))
		return;
	name = bpf_map_lookup_elem(&name_scratch, &zero);
	if (!name)
		return;
	if (memtrace_dentry_name(BPF_CORE_READ(vm_file, f_path.dentry), name->name) <= 0)
		return;
	bpf_map_update_elem(&file_names, file, name, BPF_NOEXIST);
}

/* bpf_find_vma() callback: describes the VMA into the cache entry. */
static long faultvma_describe(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct faultvma_cached *c = data;
	struct file *vm_file = BPF_CORE_READ(vma, vm_file);
	unsigned long vm_flags = BPF_CORE_READ(vma, vm_flags);
	struct mm_struct *mm = BPF_CORE_READ(vma, vm_mm);

	c->start = BPF_CORE_READ(vma, vm_start);
	c->end = BPF_CORE_READ(vma, vm_end);
	c->file.flags = 0;
	if (vm_flags & VM_HUGETLB)
		c->file.flags |= FAULTVMA_HUGETLB;
	if (vm_flags & VM_SHARED)
		c->file.flags |= FAULTVMA_SHARED;
	if (vm_file) {
		struct inode *inode = BPF_CORE_READ(vm_file, f_inode);

		c->file.label = FAULTVMA_FILE;
		if (BPF_CORE_READ(inode, i_sb, s_magic) == TMPFS_MAGIC)
			c->file.flags |= FAULTVMA_SHMEM;
		c->file.ino = BPF_CORE_READ(inode, i_ino);
		c->file.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		faultvma_remember_name(&c->file, vm_file);
		return 0;
	}
	c->file.ino = 0;
	c->file.dev = 0;
	if (c->start <= BPF_CORE_READ(mm, brk) && c->end >= BPF_CORE_READ(mm, start_brk))
		c->file.label = FAULTVMA_HEAP;
	else if (c->start <= BPF_CORE_READ(mm, start_stack) && c->end >= BPF_CORE_READ(mm, start_stack))
		c->file.label = FAULTVMA_STACK;
	else
		c->file.label = FAULTVMA_ANON;
	return 0;
}

/* The VMA handle_mm_fault was given, for the perf event of the same fault:
 * whose (pid_tgid) and which address, checked by the perf event (a fault
 * that sleeps may move to another CPU meanwhile: it is looked up then). */
struct faultvma_stash {
	__u64 pid_tgid;
	__u64 addr;
	struct faultvma_cached vma;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct faultvma_stash);
} fault_stash SEC(".maps");

/* pre517: the stash of each thread in a fault (whose perf event finds it by thread) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* the thread's id */
	__type(value, struct faultvma_stash);
} thread_stash SEC(".maps");

/* Describes the VMA handle_mm_fault was given into `stash`. */
static __always_inline void faultvma_stash_vma(struct faultvma_stash *stash,
					       struct vm_area_struct *vma, unsigned long address)
{
	stash->pid_tgid = bpf_get_current_pid_tgid();
	stash->addr = address;
	stash->vma.mm = (__u64)BPF_CORE_READ(vma, vm_mm);
	stash->vma.seq = 0;
	/* not valid for the cache below: nothing tells when it goes stale */
	stash->vma.valid = 0;
	stash->vma.tgid = 0;
	stash->vma.slot[0] = stash->vma.slot[1] = 0;
	faultvma_describe(NULL, vma, &stash->vma);
}

SEC("fentry/handle_mm_fault")
int BPF_PROG(faultvma_handle_fault, struct vm_area_struct *vma, unsigned long address)
{
	struct faultvma_stash *stash;
	__u32 zero = 0;

	if (!memtrace_wanted())
		return 0;
	stash = bpf_map_lookup_elem(&fault_stash, &zero);
	if (stash)
		faultvma_stash_vma(stash, vma, address);
	return 0;
}

SEC("fentry/handle_mm_fault")
int BPF_PROG(faultvma_handle_fault_pre517, struct vm_area_struct *vma, unsigned long address)
{
	struct faultvma_stash *stash, fresh = {};
	__u32 tid = bpf_get_current_pid_tgid();

	if (!memtrace_wanted())
		return 0;
	/* written in place: an update per fault would cost an LRU insertion */
	stash = bpf_map_lookup_elem(&thread_stash, &tid);
	if (stash) {
		faultvma_stash_vma(stash, vma, address);
		return 0;
	}
	faultvma_stash_vma(&fresh, vma, address);
	bpf_map_update_elem(&thread_stash, &tid, &fresh, BPF_ANY);
	return 0;
}

/* The VMA faultvma_handle_fault described for this fault, in `last` (its
 * count slots kept if it is the VMA `last` held); false if none. */
static __always_inline bool faultvma_from_stash(struct faultvma_cached *last, __u64 addr,
						bool pre517)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct faultvma_stash *stash;
	__u32 zero = 0, tid = id;

	stash = pre517 ? bpf_map_lookup_elem(&thread_stash, &tid) :
			 bpf_map_lookup_elem(&fault_stash, &zero);
	if (!stash || stash->pid_tgid != id || stash->addr != addr)
		return false;
	stash->pid_tgid = 0; /* once */
	if (last->mm == stash->vma.mm && last->start == stash->vma.start &&
	    last->end == stash->vma.end && last->file.ino == stash->vma.file.ino &&
	    last->file.dev == stash->vma.file.dev && last->file.label == stash->vma.file.label &&
	    last->file.flags == stash->vma.file.flags)
		return true;
	*last = stash->vma;
	return true;
}

/* Linux 6.4-6.12 kept the sequence as a plain int (bumped at mmap write unlock). */
struct mm_struct___int_seq {
	int mm_lock_seq;
} __attribute__((preserve_access_index));

/* The mm's write sequence; false where the kernel has none (no per-VMA locks): no caching then. */
static __always_inline bool faultvma_mm_seq(struct mm_struct *mm, __u32 *seq)
{
	if (bpf_core_field_exists(mm->mm_lock_seq.sequence)) { /* 6.13+: a seqcount_t */
		*seq = mm->mm_lock_seq.sequence;
		return true;
	}
	if (bpf_core_field_exists(((struct mm_struct___int_seq *)mm)->mm_lock_seq)) {
		*seq = BPF_CORE_READ((struct mm_struct___int_seq *)mm, mm_lock_seq);
		return true;
	}
	return false;
}

/* The address space of the current task (NULL: a kernel thread). */
static __always_inline struct mm_struct *faultvma_current_mm(bool pre517)
{
	/* before 5.11 the task is an address to read through */
	if (pre517)
		return BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), mm);
	/* a plain load through the trusted task pointer: no helper call on the hot path */
	return ((struct task_struct *)bpf_get_current_task_btf())->mm;
}

/* Describes an address whose VMA is not known. */
static __always_inline void faultvma_unknown(struct faultvma_cached *c)
{
	c->file.label = FAULTVMA_UNKNOWN;
	c->file.flags = 0;
	c->file.ino = 0;
	c->file.dev = 0;
	c->start = c->end = 0;
}

/*
 * The VMA (this CPU's cache entry) that addr belongs to in the current task's
 * address space, or NULL for a kernel thread. Never fails otherwise: what
 * can't be looked up is labelled FAULTVMA_UNKNOWN.
 */
static __always_inline struct faultvma_cached *faultvma_of(__u64 addr, bool pre517)
{
	struct faultvma_region_key key;
	struct faultvma_cached *last, *cached;
	struct mm_struct *mm;
	__u32 zero = 0, seq = 0;
	bool cacheable;

	mm = faultvma_current_mm(pre517);
	if (!mm)
		return NULL;
	last = bpf_map_lookup_elem(&last_vma, &zero);
	if (!last)
		return NULL;
	if ((vma_from_fentry || pre517) && faultvma_from_stash(last, addr, pre517))
		return last;
	if (pre517) {
		/* no lookup: a fault the fentry program did not see (none should be) */
		last->mm = (__u64)mm;
		last->valid = 0;
		last->tgid = 0;
		faultvma_unknown(last);
		return last;
	}
	cacheable = faultvma_mm_seq(mm, &seq);

	/* the hot path: the same VMA as this CPU's last fault (hits are not counted, to stay cheap) */
	if (last->valid && last->mm == (__u64)mm && last->seq == seq && addr >= last->start &&
	    addr < last->end)
		return last;

	key.mm = (__u64)mm;
	key.region = addr >> FAULTVMA_REGION_SHIFT;
	cached = bpf_map_lookup_elem(&region_vmas, &key);
	if (cached && cached->seq == seq && addr >= cached->start && addr < cached->end) {
		*last = *cached; /* with no slots: they are looked up again */
		faultvma_stat(FAULTVMA_STAT_HIT_REGION);
		return last;
	}

	faultvma_stat(FAULTVMA_STAT_LOOKUP);
	/* the callback's context must live on the stack */
	struct faultvma_cached found = { .mm = (__u64)mm, .seq = seq };


	if (bpf_find_vma(bpf_get_current_task_btf(), addr, faultvma_describe, &found, 0) != 0) {
		faultvma_unknown(&found);
	} else if (cacheable && !(seq & 1)) {
		/* not cached if a writer was mid-change (odd), or the kernel has no sequence */
		found.valid = 1;
		bpf_map_update_elem(&region_vmas, &key, &found, BPF_ANY);
	}
	*last = found;
	return last;
}

/* A number for a new image (never 0); false if none can be given. */
static __always_inline bool faultvma_new_image(__u64 *image, bool pre517)
{
	if (!pre517) {
		*image = __sync_fetch_and_add(&faultvma_last_image, 1) + 1;
		return true;
	}
	*image = memtrace_unique_number(&images_numbered);
	return *image != 0;
}

/* The number of an address space (0 for none: kernel threads); false if none can be given. */
static __always_inline bool faultvma_image(__u64 mm, __u64 *image, bool pre517)
{
	__u64 *found;

	*image = 0;
	if (!mm)
		return true;
	found = bpf_map_lookup_elem(&faultvma_images, &mm);
	if (found) {
		*image = *found;
		return true;
	}
	if (!faultvma_new_image(image, pre517))
		return false;
	if (!bpf_map_update_elem(&faultvma_images, &mm, image, BPF_NOEXIST))
		return true;
	found = bpf_map_lookup_elem(&faultvma_images, &mm); /* another thread numbered it first */
	if (!found)
		return false;
	*image = *found;
	return true;
}

/*
 * A slot no key has: one never used, else one user space freed. Before 5.12
 * (no fetch-and-add) user space queues every slot at the start, in order, and
 * slots_used counts those taken: the first max_slots taken are the never-used.
 */
static __always_inline bool faultvma_take_slot(__u32 *slot, bool pre517)
{
	__u32 zero = 0, *used;

	used = bpf_map_lookup_elem(&slots_used, &zero);
	if (pre517) {
		if (bpf_map_pop_elem(&free_slots, slot))
			return false;
		if (used && *used < max_slots)
			__sync_fetch_and_add(used, 1); /* its value unused: an atomic add, no fetch */
		return true;
	}
	if (used && *used < max_slots) {
		*slot = __sync_fetch_and_add(used, 1);
		if (*slot < max_slots)
			return true;
	}
	return bpf_map_pop_elem(&free_slots, slot) == 0;
}

/* The count slot of this fault, found once per CPU, VMA, process and kind. */
static __always_inline __u64 *faultvma_counter(struct faultvma_cached *c, __u32 kind, __u32 tgid,
						bool pre517)
{
	struct faultvma_count_key key = {};
	struct faultvma_slot_info *info;
	__u32 slot, *found;

	kind &= 1;
	if (c->tgid != tgid) { /* a vfork child shares its parent's mm */
		c->tgid = tgid;
		c->slot[0] = 0;
		c->slot[1] = 0;
	}
	if (c->slot[kind]) {
		slot = c->slot[kind] - 1;
		return bpf_map_lookup_elem(&slot_counts, &slot);
	}

	key.tgid = tgid;
	key.kind = kind;
	if (pre517)
		key.start = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), group_leader,
					  start_time);
	else
		key.start =
			((struct task_struct *)bpf_get_current_task_btf())->group_leader->start_time;
	key.file = c->file;
	if (!faultvma_image(c->mm, &key.image, pre517)) {
		memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return NULL;
	}
	found = bpf_map_lookup_elem(&slot_of, &key);
	if (found) {
		slot = *found;
	} else {
		if (!faultvma_take_slot(&slot, pre517)) {
			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
			return NULL;
		}
		info = bpf_map_lookup_elem(&slot_info, &slot);
		if (!info) {
			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
			return NULL;
		}
		/* describe the slot, then publish it */
		info->key = key;
		bpf_get_current_comm(info->comm, sizeof(info->comm));
		info->cgroup = memtrace_cgroup_label();
		info->valid = 1;
		if (bpf_map_update_elem(&slot_of, &key, &slot, BPF_NOEXIST)) {
			/* another CPU published this key first: use its slot, give this one back */
			info->valid = 0;
			bpf_map_push_elem(&free_slots, &slot, 0);
			found = bpf_map_lookup_elem(&slot_of, &key);
			if (!found) {
				memtrace_count_drop(MEMTRACE_DROP_COUNTS);
				return NULL;
			}
			slot = *found;
		}
	}
	if (c->valid)
		c->slot[kind] = slot + 1;
	return bpf_map_lookup_elem(&slot_counts, &slot);
}

/* Counts one fault of the given kind at addr, if the tool's options want it. */
static __always_inline int faultvma_count_fault(__u64 addr, __u32 kind, bool pre517)
{
	struct faultvma_cached *c;
	__u64 *count;

	if (!memtrace_wanted())
		return 0;
	c = faultvma_of(addr, pre517);
	if (!c)
		return 0;
	if (only_files && c->file.label != FAULTVMA_FILE)
		return 0;
	if (only_hugetlb && !(c->file.flags & FAULTVMA_HUGETLB))
		return 0;
	/* a major fault on memory with no file behind it (or shmem's) is a read from swap */
	if (only_swap && (kind != MEMTRACE_FAULT_MAJOR || c->file.label == FAULTVMA_UNKNOWN ||
			  (c->file.flags & FAULTVMA_HUGETLB) ||
			  (c->file.label == FAULTVMA_FILE && !(c->file.flags & FAULTVMA_SHMEM))))
		return 0;
	count = faultvma_counter(c, kind, bpf_get_current_pid_tgid() >> 32, pre517);
	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

/*
 * Attached to the software perf events page-faults-min and -maj (period 1):
 * they carry the faulting address and exist on every architecture. One
 * program for both, the event's kind (enum memtrace_fault_kind) its attach
 * cookie: the verifier checks it once, not twice.
 */
SEC("perf_event")
int faultvma_fault(struct bpf_perf_event_data *ctx)
{
	return faultvma_count_fault(ctx->addr, bpf_get_attach_cookie(ctx), false);
}

/* Before 5.17: a program per kind, each attached to its own events. */
SEC("perf_event")
int faultvma_fault_minor_pre517(struct bpf_perf_event_data *ctx)
{
	return faultvma_count_fault(ctx->addr, MEMTRACE_FAULT_MINOR, true);
}

SEC("perf_event")
int faultvma_fault_major_pre517(struct bpf_perf_event_data *ctx)
{
	return faultvma_count_fault(ctx->addr, MEMTRACE_FAULT_MAJOR, true);
}

#define REQ_OP_MASK 0xff /* the low bits of bi_opf: REQ_OP_BITS is 8 */
#define BIO_CLONED_BIT 1 /* BIO_CLONED in bi_flags; an anonymous enum, so no CO-RE */

/*
 * swapin: pages read from swap, by the process that reads them (the one that
 * faulted, with its readahead; swapoff; MADV_WILLNEED), counted in the
 * process's FAULTVMA_SWAP_READ slot of kind MINOR (swapin counts no minor
 * faults). A swap read is a read bio into a swap-backed folio (anonymous or
 * shmem) that is in no mapping yet: a new folio, which an O_DIRECT read into
 * a process's own memory is not. Clones (device mapper, splits) carry the
 * same pages again: skipped. Swap-ins from zswap need no bio: not seen here.
 */
/* Before Linux 6.17 a page's flags were an unsigned long (a
 * memdesc_flags_t, one word, since). */
struct page___pre617 {
	unsigned long flags;
} __attribute__((preserve_access_index));

static __always_inline unsigned long page_flags(struct page *page)
{
	unsigned long flags = 0;

	if (bpf_core_type_exists(memdesc_flags_t))
		bpf_core_read(&flags, sizeof(flags), &page->flags);
	else
		flags = BPF_CORE_READ((struct page___pre617 *)page, flags);
	return flags;
}

static __always_inline int faultvma_count_swap_read(struct bio *bio, bool pre517)
{
	struct faultvma_cached c = {};
	unsigned long flags = 0;
	struct page *page;
	__u64 *count;

	if ((bio->bi_opf & REQ_OP_MASK) != REQ_OP_READ || (bio->bi_flags & (1 << BIO_CLONED_BIT)))
		return 0;
	if (!memtrace_wanted())
		return 0;
	page = BPF_CORE_READ(bio, bi_io_vec, bv_page);
	if (!page || BPF_CORE_READ(page, mapping))
		return 0;
	flags = page_flags(page);
	if (!(flags & (1UL << bpf_core_enum_value(enum pageflags, PG_swapbacked))))
		return 0;
	if (!(bio->bi_iter.bi_size >> page_shift))
		return 0; /* a slot is taken only to be counted in */
	c.mm = (__u64)faultvma_current_mm(pre517);
	c.file.label = FAULTVMA_SWAP_READ;
	count = faultvma_counter(&c, MEMTRACE_FAULT_MINOR, bpf_get_current_pid_tgid() >> 32, pre517);
	if (count)
		__sync_fetch_and_add(count, bio->bi_iter.bi_size >> page_shift);
	return 0;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(faultvma_swap_read, struct bio *bio)
{
	return faultvma_count_swap_read(bio, false);
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(faultvma_swap_read_pre517, struct bio *bio)
{
	return faultvma_count_swap_read(bio, true);
}

/* Before 5.11 the tracepoint passed the bio's queue first. */
SEC("tp_btf/block_bio_queue")
int BPF_PROG(faultvma_swap_read_queue_bio, struct request_queue *q, struct bio *bio)
{
	return faultvma_count_swap_read(bio, true);
}

/* Tells user space what is gone; a full ring buffer is counted as a drop. */
static __always_inline void faultvma_tell_gone(struct faultvma_gone *gone, __u64 wake)
{
	if (bpf_ringbuf_output(&gone_ring, gone, sizeof(*gone), wake))
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
}

/*
 * An address space is gone: its last user let go of it (the last thread's
 * exit, or an exec replacing it), and its mappings are torn down, so no fault
 * can count in its slots any more. If it had slots, user space is told its
 * number. User space reads the ring buffer every 200 ms; once half the
 * never-used slots are taken, this wakes it at once.
 */
SEC("tp_btf/exit_mmap")
int BPF_PROG(faultvma_exit_mmap, struct mm_struct *mm)
{
	struct faultvma_gone gone = { .what = FAULTVMA_GONE_IMAGE };
	__u64 key = (__u64)mm, *image;
	__u32 zero = 0, *used;
	__u64 wake = BPF_RB_NO_WAKEUP;

	image = bpf_map_lookup_elem(&faultvma_images, &key);
	if (!image)
		return 0;
	gone.image = *image;
	bpf_map_delete_elem(&faultvma_images, &key);
	used = bpf_map_lookup_elem(&slots_used, &zero);
	/* forced: a plain wakeup is skipped while earlier records wait unread */
	if (used && *used >= max_slots / 2)
		wake = BPF_RB_FORCE_WAKEUP;
	faultvma_tell_gone(&gone, wake);
	return 0;
}

/*
 * A process is gone: the task of its leader is freed, after the last thread
 * exited and the process was reaped, so none of its threads can fault again.
 * Its slots in its own images went with them (faultvma_exit_mmap); this frees
 * those it had in an image it shared (a vfork child's, in its parent's).
 * Every process's end is told (user space knows which had slots), never
 * waking user space.
 */
SEC("tp_btf/sched_process_free")
int BPF_PROG(faultvma_process_free, struct task_struct *task)
{
	struct faultvma_gone gone = { .what = FAULTVMA_GONE_PROCESS };

	/* a thread, or a leader an exec from another thread replaced */
	if (task->pid != task->tgid)
		return 0;
	gone.tgid = task->tgid;
	gone.start = task->start_time;
	faultvma_tell_gone(&gone, BPF_RB_NO_WAKEUP);
	return 0;
}
