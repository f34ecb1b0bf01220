//! The event loop's one alarm: a timerfd armed at the engine's next deadline.
//!
//! Why not tokio's timers: their wheel wakes up early for any deadline more than 64 ms away and
//! sleeps again for the rest, so every housekeeping round of an idle agent would cost two wakeups
//! instead of one. The engine keeps its own queue of deadlines; this alarm fires at its head,
//! exactly once.

use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
pub struct AlarmError {
    call: &'static str,
    source: std::io::Error,
}

fn failed(call: &'static str) -> impl FnOnce(nix::Error) -> AlarmError {
    move |e| AlarmError {
        call,
        source: std::io::Error::from(e),
    }
}

/// The timerfd as the fd tokio polls.
struct Timer(TimerFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Alarm {
    timer: AsyncFd<Timer>,
    /// What it is armed for (`None`: disarmed, or fired).
    armed: Option<Instant>,
}

impl Alarm {
    pub fn new() -> Result<Self, AlarmError> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(failed("timerfd_create(CLOCK_MONOTONIC)"))?;
        // SAFETY: the timerfd is owned by the AsyncFd until it is dropped, so the descriptor stays
        // valid and is not reused while registered.
        let timer = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }
            .map_err(|e| AlarmError {
                call: "epoll_ctl(timerfd)",
                source: e.into(),
            })?;
        Ok(Alarm { timer, armed: None })
    }

    /// Arms the alarm for `deadline` (or disarms it), unless it is armed for that already.
    pub fn set(&mut self, deadline: Option<Instant>) -> Result<(), AlarmError> {
        if deadline == self.armed {
            return Ok(());
        }
        let timer = &self.timer.get_ref().0;
        match deadline {
            // A zero expiration would disarm it: a deadline due now fires in 1 ns.
            Some(at) => {
                let wait = at
                    .saturating_duration_since(Instant::now())
                    .max(std::time::Duration::from_nanos(1));
                timer
                    .set(
                        Expiration::OneShot(TimeSpec::from_duration(wait)),
                        TimerSetTimeFlags::empty(),
                    )
                    .map_err(failed("timerfd_settime"))?;
            }
            None => timer.unset().map_err(failed("timerfd_settime"))?,
        }
        self.armed = deadline;
        Ok(())
    }

    /// Waits until the alarm fires; it is disarmed then.
    pub async fn fired(&mut self) {
        use std::os::fd::AsRawFd;
        loop {
            let fired = {
                let Ok(mut ready) = self.timer.readable().await else {
                    return std::future::pending().await;
                };
                let fd = ready.get_inner().as_raw_fd();
                // The expiration count; EAGAIN: a stale readiness, wait again.
                let fired = nix::unistd::read(fd, &mut [0u8; 8]).is_ok();
                if !fired {
                    ready.clear_ready();
                }
                fired
            };
            if fired {
                self.armed = None;
                return;
            }
        }
    }
}
