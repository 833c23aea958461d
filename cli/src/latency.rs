//! Latency recording shared by `mqctl bench` and the peers' client
//! (benches/peers/peerbench, which includes this file by path), so that both measure the
//! same way.

use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Microseconds, 3 significant digits; sized for 1 µs to 60 s, and growing to hold a
/// longer latency as it is recorded. A consumer that falls behind its producer (NATS with
/// `sync_interval: always` on three nodes, in a slow hour) can see end-to-end latencies
/// of minutes, and a fixed bound failed the whole run at its first such value.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    h.auto(true);
    Ok(h)
}

/// A few histograms that many tasks record into, task `i` into stripe `i % STRIPES`.
/// One histogram per task cost a cache miss per record: at 256 sends in flight that was
/// 256 histograms of some 150 KiB each, and 7% of the bench's own CPU went to recording.
/// Several stripes keep the two runtime threads from waiting on each other's lock.
pub struct Stripes([Mutex<Histogram<u64>>; STRIPES]);

const STRIPES: usize = 4;

impl Stripes {
    pub fn new() -> anyhow::Result<Self> {
        let empty = histogram()?;
        Ok(Self([(); STRIPES].map(|()| Mutex::new(empty.clone()))))
    }

    pub fn record(&self, task: usize, value: u64) -> anyhow::Result<()> {
        self.record_all(task, [value])
    }

    pub fn record_all(
        &self,
        task: usize,
        values: impl IntoIterator<Item = u64>,
    ) -> anyhow::Result<()> {
        let mut h = self.0[task % STRIPES]
            .lock()
            .map_err(|_| anyhow::anyhow!("a task panicked while recording"))?;
        for v in values {
            h.record(v)?;
        }
        Ok(())
    }

    pub fn merged(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = histogram()?;
        for stripe in &self.0 {
            let h = stripe
                .lock()
                .map_err(|_| anyhow::anyhow!("a task panicked while recording"))?;
            all.add(&*h)?;
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_holds_what_every_task_recorded() {
        let s = Stripes::new().unwrap();
        for task in 0..10 {
            s.record(task, 100 + task as u64).unwrap();
        }
        s.record_all(3, [5_000, 60_000_000]).unwrap();
        let m = s.merged().unwrap();
        assert_eq!(m.len(), 12);
        assert_eq!(m.min(), 100);
        assert!(m.equivalent(m.max(), 60_000_000));
    }

    #[test]
    fn a_latency_beyond_a_minute_is_recorded_as_it_is() {
        let s = Stripes::new().unwrap();
        s.record(0, 1_000).unwrap();
        // 95 s and about 17 hours: neither fails the run, and neither is clamped.
        s.record_all(1, [95_000_000, 61_000_000_000]).unwrap();
        let m = s.merged().unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.equivalent(m.max(), 61_000_000_000));
        assert!(m.equivalent(m.value_at_quantile(0.6), 95_000_000));
        assert_eq!(m.min(), 1_000);
    }
}
