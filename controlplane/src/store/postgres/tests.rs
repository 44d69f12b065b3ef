use super::*;

fn copy_text(value: &str) -> String {
    let mut buf = String::new();
    push_copy_text(&mut buf, value);
    buf
}

#[test]
fn an_import_writes_each_key_once_in_byte_order_and_the_last_row_wins() {
    let rows: Vec<Mapping> = [("b", "1"), ("a", "2"), ("B", "3"), ("b", "4"), ("é", "5"), ("b", "6"), ("a", "7")]
        .iter()
        .map(|(k, d)| Mapping { key: k.to_string(), destination: d.to_string() })
        .collect();
    let picked: Vec<(&str, &str)> =
        sorted_last_wins(&rows).iter().map(|&i| (rows[i].key.as_str(), rows[i].destination.as_str())).collect();
    assert_eq!(picked, [("B", "3"), ("a", "7"), ("b", "6"), ("é", "5")]);
    assert!(sorted_last_wins(&[]).is_empty());
}

#[test]
fn copy_text_escapes_only_what_the_format_needs() {
    assert_eq!(copy_text("alice@example.test"), "alice@example.test");
    assert_eq!(copy_text("a\\b\tc\nd\re"), "a\\\\b\\tc\\nd\\re");
    assert_eq!(copy_text("\\."), "\\\\.");
    assert_eq!(copy_text("o'brien \"x\" ü"), "o'brien \"x\" ü");
}

/// The control plane runs inside spawned tasks: every future of the store must be
/// `Send` even when awaited through a borrow (rustc checks this only where it is used).
#[allow(dead_code)]
fn futures_are_send(config: Arc<PostgresConfig>, store: Arc<PostgresStore>) {
    fn send<T: Send>(_: T) {}
    send(async move { PostgresStore::open(&config).await });
    let s = Arc::clone(&store);
    send(async move { s.put("a", "b").await });
    let s = Arc::clone(&store);
    send(async move { s.delete("a").await });
    let s = Arc::clone(&store);
    send(async move { s.import(&[], &|_| {}).await });
    send(async move { store.changes_since(0, 1).await });
}

#[tokio::test]
async fn an_invalid_url_is_unavailable_without_echoing_it() {
    let config = PostgresConfig { url: Some("postgres://user:secret@[bad/db".into()), ..Default::default() };
    let err = PostgresStore::open(&config).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
    assert!(text.contains("invalid URL") && !text.contains("secret"), "{text}");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unavailable_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = PostgresConfig {
        url: Some(format!("postgres://switchyard:secret@127.0.0.1:{port}/mappings")),
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = PostgresStore::open(&config).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.contains(&format!("PostgreSQL 127.0.0.1:{port}/mappings")) && !err.contains("secret"), "{err}");
}
