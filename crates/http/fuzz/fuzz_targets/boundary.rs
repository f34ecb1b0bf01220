//! Arbitrary streams, cut into segments of a size the input picks: the tracker never panics, and
//! every call accounts for the bytes it took (proptest's `arbitrary_*` properties, unbounded).

#![no_main]

use baton_http::{BoundaryLimits, BoundaryTracker, Limits, Need};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the segment size, the second whether body bytes are skipped unseen.
    let [segment_size, mode, stream @ ..] = data else {
        return;
    };
    let skips = mode & 1 == 1;
    // Small limits, so that the fuzzer reaches every limit with short inputs.
    let mut tracker = BoundaryTracker::new(BoundaryLimits {
        head: Limits {
            max_head_bytes: 512,
            max_headers: 16,
        },
        max_chunk_line_bytes: 64,
        max_trailer_bytes: 256,
    });
    for segment in stream.chunks(usize::from(*segment_size).max(1)) {
        let mut rest = segment;
        loop {
            let before = tracker.offset();
            let progress = match tracker.need() {
                Need::Skip(_) if skips => tracker.skip(rest.len()),
                _ => tracker.feed(rest),
            };
            assert!(progress.taken() <= rest.len());
            assert_eq!(tracker.offset() - before, progress.taken() as u64);
            assert!(tracker.buffered() <= 512);
            rest = &rest[progress.taken()..];
            if progress.boundary.is_none() && progress.taken() == 0 {
                break;
            }
        }
    }
});
