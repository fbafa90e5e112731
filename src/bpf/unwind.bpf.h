/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * User stacks unwound in the kernel from call frame information, as the
 * continuous profilers do: user space turns each object's .eh_frame into a
 * table of rows (analysis/unwind_table.rs) and loads it with each traced
 * process's executable mappings (engine/unwind.rs); a program calls
 * memtrace_user_stack() and gets a stack key as memtrace_stack() gives.
 * Libraries built without frame pointers (Debian's libc) are followed; an
 * object without CFI is followed by its frame pointers. A stack that can't be
 * followed to its outermost frame ends where it stopped and carries
 * MEMTRACE_STACK_TRUNCATED, never an address read from a guess.
 *
 * Needs bpf_loop() and bpf_find_vma() (5.17), bpf_task_pt_regs() (5.15).
 * x86-64's registers.
 */
#ifndef MEMTRACE_UNWIND_BPF_H
#define MEMTRACE_UNWIND_BPF_H

#include "stacks.bpf.h"
#include "unwind.h"

/* --unwind cfi: user stacks walked with the tables; else by the kernel's
 * frame-pointer walk (memtrace_user_stack_of). */
const volatile bool unwind_cfi = false;

/* Binary search steps: object tables up to 4M rows, 256 mappings. */
#define UNWIND_ROW_STEPS 23
#define UNWIND_MAPPING_STEPS 9

/* Every object's rows, one after another, written by user space through a
 * mapping of the pages they go to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 18); /* --unwind-rows */
	__type(key, __u32);
	__type(value, struct unwind_row);
} unwind_rows SEC(".maps");

/* The objects' page indexes (struct unwind_object), one after another. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 17); /* --unwind-rows / 2 */
	__type(key, __u32);
	__type(value, __u32);
} unwind_pages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct unwind_object);
} unwind_objects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 8192);
	__type(key, __u32); /* tgid */
	__type(value, struct unwind_process);
} unwind_processes SEC(".maps");

/* Processes whose mappings the unwinder lacks (new, or a new mapping seen):
 * user space reads them in, then deletes the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} unwind_wanted SEC(".maps");

/* Wakes user space when a tgid is first put in unwind_wanted. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} unwind_requests SEC(".maps");

/* Stacks for user space to unwind (struct unwind_deferred). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} unwind_deferred_ring SEC(".maps");

/* Words of the stack's top that, with the registers, tell deferred stacks apart. */
#define UNWIND_KEY_WORDS 32

/*
 * The part of the user stack the walk reads now: a read from user memory
 * costs ~50 ns however small, so the walk copies 1 KiB at a time (up to a
 * page's end, so that a copy never fails for the unmapped page above a
 * stack's top) and reads its frames' words from here.
 */
#define UNWIND_WINDOW_WORDS 128
/* Kept in a map, not in struct unwind_walk on the BPF stack, with what
 * changes from frame to frame: the verifier tracks values on the stack, and
 * checked the frame loop many more times for them. */
struct unwind_window {
	__u64 start; /* the user address of words[0] */
	__u64 bytes; /* 0: empty */
	/* The last two frames' mappings: a stack goes back and forth between
	 * a program and its libraries, and a search is dearer than a look. */
	__u32 mapping;
	__u32 other_mapping;
	__u64 words[UNWIND_WINDOW_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_window);
} unwind_window SEC(".maps");

struct unwind_walk {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	struct unwind_process *process;
	struct memtrace_stack *stack;
	struct unwind_window *window;
	bool whole;   /* reached the outermost frame */
	bool missing; /* stopped at an address in no mapping user space gave */
};

static __always_inline void unwind_want(__u32 tgid)
{
	__u8 yes = 1;

	if (!bpf_map_update_elem(&unwind_wanted, &tgid, &yes, BPF_NOEXIST))
		bpf_ringbuf_output(&unwind_requests, &tgid, sizeof(tgid), 0);
}

/*
 * The binary searches are global functions: the verifier checks each once on
 * its own, not again for every state of the frame loop that calls it (inlined,
 * they made a program take ~90 ms to verify).
 */

struct unwind_mapping_search {
	struct unwind_process *p;
	__u64 addr;
	__u32 lo;
	__u32 hi;
};

static long unwind_mapping_step(__u64 step, struct unwind_mapping_search *s)
{
	/* hi is not clamped: a constant bound would make the verifier walk each
	 * path of the search on its own; the index is masked instead */
	__u32 mid = (s->lo + s->hi) / 2;

	if (s->lo >= s->hi)
		return 1;
	if (s->p->maps[mid & (UNWIND_MAX_MAPPINGS - 1)].start <= s->addr)
		s->lo = mid + 1;
	else
		s->hi = mid;
	return 0;
}

