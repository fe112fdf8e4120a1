//! What the decode side holds: each request's KV from the start of its
//! transfer (a connector allocates before it receives, as P2pNccl's
//! recv_tensor does) until decode has consumed it (its hold after the last
//! byte). Pure: intervals in, peak, time-weighted percentiles and a series
//! out.

use serde::{Deserialize, Serialize};

/// One request's KV on the decode side, ns from the load point's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    pub from_ns: u64,
    pub until_ns: u64,
    pub bytes: u64,
}

/// Resident bytes over a load point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Residency {
    pub peak_bytes: u64,
    /// Time-weighted: the level held at least 1% of the time.
    pub p99_bytes: u64,
    pub mean_bytes: f64,
    /// (ns from the point's start, bytes held from then on); at most
    /// `MAX_SERIES` steps, each the highest of the steps it stands for.
    pub series: Vec<(u64, u64)>,
}

/// Steps kept in a report's series.
pub const MAX_SERIES: usize = 2000;

pub fn residency(held: &[Held]) -> Residency {
    // Releases before takes at one instant: a buffer freed as another
    // request starts is not both at once.
    let mut steps: Vec<(u64, i128)> = Vec::with_capacity(2 * held.len());
    for h in held {
        steps.push((h.from_ns, h.bytes as i128));
        steps.push((h.until_ns.max(h.from_ns), -(h.bytes as i128)));
    }
    steps.sort_by_key(|&(t, d)| (t, d));
    let mut level: i128 = 0;
    let mut series: Vec<(u64, u64)> = Vec::new();
    for (t, d) in steps {
        level += d;
        match series.last_mut() {
            Some(last) if last.0 == t => last.1 = level as u64,
            _ => series.push((t, level as u64)),
        }
    }
    let peak_bytes = series.iter().map(|s| s.1).max().unwrap_or(0);
    // Time at each level, between the first take and the last release.
    let mut spans: Vec<(u64, u64)> = series.windows(2).map(|w| (w[0].1, w[1].0 - w[0].0)).collect();
    let total: u64 = spans.iter().map(|s| s.1).sum();
    let mean_bytes = if total == 0 {
        0.0
    } else {
        spans.iter().map(|&(b, t)| b as f64 * t as f64).sum::<f64>() / total as f64
    };
    spans.sort_unstable();
    let mut below = 0u64;
    let p99_bytes = spans
        .iter()
        .find(|&&(_, t)| {
            below += t;
            below as f64 >= 0.99 * total as f64
        })
        .map_or(peak_bytes, |s| s.0);
    Residency { peak_bytes, p99_bytes, mean_bytes, series: thin(series) }
}

