//! The route cache's fence, checked over every interleaving of one lookup with one pushed
//! change: a change to a key wins over a lookup of that key in flight, and leaves lookups of
//! other keys alone. Each step runs to quiescence (paused time only advances once every task
//! is idle), so an interleaving is replayed exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};

use super::*;

/// A Resolve the test answers by hand: it reads the model store when the test says so
/// (`Read`) and returns when the test says so (`Return`).
struct Call {
    key: String,
    reply: oneshot::Sender<Resolved>,
}

struct Manual {
    calls: mpsc::UnboundedSender<Call>,
    count: AtomicU64,
}

impl Resolver for Arc<Manual> {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let (reply, answer) = oneshot::channel();
        let sent = self.calls.send(Call { key, reply });
        async move {
            sent.map_err(|_| RouteError::Unavailable("test over".into()))?;
            answer.await.map_err(|_| RouteError::Unavailable("no answer".into()))
        }
        .boxed()
    }
}

fn mapped(destination: &str) -> Resolved {
    Resolved { destination: destination.into(), mapped: true }
}

/// Runs every task until all are idle.
async fn quiesce() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// One step of the lookup (`L…`) or of the write (`W…`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The lookup starts (and sends its Resolve).
    Lookup,
    /// The control plane reads the store for that Resolve.
    Read,
    /// The Resolve's answer arrives at the node.
    Return,
    /// The store changes.
    Write,
    /// The change is pushed to the node.
    Push,
}

/// Every order of the lookup's three steps and the write's two, each keeping its own order.
fn interleavings() -> Vec<Vec<Step>> {
    let mut all = Vec::new();
    for mask in 0u8..32 {
        if mask.count_ones() != 2 {
            continue;
        }
        let (mut lookup, mut write) =
            ([Step::Lookup, Step::Read, Step::Return].into_iter(), [Step::Write, Step::Push].into_iter());
        all.push(
            (0..5)
                .map(|i| if mask & (1 << i) != 0 { write.next() } else { lookup.next() })
                .map(Option::unwrap)
                .collect(),
        );
    }
    all
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Upsert,
    Remove,
}

struct Run {
    cache: Arc<RouteCache>,
    resolver: Arc<Manual>,
    calls: mpsc::UnboundedReceiver<Call>,
    store: Arc<Mutex<HashMap<String, String>>>,
    /// A Resolve sent and not read yet, or read and not answered yet.
    sent: Option<Call>,
    read: Option<(oneshot::Sender<Resolved>, Resolved)>,
}

impl Run {
    fn new() -> Run {
        let (tx, calls) = mpsc::unbounded_channel();
        let resolver = Arc::new(Manual { calls: tx, count: AtomicU64::new(0) });
        let settings = CacheSettings {
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            max_bytes: 64 << 20,
            negative_max_bytes: 64 << 20,
        };
        let cache = RouteCache::new(settings, Arc::new(Arc::clone(&resolver)));
        let store = Arc::new(Mutex::new(HashMap::from([("k".to_string(), "old".to_string())])));
        Run { cache, resolver, calls, store, sent: None, read: None }
    }

    fn stored(&self, key: &str) -> String {
        self.store.lock().unwrap().get(key).cloned().unwrap_or_else(|| "default".into())
    }

    /// Answers every Resolve still waiting with what the store holds now.
    async fn answer_the_rest(&mut self) {
        loop {
            quiesce().await;
            let Ok(call) = self.calls.try_recv() else { return };
            let answer = mapped(&self.stored(&call.key));
            let _ = call.reply.send(answer);
        }
    }
}

