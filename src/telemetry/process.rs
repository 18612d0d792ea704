//! The process metrics (`otelcol_process_*`), read from the OS when `/metrics` is scraped:
//! uptime, CPU time (`getrusage`), resident memory (`/proc/self/statm`) and, when the binary
//! says how to read it, the heap. Rust has no runtime heap statistics of its own; what "heap"
//! means is the allocator's business, so the daemon passes a reader (mimalloc's committed
//! bytes, see `main.rs`) and without one the heap metric is left out rather than guessed.

use std::time::Instant;

use super::catalog::{self, Metric};

/// Reads the heap size in bytes, if the allocator can tell.
pub type HeapReader = fn() -> Option<u64>;

/// Hands the allocator's free memory back to the OS now, instead of after its purge delay.
pub type MemoryRelease = fn();

/// The daemon's [`MemoryRelease`], set once at start-up (the allocator is the binary's choice;
/// the library, its tests included, runs on whatever allocator it is given and has none).
static MEMORY_RELEASE: std::sync::OnceLock<MemoryRelease> = std::sync::OnceLock::new();

/// Says how to return free memory to the OS (the daemon, once, before anything runs).
pub fn set_memory_release(release: MemoryRelease) {
    // A second call keeps the first: there is one allocator per process.
    let _ = MEMORY_RELEASE.set(release);
}

/// The [`MemoryRelease`] the daemon set, if any.
pub fn memory_release() -> Option<MemoryRelease> {
    MEMORY_RELEASE.get().copied()
}

#[derive(Debug, Clone)]
pub struct ProcessStats {
    started: Instant,
    heap: Option<HeapReader>,
}

impl ProcessStats {
    /// Uptime counts from this call; the daemon makes it first thing.
    pub fn new(heap: Option<HeapReader>) -> Self {
        ProcessStats {
            started: Instant::now(),
            heap,
        }
    }

    /// The current values; a value the OS does not give is left out.
    pub fn sample(&self) -> Vec<(&'static Metric, f64)> {
        let mut values = vec![(
            &catalog::PROCESS_UPTIME,
            self.started.elapsed().as_secs_f64(),
        )];
        if let Some(cpu) = cpu_seconds() {
            values.push((&catalog::PROCESS_CPU_SECONDS, cpu));
        }
        if let Some(rss) = rss_bytes() {
            values.push((&catalog::PROCESS_MEMORY_RSS, rss as f64));
        }
        if let Some(heap) = self.heap.and_then(|read| read()) {
            values.push((&catalog::PROCESS_HEAP, heap as f64));
        }
        values
    }
}

/// User plus system CPU time of the whole process.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Resident pages (the second field of `/proc/self/statm`) times the page size.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page_size > 0).then(|| pages * page_size as u64)
}

/// The memory this process may use: its cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) when there is one, else the machine's (`MemTotal`), as the
/// Collector's `memory_limiter` reads it for its percentage limits.
pub fn total_memory_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (cgroup, machine) {
        // v1 reports "no limit" as a huge number: the machine's memory is the real bound.
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reports_cpu_rss_and_the_heap_it_is_told_about() {
        let stats = ProcessStats::new(Some(|| Some(12345)));
        let values = stats.sample();
        let get = |m: &Metric| {
            values
                .iter()
                .find(|(v, _)| std::ptr::eq(*v, m))
                .map(|(_, x)| *x)
        };
        assert!(get(&catalog::PROCESS_UPTIME).is_some_and(|s| s >= 0.0));
        assert!(get(&catalog::PROCESS_CPU_SECONDS).is_some_and(|s| s > 0.0));
        assert!(get(&catalog::PROCESS_MEMORY_RSS).is_some_and(|b| b > 1_000_000.0));
        assert_eq!(get(&catalog::PROCESS_HEAP), Some(12345.0));
        let without_heap = ProcessStats::new(None).sample();
        assert!(without_heap
            .iter()
            .all(|(m, _)| !std::ptr::eq(*m, &catalog::PROCESS_HEAP)));
    }
}
