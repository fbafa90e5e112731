//! Reading a loaded object's maps: counts taken (read and cleared), per-CPU
//! arrays summed, stacks looked up in the stack store.

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::engine::skeleton::StackRecord;

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
pub fn entries<K, V>(map: &dyn MapCore) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    let mut entries = Vec::new();
    for raw_key in map.keys() {
        let raw_value = map
            .lookup(&raw_key, MapFlags::ANY)
            .with_context(|| format!("reading {}", map.name().to_string_lossy()))?;
        // an entry deleted since its key was listed is simply gone
        if let Some(entry) = raw_value.and_then(|raw_value| decode_entry(&raw_key, &raw_value)) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Reads and clears a map (each entry atomically: what is added during the
/// read lands in the next report), decoding keys with `K` and values with `V`.
pub fn take_entries<K, V>(map: &dyn MapCore) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    let keys: Vec<Vec<u8>> = map.keys().collect();
    let mut entries = Vec::with_capacity(keys.len());
    for raw_key in keys {
        let raw_value = map
            .lookup_and_delete(&raw_key)
            .context("reading the counts")?;
        if let Some(entry) = raw_value.and_then(|raw_value| decode_entry(&raw_key, &raw_value)) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// take_entries() for maps of u64 counts.
pub fn take_counts<K: plain::Plain + Default>(counts: &dyn MapCore) -> Result<Vec<(K, u64)>> {
    take_entries::<K, u64>(counts)
}

/// The frames (innermost first) of the stack stacks.bpf.h keeps under `key`
/// in a stack store; None for a negative key (an errno: no stack) or one not found.
pub fn stored_stack(stacks: &dyn MapCore, key: i64) -> Option<Vec<u64>> {
    if key < 0 {
        return None;
    }
    let raw = stacks.lookup(&key.to_ne_bytes(), MapFlags::ANY).ok()??;
    let mut stack = StackRecord::default();
    plain::copy_from_bytes(&mut stack, &raw).ok()?;
    let frames = (stack.nr as usize).min(stack.ips.len());
    Some(stack.ips[..frames].to_vec())
}
