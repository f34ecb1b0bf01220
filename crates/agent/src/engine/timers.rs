//! The engine's deadlines: one ordered queue, so the agent sleeps until the next one instead of
//! ticking. A timer is never cancelled: when it fires, its handler checks that the connection it
//! names is still in the phase that set it (a connection's identity includes its client ISN).
//!
//! Deadlines that bound a failure (an offer unanswered, a linger over) may fire a little late:
//! they are rounded up to a multiple of the slack (`[limits] timer_slack_ms`), so that at thousands of connections a second
//! their timers share one wakeup of the agent (and one re-arm of its alarm) instead of one each.
//! Deadlines on a request's path (a head's hold, a dispatcher's answer, a quiesce's next look)
//! are kept exact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

impl Timer {
    /// Whether it may fire up to the slack late.
    fn slack(self) -> bool {
        !matches!(
            self,
            Timer::Hold(_) | Timer::Dispatch(_) | Timer::NextHold(_) | Timer::Quiesce(_)
        )
    }
}

#[derive(Default)]
pub(super) struct Timers {
    queue: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
    /// How late a failure's deadline may fire, and what such deadlines are rounded from (the
    /// first one set).
    slack: Duration,
    epoch: Option<Instant>,
}

impl Timers {
    pub fn with_slack(slack: Duration) -> Self {
        Timers {
            slack,
            ..Timers::default()
        }
    }

    pub fn set_slack(&mut self, slack: Duration) {
        self.slack = slack;
    }

    pub fn at(&mut self, when: Instant, timer: Timer) {
        let when = if timer.slack() && !self.slack.is_zero() {
            self.rounded_up(when)
        } else {
            when
        };
        self.seq += 1;
        self.queue.insert((when, self.seq), timer);
    }

    /// `when`, rounded up to the next multiple of the slack after the epoch.
    fn rounded_up(&mut self, when: Instant) -> Instant {
        let epoch = *self.epoch.get_or_insert(when);
        let since = when.saturating_duration_since(epoch).as_nanos();
        let slack = self.slack.as_nanos();
        let rounded = since.div_ceil(slack) * slack;
        epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
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
    fn failure_deadlines_share_wakeups_and_request_deadlines_are_exact() {
        const SLACK: Duration = Duration::from_millis(8);
        let mut t = Timers::with_slack(SLACK);
        let now = Instant::now();
        t.at(now, Timer::Housekeeping);
        t.at(now + Duration::from_millis(1), Timer::Offer(1));
        t.at(now + Duration::from_millis(7), Timer::Offer(2));
        t.at(now + Duration::from_millis(3), Timer::Dispatch(3));
        assert_eq!(t.next(), Some(now));
        assert_eq!(t.pop_due(now), Some(Timer::Housekeeping));
        assert_eq!(t.next(), Some(now + Duration::from_millis(3)), "exact");
        assert_eq!(
            t.pop_due(now + Duration::from_millis(7)),
            Some(Timer::Dispatch(3))
        );
        assert_eq!(t.pop_due(now + Duration::from_millis(7)), None);
        // Both offers' deadlines at the slack's next multiple: one wakeup, never early.
        assert_eq!(t.next(), Some(now + SLACK));
        assert_eq!(t.pop_due(now + SLACK), Some(Timer::Offer(1)));
        assert_eq!(t.pop_due(now + SLACK), Some(Timer::Offer(2)));
    }

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
