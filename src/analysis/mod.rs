//! Analysis: turning what the kernel recorded into what it means. Stacks are
//! unwound from copied user stacks with .eh_frame (unwind) and symbolized
//! with blazesym (symbolize; a stripped file's names from its debug file's
//! ELF symbols: debug_symbols); allocator entry points are inspected for the
//! cheapest place to probe (probe_site); /proc/PID/maps is parsed as bytes
//! in one place (proc_maps). The same .eh_frame becomes a sorted table of
//! rules for unwinding in BPF (unwind_table). Uses present for escaping,
//! nothing above it.

pub mod debug_symbols;
pub mod probe_site;
pub mod proc_maps;
pub mod symbolize;
pub mod unwind;
pub mod unwind_table;
