//! What every scripted fake shares: the replies of the next calls, a
//! default for the calls past them, a latency, a gate that holds calls from a
//! given number on, a call count, and death.
//!
//! A fake's handler asks [`Script::next`] for the reply of the call it is
//! answering; the answer is `None` once the fake is killed, and the handler
//! then closes the connection without a reply. Everything else a fake keeps
//! (its log, its lifetimes, its checks) stays in the fake.
//!
//! ```ignore
//! let script = Arc::new(Script::new(Reply::Token));
//! let s = script.clone();
//! let http = HttpFake::start(move |_req| {
//!     let (n, reply) = s.next()?;
//!     Some(render(n, reply))
//! });
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

struct Plan<R> {
    replies: VecDeque<R>,
    then: R,
    latency: Duration,
    /// Calls numbered this or higher wait for [`Script::open`].
    hold_from: Option<usize>,
}

pub struct Script<R> {
    plan: Mutex<Plan<R>>,
    gate: Condvar,
    count: AtomicUsize,
    dead: AtomicBool,
}

impl<R: Clone> Script<R> {
    /// Every call gets `then` until [`Script::set`] says otherwise.
    pub fn new(then: R) -> Script<R> {
        Script {
            plan: Mutex::new(Plan {
                replies: VecDeque::new(),
                then,
                latency: Duration::ZERO,
                hold_from: None,
            }),
            gate: Condvar::new(),
            count: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        }
    }

    fn plan(&self) -> MutexGuard<'_, Plan<R>> {
        self.plan.lock().expect("fake script")
    }

    /// The replies of the next calls, then `then` for every later one.
    pub fn set(&self, replies: &[R], then: R) {
        let mut plan = self.plan();
        plan.replies = replies.iter().cloned().collect();
        plan.then = then;
    }

    /// Each reply waits this long before it is sent.
    pub fn set_latency(&self, latency: Duration) {
        self.plan().latency = latency;
    }

    /// Calls number `n` (1-based) and later wait until [`Script::open`].
    pub fn hold_from(&self, n: usize) {
        self.plan().hold_from = Some(n);
    }

    pub fn open(&self) {
        self.plan().hold_from = None;
        self.gate.notify_all();
    }

    /// How many calls arrived (held ones included).
    pub fn calls(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Held and later calls get no reply.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.gate.notify_all();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Counts a call and returns its number and reply, after the gate and
    /// the latency; `None` once the fake is killed.
    pub fn next(&self) -> Option<(usize, R)> {
        let n = self.arrive()?;
        self.pass(n)?;
        Some((n, self.take()))
    }

    /// The first step of [`Script::next`], for a fake that logs or checks a
    /// call before it waits: counts it and returns its number (`None` once
    /// the fake is killed).
    pub fn arrive(&self) -> Option<usize> {
        (!self.is_dead()).then(|| self.count.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The second step: call `n` waits at the gate, then out the latency;
    /// `None` once the fake is killed.
    pub fn pass(&self, n: usize) -> Option<()> {
        let latency = {
            let mut plan = self.plan();
            while plan.hold_from.is_some_and(|from| n >= from) && !self.is_dead() {
                plan = self.gate.wait(plan).expect("fake gate");
            }
            plan.latency
        };
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        (!self.is_dead()).then_some(())
    }

    /// The last step: the next scripted reply (a fake that refuses a call
    /// before the script does not take one).
    pub fn take(&self) -> R {
        let mut plan = self.plan();
        plan.replies
            .pop_front()
            .unwrap_or_else(|| plan.then.clone())
    }
}
