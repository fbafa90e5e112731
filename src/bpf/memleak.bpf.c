// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * memleak, user mode: uprobes on each allocator object's functions, each
 * probe's function (and where its arguments are) its BPF cookie, one set
 * per traced process (a command's children have theirs); for a command, one
 * on its loader's _dl_debug_state too (MEMLEAK_LOADS). The kernel's best
 * mechanism is used (user space chooses, tools/memleak/allocator.rs):
 * - session uprobes (uprobe.multi sessions, 6.13): the entry half decides
 *   whether the return is wanted at all: free and munmap, calls not sampled
 *   (-s), out of -z/-Z bounds or nested in another allocator call return 1,
 *   and the kernel then sets no return probe, which saves a trap of several
 *   microseconds;
 * - before that, an entry and a return program, as multi-uprobe links
 *   (6.6) or classic uprobes (cookies: 5.15): every allocating call's return
 *   traps, and the return half matches it to its entry;
 * - before BPF cookies and bpf_loop (5.15, 5.17), classic uprobes whose
 *   cookie user space keeps by probe address (probe_cookies), user stacks
 *   by frame pointers: the *_pre517 programs.
 * Allocations are kept by process and address with their size, time and
 * stack until freed; a running total by process and stack serves
 * --combined-only.
 */
#include "exitmaps.bpf.h"
#include "unwind.bpf.h"
#include "memleak.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u64 min_size = 0;    /* -z: 0 = no minimum */
const volatile __u64 max_size = 0;    /* -Z: 0 = no maximum */
const volatile __u32 sample_rate = 1; /* -s: trace one allocation in N */
const volatile bool trace_all = false; /* -t: send each allocation and free */
const volatile bool wa_missing_free = false; /* an address allocated again was freed unseen */
/* a command under memtrace's ptrace: stopped at each _dl_debug_state call */
const volatile bool stop_at_loads = false;

#define MEMLEAK_SIGSTOP 19

/* A call in flight on a thread, from entry to return. */
struct memleak_call {
	__u64 size;
	__u64 old_addr; /* realloc, mremap: freed once the call succeeds */
	__u64 memptr;   /* posix_memalign: where the result is written */
	__u64 sp; /* at entry: a return probe's hit is this call's own return */
	__u32 func;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct memleak_call);
} calls SEC(".maps");

/*
 * Made by user space while the trace is prepared, with its size and
 * preallocation (tools/memleak allocs_map says why), and given to libbpf in
 * place of this declaration, which gives the map its types.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20); /* user space may resize before load */
	__type(key, struct memleak_key);
	__type(value, struct memleak_alloc);
} allocs SEC(".maps");

/* Not preallocated but in kernel mode (see the allocs map): user space
 * sizes it from --stack-storage-size. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct memleak_stack_key);
	__type(value, struct memleak_combined);
} combined SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* --buffer-size */
} trace_events SEC(".maps");

/* Traced processes that exec'd, and when (bpf_ktime_get_ns): the old
 * program's allocations went with its address space, and user space
 * forgets those made before. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* tgid */
	__type(value, __u64);
} execs SEC(".maps");

/* Traced processes whose loader mapped objects without stopping for user
 * space (MEMLEAK_LOADS): their new allocators are probed when it looks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} loads SEC(".maps");

/* pre517: each probe's cookie by process and address, written by user space as it attaches */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* user space sizes it */
	__type(key, struct memleak_probe_key);
	__type(value, __u64);
} probe_cookies SEC(".maps");

/* Puts struct memleak_event into the skeleton's generated types (ring buffers have no value type). */
struct memleak_event memleak_event_layout = {};
/* and enum memleak_func: user space gives each probe its function as the cookie */
enum memleak_func memleak_func_layout;

