//! Progress of the file-system crates' calls, for a watchdog: a crate
//! that loops without reading (over structures in its own cache, out of
//! the read budget's sight) is seen by [`StallWatch`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Crate calls in progress in this process (see [`reader_progress`]).
pub(super) static CALLS: AtomicUsize = AtomicUsize::new(0);
/// Reads and output writes made by crate calls so far.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);
/// Output writes in progress: waiting on whoever consumes the output (a
/// pipe read slowly) is not the crate's doing.
pub(super) static WRITING: AtomicUsize = AtomicUsize::new(0);

/// Count one read or output write of a crate call.
pub(crate) fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// `None` when no file-system crate call is in progress; otherwise a
/// counter of the reads and output writes such calls have made, which a
/// crate making progress keeps moving (see [`StallWatch`]).
pub fn reader_progress() -> Option<u64> {
    (CALLS.load(Ordering::Relaxed) > 0 && WRITING.load(Ordering::Relaxed) == 0)
        .then(|| ACTIVITY.load(Ordering::Relaxed))
}

/// How long a crate call may go without a read or an output write before
/// [`StallWatch`] takes it for stuck: far beyond the time a crate spends
/// on its cached structures between two reads.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// Sees a file-system crate call that makes no progress (loops over its
/// own cached structures, where the read budget cannot see it). A
/// watchdog thread calls [`StallWatch::observe`] with
/// [`reader_progress`] now and then; a front end then stops the
/// operation (the crate's thread cannot be stopped from outside).
#[derive(Debug)]
pub struct StallWatch {
    after: Duration,
    last: Option<(u64, Instant)>,
}

impl StallWatch {
    /// A watch that reports a call stuck after `after` without progress.
    pub fn new(after: Duration) -> StallWatch {
        StallWatch { after, last: None }
    }

    /// Take `progress` (from [`reader_progress`]) seen at `now`; true when
    /// a call has been in progress without any read or output since at
    /// least `after` ago.
    pub fn observe(&mut self, progress: Option<u64>, now: Instant) -> bool {
        match (progress, self.last) {
            (None, _) => {
                self.last = None;
                false
            }
            (Some(p), Some((q, since))) if p == q => now.duration_since(since) >= self.after,
            (Some(p), _) => {
                self.last = Some((p, now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_without_progress_is_seen_stuck() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut w = StallWatch::new(Duration::from_secs(30));
        assert!(!w.observe(Some(5), s(0)));
        assert!(!w.observe(Some(5), s(29)));
        assert!(w.observe(Some(5), s(30)), "no read for 30 s");
        // Progress restarts the clock; so does a gap between calls.
        assert!(!w.observe(Some(6), s(31)));
        assert!(!w.observe(Some(6), s(60)));
        assert!(!w.observe(None, s(70)));
        assert!(!w.observe(Some(6), s(71)));
        assert!(!w.observe(Some(6), s(100)));
        assert!(w.observe(Some(6), s(101)));
    }
}
