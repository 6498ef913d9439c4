//! In-memory signal of a CloudboxRunner instance: wakes SSE streams and
//! waiters when an event is stored, and remembers which background loop
//! (a run's pump, a workspace's execute driver) is running.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::Delay;

#[derive(Default)]
pub struct Live {
    version: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
    /// A repo run's pump is consuming the runner's stream.
    pub pumping: Cell<bool>,
    /// A repo run's `start` found its runner ready (the pump need not ask).
    pub runner_ready: Cell<bool>,
    /// The execute whose `begin` made the workspace's runner ready just now
    /// (its driver need not ask again).
    pub runner_ready_for: RefCell<Option<String>>,
    /// A repo run's end is in progress in this instance (it awaits on the
    /// way, and the run must end once).
    pub finalizing: Cell<bool>,
    /// A workspace's driver is working through its executes.
    pub driving: Cell<bool>,
    /// Bumped when the watchdog replaces a hung driver; a driver whose
    /// generation is stale stops at its next step.
    pub drive_gen: Cell<u64>,
    /// Executes whose `end` is in progress in this instance.
    pub ending: RefCell<HashSet<String>>,
    /// A live run's stop, resume, expiry or snapshot is under way: another
    /// waits for it (`op_lock`).
    pub live_op: Cell<bool>,
    /// A live run's exec is being driven by this instance.
    pub exec_driving: Cell<bool>,
}

/// Held while one live-run operation changes the run's container or state.
pub struct OpGuard<'a>(&'a Cell<bool>);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Live {
    pub fn notify(&self) {
        self.version.set(self.version.get() + 1);
        let wakers: Vec<Waker> = self.wakers.borrow_mut().drain(..).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waits until no other live-run operation of this instance is under
    /// way, then holds them off until the guard drops.
    pub async fn op_lock(&self) -> OpGuard<'_> {
        while self.live_op.get() {
            Delay::from(Duration::from_millis(20)).await;
        }
        self.live_op.set(true);
        OpGuard(&self.live_op)
    }

    /// The change counter; pass it to `changed_or_timeout`.
    pub fn version(&self) -> u64 {
        self.version.get()
    }
}

struct Changed {
    live: Rc<Live>,
    since: u64,
}

impl Future for Changed {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.live.version.get() > self.since {
            Poll::Ready(())
        } else {
            self.live.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Waits until something is stored after `since`, or `ms` pass. True if changed.
pub async fn changed_or_timeout(live: &Rc<Live>, since: u64, ms: u64) -> bool {
    let changed = Changed {
        live: live.clone(),
        since,
    };
    let timer = Delay::from(Duration::from_millis(ms));
    matches!(select(changed, timer).await, Either::Left(_))
}

/// Reads with `read` each time something is stored (at least every second)
/// until `done` holds for what it read or `limit_ms` pass; returns the last
/// read.
pub async fn wait_until<T, E>(
    live: &Rc<Live>,
    limit_ms: Option<i64>,
    mut read: impl FnMut() -> Result<T, E>,
    done: impl Fn(&T) -> bool,
) -> Result<T, E> {
    let started = crate::common::time::now_ms();
    loop {
        let since = live.version();
        let value = read()?;
        if done(&value)
            || limit_ms.is_some_and(|limit| crate::common::time::now_ms() - started >= limit)
        {
            return Ok(value);
        }
        changed_or_timeout(live, since, 1_000).await;
    }
}