/* Whether mapping `index` of p holds addr. */
static __always_inline bool unwind_mapping_holds(struct unwind_process *p, __u32 index, __u64 addr)
{
	struct unwind_mapping *m = &p->maps[index & (UNWIND_MAX_MAPPINGS - 1)];

	return m->start <= addr && addr < m->end;
}

/*
 * The index of the mapping holding addr in the sorted mappings; -1 if none.
 * One of the last two frames' mappings (kept in w) as a rule; else a search,
 * whose steps are bpf_loop() callbacks: a bounded loop is checked step by
 * step (a sixth of the verifier's work on a program that unwinds).
 */
__noinline int unwind_find_mapping(struct unwind_process *p, __u64 addr, struct unwind_window *w)
{
	struct unwind_mapping_search s = { .p = p, .addr = addr };
	__u32 found;

	if (!p || !w)
		return -1;
	if (unwind_mapping_holds(p, w->mapping, addr))
		return w->mapping & (UNWIND_MAX_MAPPINGS - 1);
	if (unwind_mapping_holds(p, w->other_mapping, addr)) {
		found = w->other_mapping;
	} else {
		s.hi = p->nr;
		bpf_loop(UNWIND_MAPPING_STEPS, unwind_mapping_step, &s, 0);
		if (s.lo == 0 || !unwind_mapping_holds(p, s.lo - 1, addr))
			return -1;
		found = s.lo - 1;
	}
	w->other_mapping = w->mapping;
	w->mapping = found;
	return found & (UNWIND_MAX_MAPPINGS - 1);
}

/* The index in unwind_rows of the last of rows [first, end) at or below pc;
 * -1 if none. A bounded loop: run on every frame, a bpf_loop() callback per
 * step cost ~50 ns a frame more. */
