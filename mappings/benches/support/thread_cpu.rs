//! A criterion measurement of the bench thread's own CPU time (Linux
//! `/proc/thread-self/schedstat`), for a shared machine where wall clock
//! drifts with the neighbours' load. Shared by the crate's benches
//! (`#[path = "support/thread_cpu.rs"] mod thread_cpu;`).

use criterion::Throughput;
use criterion::measurement::{Measurement, ValueFormatter};

/// CPU time of the calling thread in nanoseconds (the value lags by at most
/// one scheduler tick, averaged out over samples). Shown per iteration in
/// the unit its size calls for, or, with [`ThreadCpu::per`], in µs per item
/// when an iteration is `items` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu {
    per: Option<(u64, &'static str)>,
}

impl ThreadCpu {
    /// Shown as µs of CPU per item (`unit`, e.g. "µs cpu/commit"), an
    /// iteration being `items` items.
    pub const fn per(items: u64, unit: &'static str) -> Self {
        ThreadCpu {
            per: Some((items, unit)),
        }
    }
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self
    }
}

impl ValueFormatter for ThreadCpu {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (d, unit) = match self.per {
            Some((items, unit)) => (1e3 * items as f64, unit),
            None if typical < 1e3 => (1.0, "ns cpu"),
            None if typical < 1e6 => (1e3, "µs cpu"),
            None if typical < 1e9 => (1e6, "ms cpu"),
            None => (1e9, "s cpu"),
        };
        values.iter_mut().for_each(|v| *v /= d);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => n,
        } as f64;
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v / 1e3);
        "Kelem/s per core"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
