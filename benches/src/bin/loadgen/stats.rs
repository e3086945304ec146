//! Samples of repeated metrics: one value per repeat, summed up as median and range.

use std::time::Duration;

use benches::CpuUse;

/// Events (or deliveries) per second.
pub(crate) fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Samples of one throughput metric (one per repeat).
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    pub(crate) fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub(crate) fn median(&self) -> Option<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub(crate) fn range(&self) -> Option<(f64, f64)> {
        let min = self.0.iter().copied().reduce(f64::min)?;
        let max = self.0.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
}

/// Samples of a throughput metric with the CPU each event cost the client (this process) and the
/// Redis server, in µs per event.
#[derive(Debug, Default, Clone)]
pub(crate) struct Series {
    pub(crate) rate: Samples,
    pub(crate) client_us: Samples,
    pub(crate) redis_us: Samples,
}

impl Series {
    /// Adds one run of `count` events; returns its rate.
    pub(crate) fn push(&mut self, count: u64, took: Duration, cpu: CpuUse) -> f64 {
        let rate = per_s(count, took);
        self.rate.push(rate);
        self.client_us
            .push(cpu.client_s * 1e6 / count.max(1) as f64);
        self.redis_us.push(cpu.redis_s * 1e6 / count.max(1) as f64);
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let mut s = Samples::default();
        assert_eq!((s.median(), s.range()), (None, None));
        for v in [3.0, 1.0, 2.0] {
            s.push(v);
        }
        assert_eq!((s.median(), s.range()), (Some(2.0), Some((1.0, 3.0))));
        s.push(10.0);
        assert_eq!(s.median(), Some(2.5));
    }
}
