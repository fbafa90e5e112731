//! Reading a loaded object's maps: counts taken (read and cleared), per-CPU
//! arrays summed, stacks looked up in the stack store, arrays mapped into
//! memory.

use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use anyhow::{ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::analysis::symbolize::TRUNCATED_IP;
use crate::engine::kernel::page_size;
use crate::engine::skeleton::{StackFlag, StackRecord};

/// A map of a loaded object, by name.
pub fn map_named<'a>(object: &'a Object, name: &str) -> Result<libbpf_rs::Map<'a>> {
    object
        .maps()
        .find(|m| m.name() == name)
        .with_context(|| format!("BPF map {name} not found"))
}

/// The u64 at the start of a map value (0 if it is shorter).
pub fn read_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// The first `n` slots of a per-CPU array of u64, each summed over the CPUs.
pub fn percpu_sums(map: &dyn MapCore, n: usize) -> Result<Vec<u64>> {
    (0..n as u32)
        .map(|slot| {
            let per_cpu = map
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("reading {}", map.name().to_string_lossy()))?
                .unwrap_or_default();
            Ok(per_cpu.iter().map(|value| read_u64(value)).sum())
        })
        .collect()
}

/// Decodes a map's key and value with `K` and `V`; None if either is too short.
pub fn decode_entry<K, V>(raw_key: &[u8], raw_value: &[u8]) -> Option<(K, V)>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    let (mut key, mut value) = (K::default(), V::default());
    plain::copy_from_bytes(&mut key, raw_key).ok()?;
    plain::copy_from_bytes(&mut value, raw_value).ok()?;
    Some((key, value))
}

/// Every entry of a hash map, decoded with `K` and `V`, left in place.
///
/// Read in batches (BPF_MAP_LOOKUP_BATCH, Linux 5.6+), whose cursor walks the
/// buckets: a key-by-key walk (BPF_MAP_GET_NEXT_KEY) starts over from the
/// first key whenever the BPF side deletes the key it stands on, which on a
/// busy map (memleak --kernel: kfree all the time) made one read take
/// seconds. Each batch is consistent; entries added or deleted while the
/// batches are read may or may not be seen, as with any walk of a live map.
pub fn entries<K, V>(map: &dyn MapCore) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    read_batches(map, Batch::Look)
}

/// What read_batches does with the entries it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    Look,
    Take,
}

