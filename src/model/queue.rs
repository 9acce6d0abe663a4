//! The queue in front of the model: a gate with a fixed number of slots
//! (`model.concurrency`) and three lanes. When a slot frees, the oldest
//! request of the most urgent non-empty lane gets it: a person waiting at
//! the command line first, then the daemon's own decisions, batch work last.
//! A request that is already running is never interrupted.
//!
//! Nothing can wedge it: a slot belongs to a `Permit`, and dropping the
//! permit (the call ended, failed, timed out, or its task was cancelled)
//! hands the slot on. A caller dropped while waiting leaves its lane; one
//! dropped just after it was handed a slot, before it ran, hands the slot
//! on too. The state is behind a plain mutex that is never held across an
//! await, so the gate works on the daemon's single-threaded runtime and on
//! any other.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use super::metrics::percentile;

/// How urgent a request to the model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// A person is waiting at the command line.
    Interactive,
    /// The daemon's own work: deciding about incidents.
    Autonomous,
    /// Work nobody waits for: summaries, knowledge upkeep.
    Batch,
}

impl Priority {
    /// Most urgent first.
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Autonomous, Priority::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Autonomous => "autonomous",
            Priority::Batch => "batch",
        }
    }

    fn lane(self) -> usize {
        self as usize
    }
}

/// Waits remembered per lane for the percentiles in the status.
const RECENT_WAITS: usize = 256;

/// The gate. Share it as `Arc<Queue>`.
pub struct Queue {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    slots: usize,
    next_ticket: u64,
    running: Vec<Running>,
    lanes: [VecDeque<Waiter>; 3],
    served: [Served; 3],
}

struct Running {
    ticket: u64,
    priority: Priority,
    since: Instant,
}

struct Waiter {
    ticket: u64,
    since: Instant,
    wake: oneshot::Sender<()>,
}

/// Requests a lane has let through, and how long they waited.
#[derive(Default)]
struct Served {
    count: u64,
    max_ms: u64,
    recent_ms: VecDeque<u64>,
}

impl Served {
    fn record(&mut self, waited: Duration) {
        let ms = waited.as_millis() as u64;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
        if self.recent_ms.len() == RECENT_WAITS {
            self.recent_ms.pop_front();
        }
        self.recent_ms.push_back(ms);
    }
}

/// A slot in the gate; dropping it hands the slot on.
pub struct Permit {
    queue: Arc<Queue>,
    ticket: u64,
    /// How long the request waited for its slot.
    pub waited: Duration,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.queue.release(self.ticket);
    }
}

/// A caller still waiting; if it is dropped before it holds a `Permit`, its
/// place (or the slot it was just handed) is given up.
struct Waiting<'a> {
    queue: &'a Queue,
    ticket: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.abandon(self.ticket);
        }
    }
}

impl Queue {
    /// A gate with `slots` slots (at least one).
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                slots: slots.max(1),
                next_ticket: 0,
                running: Vec::new(),
                lanes: Default::default(),
                served: Default::default(),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every panic point; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot; requests of a more urgent priority go first, equal
    /// ones in arrival order.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let since = Instant::now();
        let (ticket, wait) = {
            let mut s = self.lock();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            if s.running.len() < s.slots {
                s.running.push(Running { ticket, priority, since });
                s.served[priority.lane()].record(Duration::ZERO);
                (ticket, None)
            } else {
                let (wake, woken) = oneshot::channel();
                s.lanes[priority.lane()].push_back(Waiter { ticket, since, wake });
                (ticket, Some(woken))
            }
        };
        self.changed.notify_one();
        if let Some(woken) = wait {
            let mut waiting = Waiting { queue: self, ticket, armed: true };
            // The sender is only ever consumed by a grant; an error would mean
            // the queue itself is gone, which our `Arc` rules out.
            let _ = woken.await;
            waiting.armed = false;
        }
        Permit { queue: self.clone(), ticket, waited: since.elapsed() }
    }

    fn release(&self, ticket: u64) {
        {
            let mut s = self.lock();
            s.running.retain(|r| r.ticket != ticket);
            s.grant();
        }
        self.changed.notify_one();
    }

    /// A waiter was dropped: out of its lane, or, if it had just been handed
    /// a slot, the slot goes on to the next.
    fn abandon(&self, ticket: u64) {
        {
            let mut s = self.lock();
            let mut found = false;
            for lane in &mut s.lanes {
                if let Some(i) = lane.iter().position(|w| w.ticket == ticket) {
                    lane.remove(i);
                    found = true;
                }
            }
            if !found {
                s.running.retain(|r| r.ticket != ticket);
                s.grant();
            }
        }
        self.changed.notify_one();
    }

    /// What the gate holds now.
    pub fn status(&self) -> QueueStatus {
        let s = self.lock();
        let now = Instant::now();
        let ms = |since: Instant| now.duration_since(since).as_millis() as u64;
        QueueStatus {
            slots: s.slots,
            running: s.running.iter().map(|r| RunningCall { priority: r.priority, running_ms: ms(r.since) }).collect(),
            lanes: Priority::ALL
                .iter()
                .map(|p| {
                    let (lane, served) = (&s.lanes[p.lane()], &s.served[p.lane()]);
                    let mut recent: Vec<u64> = served.recent_ms.iter().copied().collect();
                    recent.sort_unstable();
                    LaneStatus {
                        priority: *p,
                        waiting: lane.len(),
                        oldest_wait_ms: lane.front().map(|w| ms(w.since)),
                        served: served.count,
                        wait_p50_ms: percentile(&recent, 50),
                        wait_p95_ms: percentile(&recent, 95),
                        wait_max_ms: served.max_ms,
                    }
                })
                .collect(),
        }
    }

    /// Signalled after every change (a request queued, started, ended or
    /// dropped), for whoever publishes the status.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }
}