/// At most `MAX_SERIES` steps: each kept step the highest of its run, so
/// the peak survives.
fn thin(series: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if series.len() <= MAX_SERIES {
        return series;
    }
    let per = series.len().div_ceil(MAX_SERIES);
    series.chunks(per).map(|c| (c[0].0, c.iter().map(|s| s.1).max().unwrap_or(0))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand: 4 requests of 100 bytes, one every 10 ns, each held
    /// 25 ns from its start. Levels: 0-10: 100, 10-20: 200, 20-25: 300,
    /// 25-30: 200 (the first left), 30-35: 300, 35-40: 200, 40-45: 200 ...
    #[test]
    fn fixed_arrivals_with_a_known_hold() {
        let held: Vec<Held> =
            (0..4).map(|k| Held { from_ns: 10 * k, until_ns: 10 * k + 25, bytes: 100 }).collect();
        let r = residency(&held);
        assert_eq!(r.peak_bytes, 300);
        assert_eq!(
            r.series,
            vec![(0, 100), (10, 200), (20, 300), (25, 200), (30, 300), (35, 200), (45, 100), (55, 0)]
        );
        // 400 bytes x 25 ns over 55 ns.
        assert!((r.mean_bytes - 100.0 * 100.0 / 55.0).abs() < 1e-9, "{}", r.mean_bytes);
        // 300 bytes for 10 of 55 ns: above 1% of the time.
        assert_eq!(r.p99_bytes, 300);
    }

    #[test]
    fn a_release_and_a_take_at_one_instant_do_not_add_up() {
        let held =
            [Held { from_ns: 0, until_ns: 10, bytes: 5 }, Held { from_ns: 10, until_ns: 20, bytes: 7 }];
        let r = residency(&held);
        assert_eq!(r.peak_bytes, 7);
        assert_eq!(r.series, vec![(0, 5), (10, 7), (20, 0)]);
    }

    #[test]
    fn a_brief_peak_is_the_peak_but_not_the_p99() {
        let mut held = vec![Held { from_ns: 0, until_ns: 1_000, bytes: 10 }];
        held.push(Held { from_ns: 500, until_ns: 505, bytes: 90 });
        let r = residency(&held);
        assert_eq!((r.peak_bytes, r.p99_bytes), (100, 10));
        assert!(residency(&[]).series.is_empty());
    }

    #[test]
    fn long_series_are_thinned_keeping_the_peak() {
        let held: Vec<Held> = (0..10_000u64)
            .map(|k| Held { from_ns: 10 * k, until_ns: 10 * k + 5, bytes: if k == 7777 { 999 } else { 1 } })
            .collect();
        let r = residency(&held);
        assert!(r.series.len() <= MAX_SERIES, "{}", r.series.len());
        assert_eq!(r.series.iter().map(|s| s.1).max(), Some(999));
        assert_eq!(r.peak_bytes, 999);
    }
}

/// What a decode side does when a request's KV does not fit its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// P2pNcclConnector: a tensor past `kv_buffer_size` goes to the pinned
    /// host pool, and comes back over PCIe when decode loads it.
    Spill,
    /// LMCache's decoder: the request waits until its whole KV fits.
    Wait,
}

crate::words::named_by_words!(OnFull, "--on-full", { Spill => "spill", Wait => "wait" });

/// The decode side's buffer as requests come and go (pure; ns from the
/// load point's start): what each request holds on the GPU and in the
/// pool, and until when.
#[derive(Clone, Debug)]
pub struct DecodeBuffer {
    pub capacity: u64,
    /// (id, until, bytes in the buffer, bytes in the pool) per request not
    /// yet forgotten; a request still in flight holds until `IN_FLIGHT`.
    held: Vec<(u64, u64, u64, u64)>,
    next_id: u64,
}

/// The release time of a request whose last byte has not landed yet.
const IN_FLIGHT: u64 = u64::MAX;

impl DecodeBuffer {
    pub fn new(capacity: u64) -> Self {
        DecodeBuffer { capacity, held: Vec::new(), next_id: 0 }
    }

    /// Bytes in the buffer at `t`: the requests not yet released.
    pub fn resident_at(&self, t: u64) -> u64 {
        self.held.iter().filter(|h| h.1 > t).map(|h| h.2).sum()
    }

    /// The earliest instant from `t` on at which `bytes` more fit (wait);
    /// `u64::MAX` if only requests still in flight could make room.
    pub fn fits_from(&self, t: u64, bytes: u64) -> u64 {
        let mut releases: Vec<u64> = self.held.iter().map(|h| h.1).filter(|&u| u > t).collect();
        releases.sort_unstable();
        std::iter::once(t)
            .chain(releases)
            .find(|&at| at != IN_FLIGHT && self.resident_at(at) + bytes <= self.capacity)
            .unwrap_or(u64::MAX)
    }

    /// Which of a request's tensors spill at `t`, in order, as P2pNccl
    /// decides each on arrival: past the capacity, to the pool.
    pub fn spills(&self, t: u64, tensors: &[u64]) -> Vec<bool> {
        let mut resident = self.resident_at(t);
        tensors
            .iter()
            .map(|&len| {
                let spill = resident + len > self.capacity;
                if !spill {
                    resident += len;
                }
                spill
            })
            .collect()
    }

