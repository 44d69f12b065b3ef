use super::*;

struct Listed {
    id: &'static str,
    connected: bool,
    age: Option<f64>,
    from: &'static str,
}

impl NodeEntry for Listed {
    fn node_id(&self) -> &str {
        self.id
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn report_age_s(&self) -> Option<f64> {
        self.age
    }
}

fn entry(id: &'static str, connected: bool, age: Option<f64>, from: &'static str) -> Listed {
    Listed { id, connected, age, from }
}

fn picked(entries: Vec<Listed>) -> Vec<(&'static str, &'static str)> {
    merge_nodes(entries).into_iter().map(|e| (e.id, e.from)).collect()
}

#[test]
fn a_node_known_to_several_replicas_is_shown_once_where_it_is_connected() {
    // dp-1 failed over from A to B: A still remembers it, fresher but disconnected.
    let entries = vec![
        entry("dp-2", true, Some(0.2), "a"),
        entry("dp-1", false, Some(0.1), "a"),
        entry("dp-1", true, Some(3.0), "b"),
    ];
    assert_eq!(picked(entries), [("dp-1", "b"), ("dp-2", "a")]);
}

#[test]
fn between_equals_the_freshest_report_wins_and_ties_keep_the_first() {
    let entries = vec![
        entry("dp-1", true, Some(2.0), "a"),
        entry("dp-1", true, Some(0.5), "b"),
        entry("dp-1", true, None, "c"),
        entry("dp-2", false, None, "a"),
        entry("dp-2", false, Some(9.0), "b"),
        entry("dp-3", true, Some(1.0), "a"),
        entry("dp-3", true, Some(1.0), "b"),
        entry("dp-4", false, None, "a"),
        entry("dp-4", false, None, "b"),
    ];
    assert_eq!(picked(entries), [("dp-1", "b"), ("dp-2", "b"), ("dp-3", "a"), ("dp-4", "a")]);
}

fn result(id: &str, outcome: NodeOutcome, count: Option<u64>) -> NodeResult {
    NodeResult { node_id: id.into(), instance_id: None, result: outcome, count, conflict: false }
}

fn of(instance: &str, id: &str, outcome: NodeOutcome, count: Option<u64>) -> NodeResult {
    NodeResult { instance_id: Some(instance.into()), ..result(id, outcome, count) }
}

#[test]
fn command_results_count_a_node_once_preferring_applied() {
    use NodeOutcome::*;
    let merged = merge_results(vec![
        result("dp-1", NotConnected, None),
        result("dp-2", Applied, Some(2)),
        result("dp-1", Applied, Some(1)),
        result("dp-3", Timeout, None),
        result("dp-3", NotConnected, None),
        result("dp-2", Timeout, None),
        result("dp-4", NotConnected, None),
        result("dp-5", Timeout, None),
        result("dp-5", Rejected, None),
    ]);
    let got: Vec<_> = merged.iter().map(|r| (r.node_id.as_str(), r.result, r.count)).collect();
    assert_eq!(
        got,
        [
            ("dp-1", Applied, Some(1)),
            ("dp-2", Applied, Some(2)),
            ("dp-3", Timeout, None),
            ("dp-4", NotConnected, None),
            ("dp-5", Rejected, None),
        ]
    );
    let kicked: u64 = merged.iter().filter_map(|r| r.count).sum();
    assert_eq!(kicked, 3, "a node that answered through two replicas is not counted twice");
}

#[test]
fn a_write_one_replica_reports_undeclared_is_never_merged_into_applied() {
    use NodeOutcome::*;
    let merged = merge_results(vec![
        result("dp-1", Applied, None),
        result("dp-1", Undeclared, None),
        result("dp-2", NotConnected, None),
        result("dp-2", Undeclared, None),
    ]);
    let got: Vec<_> = merged.iter().map(|r| (r.node_id.as_str(), r.result)).collect();
    assert_eq!(got, [("dp-1", Undeclared), ("dp-2", Undeclared)]);
}

fn reply(answer: std::result::Result<(StatusCode, Value), String>) -> PeerReply {
    PeerReply { peer: "http://10.0.0.2:7480".into(), answer }
}

#[test]
fn peer_answers_decode_or_say_why_not() {
    let ok = reply(Ok((StatusCode::OK, serde_json::json!({"nodes": []}))));
    let (status, body) = ok.decode::<Value>();
    assert!(status.ok && status.error.is_none());
    assert_eq!(body, Some(serde_json::json!({"nodes": []})));

    let refused = reply(Ok((StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "store down"}))));
    let (status, body) = refused.decode::<Value>();
    assert_eq!((status.ok, status.error.as_deref(), body), (false, Some("HTTP 503: store down"), None));

    let garbled = reply(Ok((StatusCode::OK, Value::String("<html>".into()))));
    let (status, body) = garbled.decode::<Vec<u32>>();
    assert!(!status.ok && status.error.unwrap().starts_with("unexpected answer"), "{body:?}");

    let silent = reply(Err("no answer within 1s".into()));
    assert!(!silent.is(StatusCode::NOT_FOUND));
    let (status, _) = silent.decode::<Value>();
    assert_eq!(serde_json::to_value(&status).unwrap()["error"], "no answer within 1s");

    let unknown = reply(Ok((StatusCode::NOT_FOUND, Value::Null)));
    assert!(unknown.is(StatusCode::NOT_FOUND) && unknown.answered().ok);
}

