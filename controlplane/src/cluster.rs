//! The other control-plane replicas sharing this mapping store, and how the management
//! API answers for the whole fleet through them.
//!
//! Node state is gathered from the peers, not stored in the database: a replica knows
//! only the nodes whose streams it holds. A fleet view or fleet action asks every peer in
//! `[cluster] peers` for its own part (`?scope=local`, which is never fanned out again),
//! all at once and each bounded by `peer_timeout`, and merges the answers with its own.
//! A peer that does not answer is reported in the response and never fails it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::fleet::{NodeOutcome, NodeResult};

/// How far a request reaches: the whole fleet (the default) or only the nodes connected
/// to the replica asked (`?scope=local`, what replicas ask each other).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Fleet,
    Local,
}

/// The `scope` query parameter, read next to each endpoint's own parameters.
#[derive(Debug, Default, Deserialize)]
pub struct ScopeQuery {
    #[serde(default)]
    pub scope: Scope,
}

/// Whether one peer answered, as listed in a response's `peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One peer's answer: its status and JSON body, or why there was none.
#[derive(Debug)]
pub struct PeerReply {
    pub peer: String,
    pub answer: std::result::Result<(StatusCode, Value), String>,
}

impl PeerReply {
    /// The body as `T` when the peer answered 2xx with one, and how the peer fared.
    pub fn decode<T: DeserializeOwned>(self) -> (PeerStatus, Option<T>) {
        self.decode_when(|code| code.is_success())
    }

    /// Like [`decode`](Self::decode), for the answers whose status satisfies `carries`.
    pub fn decode_when<T: DeserializeOwned>(self, carries: impl Fn(StatusCode) -> bool) -> (PeerStatus, Option<T>) {
        let result = match self.answer {
            Ok((code, body)) if carries(code) => {
                serde_json::from_value(body).map_err(|e| format!("unexpected answer: {e}"))
            }
            Ok((code, body)) => Err(refusal(code, &body)),
            Err(e) => Err(e),
        };
        match result {
            Ok(value) => (PeerStatus { peer: self.peer, ok: true, error: None }, Some(value)),
            Err(error) => (PeerStatus { peer: self.peer, ok: false, error: Some(error) }, None),
        }
    }

    /// The peer answered with `code`.
    pub fn is(&self, code: StatusCode) -> bool {
        matches!(&self.answer, Ok((c, _)) if *c == code)
    }

    /// The peer answered, whatever it said.
    pub fn answered(&self) -> PeerStatus {
        PeerStatus { peer: self.peer.clone(), ok: true, error: None }
    }
}

/// "HTTP 503: <the peer's error message>".
fn refusal(code: StatusCode, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(message) => format!("HTTP {}: {message}", code.as_u16()),
        None => format!("HTTP {}: {body}", code.as_u16()),
    }
}

/// Decodes every 2xx reply: the bodies by peer, and every peer's status.
pub fn gather<T: DeserializeOwned>(replies: Vec<PeerReply>) -> (Vec<(String, T)>, Vec<PeerStatus>) {
    let mut bodies = Vec::new();
    let mut peers = Vec::new();
    for reply in replies {
        let (status, body) = reply.decode();
        bodies.extend(body.map(|b| (status.peer.clone(), b)));
        peers.push(status);
    }
    (bodies, peers)
}

/// The same request for every peer; `scope=local` is added to its query.
#[derive(Debug, Clone)]
pub struct PeerCall {
    method: Method,
    /// Path segments, percent-encoded when the call is made.
    path: Vec<String>,
    query: Vec<(String, String)>,
    body: Option<Value>,
    /// How long the peer itself may wait (for node acks) on top of `peer_timeout`.
    waits: Duration,
}

impl PeerCall {
    /// `segments` of the path, e.g. `["nodes", id, "healthz"]`.
    pub fn new(method: Method, segments: &[&str]) -> Self {
        let path = segments.iter().map(|s| s.to_string()).collect();
        PeerCall { method, path, query: Vec::new(), body: None, waits: Duration::ZERO }
    }

