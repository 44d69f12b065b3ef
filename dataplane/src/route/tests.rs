//! Route cache tests: hits and misses, single flight, the change fence, stale serving.

use super::*;
use entries::Entry;
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
        max_stale: Duration::from_secs(3600),
        max_bytes: 1 << 20,
        negative_max_bytes: 1 << 20,
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

/// An unknown account gets a temporary failure during an outage. An unmapped
/// answer past its TTL is treated as unknown, as serving it would send the account to the
/// default destination on an answer nobody can check any more.
#[tokio::test(start_paused = true)]
async fn unmapped_answers_are_not_served_stale_mapped_ones_are() {
    let (cache, fake) = cache();
    fake.set("alice", "new");
    cache.lookup("alice").await.unwrap();
    cache.lookup("bob").await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    fake.down.store(true, Ordering::SeqCst);
    assert!(matches!(cache.lookup("bob").await, Err(RouteError::Unavailable(_))), "unmapped past its TTL");
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(cache.lookup("alice").await.unwrap().destination, "new", "mapped, stale within max_stale");
}

#[test]
fn an_entry_weighs_its_key_its_destination_and_the_overhead() {
    let entry = Entry { resolved: Resolved { destination: "new".into(), mapped: true }, fetched: Instant::now() };
    assert_eq!(entries::weight("alice@example.test", &entry), 18 + 3 + entries::ENTRY_OVERHEAD);
    let long = "a".repeat(1024);
    assert_eq!(entries::weight(&long, &entry), 1024 + 3 + entries::ENTRY_OVERHEAD);
}

fn small(max_bytes: u64) -> CacheSettings {
    CacheSettings { max_bytes, negative_max_bytes: max_bytes, ..settings() }
}

/// Invented addresses (unmapped, 900 bytes each, 40 times the byte bound) never push a
/// mapped route out, and the unmapped answers stay within their own bound.
#[tokio::test]
async fn a_spray_of_unmapped_answers_stays_in_its_bound_and_evicts_no_mapped_route() {
    let fake = Arc::new(FakeResolver::default());
    let bound = 64 * 1024;
    let cache = RouteCache::new(small(bound), Arc::new(Arc::clone(&fake)));
    let mapped: Vec<String> = (0..20).map(|i| format!("user{i}@example.test")).collect();
    for key in &mapped {
        cache.upsert(key, "new");
    }
    for i in 0..2000 {
        let key = format!("{i}-{}", "x".repeat(900));
        assert!(!cache.lookup(&key).await.unwrap().mapped);
    }
    cache.sync();
    let (mapped_bytes, unmapped_bytes) = cache.weighted_sizes();
    assert!(unmapped_bytes <= bound, "unmapped answers take {unmapped_bytes} bytes");
    assert!(mapped_bytes > 0 && mapped_bytes <= bound, "mapped routes take {mapped_bytes} bytes");
    fake.down.store(true, Ordering::SeqCst);
    for key in &mapped {
        assert_eq!(cache.lookup(key).await.unwrap().destination, "new", "{key} was evicted");
    }
}

/// Mapped routes beyond their own bound are evicted (some of them), never served past it.
#[tokio::test]
async fn mapped_routes_stay_within_their_byte_bound() {
    let (fake, bound) = (Arc::new(FakeResolver::default()), 64 * 1024);
    let cache = RouteCache::new(small(bound), Arc::new(Arc::clone(&fake)));
    for i in 0..1000 {
        cache.upsert(&format!("user{i}@example.test"), "new");
    }
    cache.sync();
    let (mapped_bytes, _) = cache.weighted_sizes();
    assert!(mapped_bytes <= bound, "{mapped_bytes} bytes");
    assert!(cache.stats().entries < 1000);
}

#[tokio::test]
async fn an_answer_of_one_kind_replaces_the_other() {
    let (cache, fake) = cache();
    assert!(!cache.lookup("carol").await.unwrap().mapped);
    cache.upsert("carol", "new");
    cache.sync();
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(cache.lookup("carol").await.unwrap(), Resolved { destination: "new".into(), mapped: true });
    // Unmapped again at the store, and the mapped route expires or is removed: asked anew.
    cache.remove("carol");
    assert!(!cache.lookup("carol").await.unwrap().mapped);
    cache.sync();
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

/// A spent budget refuses lookups that would ask the control plane, not cached answers;
/// refused lookups are not misses (nothing was asked).
#[tokio::test]
async fn a_spent_budget_refuses_misses_but_not_hits() {
    let (cache, fake) = cache();
    let budget = ResolveBudget::new(2);
    cache.lookup_within("a", Some(&budget)).await.unwrap();
    cache.lookup_within("b", Some(&budget)).await.unwrap();
    assert_eq!(cache.lookup_within("c", Some(&budget)).await, Err(RouteError::OverBudget));
    assert_eq!(cache.lookup_within("a", Some(&budget)).await.unwrap().destination, "legacy");
    assert_eq!((fake.calls.load(Ordering::SeqCst), budget.refused()), (2, 1));
    assert_eq!(cache.lookup("c").await.unwrap().destination, "legacy", "no budget, no limit");
    cache.sync();
    assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 3, entries: 3 });
}

/// Calibrates [`entries::ENTRY_OVERHEAD`]: the resident memory one cached answer costs
/// beyond its key and destination, from this process's RSS (run on its own:
/// `cargo test -p dataplane --lib entry_overhead -- --ignored --nocapture`).
#[test]
#[ignore = "measures this process's memory; run alone"]
fn entry_overhead_is_measured() {
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let mut kept = Vec::new();
    for key_len in [20, 900] {
        let entries = entries::Entries::new(&small(1 << 40));
        let n = 100_000;
        let before = rss();
        for i in 0..n {
            let key = format!("{i:08}{}", "x".repeat(key_len - 8));
            let resolved = Resolved { destination: "legacy".into(), mapped: i % 2 == 0 };
            entries.insert(&key, Entry { resolved, fetched: Instant::now() });
        }
        entries.run_pending_tasks();
        let per_entry = rss().saturating_sub(before) / n;
        let beyond = per_entry.saturating_sub(key_len as u64 + 6);
        println!("key {key_len} bytes: {per_entry} bytes per entry, {beyond} beyond key and destination");
        // Kept, so the next round's memory is not the freed memory of this one.
        kept.push(entries);
    }
}