static __always_inline void trace_event(__u64 addr, __u64 size, __s64 stack, __u32 is_free)
{
	struct memleak_event *e;
	__u64 id = bpf_get_current_pid_tgid();

	e = bpf_ringbuf_reserve(&trace_events, sizeof(*e), 0);
	if (!e) {
		memtrace_count_drop(MEMTRACE_DROP_RINGBUF);
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->addr = addr;
	e->size = size;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->is_free = is_free;
	e->stack = stack;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void account(__u32 tgid, __s64 stack, __s64 bytes, __s64 count)
{
	struct memleak_stack_key key = { .stack = stack, .tgid = tgid };
	struct memleak_combined *c = bpf_map_lookup_elem(&combined, &key);
	struct memleak_combined first = {};

	if (!c) {
		if (bytes < 0)
			return;
		bpf_map_update_elem(&combined, &key, &first, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&combined, &key);
		if (!c) {
			/* sized with the stack store (--stack-storage-size) */
			memtrace_count_drop(MEMTRACE_DROP_STACKS);
			return;
		}
	}
	__sync_fetch_and_add(&c->bytes, bytes);
	__sync_fetch_and_add(&c->allocs, count);
}

/* The key of the current process's allocation at addr (user mode). */
static __always_inline struct memleak_key user_key(__u64 addr)
{
	struct memleak_key key = { .addr = addr, .tgid = bpf_get_current_pid_tgid() >> 32 };

	return key;
}

static __always_inline void forget(struct memleak_key *key)
{
	struct memleak_alloc *a = bpf_map_lookup_elem(&allocs, key);

	if (!a)
		return;
	account(key->tgid, a->stack, -(__s64)a->size, -1);
	if (trace_all)
		trace_event(key->addr, a->size, a->stack, 1);
	bpf_map_delete_elem(&allocs, key);
}

static __always_inline void forget_user(__u64 addr)
{
	struct memleak_key key = user_key(addr);

	forget(&key);
}

/* pre517: a constant in each program; true ones carry no call to the
 * .eh_frame walk (bpf_loop, bpf_find_vma: 5.17) and read no cookie (5.15). */
static __always_inline void remember(struct pt_regs *ctx, __u64 addr, __u64 size, bool pre517)
{
	struct memleak_alloc a = { .size = size, .time_ns = bpf_ktime_get_ns() };
	struct memleak_key key = user_key(addr);

	a.stack = pre517 ? memtrace_stack(ctx, BPF_F_USER_STACK) : memtrace_user_stack_of(ctx);
	/* --wa-missing-free: the allocator handed out this address again, so its
	 * earlier allocation was freed by a path we did not see */
	if (wa_missing_free)
		forget(&key);
	/* NOEXIST: an address already outstanding keeps its first allocation */
	if (bpf_map_update_elem(&allocs, &key, &a, BPF_NOEXIST)) {
		if (!bpf_map_lookup_elem(&allocs, &key))
			memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return;
	}
	account(key.tgid, a.stack, size, 1);
	if (trace_all)
		trace_event(addr, size, a.stack, 0);
	exitmaps_note_owner(key.tgid);
}

extern bool bpf_session_is_return(void) __ksym __weak;

static __always_inline bool size_wanted(__u64 size)
{
	if (size < min_size || (max_size && size > max_size))
		return false;
	return sample_rate <= 1 || bpf_ktime_get_ns() % sample_rate == 0;
}

/* mmap(2) flags */
#define MEMLEAK_MAP_TYPE 0x0f /* MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE */
#define MEMLEAK_MAP_PRIVATE 0x02
#define MEMLEAK_MAP_ANONYMOUS 0x20

/* Whether mmap's flags make heap: anonymous and private. */
static __always_inline bool heap_mapping(__u64 flags)
{
	return (flags & MEMLEAK_MAP_ANONYMOUS) && (flags & MEMLEAK_MAP_TYPE) == MEMLEAK_MAP_PRIVATE;
}

/* The cookie's registers when every argument is where the ABI puts it:
 * rdi, rsi, rdx, rcx (7, 6, 2, 1), 4 bits each from bit 8. */
#define MEMLEAK_ABI_REGS 0x1267

/*
 * The first four arguments of the probed function. The probe may sit a few
 * instructions into it (user space places it on one the kernel emulates:
 * analysis/probe_site.rs), where an argument may have been moved to another
 * register: the cookie says which, 4 bits an argument from bit 8 (x86
 * numbering: 0 rax, 1 rcx, 2 rdx, 3 rbx, 6 rsi, 7 rdi, 8-15 r8-r15). Read
 * once a call, on every malloc and free.
 */
static __always_inline void memleak_args(struct pt_regs *ctx, __u64 cookie, __u64 args[4])
{
#if defined(__TARGET_ARCH_x86)
	if (((cookie >> 8) & 0xffff) != MEMLEAK_ABI_REGS) {
		/* read into an array indexed by number: a switch of context reads
		 * is compiled into one read at a computed offset, which the
		 * verifier refuses */
		__u64 regs[16] = {
			ctx->ax, ctx->cx, ctx->dx, ctx->bx, 0, 0, ctx->si, ctx->di,
			ctx->r8, ctx->r9, ctx->r10, ctx->r11, ctx->r12, ctx->r13, ctx->r14, ctx->r15,
		};

		/* rsp and rbp (4, 5) are never chosen */
		for (int n = 0; n < 4; n++)
			args[n] = regs[(cookie >> (8 + 4 * n)) & 0xf];
		return;
	}
#endif
	/* at the entry, or past instructions that kept them: the ABI's registers */
	args[0] = PT_REGS_PARM1(ctx);
	args[1] = PT_REGS_PARM2(ctx);
	args[2] = PT_REGS_PARM3(ctx);
	args[3] = PT_REGS_PARM4(ctx);
}

/* realloc(p, 0) frees p */
static __always_inline bool frees_on_zero(__u32 func)
{
	return func == MEMLEAK_REALLOC || func == MEMLEAK_REALLOCARRAY;
}

/* The stack pointer at a function's return against its value at entry:
 * x86's ret pops the return address; arm64's leaves it. */
#if defined(__TARGET_ARCH_x86)
#define MEMLEAK_RET_SP_DELTA 8
#else
#define MEMLEAK_RET_SP_DELTA 0
#endif

/*
 * Whether the thread is inside a followed allocator call: one in flight
 * higher up its stack (the probe sees a lower stack pointer). A call in
 * flight that is not above this one never returned through its probe (a
 * longjmp, or a return probe attached after its entry fired): it is taken
 * as gone, and replaced, or it would hide each later call of the thread.
 */
static __always_inline bool inside_allocator(struct pt_regs *ctx, __u64 id)
{
	struct memleak_call *outer = bpf_map_lookup_elem(&calls, &id);

	return outer && PT_REGS_SP(ctx) < outer->sp;
}

/* The cookie of the probe that fired; false if user space gave it none. */
static __always_inline bool probe_cookie(struct pt_regs *ctx, __u64 id, bool pre517, __u64 *cookie)
{
	struct memleak_probe_key key = {
		.tgid = id >> 32,
		/* the kernel sets it to the probe's address for the handlers */
		.addr = PT_REGS_IP(ctx),
	};
	__u64 *found;

	if (!pre517) {
		*cookie = bpf_get_attach_cookie(ctx);
		return true;
	}
	found = bpf_map_lookup_elem(&probe_cookies, &key);
	if (!found)
		return false;
	*cookie = *found;
	return true;
}

/* Returns 0 when the return half is wanted, 1 when not. */
static __always_inline int on_entry(struct pt_regs *ctx, bool pre517)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct memleak_call call = {};
	struct memleak_key old;
	__u64 arg[4], cookie;

	if (!memtrace_wanted())
		return 1;
	if (!probe_cookie(ctx, id, pre517, &cookie)) {
		/* an exec or a dlopen mapped the probe's object elsewhere: its call
		 * is not followed, and user space is asked to look again */
		__u32 tgid = id >> 32;
		__u8 yes = 1;

		bpf_map_update_elem(&loads, &tgid, &yes, BPF_ANY);
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
		return 1;
	}
	call.func = cookie & 0xff;
	memleak_args(ctx, cookie, arg);
	switch (call.func) {
	case MEMLEAK_LOADS:
		/* the loader has mapped (or will unmap) objects: a dlopen's, before
		 * their constructors run, or a new program's. A command's thread
		 * stops (memtrace, its tracer, takes the SIGSTOP and does not
		 * deliver it) until user space has probed the allocators and read
		 * the objects in. A -p process is not under ptrace (a SIGSTOP would
		 * stop it for its parent to see): user space is told, and probes
		 * what was mapped when it next looks, the process going on. */
		if (stop_at_loads) {
			bpf_send_signal_thread(MEMLEAK_SIGSTOP);
		} else {
			__u32 tgid = id >> 32;
			__u8 yes = 1;

			/* full: more processes loading than user space takes in a poll */
			if (bpf_map_update_elem(&loads, &tgid, &yes, BPF_ANY))
				memtrace_count_drop(MEMTRACE_DROP_PENDING);
		}
		return 1;
	case MEMLEAK_FREE:
		forget_user(arg[0]);
		return 1;
	case MEMLEAK_MUNMAP:
		/* munmap from inside the allocator (a large free) is free's business */
		if (!inside_allocator(ctx, id))
			forget_user(arg[0]);
		return 1;
	case MEMLEAK_MALLOC:
	case MEMLEAK_VALLOC:
	case MEMLEAK_PVALLOC:
		call.size = arg[0];
		break;
	case MEMLEAK_CALLOC:
		call.size = arg[0] * arg[1];
		break;
	case MEMLEAK_REALLOC:
		call.old_addr = arg[0];
		call.size = arg[1];
		break;
	case MEMLEAK_REALLOCARRAY:
		call.old_addr = arg[0];
		call.size = arg[1] * arg[2];
		break;
	case MEMLEAK_POSIX_MEMALIGN:
		call.memptr = arg[0];
		call.size = arg[2];
		break;
	case MEMLEAK_MEMALIGN:
	case MEMLEAK_ALIGNED_ALLOC:
		call.size = arg[1];
		break;
	case MEMLEAK_MMAP:
		/* heap is anonymous private memory (an allocator's arenas and large
		 * blocks); a mapped file (a locale, a cache) or shared memory is not */
		if (!heap_mapping(arg[3]))
			return 1;
		call.size = arg[1];
		break;
	case MEMLEAK_MREMAP:
		call.old_addr = arg[0];
		/* a mapping that was not counted (a file's) stays uncounted moved */
		old = user_key(call.old_addr);
		if (!bpf_map_lookup_elem(&allocs, &old))
			return 1;
		call.size = arg[2];
		break;
	default:
		return 1;
	}
	/* the allocator's own inner calls (malloc inside realloc, mmap inside malloc) are not counted twice */
	if (inside_allocator(ctx, id))
		return 1;
	/* realloc(p, 0) frees p: its return is needed whatever the size */
	if (!size_wanted(call.size) && !(frees_on_zero(call.func) && call.old_addr))
		return 1;
	call.sp = PT_REGS_SP(ctx);
	if (bpf_map_update_elem(&calls, &id, &call, BPF_ANY)) {
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
		return 1;
	}
	return 0;
}

static __always_inline int on_return(struct pt_regs *ctx, bool pre517)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct memleak_call *call;
	__u64 addr = PT_REGS_RC(ctx);
	__u32 func;

	call = bpf_map_lookup_elem(&calls, &id);
	if (!call)
		return 0; /* not a call we followed */
	/* pre517: no cookie, and the stack pointer below tells an inner call too */
	func = pre517 ? call->func : bpf_get_attach_cookie(ctx) & 0xff;
	if (call->func != func)
		return 0; /* an inner call of another function */
	/* without sessions every call's return traps: an inner call of the same
	 * function (operator new's malloc) returns on a deeper stack than the
	 * followed one (the probe site keeps the entry's stack pointer) */
	if (PT_REGS_SP(ctx) != call->sp + MEMLEAK_RET_SP_DELTA)
		return 0;
	if (func == MEMLEAK_POSIX_MEMALIGN) {
		addr = 0;
		if (PT_REGS_RC(ctx) == 0)
			bpf_probe_read_user(&addr, sizeof(addr), (void *)call->memptr);
	}
	if (func == MEMLEAK_MMAP || func == MEMLEAK_MREMAP) {
		if ((__s64)addr < 0 && (__s64)addr >= -4095)
			addr = 0; /* MAP_FAILED */
	}
	if (frees_on_zero(func) && call->size == 0)
		forget_user(call->old_addr); /* realloc(p, 0) frees p and may return NULL */
	if (addr) {
		if (call->old_addr)
			forget_user(call->old_addr);
		if (call->size >= min_size && (!max_size || call->size <= max_size))
			remember(ctx, addr, call->size, pre517);
	}
	bpf_map_delete_elem(&calls, &id);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(memleak_exec, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u64 now;

	/* a process that allocated nothing (a child exec'ing at once) has
	 * nothing to forget */
	if (!memtrace_wanted() || !bpf_map_lookup_elem(&stack_owners, &tgid))
		return 0;
	now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&execs, &tgid, &now, BPF_ANY))
		memtrace_count_drop(MEMTRACE_DROP_PENDING);
	return 0;
}