    pub fn query(mut self, name: &str, value: impl ToString) -> Self {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds the parameter only when it has a value.
    pub fn query_opt(self, name: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.query(name, v),
            None => self,
        }
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// The peer waits up to `d` for its nodes before it answers.
    pub fn waits(mut self, d: Duration) -> Self {
        self.waits = d;
        self
    }

    /// The call's URL at `peer`, asking for that replica's own nodes only.
    fn url(&self, peer: &reqwest::Url) -> std::result::Result<reqwest::Url, String> {
        let mut url = peer.clone();
        url.path_segments_mut().map_err(|()| format!("{peer} cannot take a path"))?.clear().extend(&self.path);
        url.query_pairs_mut().extend_pairs(&self.query).append_pair("scope", "local");
        Ok(url)
    }
}

/// The peers and the client that calls them with the shared admin token.
#[derive(Debug)]
pub struct Cluster {
    peers: Vec<reqwest::Url>,
    /// Built only when there are peers: it reads the system trust store.
    client: Option<reqwest::Client>,
    token: String,
    timeout: Duration,
}

impl Cluster {
    /// The client trusts `peer_ca` alone when it is set, the system store otherwise.
    pub fn new(config: &ClusterConfig, token: &str) -> Result<Cluster> {
        let mut peers = Vec::new();
        for peer in &config.peers {
            let url = reqwest::Url::parse(peer).map_err(|e| Error::Config(format!("cluster.peers: {peer:?}: {e}")))?;
            if switchyard_common::config::cleartext_off_loopback(peer) {
                tracing::warn!(%peer, "cluster peer is cleartext http:// off loopback (allow_insecure_control = true): the admin token crosses the network in clear");
            }
            peers.push(url);
        }
        let client = if peers.is_empty() { None } else { Some(client(config)?) };
        Ok(Cluster { peers, client, token: token.to_string(), timeout: config.peer_timeout })
    }

    /// A replica on its own: fleet requests are answered from local nodes only.
    pub fn standalone() -> Cluster {
        Cluster { peers: Vec::new(), client: None, token: String::new(), timeout: Duration::ZERO }
    }

    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// Sends `call` to every peer at once; nothing at all for a local-scope request.
    pub async fn call(&self, scope: Scope, call: &PeerCall) -> Vec<PeerReply> {
        let Some(client) = self.client.as_ref().filter(|_| scope == Scope::Fleet) else {
            return Vec::new();
        };
        futures::future::join_all(self.peers.iter().map(|peer| self.call_one(client, peer, call))).await
    }

    async fn call_one(&self, client: &reqwest::Client, peer: &reqwest::Url, call: &PeerCall) -> PeerReply {
        let name = peer.as_str().trim_end_matches('/').to_string();
        let budget = self.timeout + call.waits;
        let answer = match tokio::time::timeout(budget, self.send(client, peer, call)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {budget:?}")),
        };
        if let Err(error) = &answer {
            tracing::warn!(peer = %name, path = %call.path.join("/"), %error, "control-plane peer did not answer");
        }
        PeerReply { peer: name, answer }
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        peer: &reqwest::Url,
        call: &PeerCall,
    ) -> std::result::Result<(StatusCode, Value), String> {
        let url = call.url(peer)?;
        let mut request = client.request(call.method.clone(), url).bearer_auth(&self.token);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(without_url)?;
        let code = response.status();
        let text = response.text().await.map_err(without_url)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((code, body))
    }
}

/// A failed call's cause without its URL: the query may carry an account identifier
/// (`?identifier=`), which only ever reaches a log redacted.
fn without_url(e: reqwest::Error) -> String {
    switchyard_common::error::chain(&e.without_url())
}

/// The HTTP client for the peers: `peer_ca` alone when set, the system trust store otherwise.
fn client(config: &ClusterConfig) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().use_rustls_tls().connect_timeout(config.peer_timeout);
    if let Some(path) = &config.peer_ca {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cluster.peer_ca: cannot read {}: {e}", path.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("cluster.peer_ca: {}: {e}", path.display())))?;
        if certificates.is_empty() {
            return Err(Error::Config(format!("cluster.peer_ca: {} holds no certificate", path.display())));
        }
        builder =
            certificates.into_iter().fold(builder.tls_built_in_root_certs(false), |b, c| b.add_root_certificate(c));
    }
    builder.build().map_err(|e| Error::Config(format!("cluster: cannot build the peer client: {e}")))
}

/// What the merge rules read from one replica's entry for a node.
pub trait NodeEntry {
    fn node_id(&self) -> &str;
    fn connected(&self) -> bool;
    /// Seconds since the node's last report, as that replica saw it.
    fn report_age_s(&self) -> Option<f64>;
    /// The process behind the entry, for the views that carry it.
    fn instance_id(&self) -> Option<&str> {
        None
    }
    /// Records `other`, another live process with this node id held by another replica.
    fn add_conflict(&mut self, _other: &Self) {}
}

