//! The engine's deadlines: one ordered queue, so the agent sleeps until the next one instead of
//! ticking. A timer is never cancelled: when it fires, its handler checks that the connection it
//! names is still in the phase that set it (a connection's identity includes its client ISN).

use std::collections::BTreeMap;
use std::time::Instant;

use baton_bpf::ConnKey;

/// A connection's identity over time: a client that reuses its port makes a new connection on the
/// same key, told apart by its ISN. Deferred work names both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnId {
    pub key: ConnKey,
    pub client_isn: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// FE: the request head took too long.
    Hold(ConnId),
    /// FE: the LARD dispatcher did not answer question `id`.
    Dispatch(u64),
    /// FE: offer `id` got no answer in time.
    Offer(u64),
    /// FE: a connection served here stops catching late held packets.
    ForgetLocal(ConnId),
    /// FE: a handed-off connection's entry goes, after its linger.
    Expire(ConnId),
    /// BE: the replayed connection must be live by now.
    Live(ConnId),
    /// BE: a close the datapath saw is confirmed with the local TCP.
    Closed(ConnId),
    /// FE: a followed connection's next request head took too long.
    NextHold(ConnId),
    /// FE: the move `id` (the new node's handoff id) got no answer in time.
    Move(u64),
    /// BE: a connection that moved away stops lingering.
    Moved(ConnId),
    /// BE: a frozen connection has waited for the FE's word long enough.
    Frozen(ConnId),
    /// BE: a move's quiesce looks at our TCP again (it had not taken the client's ACK yet).
    Quiesce(ConnId),
    /// Load count, heartbeats of big changes, the datapath's view of the cluster, garbage.
    Housekeeping,
}

#[derive(Default)]
pub(super) struct Timers {
    queue: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
}

impl Timers {
    pub fn at(&mut self, when: Instant, timer: Timer) {
        self.seq += 1;
        self.queue.insert((when, self.seq), timer);
    }

    /// When the next timer is due.
    pub fn next(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(when, _)| *when)
    }

    /// The earliest timer due at `now`, taken off the queue.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order_and_only_when_due() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.at(now + Duration::from_millis(20), Timer::Offer(2));
        t.at(now + Duration::from_millis(10), Timer::Offer(1));
        t.at(now + Duration::from_millis(10), Timer::Housekeeping);
        assert_eq!(t.next(), Some(now + Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(15);
        assert_eq!(t.pop_due(later), Some(Timer::Offer(1)));
        assert_eq!(t.pop_due(later), Some(Timer::Housekeeping));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.next(), Some(now + Duration::from_millis(20)));
    }
}