/// The entries of a hash map, read in batches, and deleted as they are
/// read with Batch::Take (BPF_MAP_LOOKUP_AND_DELETE_BATCH: the kernel
/// deletes each entry it returns under its bucket's lock).
fn read_batches<K, V>(map: &dyn MapCore, what: Batch) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    let (key_size, value_size) = (map.key_size() as usize, map.value_size() as usize);
    let mut batch = 4096usize;
    let mut keys = vec![0u8; key_size * batch];
    let mut values = vec![0u8; value_size * batch];
    // the kernel's cursor (a bucket index for hash maps): at least a key's size
    let mut cursor = vec![0u8; key_size.max(8)];
    let mut started = false;
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        elem_flags: 0,
        flags: 0,
    };
    let mut entries = Vec::new();
    loop {
        let mut count = batch as u32;
        let mut next = vec![0u8; cursor.len()];
        let in_batch = if started {
            cursor.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: keys and values hold `batch` keys and values of the map's
        // sizes, `count` says so, and the cursors are at least a key long,
        // as bpf_map_lookup_batch requires; the fd is the map's, open for
        // the call (borrowed from `map`).
        let ret = unsafe {
            let batch_op = match what {
                Batch::Look => libbpf_sys::bpf_map_lookup_batch,
                Batch::Take => libbpf_sys::bpf_map_lookup_and_delete_batch,
            };
            batch_op(
                map.as_fd().as_raw_fd(),
                in_batch,
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let errno = if ret < 0 { -ret } else { 0 };
        let count = (count as usize).min(batch);
        if errno == 0 || errno == libc::ENOENT {
            for i in 0..count {
                let key = &keys[i * key_size..(i + 1) * key_size];
                let value = &values[i * value_size..(i + 1) * value_size];
                entries.extend(decode_entry(key, value));
            }
        }
        match errno {
            0 => {}
            // the end of the map
            libc::ENOENT => return Ok(entries),
            // a bucket holds more entries than a batch: read it again, with room
            libc::ENOSPC if count == 0 && batch < 1 << 20 => {
                batch *= 2;
                keys.resize(key_size * batch, 0);
                values.resize(value_size * batch, 0);
                continue;
            }
            _ => {
                return Err(std::io::Error::from_raw_os_error(errno))
                    .with_context(|| format!("reading {}", map.name().to_string_lossy()))
            }
        }
        cursor = next;
        started = true;
    }
}

/// Reads and clears a hash map (each entry atomically: what is added during
/// the read lands in the next report), decoding keys with `K` and values
/// with `V`. In batches (5.6), not key by key: deleting one key of a hash
/// map as it is read needs 5.14.
pub fn take_entries<K, V>(map: &dyn MapCore) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    read_batches(map, Batch::Take)
}

/// take_entries() for maps of u64 counts.
pub fn take_counts<K: plain::Plain + Default>(counts: &dyn MapCore) -> Result<Vec<(K, u64)>> {
    take_entries::<K, u64>(counts)
}

/// The frames (innermost first) of the stack stacks.bpf.h keeps under `key`
/// in a stack store, ending in TRUNCATED_IP if the unwinder stopped short;
/// None for a negative key (an errno: no stack) or one not found.
pub fn stored_stack(stacks: &dyn MapCore, key: i64) -> Option<Vec<u64>> {
    if key < 0 {
        return None;
    }
    let raw = stacks.lookup(&key.to_ne_bytes(), MapFlags::ANY).ok()??;
    let mut stack = StackRecord::default();
    plain::copy_from_bytes(&mut stack, &raw).ok()?;
    let frames = (stack.nr as usize).min(stack.ips.len());
    let mut ips = stack.ips[..frames].to_vec();
    if stack.flags & StackFlag::MEMTRACE_STACK_TRUNCATED.0 != 0 {
        ips.push(TRUNCATED_IP);
    }
    Some(ips)
}

/// An array map made with `BPF_F_MMAPABLE`, read and written through a
/// shared mapping of its values: no system call per element. The BPF side
/// writes the values while they are read, so they are copied out whole
/// (volatile reads), or read as atomics where it adds to them.
pub struct MappedArray<T> {
    base: NonNull<u8>,
    bytes: usize,
    /// Each value's place: its size rounded up to 8 bytes, as the kernel lays them out.
    stride: usize,
    entries: usize,
    /// The values mapped (all, unless made by `window`), and the offset in
    /// the array's memory where the mapping starts.
    mapped: std::ops::Range<usize>,
    mapped_from: usize,
    values: PhantomData<T>,
}

impl<T: plain::Plain + Copy> MappedArray<T> {
    pub fn new(map: &dyn MapCore) -> Result<MappedArray<T>> {
        MappedArray::window(map, 0..map.max_entries() as usize)
    }

    /// Maps only the pages of the values in `values` (a few rows of a large
    /// array: a mapped page counts in memtrace's RSS); others read as the
    /// default and are not written.
    pub fn window(map: &dyn MapCore, values: std::ops::Range<usize>) -> Result<MappedArray<T>> {
        let name = map.name().to_string_lossy().into_owned();
        let size = map.value_size() as usize;
        ensure!(
            size == std::mem::size_of::<T>() && std::mem::align_of::<T>() <= 8,
            "BPF map {name}: values of {size} bytes, not the {} expected",
            std::mem::size_of::<T>()
        );
        let stride = size.next_multiple_of(8);
        let entries = map.max_entries() as usize;
        let values = values.start.min(entries)..values.end.min(entries);
        let page = page_size() as usize;
        let mapped_from = values.start * stride / page * page;
        let bytes = (values.end * stride - mapped_from)
            .next_multiple_of(page)
            .max(page);
        // SAFETY: a new shared mapping of the map's fd, which the kernel checks
        // (an array made mmapable, inside its size); the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                mapped_from as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping the BPF map {name} into memory"));
        }
        let base = NonNull::new(base.cast::<u8>()).context("mmap returned NULL")?;
        Ok(MappedArray {
            base,
            bytes,
            stride,
            entries,
            mapped: values,
            mapped_from,
            values: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// The value at `index`; None outside the values mapped.
    fn at(&self, index: usize) -> Option<*mut T> {
        // SAFETY: a mapped value, so the offset is inside the mapping.
        self.mapped.contains(&index).then(|| {
            unsafe {
                self.base
                    .as_ptr()
                    .add(index * self.stride - self.mapped_from)
            }
            .cast()
        })
    }

    /// A copy of the value at `index` (the default past the end).
    pub fn read(&self, index: usize) -> T
    where
        T: Default,
    {
        match self.at(index) {
            // SAFETY: inside the mapping, aligned (page-aligned base, 8-byte
            // stride), and any bit pattern is a valid T (plain::Plain).
            Some(value) => unsafe { std::ptr::read_volatile(value) },
            None => T::default(),
        }
    }

    /// Changes the value at `index` with `change` (nothing past the end). The
    /// BPF side must not be writing it: the value is copied out and back.
    pub fn update(&self, index: usize, change: impl FnOnce(&mut T))
    where
        T: Default,
    {
        if let Some(value) = self.at(index) {
            let mut copy = self.read(index);
            change(&mut copy);
            // SAFETY: as in read().
            unsafe { std::ptr::write_volatile(value, copy) };
        }
    }
}

impl MappedArray<u64> {
    /// The u64 at `index` as an atomic: the BPF side adds to it with atomic instructions.
    pub fn atomic(&self, index: usize) -> Option<&AtomicU64> {
        // SAFETY: inside the mapping, 8-byte aligned, and AtomicU64 has u64's
        // layout; the mapping lives as long as self.
        self.at(index)
            .map(|value| unsafe { AtomicU64::from_ptr(value) })
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once; no reference into it outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
