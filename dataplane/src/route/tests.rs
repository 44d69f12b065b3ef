//! Route cache tests: hits and misses, single flight, the change fence, stale serving.

use super::*;
use std::sync::atomic::AtomicBool;
use tokio::sync::Notify;

/// A scripted control plane: answers from a table, can be made unreachable or held.
#[derive(Default)]
struct FakeResolver {
    table: Mutex<HashMap<String, String>>,
    calls: AtomicU64,
    down: AtomicBool,
    hold: Mutex<Option<Arc<Notify>>>,
}

impl FakeResolver {
    fn set(&self, key: &str, dest: &str) {
        self.table.lock().unwrap().insert(key.into(), dest.into());
    }
}

impl Resolver for Arc<FakeResolver> {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        let this = Arc::clone(self);
        async move {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let hold = this.hold.lock().unwrap().clone();
            let answer = match this.table.lock().unwrap().get(&key) {
                Some(d) => Resolved { destination: d.clone(), mapped: true },
                None => Resolved { destination: "legacy".into(), mapped: false },
            };
            if let Some(gate) = hold {
                gate.notified().await;
            }
            if this.down.load(Ordering::SeqCst) {
                return Err(RouteError::Unavailable("down".into()));
            }
            Ok(answer)
        }
        .boxed()
    }
}

fn settings() -> CacheSettings {
    CacheSettings {
        positive_ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(30),
        max_entries: 1000,
        max_stale: Duration::from_secs(3600),
    }
}

fn cache() -> (Arc<RouteCache>, Arc<FakeResolver>) {
    let fake = Arc::new(FakeResolver::default());
    (RouteCache::new(settings(), Arc::new(Arc::clone(&fake))), fake)
}

#[tokio::test]
async fn miss_then_hit_and_counters() {
    let (cache, fake) = cache();
    fake.set("alice", "new");
    assert_eq!(cache.lookup("alice").await.unwrap().destination, "new");
    assert_eq!(cache.lookup("alice").await.unwrap().destination, "new");
    assert_eq!(cache.lookup("bob").await.unwrap(), Resolved { destination: "legacy".into(), mapped: false });
    cache.sync();
    assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 2, entries: 2 });
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_misses_share_one_resolve() {
    let (cache, fake) = cache();
    let gate = Arc::new(Notify::new());
    *fake.hold.lock().unwrap() = Some(Arc::clone(&gate));
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.lookup("carol").await })
        })
        .collect();
    tokio::task::yield_now().await;
    while fake.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    for l in lookups {
        assert_eq!(l.await.unwrap().unwrap().destination, "legacy");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_refetched_and_stale_ones_serve_an_outage() {
    let (cache, fake) = cache();
    fake.set("alice", "new");
    cache.lookup("alice").await.unwrap();
    tokio::time::advance(Duration::from_secs(601)).await;
    fake.set("alice", "newer");
    assert_eq!(cache.lookup("alice").await.unwrap().destination, "newer", "past TTL asks again");

    tokio::time::advance(Duration::from_secs(601)).await;
    fake.down.store(true, Ordering::SeqCst);
    assert_eq!(cache.lookup("alice").await.unwrap().destination, "newer", "stale within max_stale");
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(cache.lookup("alice").await.is_err(), "past TTL + max_stale it is not used");
}

#[tokio::test]
async fn an_unknown_account_during_an_outage_is_unavailable_not_default() {
    let (cache, fake) = cache();
    fake.down.store(true, Ordering::SeqCst);
    assert!(matches!(cache.lookup("dave").await, Err(RouteError::Unavailable(_))));
}

#[tokio::test]
async fn a_change_wins_over_a_lookup_in_flight() {
    let (cache, fake) = cache();
    fake.set("erin", "legacy");
    let gate = Arc::new(Notify::new());
    *fake.hold.lock().unwrap() = Some(Arc::clone(&gate));
    let pending = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move { cache.lookup("erin").await })
    };
    while fake.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The store changes and the push lands while the first Resolve (old answer) is held.
    fake.set("erin", "new");
    cache.upsert("erin", "new");
    *fake.hold.lock().unwrap() = None;
    gate.notify_waiters();
    let answered = pending.await.unwrap().unwrap();
    assert_eq!(answered.destination, "new", "the in-flight lookup answers with the pushed change");
    assert_eq!(cache.lookup("erin").await.unwrap().destination, "new", "no stale write-back");
}

#[tokio::test]
async fn removal_and_clear_force_a_new_resolve() {
    let (cache, fake) = cache();
    fake.set("frank", "new");
    cache.lookup("frank").await.unwrap();
    cache.remove("frank");
    cache.lookup("frank").await.unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    cache.clear();
    cache.lookup("frank").await.unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
}