/* Session uprobes (6.13): one program for both halves. */
SEC("uprobe.session")
int memleak_call(struct pt_regs *ctx)
{
	if (bpf_session_is_return())
		return on_return(ctx, false);
	return on_entry(ctx, false);
}

/* Multi-uprobe links without sessions (6.6-6.12): the return probe is set
 * on every allocating function, the entry's answer unheard. */
SEC("uprobe.multi")
int memleak_multi_entry(struct pt_regs *ctx)
{
	on_entry(ctx, false);
	return 0;
}

SEC("uretprobe.multi")
int memleak_multi_return(struct pt_regs *ctx)
{
	return on_return(ctx, false);
}

/* Classic uprobes, one link per function and half (cookies: 5.15). */
SEC("uprobe")
int memleak_entry(struct pt_regs *ctx)
{
	on_entry(ctx, false);
	return 0;
}

SEC("uretprobe")
int memleak_return(struct pt_regs *ctx)
{
	return on_return(ctx, false);
}

/* Classic uprobes before BPF cookies and bpf_loop (5.15, 5.17). */
SEC("uprobe")
int memleak_entry_pre517(struct pt_regs *ctx)
{
	on_entry(ctx, true);
	return 0;
}

SEC("uretprobe")
int memleak_return_pre517(struct pt_regs *ctx)
{
	return on_return(ctx, true);
}

