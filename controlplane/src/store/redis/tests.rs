use std::collections::HashMap;

use redis::Value;

use super::*;

fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
    let map: HashMap<String, Value> =
        fields.iter().map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec()))).collect();
    StreamId { id: id.into(), map, ..StreamId::default() }
}

#[test]
fn stream_entries_become_changes() {
    let put = entry("42-1", &[("key", "alice@example.test"), ("destination", "new")]);
    let change = change_of(&put).unwrap();
    assert_eq!(change, Change { revision: 42, key: "alice@example.test".into(), destination: Some("new".into()) });
    let removal = change_of(&entry("43-1", &[("key", "alice@example.test")])).unwrap();
    assert_eq!(removal.destination, None);
    let bulk = change_of(&entry("44-1", &[("key", "")])).unwrap();
    assert!(bulk.is_bulk() && bulk.destination.is_none());
}

#[test]
fn malformed_entries_are_errors_not_panics() {
    assert!(matches!(change_of(&entry("x-1", &[("key", "a")])), Err(StoreError::Unavailable(_))));
    assert!(matches!(change_of(&entry("7", &[("key", "a")])), Err(StoreError::Unavailable(_))));
    assert!(matches!(change_of(&entry("7-1", &[("destination", "a")])), Err(StoreError::Unavailable(_))));
}

#[test]
fn keys_share_the_prefix() {
    let keys = Keys::new("tenant-a:");
    for key in [&keys.map, &keys.keys, &keys.rev, &keys.changes, &keys.epoch] {
        assert!(key.starts_with("tenant-a:"), "{key}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_within_the_timeout() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}/")),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    };
    let started = std::time::Instant::now();
    let err = RedisStore::open(&config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_missing_url_is_reported() {
    let config = RedisConfig { url_env: "SWITCHYARD_TEST_REDIS_URL_UNSET".into(), ..RedisConfig::default() };
    let err = RedisStore::open(&config).await.unwrap_err();
    assert!(err.to_string().contains("SWITCHYARD_TEST_REDIS_URL_UNSET"), "{err}");
}