#[test]
fn a_peer_call_asks_for_local_scope_with_its_path_encoded() {
    let peer = reqwest::Url::parse("https://10.0.0.2:7480").unwrap();
    let call = PeerCall::new(Method::GET, &["nodes", "dp 1/x", "healthz"]).query("identifier", "a&b@example.test");
    let url = call.url(&peer).unwrap();
    assert_eq!(
        url.as_str(),
        "https://10.0.0.2:7480/nodes/dp%201%2Fx/healthz?identifier=a%26b%40example.test&scope=local"
    );
    let bare = PeerCall::new(Method::GET, &["stats"]).query_opt("node", None::<&str>);
    assert_eq!(bare.url(&peer).unwrap().as_str(), "https://10.0.0.2:7480/stats?scope=local");
}

#[test]
fn the_peer_client_trusts_peer_ca_and_refuses_a_file_without_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["peer.test".into()]).unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca.cert.pem()).unwrap();
    let config = |peer_ca| ClusterConfig {
        peers: vec!["https://127.0.0.1:7480".into()],
        peer_ca,
        peer_timeout: Duration::from_secs(1),
        allow_insecure_control: false,
    };
    let cluster = Cluster::new(&config(Some(good)), "token").unwrap();
    assert!(cluster.has_peers());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = Cluster::new(&config(Some(empty)), "token").err().unwrap();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let e = Cluster::new(&config(Some(dir.path().join("missing.pem"))), "token").err().unwrap();
    assert!(e.to_string().contains("cannot read"), "{e}");
    assert!(Cluster::new(&config(None), "token").is_ok(), "system roots");
}

#[test]
fn two_live_processes_of_one_id_are_applied_only_if_both_applied() {
    use NodeOutcome::*;
    let merged = merge_results(vec![
        // dp-1: one process on replica a, another on b; only the one on a applied.
        of("i1", "dp-1", Applied, Some(1)),
        of("i2", "dp-1", Timeout, None),
        // dp-2: both applied.
        of("i3", "dp-2", Applied, Some(1)),
        of("i4", "dp-2", Applied, Some(2)),
        // dp-3: one process failed over from a to b: a still thinks it is connected.
        of("i5", "dp-3", Timeout, None),
        of("i5", "dp-3", Applied, Some(1)),
        // dp-4: restarted; a remembers the old process, b holds the new one.
        of("old", "dp-4", NotConnected, None),
        of("new", "dp-4", Applied, Some(0)),
    ]);
    let got: Vec<_> =
        merged.iter().map(|r| (r.node_id.as_str(), r.result, r.count, r.conflict, r.instance_id.as_deref())).collect();
    assert_eq!(
        got,
        [
            ("dp-1", Timeout, Some(1), true, None),
            ("dp-2", Applied, Some(3), true, None),
            ("dp-3", Applied, Some(1), false, Some("i5")),
            ("dp-4", Applied, Some(0), false, Some("new")),
        ]
    );
}

struct Seen {
    id: &'static str,
    instance: &'static str,
    connected: bool,
    conflicts: Vec<&'static str>,
}

impl NodeEntry for Seen {
    fn node_id(&self) -> &str {
        self.id
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn report_age_s(&self) -> Option<f64> {
        None
    }

    fn instance_id(&self) -> Option<&str> {
        Some(self.instance)
    }

    fn add_conflict(&mut self, other: &Self) {
        self.conflicts.push(other.instance);
    }
}

#[test]
fn another_connected_process_of_the_same_id_is_a_conflict_of_the_entry_kept() {
    let seen = |id, instance, connected| Seen { id, instance, connected, conflicts: Vec::new() };
    let merged = merge_nodes(vec![
        seen("dp-1", "i1", true),
        seen("dp-1", "i2", true),
        // The same process through two replicas is not a conflict; a gone one neither.
        seen("dp-2", "i3", true),
        seen("dp-2", "i3", true),
        seen("dp-2", "old", false),
    ]);
    let got: Vec<_> = merged.iter().map(|e| (e.id, e.instance, e.conflicts.clone())).collect();
    assert_eq!(got, [("dp-1", "i1", vec!["i2"]), ("dp-2", "i3", vec![])]);
}