/*
 * Kernel mode: the kmem (and with --percpu, percpu) tracepoints, as raw
 * tracepoints (no tracefs, no perf buffer; as BTF tracepoints, Linux 6.1's
 * verifier refused to read their `const void *ptr` arguments: "arg1 type
 * UNKNOWN is not a struct"). Their arguments are read as the kernel passes
 * them, structs through CO-RE reads. With -p or a command, only
 * allocations made while that process runs are kept.
 */
/* Kernel mode's key: a kernel address, of no process. */
static __always_inline struct memleak_key kernel_key(__u64 addr)
{
	struct memleak_key key = { .addr = addr };

	return key;
}

static __always_inline void forget_kernel(__u64 addr)
{
	struct memleak_key key = kernel_key(addr);

	forget(&key);
}

static __always_inline int kernel_alloc(void *ctx, __u64 addr, __u64 size)
{
	struct memleak_key key = kernel_key(addr);
	struct memleak_alloc a = {};

	if (!addr || !memtrace_wanted() || size < min_size || (max_size && size > max_size))
		return 0;
	if (sample_rate > 1 && bpf_ktime_get_ns() % sample_rate != 0)
		return 0;
	a.size = size;
	a.time_ns = bpf_ktime_get_ns();
	a.stack = memtrace_stack(ctx, 0);
	if (bpf_map_update_elem(&allocs, &key, &a, BPF_ANY)) {
		memtrace_count_drop(MEMTRACE_DROP_COUNTS);
		return 0;
	}
	account(0, a.stack, size, 1);
	if (trace_all)
		trace_event(addr, size, a.stack, 0);
	return 0;
}