async fn replay(steps: &[Step], change: Change, key_written: &str) {
    let mut run = Run::new();
    let mut lookup = None;
    let at = |wanted: Step| steps.iter().position(|s| *s == wanted);
    let pushed_before_return = key_written == "k" && at(Step::Push) < at(Step::Return);
    for step in steps {
        match step {
            Step::Lookup => {
                let cache = Arc::clone(&run.cache);
                lookup = Some(tokio::spawn(async move { cache.lookup("k").await }));
                quiesce().await;
                run.sent = run.calls.try_recv().ok();
            }
            // Nothing to read or return when the lookup was answered from the cache (a
            // change pushed before it started).
            Step::Read => {
                if let Some(call) = run.sent.take() {
                    let answer = mapped(&run.stored(&call.key));
                    run.read = Some((call.reply, answer));
                }
            }
            Step::Return => {
                if let Some((reply, answer)) = run.read.take() {
                    let _ = reply.send(answer);
                }
                quiesce().await;
            }
            Step::Write => match change {
                Change::Upsert => drop(run.store.lock().unwrap().insert(key_written.into(), "new".into())),
                Change::Remove => drop(run.store.lock().unwrap().remove(key_written)),
            },
            Step::Push => {
                match change {
                    Change::Upsert => run.cache.upsert(key_written, "new"),
                    Change::Remove => run.cache.remove(key_written),
                }
                quiesce().await;
            }
        }
    }
    run.answer_the_rest().await;
    let answered = lookup.expect("started").await.expect("lookup task").expect("answered");
    let now = mapped(&run.stored("k"));
    let context = format!("{steps:?} {change:?} of {key_written:?}");
    if pushed_before_return {
        assert_eq!(answered, now, "a change pushed before the answer came back wins: {context}");
    }
    let resolves = run.resolver.count.load(Ordering::SeqCst);
    if key_written != "k" {
        assert_eq!(resolves, 1, "a change to another key does not make the lookup ask again: {context}");
    }
    // Whatever the lookup answered, what the cache keeps (or the control plane is asked
    // for, once a removal emptied it) is what the store holds now.
    let cache = Arc::clone(&run.cache);
    let later = tokio::spawn(async move { cache.lookup("k").await });
    run.answer_the_rest().await;
    assert_eq!(later.await.expect("lookup task").expect("answered"), now, "no stale write-back: {context}");
}

#[tokio::test(start_paused = true)]
async fn a_pushed_change_to_the_key_wins_in_every_interleaving() {
    let orders = interleavings();
    assert_eq!(orders.len(), 10);
    for steps in &orders {
        replay(steps, Change::Upsert, "k").await;
        replay(steps, Change::Remove, "k").await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_to_another_key_never_disturbs_a_lookup_in_flight() {
    for steps in &interleavings() {
        replay(steps, Change::Upsert, "other").await;
        replay(steps, Change::Remove, "other").await;
    }
}

/// A control plane that answers from a shared table, read when the call starts, after a few
/// yields (so answers overtake pushes in every order the scheduler finds).
struct Racing {
    store: Arc<Mutex<HashMap<String, String>>>,
}

impl Resolver for Racing {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        let store = Arc::clone(&self.store);
        async move {
            let answer = store.lock().unwrap().get(&key).cloned().unwrap_or_default();
            for _ in 0..fastrand::usize(0..4) {
                tokio::task::yield_now().await;
            }
            Ok(mapped(&answer))
        }
        .boxed()
    }
}

/// Lookups and pushed changes of one key on several threads at once, many rounds: once the
/// last change is pushed, the cache holds it, whatever the lookups raced it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_lookups_never_leave_an_older_route_than_the_last_push() {
    let store = Arc::new(Mutex::new(HashMap::new()));
    let settings = CacheSettings {
        positive_ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(30),
        max_stale: Duration::from_secs(3600),
        max_bytes: 64 << 20,
        negative_max_bytes: 64 << 20,
    };
    let cache = RouteCache::new(settings, Arc::new(Racing { store: Arc::clone(&store) }));
    for round in 0..3000 {
        let key = format!("k{round}");
        store.lock().unwrap().insert(key.clone(), "v0".into());
        let lookups: Vec<_> = (0..3)
            .map(|_| {
                let (cache, key) = (Arc::clone(&cache), key.clone());
                tokio::spawn(async move { cache.lookup(&key).await })
            })
            .collect();
        let writer = {
            let (cache, store, key) = (Arc::clone(&cache), Arc::clone(&store), key.clone());
            tokio::spawn(async move {
                for v in 1..=2 {
                    let value = format!("v{v}");
                    store.lock().unwrap().insert(key.clone(), value.clone());
                    tokio::task::yield_now().await;
                    cache.upsert(&key, &value);
                }
            })
        };
        for lookup in lookups {
            lookup.await.expect("lookup task").expect("answered");
        }
        writer.await.expect("writer");
        let cached = cache.lookup(&key).await.expect("answered");
        assert_eq!(cached, mapped("v2"), "round {round}: an older answer was written back over the last push");
    }
}