impl State {
    /// Hands free slots to the most urgent waiters. A waiter whose receiver
    /// is gone (dropped between its removal check and now) is skipped.
    fn grant(&mut self) {
        while self.running.len() < self.slots {
            let Some(lane) = (0..self.lanes.len()).find(|l| !self.lanes[*l].is_empty()) else { return };
            let waiter = self.lanes[lane].pop_front().expect("the lane is not empty");
            let waited = waiter.since.elapsed();
            self.running.push(Running { ticket: waiter.ticket, priority: Priority::ALL[lane], since: Instant::now() });
            if waiter.wake.send(()).is_ok() {
                self.served[lane].record(waited);
            } else {
                self.running.pop();
            }
        }
    }
}

/// The gate at one moment, for `macha status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub slots: usize,
    pub running: Vec<RunningCall>,
    /// One per priority, most urgent first.
    pub lanes: Vec<LaneStatus>,
}

impl QueueStatus {
    /// Requests waiting for a slot, all lanes together.
    pub fn waiting(&self) -> usize {
        self.lanes.iter().map(|l| l.waiting).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningCall {
    pub priority: Priority,
    pub running_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    pub priority: Priority,
    /// Requests waiting now.
    pub waiting: usize,
    /// How long the first of them has waited.
    pub oldest_wait_ms: Option<u64>,
    /// Requests let through since the process started.
    pub served: u64,
    /// Over the last requests let through.
    pub wait_p50_ms: Option<u64>,
    pub wait_p95_ms: Option<u64>,
    pub wait_max_ms: u64,
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    fn local(test: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, test);
    }

    /// Yields until the queue shows `n` waiters.
    async fn until_waiting(q: &Queue, n: usize) {
        while q.status().waiting() != n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn an_interactive_request_overtakes_queued_autonomous_and_batch_work() {
        local(async {
            let q = Queue::new(1);
            let first = q.acquire(Priority::Autonomous).await;
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, p) in [
                ("auto-2", Priority::Autonomous),
                ("batch-1", Priority::Batch),
                ("auto-3", Priority::Autonomous),
                ("ask-1", Priority::Interactive),
            ] {
                let (q, order) = (q.clone(), order.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let _permit = q.acquire(p).await;
                    order.borrow_mut().push(name);
                    tokio::task::yield_now().await;
                }));
                tokio::task::yield_now().await;
            }
            until_waiting(&q, 4).await;
            assert_eq!(q.status().running.len(), 1);
            drop(first);
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*order.borrow(), ["ask-1", "auto-2", "auto-3", "batch-1"]);
            let s = q.status();
            assert!(s.running.is_empty() && s.waiting() == 0);
            assert_eq!(s.lanes.iter().map(|l| l.served).sum::<u64>(), 5);
        });
    }

    #[test]
    fn a_caller_dropped_while_waiting_leaves_its_place() {
        local(async {
            let q = Queue::new(1);
            let first = q.acquire(Priority::Autonomous).await;
            let q2 = q.clone();
            let cancelled = tokio::task::spawn_local(async move {
                let _p = q2.acquire(Priority::Interactive).await;
                unreachable!("the test aborts this caller before it runs");
            });
            until_waiting(&q, 1).await;
            cancelled.abort();
            until_waiting(&q, 0).await;
            drop(first);
            let again = q.acquire(Priority::Batch).await;
            assert_eq!(q.status().running.len(), 1);
            drop(again);
            assert!(q.status().running.is_empty());
        });
    }

    #[test]
    fn a_caller_dropped_right_after_it_was_handed_the_slot_passes_it_on() {
        local(async {
            let q = Queue::new(1);
            let first = q.acquire(Priority::Autonomous).await;
            let q2 = q.clone();
            let handed = tokio::task::spawn_local(async move {
                let _p = q2.acquire(Priority::Autonomous).await;
                std::future::pending::<()>().await;
            });
            until_waiting(&q, 1).await;
            // The slot goes to the waiter, which is aborted before it runs again.
            drop(first);
            handed.abort();
            assert!(handed.await.unwrap_err().is_cancelled());
            assert!(q.status().running.is_empty(), "the slot was handed back");
            let _next = q.acquire(Priority::Batch).await;
        });
    }

    #[test]
    fn more_slots_run_more_requests_at_once() {
        local(async {
            let q = Queue::new(2);
            let a = q.acquire(Priority::Batch).await;
            let b = q.acquire(Priority::Batch).await;
            assert_eq!(q.status().running.len(), 2);
            let q2 = q.clone();
            let third = tokio::task::spawn_local(async move { drop(q2.acquire(Priority::Batch).await) });
            until_waiting(&q, 1).await;
            drop(a);
            third.await.unwrap();
            drop(b);
            let s = q.status();
            assert_eq!((s.running.len(), s.waiting()), (0, 0));
        });
    }
}