SEC("raw_tp/kmalloc")
int BPF_PROG(memleak_kmalloc, unsigned long call_site, const void *ptr, size_t bytes_req,
	     size_t bytes_alloc, gfp_t gfp_flags, int node)
{
	return kernel_alloc(ctx, (__u64)ptr, bytes_req);
}

SEC("raw_tp/kmem_cache_alloc")
int BPF_PROG(memleak_kmem_cache_alloc, unsigned long call_site, const void *ptr,
	     struct kmem_cache *s, gfp_t gfp_flags, int node)
{
	return kernel_alloc(ctx, (__u64)ptr, BPF_CORE_READ(s, object_size));
}

SEC("raw_tp/mm_page_alloc")
int BPF_PROG(memleak_page_alloc, struct page *page, unsigned int order, gfp_t gfp_flags,
	     int migratetype)
{
	return kernel_alloc(ctx, (__u64)page, (__u64)4096 << order);
}

SEC("raw_tp/percpu_alloc_percpu")
int BPF_PROG(memleak_percpu_alloc, unsigned long call_site, bool reserved, bool is_atomic,
	     size_t size, size_t align, void *base_addr, int off, void *ptr)
{
	return kernel_alloc(ctx, (__u64)ptr, size);
}

/* The same where the tracepoint doesn't pass its call_site (5.10's). */
SEC("raw_tp/percpu_alloc_percpu")
int BPF_PROG(memleak_percpu_alloc_without_caller, bool reserved, bool is_atomic, size_t size,
	     size_t align, void *base_addr, int off, void *ptr)
{
	return kernel_alloc(ctx, (__u64)ptr, size);
}

SEC("raw_tp/kfree")
int BPF_PROG(memleak_kfree, unsigned long call_site, const void *ptr)
{
	forget_kernel((__u64)ptr);
	return 0;
}

SEC("raw_tp/kmem_cache_free")
int BPF_PROG(memleak_kmem_cache_free, unsigned long call_site, const void *ptr)
{
	forget_kernel((__u64)ptr);
	return 0;
}

SEC("raw_tp/mm_page_free")
int BPF_PROG(memleak_page_free, struct page *page, unsigned int order)
{
	forget_kernel((__u64)page);
	return 0;
}

SEC("raw_tp/percpu_free_percpu")
int BPF_PROG(memleak_percpu_free, void *base_addr, int off, void *ptr)
{
	forget_kernel((__u64)ptr);
	return 0;
}