    /// A request that goes at `now` takes `in_buffer` bytes until its
    /// release is known (`release`); those released by `now` are forgotten.
    pub fn reserve(&mut self, now: u64, in_buffer: u64) -> u64 {
        self.held.retain(|h| h.1 > now);
        self.next_id += 1;
        self.held.push((self.next_id, IN_FLIGHT, in_buffer, 0));
        self.next_id
    }

    /// Request `id` holds `in_buffer` and `in_pool` bytes until `until`.
    pub fn release(&mut self, id: u64, until: u64, in_buffer: u64, in_pool: u64) {
        if let Some(h) = self.held.iter_mut().find(|h| h.0 == id) {
            (h.1, h.2, h.3) = (until, in_buffer, in_pool);
        }
    }

    /// A request that went at `now`, whole by the time of the call, holds
    /// `in_buffer` and `in_pool` bytes until `until` (one in flight at a time).
    pub fn hold(&mut self, now: u64, until: u64, in_buffer: u64, in_pool: u64) {
        let id = self.reserve(now, in_buffer);
        self.release(id, until, in_buffer, in_pool);
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    /// A buffer of 10 bytes; a request of 6 held until 100, another of 3
    /// until 50: 9 held before 50, 6 after, none after 100.
    #[test]
    fn spills_and_waits_follow_the_releases() {
        let mut b = DecodeBuffer::new(10);
        b.hold(0, 100, 6, 0);
        b.hold(0, 50, 3, 0);
        assert_eq!((b.resident_at(0), b.resident_at(50), b.resident_at(100)), (9, 6, 0));
        // Tensors of 1, 2, 1 at t=10: the first fits (10), the 2 does not,
        // the last 1 no longer fits either.
        assert_eq!(b.spills(10, &[1, 2, 1]), vec![false, true, true]);
        // After 50, 4 fit: 1, 2 and 1 all do.
        assert_eq!(b.spills(60, &[1, 2, 1]), vec![false, false, false]);
        // Waiting: 4 bytes fit at 50, 5 at 50, 7 at 100, 11 never.
        assert_eq!((b.fits_from(0, 1), b.fits_from(0, 4), b.fits_from(0, 7)), (0, 50, 100));
        assert_eq!(b.fits_from(0, 11), u64::MAX);
        assert_eq!(b.fits_from(70, 4), 70);
    }

    /// Requests in flight at once: each holds its bytes from its go, until
    /// a release that is not known while it is on the wire.
    #[test]
    fn requests_in_flight_hold_their_room_until_released() {
        let mut b = DecodeBuffer::new(10);
        let first = b.reserve(0, 6);
        let second = b.reserve(5, 3);
        // Both count at once, though neither has landed.
        assert_eq!(b.resident_at(1_000_000), 9);
        assert_eq!(b.spills(6, &[1, 1]), vec![false, true]);
        // Room for 2 more only once one ends: unknown while both fly.
        assert_eq!(b.fits_from(6, 2), u64::MAX);
        // The second lands first (at 40) and is held to 90.
        // Then 2 fit once it leaves; 5 only once the first is known to.
        b.release(second, 90, 3, 0);
        assert_eq!((b.fits_from(6, 2), b.fits_from(6, 5)), (90, u64::MAX));
        b.release(first, 50, 4, 2);
        assert_eq!((b.resident_at(49), b.resident_at(50), b.resident_at(90)), (7, 3, 0));
        assert_eq!((b.fits_from(6, 3), b.fits_from(6, 7), b.fits_from(6, 8)), (6, 50, 90));
        // A later go forgets what was released before it.
        b.reserve(95, 10);
        assert_eq!((b.resident_at(95), b.held.len()), (10, 1));
    }
}