__noinline int unwind_find_row(__u32 first, __u32 end, __u32 pc)
{
	__u32 lo = first, hi = end;

	for (int i = 0; i < UNWIND_ROW_STEPS && lo < hi; i++) {
		__u32 mid = lo + (hi - lo) / 2;
		struct unwind_row *r = bpf_map_lookup_elem(&unwind_rows, &mid);

		if (!r)
			return -1;
		if (r->pc <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == first ? -1 : (int)(lo - 1);
}

/* What unwind_locate found for an address, besides a row's index. */
enum unwind_located {
	UNWIND_NO_ROW = -1,	    /* no row: the walk stops there */
	UNWIND_ENTRY_POINT = -2,    /* called from the entry point: the outermost frame */
	UNWIND_FRAME_POINTER = -3, /* an object without CFI: its frame pointer */
};

/*
 * The index in unwind_rows of the row for pc (an object's own address) in
 * an object's table, or an enum unwind_located. The search looks at the rows
 * of pc's page only where the object has a page index.
 */
static __always_inline int unwind_locate(__u32 object, __u32 pc)
{
	struct unwind_object *o = bpf_map_lookup_elem(&unwind_objects, &object);
	__u32 first, end, page, index, *start, *next;

	if (!o)
		return UNWIND_NO_ROW;
	if (o->entry && pc >= o->entry && pc < o->entry + UNWIND_ENTRY_BYTES)
		return UNWIND_ENTRY_POINT;
	if (o->rows == 0)
		return UNWIND_FRAME_POINTER;
	first = o->first_row;
	end = o->first_row + o->rows;
	page = (pc >> UNWIND_PAGE_SHIFT) - o->first_pc_page;
	if (o->pages && pc >> UNWIND_PAGE_SHIFT >= o->first_pc_page) {
		if (page >= o->pages) { /* past the last page: the last row */
			first = end - 1;
		} else {
			index = o->first_page + page;
			start = bpf_map_lookup_elem(&unwind_pages, &index);
			if (start)
				first = *start;
			index++;
			next = page + 1 < o->pages ? bpf_map_lookup_elem(&unwind_pages, &index) : NULL;
			/* the next page's covering row may begin at its first byte */
			if (start && next)
				end = *next + 1;
		}
	}
	return unwind_find_row(first, end, pc);
}

/*
 * Copies the user stack from addr into this CPU's window: 1 KiB, or to the
 * page's end (so that a copy never fails for an unmapped page above a
 * stack's top), and a word at least. The bytes copied, or a negative errno.
 * A global function: inlined at each read, it tripled the verifier's time.
 */
__noinline long unwind_fill(__u64 addr)
{
	__u32 zero = 0;
	struct unwind_window *w = bpf_map_lookup_elem(&unwind_window, &zero);
	__u64 bytes = 4096 - (addr & 4095);

	if (!w)
		return -12; /* ENOMEM */
	if (bytes > sizeof(w->words))
		bytes = sizeof(w->words);
	if (bytes < 8) /* a word across pages */
		bytes = 8;
	if (bpf_probe_read_user(w->words, bytes, (void *)addr))
		return -14; /* EFAULT */
	return bytes;
}

/* A word of the user stack, through the window; 0 or a negative errno. */
static __always_inline long unwind_read(struct unwind_walk *st, __u64 addr, __u64 *word)
{
	struct unwind_window *w = st->window;
	__u64 offset = addr - w->start;
	long bytes;

	if (addr < w->start || offset + 8 > w->bytes || (offset & 7)) {
		bytes = unwind_fill(addr);
		if (bytes < 8) {
			w->bytes = 0;
			return -14; /* EFAULT */
		}
		w->start = addr;
		w->bytes = bytes;
		offset = 0;
	}
	*word = w->words[(offset >> 3) & (UNWIND_WINDOW_WORDS - 1)];
	return 0;
}

/* The caller's CFA by the row's rule; 0 where the walk ends. */
static __always_inline __u64 unwind_cfa(struct unwind_walk *st, struct unwind_row *r)
{
	switch (r->cfa_register) {
	case UNWIND_CFA_RSP:
		return st->sp + r->cfa_offset;
	case UNWIND_CFA_RBP:
		return st->bp + r->cfa_offset;
	case UNWIND_CFA_PLT:
		/* the stub pushes once from its 11th byte on */
		return st->sp + 8 + ((st->ip & 15) >= 11 ? 8 : 0);
	case UNWIND_END:
		st->whole = true;
		return 0;
	default:
		return 0;
	}
}

/* One frame: records ip, then moves ip, sp and bp to the caller's. 1 ends the walk. */
static long unwind_frame(__u64 frame, struct unwind_walk *st)
{
	struct memtrace_stack *s = st->stack;
	struct unwind_mapping *m;
	struct unwind_row *r;
	__u64 lookup, cfa, ra = 0, bp = st->bp;
	__u32 n = s->nr, row;
	int index;

	if (n >= MEMTRACE_STACK_DEPTH)
		return 1;
	s->ips[n] = st->ip;
	s->nr = n + 1;
	/* a return address points past its call: the call is what it belongs to */
	lookup = n == 0 ? st->ip : st->ip - 1;
	index = unwind_find_mapping(st->process, lookup, st->window);
	if (index < 0) {
		st->missing = true;
		return 1;
	}
	m = &st->process->maps[index & (UNWIND_MAX_MAPPINGS - 1)];
	if (lookup - m->bias <= 0xffffffffULL)
		index = unwind_locate(m->object, lookup - m->bias);
	else /* code of no file (a JIT's): object 0 */
		index = m->object ? UNWIND_NO_ROW : UNWIND_FRAME_POINTER;
	if (index == UNWIND_ENTRY_POINT) {
		st->whole = true;
		return 1;
	}
	if (index == UNWIND_FRAME_POINTER) {
		cfa = st->bp + 16;
		if (!st->bp || unwind_read(st, st->bp, &bp))
			return 1;
	} else {
		row = index;
		r = index < 0 ? NULL : bpf_map_lookup_elem(&unwind_rows, &row);
		if (!r)
			return 1;
		cfa = unwind_cfa(st, r);
		if (!cfa)
			return 1;
		if (r->rbp_rule == UNWIND_RBP_AT_CFA && unwind_read(st, cfa + r->rbp_offset, &bp))
			return 1;
	}
	if (unwind_read(st, cfa - 8, &ra))
		return 1;
	if (!ra) { /* a zero return address: the outermost frame */
		st->whole = true;
		return 1;
	}
	st->ip = ra;
	st->sp = cfa;
	st->bp = bp;
	return 0;
}

/*
 * A stack the walk could not follow for want of a table (a library mapped
 * since user space read the process in) goes to user space whole (registers
 * and the stack's top) to be unwound there; its key is a hash
 * of the registers and the stack's top words, so that the same stack is sent
 * once: its entry in stack_store is made at once, MEMTRACE_STACK_PENDING (and
 * truncated, which it stays if user space can't unwind it).
 */
static __noinline __s64 unwind_defer(struct task_struct *task, __u32 tgid,
				     struct memtrace_stack *s, struct pt_regs *regs)
{
	__u64 hash = 14695981039346656037ULL, key;
	__u64 ip = regs->ip, sp = regs->sp, bp = regs->bp;
	struct unwind_deferred *d;

	if (!s)
		return -12; /* ENOMEM */
	__builtin_memset(s->ips, 0, UNWIND_KEY_WORDS * sizeof(__u64));
	bpf_probe_read_user(s->ips, UNWIND_KEY_WORDS * sizeof(__u64), (void *)sp);
	s->ips[UNWIND_KEY_WORDS] = tgid;
	s->ips[UNWIND_KEY_WORDS + 1] = ip;
	s->ips[UNWIND_KEY_WORDS + 2] = sp;
	s->ips[UNWIND_KEY_WORDS + 3] = bp;
	for (int i = 0; i < UNWIND_KEY_WORDS + 4; i++) {
		hash ^= s->ips[i];
		hash *= 1099511628211ULL;
	}
	key = hash & 0x7fffffffffffffffULL;
	if (!key)
		key = 1;
	if (bpf_map_lookup_elem(&stack_store, &key))
		return key; /* sent before */
	s->nr = 0;
	s->flags = MEMTRACE_STACK_PENDING | MEMTRACE_STACK_TRUNCATED;
	if (bpf_map_update_elem(&stack_store, &key, s, BPF_NOEXIST)) {
		if (bpf_map_lookup_elem(&stack_store, &key))
			return key;
		memtrace_count_drop(MEMTRACE_DROP_STACKS);
		return -28; /* ENOSPC */
	}
	d = bpf_ringbuf_reserve(&unwind_deferred_ring, sizeof(*d), 0);
	if (!d) {
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		return key; /* stays truncated */
	}
	d->key = key;
	d->ip = ip;
	d->sp = sp;
	d->bp = bp;
	d->tgid = tgid;
	d->stack_len = memtrace_copy_user_stack(task, sp, d->stack);
	bpf_ringbuf_submit(d, 0);
	return key;
}

static long unwind_vma_found(struct task_struct *task, struct vm_area_struct *vma, void *ctx)
{
	return 0;
}

/*
 * The key of the current thread's user stack, unwound from its user
 * registers (as the kernel entered from user mode), stored in stack_store; a
 * negative errno if there is none (-EFAULT: a kernel thread) or no room. A
 * global function, checked once by the verifier, not on each path to a call.
 */
__noinline __s64 memtrace_user_stack(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct unwind_walk st = {};
	struct pt_regs *regs;
	__u32 zero = 0;

	/* read directly, not with BPF_CORE_READ's helper call: the walk runs on
	 * every fault */
	if (!task->mm)
		return -14; /* EFAULT: no user stack */
	st.stack = memtrace_stack_scratch();
	if (!st.stack)
		return -12; /* ENOMEM */
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	st.ip = regs->ip;
	st.sp = regs->sp;
	st.bp = regs->bp;
	st.window = bpf_map_lookup_elem(&unwind_window, &zero);
	if (!st.window)
		return -12; /* ENOMEM */
	st.window->bytes = 0;
	st.window->mapping = 0;
	st.window->other_mapping = 0;
	st.stack->nr = 0;
	st.stack->flags = 0;
	st.process = bpf_map_lookup_elem(&unwind_processes, &tgid);
	if (!st.process) {
		/* during an exec the registers are still the old image's: no
		 * stack of the new one yet */
		if (bpf_find_vma(task, st.ip, unwind_vma_found, NULL, 0))
			return -14; /* EFAULT */
		/* a process user space has not read in (a new one, system-wide,
		 * or just exec'd): its leaf alone, truncated, until it has */
		unwind_want(tgid);
		st.stack->ips[0] = st.ip;
		st.stack->nr = 1;
		st.stack->flags = MEMTRACE_STACK_TRUNCATED;
	} else {
		bpf_loop(MEMTRACE_STACK_DEPTH, unwind_frame, &st, 0);
		if (st.missing) {
			/* a mapping user space has not read in yet (a dlopen) */
			unwind_want(tgid);
			return unwind_defer(task, tgid, st.stack, regs);
		}
		if (!st.whole)
			st.stack->flags = MEMTRACE_STACK_TRUNCATED;
	}
	/* one call: the verifier checks its loop over the frames once */
	return memtrace_keep_stack(st.stack);
}

/* The key of the current user stack, walked as --unwind says. */
static __always_inline __s64 memtrace_user_stack_of(void *ctx)
{
	if (unwind_cfi)
		return memtrace_user_stack();
	return memtrace_stack(ctx, BPF_F_USER_STACK);
}

/* A child process has its parent's mappings until it execs. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(unwind_inherit_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid), child_tgid = BPF_CORE_READ(child, tgid);
	struct unwind_process *p;

	if (parent_tgid == child_tgid) /* a thread */
		return 0;
	p = bpf_map_lookup_elem(&unwind_processes, &parent_tgid);
	if (p)
		bpf_map_update_elem(&unwind_processes, &child_tgid, p, BPF_ANY);
	return 0;
}

/* An exec replaces the mappings: the BPF side asks for the new ones. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(unwind_forget_exec, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	bpf_map_delete_elem(&unwind_processes, &tgid);
	return 0;
}

/* A process that is gone leaves the table, so a recycled pid is read anew. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(unwind_forget_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (memtrace_process_ends(task))
		bpf_map_delete_elem(&unwind_processes, &tgid);
	return 0;
}

#endif