/// One entry per node (a node that failed over is known to several replicas): the entry
/// from the replica it is connected to, then the one with the freshest report; on a tie
/// the first (this replica's own entries come first). Another connected entry for the
/// same id from a different process is a conflict, recorded on the one kept. Sorted by
/// node id.
pub fn merge_nodes<T: NodeEntry>(entries: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut by_node: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for entry in entries {
        by_node.entry(entry.node_id().to_string()).or_default().push(entry);
    }
    by_node.into_values().filter_map(merge_one_node).collect()
}

fn merge_one_node<T: NodeEntry>(mut entries: Vec<T>) -> Option<T> {
    let best = (1..entries.len()).fold(0, |best, i| if prefer(&entries[i], &entries[best]) { i } else { best });
    let mut kept = entries.swap_remove(best);
    for other in &entries {
        let different = matches!((kept.instance_id(), other.instance_id()), (Some(a), Some(b)) if a != b);
        if kept.connected() && other.connected() && different {
            kept.add_conflict(other);
        }
    }
    Some(kept)
}

fn prefer(candidate: &impl NodeEntry, kept: &impl NodeEntry) -> bool {
    if candidate.connected() != kept.connected() {
        return candidate.connected();
    }
    match (candidate.report_age_s(), kept.report_age_s()) {
        (Some(new), Some(old)) => new < old,
        (Some(_), None) => true,
        _ => false,
    }
}

/// How good one process's outcome is, when the same process answered through several
/// replicas: `undeclared` first (a replica holding its stream says it cannot route the write,
/// which no other answer may hide), then `applied`, `rejected`, `timeout`, `not_connected`.
fn rank(outcome: NodeOutcome) -> u8 {
    match outcome {
        NodeOutcome::Undeclared => 4,
        NodeOutcome::Applied => 3,
        NodeOutcome::Rejected => 2,
        NodeOutcome::Timeout => 1,
        NodeOutcome::NotConnected => 0,
    }
}

/// How bad one of several live processes' outcomes is for the node id they share: anything
/// but `applied` (`undeclared` included: that process cannot route the write) is worse.
fn badness(outcome: NodeOutcome) -> u8 {
    match outcome {
        NodeOutcome::Applied => 0,
        NodeOutcome::Undeclared => 1,
        NodeOutcome::Rejected => 2,
        NodeOutcome::Timeout => 3,
        NodeOutcome::NotConnected => 4,
    }
}

/// Per-node results of a command or write run by several replicas, one per node id.
/// A process known to several replicas (it failed over) counts once, with its best
/// outcome (see [`rank`]). Several live
/// processes with one id (each on its own replica) give the worst of their outcomes,
/// marked `conflict`: `applied` only when every one of them applied it.
pub fn merge_results(results: impl IntoIterator<Item = NodeResult>) -> Vec<NodeResult> {
    let mut by_node: BTreeMap<String, Vec<NodeResult>> = BTreeMap::new();
    for result in results {
        by_node.entry(result.node_id.clone()).or_default().push(result);
    }
    by_node.into_values().filter_map(merge_one_result).collect()
}

fn merge_one_result(results: Vec<NodeResult>) -> Option<NodeResult> {
    let best_of = |results: Vec<NodeResult>| {
        results.into_iter().reduce(|a, b| if rank(b.result) > rank(a.result) { b } else { a })
    };
    // An older peer does not say which process answered: the best outcome, as before.
    if results.iter().any(|r| r.instance_id.is_none()) {
        return best_of(results);
    }
    let mut by_instance: BTreeMap<Option<String>, Vec<NodeResult>> = BTreeMap::new();
    for result in results {
        by_instance.entry(result.instance_id.clone()).or_default().push(result);
    }
    // A process that is not connected anywhere is gone (or restarted under a new instance id).
    let (live, gone): (Vec<_>, Vec<_>) =
        by_instance.into_values().filter_map(best_of).partition(|r| r.result != NodeOutcome::NotConnected);
    if live.len() <= 1 {
        return live.into_iter().next().or_else(|| gone.into_iter().next());
    }
    let count = live.iter().filter_map(|r| r.count).reduce(|a, b| a + b);
    let worst = live.into_iter().reduce(|a, b| if badness(b.result) > badness(a.result) { b } else { a })?;
    Some(NodeResult { instance_id: None, count, conflict: true, ..worst })
}

#[cfg(test)]
mod tests;
