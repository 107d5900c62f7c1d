//! The wall clock, for everything that decides by time (token validity,
//! refresh points, JWT claims), and a way to sleep until a wall-clock time
//! that a suspended laptop does not stretch. Tests drive a manual one.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed sleep, so that [`Clock`] stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The wall clock, and a way to sleep until a wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
    fn sleep_until(&self, deadline: SystemTime) -> Sleep;
}

/// The real clock. Sleeps wake up at least every [`SystemClock::RECHECK`] to
/// look at the wall clock again, so a suspend does not stretch a sleep.
pub struct SystemClock;

impl SystemClock {
    pub const RECHECK: Duration = Duration::from_secs(30);
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        Box::pin(async move {
            while let Ok(left) = deadline.duration_since(SystemTime::now()) {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(Self::RECHECK)).await;
            }
        })
    }
}
