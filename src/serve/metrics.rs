//! serve's metrics: the families it exports, their labels, and how each
//! collector's records add to them. Label values are bounded by design:
//! cgroups, process names and a few fixed kinds, never pids or file paths.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;

use crate::engine::cgroup::CgroupField;

/// Where the counts happened: the task's cgroup in the memory controller's
/// hierarchy, and the container or pod that cgroup names, if any.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Place {
    pub cgroup: String,
    /// Empty where the cgroup names no container (Prometheus: no label).
    pub container: String,
}

impl From<CgroupField> for Place {
    fn from(field: CgroupField) -> Place {
        Place {
            cgroup: field.cgroup,
            container: field.container.unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    #[prometheus(flatten)]
    pub place: Place,
    pub comm: String,
    /// minor or major
    pub kind: &'static str,
    /// anon, heap, stack, file, shmem, hugetlb, unknown
    pub mapping: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    #[prometheus(flatten)]
    pub place: Place,
    pub comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OomLabels {
    #[prometheus(flatten)]
    pub place: Place,
    /// The victim's name.
    pub comm: String,
    /// memcg (a cgroup's limit) or global (the machine ran out)
    pub constraint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReclaimLabels {
    #[prometheus(flatten)]
    pub place: Place,
    /// direct or memcg
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MmapLabels {
    #[prometheus(flatten)]
    pub place: Place,
    pub comm: String,
    /// anon, shmem, file, hugetlb
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    pub collector: &'static str,
    /// What was lost and why: "ring buffer full", "counting map full", ...
    pub reason: &'static str,
}

fn reclaim_histogram() -> Histogram {
    // 1 us to ~4 s
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// Every family serve exports. Clones share the values: the HTTP thread
/// encodes the registry while the trace adds to them.
#[derive(Clone)]
pub struct Metrics {
    pub faults: Family<FaultLabels, Counter>,
    pub file_faults: Family<FileLabels, Counter>,
    pub swapin_faults: Family<ProcessLabels, Counter>,
    pub swapin_pages: Family<ProcessLabels, Counter>,
    pub oom_kills: Family<OomLabels, Counter>,
    pub oom_victim_rss: Family<OomLabels, Counter>,
    pub reclaim_stalls: Family<ReclaimLabels, Histogram, fn() -> Histogram>,
    pub reclaim_pages: Family<ReclaimLabels, Counter>,
    pub mmap_calls: Family<MmapLabels, Counter>,
    pub lost: Family<LossLabels, Counter>,
    pub start_time: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            faults: Family::default(),
            file_faults: Family::default(),
            swapin_faults: Family::default(),
            swapin_pages: Family::default(),
            oom_kills: Family::default(),
            oom_victim_rss: Family::default(),
            reclaim_stalls: Family::new_with_constructor(reclaim_histogram),
            reclaim_pages: Family::default(),
            mmap_calls: Family::default(),
            lost: Family::default(),
            start_time: Gauge::default(),
        }
    }
}

impl Metrics {
    /// The families, registered under memtrace_ with their help; `collectors`
    /// names what runs (the families of the others are left out), `files`
    /// whether faults are counted by file too (--top-files).
    pub fn registry(&self, collectors: &[&str], files: bool) -> Registry {
        let mut registry = Registry::with_prefix("memtrace");
        let on = |name: &str| collectors.contains(&name);
        registry.register(
            "start_time_seconds",
            "When this memtrace serve started (Unix time): counters restart from 0 when it changes",
            self.start_time.clone(),
        );
        registry.register(
            "build",
            "memtrace's version and the collectors running",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("collectors", collectors.join(",")),
            ]),
        );
        if on("faults") {
            registry.register(
                "page_faults",
                "Page faults by cgroup, process name, kind (minor, major) and mapping (anon, heap, stack, file, shmem, hugetlb)",
                self.faults.clone(),
            );
        }
        if on("faults") && files {
            registry.register(
                "file_page_faults",
                "Page faults on the files with the most since serve started (--top-files)",
                self.file_faults.clone(),
            );
        }
        if on("swap") {
            registry.register(
                "swapin_faults",
                "Major faults on anonymous or shmem memory (reads from swap) by cgroup and process name",
                self.swapin_faults.clone(),
            );
            registry.register(
                "swapin_pages",
                "Pages read from swap by cgroup and process name",
                self.swapin_pages.clone(),
            );
        }
        if on("oom") {
            registry.register(
                "oom_kills",
                "OOM kills by the victim's memory cgroup, name and constraint (memcg, global)",
                self.oom_kills.clone(),
            );
            registry.register(
                "oom_victim_rss_bytes",
                "The OOM-killed victims' RSS (anon, file and shmem) at the kill",
                self.oom_victim_rss.clone(),
            );
        }
        if on("reclaim") {
            registry.register(
                "reclaim_stall_seconds",
                "Time tasks stalled in reclaim, by cgroup and kind (direct, memcg)",
                self.reclaim_stalls.clone(),
            );
            registry.register(
                "reclaim_pages",
                "Pages reclaimed by the stalled tasks, by cgroup and kind",
                self.reclaim_pages.clone(),
            );
        }
        if on("mmap") {
            registry.register(
                "mmap_calls",
                "mmap() calls by cgroup, process name and kind (anon, shmem, file, hugetlb)",
                self.mmap_calls.clone(),
            );
        }
        registry.register(
            "lost",
            "Records the kernel side could not keep, by collector and reason (raise --max-entries or --buffer-size)",
            self.lost.clone(),
        );
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn families_encode_as_openmetrics_with_escaped_labels() {
        let metrics = Metrics::default();
        let place = Place {
            cgroup: "/a\"b".into(),
            container: String::new(),
        };
        metrics
            .faults
            .get_or_create(&FaultLabels {
                place: place.clone(),
                comm: "x\\y".into(),
                kind: "minor",
                mapping: "anon",
            })
            .inc_by(16384);
        metrics
            .reclaim_stalls
            .get_or_create(&ReclaimLabels {
                place,
                kind: "memcg",
            })
            .observe(0.002);
        let mut text = String::new();
        encode(&mut text, &metrics.registry(&["faults", "reclaim"], false)).unwrap();
        assert!(text.contains(
            "memtrace_page_faults_total{cgroup=\"/a\\\"b\",container=\"\",comm=\"x\\\\y\",kind=\"minor\",mapping=\"anon\"} 16384\n"
        ), "{text}");
        assert!(text.contains("memtrace_reclaim_stall_seconds_count{cgroup=\"/a\\\"b\",container=\"\",kind=\"memcg\"} 1\n"), "{text}");
        assert!(!text.contains("oom_kills"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
