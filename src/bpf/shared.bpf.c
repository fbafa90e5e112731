// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Never loaded. The types every tool's BPF side shares with user space
 * (common.h, exitmaps.h, unwind.h) are declared here once more, so that libbpf-cargo
 * generates their Rust side once: the engine decodes the shared records
 * (stacks, exit mappings, paths) and reads the shared enums from this
 * skeleton's types, whichever tool's object the bytes came from (the layout
 * is the C struct's, the same in every object).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "common.h"
#include "exitmaps.h"
#include "unwind.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct memtrace_stack memtrace_stack_layout;
struct exitmaps_mapping exitmaps_mapping_layout;
enum exitmaps_kind exitmaps_kind_layout;
enum memtrace_drop_reason memtrace_drop_reason_layout;
enum memtrace_path_flag memtrace_path_flag_layout;
enum memtrace_fault_kind memtrace_fault_kind_layout;
enum memtrace_stack_flag memtrace_stack_flag_layout;
struct unwind_row unwind_row_layout;
struct unwind_object unwind_object_layout;
struct unwind_process unwind_process_layout;
struct unwind_deferred unwind_deferred_layout;
enum unwind_cfa unwind_cfa_layout;
enum unwind_rbp unwind_rbp_layout;
