//! Test configs as typed values: a destination, a listener, the mapping store, a whole
//! control-plane or node config, each rendered by `to_toml()` into the text the binaries
//! (and the in-process fleet) parse. Everything binds 127.0.0.1 with plain TCP and allows
//! cleartext credentials: tests run on loopback. Keys a type does not model go in as
//! verbatim lines (`key`, `routing`, `keys`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `[destination.<id>]` on 127.0.0.1, by default with plain endpoints and cleartext
/// credentials allowed.
#[derive(Clone, Debug)]
pub struct Destination {
    pub id: String,
    /// `(protocol, port, tls)`, each a `[destination.<id>.protocol.<protocol>]`.
    pub endpoints: Vec<(String, u16, String)>,
    pub allow_plaintext_auth: bool,
    /// Extra lines in the destination's own table (TLS, forwarding), verbatim.
    pub keys: Vec<String>,
}

impl Destination {
    pub fn new(id: &str) -> Self {
        Destination { id: id.to_string(), endpoints: Vec::new(), allow_plaintext_auth: true, keys: Vec::new() }
    }

    /// Adds a plain endpoint.
    pub fn endpoint(self, protocol: &str, port: u16) -> Self {
        self.tls_endpoint(protocol, port, "plain")
    }

    /// Adds an endpoint with `tls` (`plain`, `starttls`, `implicit`).
    pub fn tls_endpoint(mut self, protocol: &str, port: u16, tls: &str) -> Self {
        self.endpoints.push((protocol.to_string(), port, tls.to_string()));
        self
    }

    /// `allow_plaintext_auth = false`: credentials cross only TLS legs.
    pub fn tls_only(mut self) -> Self {
        self.allow_plaintext_auth = false;
        self
    }

    /// Adds plain endpoints `(protocol, port)`.
    pub fn endpoints(self, endpoints: &[(&str, u16)]) -> Self {
        endpoints.iter().fold(self, |d, (protocol, port)| d.endpoint(protocol, *port))
    }

    /// Adds a line (or several) to the destination's table, e.g. `forward_client_ip = true`.
    pub fn key(mut self, line: &str) -> Self {
        if !line.is_empty() {
            self.keys.push(line.to_string());
        }
        self
    }

    pub fn to_toml(&self) -> String {
        let id = &self.id;
        let plaintext = self.allow_plaintext_auth;
        let mut toml = format!("[destination.{id}]\nhost = \"127.0.0.1\"\nallow_plaintext_auth = {plaintext}\n");
        for key in &self.keys {
            let _ = writeln!(toml, "{key}");
        }
        for (protocol, port, tls) in &self.endpoints {
            let _ = write!(toml, "[destination.{id}.protocol.{protocol}]\nport = {port}\ntls = \"{tls}\"\n");
        }
        toml
    }
}

/// `[listener.<id>]` on 127.0.0.1:0, by default plain TCP with cleartext credentials allowed.
#[derive(Clone, Debug)]
pub struct Listener {
    pub id: String,
    pub protocol: String,
    /// `plain`, `starttls` or `implicit`.
    pub tls: String,
    /// `None` leaves the key out (the node's default).
    pub allow_plaintext_auth: Option<bool>,
    /// Extra lines (PROXY protocol, limits), verbatim.
    pub keys: Vec<String>,
}

impl Listener {
    pub fn new(id: &str, protocol: &str) -> Self {
        Listener {
            id: id.to_string(),
            protocol: protocol.to_string(),
            tls: "plain".into(),
            allow_plaintext_auth: Some(true),
            keys: Vec::new(),
        }
    }

    pub fn tls(mut self, tls: &str) -> Self {
        self.tls = tls.to_string();
        self
    }

    pub fn plaintext_auth(mut self, allow: Option<bool>) -> Self {
        self.allow_plaintext_auth = allow;
        self
    }

    /// Adds a line (or several) to the listener's table.
    pub fn key(mut self, line: &str) -> Self {
        if !line.is_empty() {
            self.keys.push(line.to_string());
        }
        self
    }

    pub fn to_toml(&self) -> String {
        let mut toml = format!(
            "[listener.{}]\nprotocol = \"{}\"\nbind = [\"127.0.0.1:0\"]\ntls = \"{}\"\n",
            self.id, self.protocol, self.tls
        );
        if let Some(allow) = self.allow_plaintext_auth {
            let _ = writeln!(toml, "allow_plaintext_auth = {allow}");
        }
        for key in &self.keys {
            let _ = writeln!(toml, "{key}");
        }
        toml
    }
}

/// Where the control plane keeps its mappings.
#[derive(Clone, Debug)]
pub enum MappingStore {
    /// A SQLite file (several control planes may share it).
    Sqlite(PathBuf),
    /// A PostgreSQL database URL.
    Postgres(String),
    /// `[mapping]` tables written by the caller (e.g. Redis, or extra store keys).
    Tables(String),
}

impl MappingStore {
    pub fn to_toml(&self) -> String {
        match self {
            MappingStore::Sqlite(path) => format!("[mapping.sqlite]\npath = \"{}\"\n", path.display()),
            MappingStore::Postgres(url) => {
                format!("[mapping]\nsource = \"postgres\"\n[mapping.postgres]\nurl = \"{url}\"\n")
            }
            MappingStore::Tables(tables) => tables.clone(),
        }
    }
}

/// A control plane for tests: ephemeral gRPC and API ports, fast intervals, a breaker
/// that trips after two failures, the given store and destinations.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    pub mapping: MappingStore,
    pub destinations: Vec<Destination>,
    pub default_destination: String,
    /// Extra lines `(table, line)` for the tables this type writes (`server`, `grpc`, `api`,
    /// `routing`, `breaker`), verbatim, in the order given.
    pub keys: Vec<(String, String)>,
}

impl ControlPlaneConfig {
    /// A SQLite store in `db`, no destinations yet.
    pub fn sqlite(db: &Path, default_destination: &str) -> Self {
        Self::with_store(MappingStore::Sqlite(db.to_path_buf()), default_destination)
    }

    pub fn with_store(mapping: MappingStore, default_destination: &str) -> Self {
        ControlPlaneConfig {
            mapping,
            destinations: Vec::new(),
            default_destination: default_destination.to_string(),
            keys: Vec::new(),
        }
    }

    pub fn destination(mut self, destination: Destination) -> Self {
        self.destinations.push(destination);
        self
    }

    /// Adds a line (or several) to `table` (`server`, `grpc`, `api`, `routing` or
    /// `breaker`), e.g. `key("api", "header_read_timeout = \"1s\"")`; a key this type already
    /// writes (`heartbeat_interval = "5s"`) replaces its default.
    pub fn key(mut self, table: &str, line: &str) -> Self {
        if !line.is_empty() {
            self.keys.push((table.to_string(), line.to_string()));
        }
        self
    }

    /// Adds a `[routing]` line (or several), e.g. `recipient_delimiter = "+"`.
    pub fn routing(self, line: &str) -> Self {
        self.key("routing", line)
    }

    /// `[table]` with its fixed `lines` and the caller's extra keys for it; an extra key the
    /// fixed lines already set (e.g. `heartbeat_interval`) replaces the fixed line.
    fn table(&self, table: &str, lines: &[String]) -> String {
        let extra: Vec<&str> = self.keys.iter().filter(|(t, _)| t == table).map(|(_, line)| line.as_str()).collect();
        let overridden = |line: &str| extra.iter().flat_map(|e| e.lines()).any(|e| key_name(e) == key_name(line));
        let mut toml = format!("[{table}]\n");
        for line in lines.iter().filter(|line| !overridden(line)) {
            let _ = writeln!(toml, "{line}");
        }
        for line in extra {
            let _ = writeln!(toml, "{line}");
        }
        toml
    }

    pub fn to_toml(&self) -> String {
        let tables: String = self.destinations.iter().map(Destination::to_toml).collect();
        self.to_toml_with(&tables)
    }

    /// Like [`to_toml`](Self::to_toml) with destination tables written by the caller.
    pub fn to_toml_with(&self, destination_tables: &str) -> String {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut toml = self.table(
            "server",
            &lines(&["metrics_interval = \"1s\"", "report_interval = \"200ms\"", "heartbeat_interval = \"500ms\""]),
        );
        toml.push_str(&self.table("grpc", &lines(&["bind = \"127.0.0.1:0\""])));
        toml.push_str(&self.table("api", &lines(&["bind = \"127.0.0.1:0\"", "ack_timeout = \"3s\""])));
        toml.push_str(&self.table("routing", &[format!("default_destination = \"{}\"", self.default_destination)]));
        let breaker = ["failure_threshold = 2", "cooldown = \"5m\"", "connect_timeout = \"2s\"", "connect_retries = 0"];
        toml.push_str(&self.table("breaker", &lines(&breaker)));
        toml.push_str(&self.mapping.to_toml());
        toml.push_str(destination_tables);
        toml
    }
}

/// The key a `key = value` line sets (`None` for anything else).
fn key_name(line: &str) -> Option<&str> {
    line.split_once('=').map(|(key, _)| key.trim())
}

/// A data-plane node for tests: id, control endpoints, health on 127.0.0.1:0, listeners.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: String,
    pub endpoints: Vec<String>,
    /// `[node] shutdown_grace`.
    pub shutdown_grace: String,
    pub listeners: Vec<Listener>,
    /// Extra lines at the end of the file (own tables), verbatim.
    pub tables: String,
}

impl NodeConfig {
    /// No listeners yet, `shutdown_grace = "2s"`.
    pub fn new(id: &str, endpoints: &[String]) -> Self {
        NodeConfig {
            id: id.to_string(),
            endpoints: endpoints.to_vec(),
            shutdown_grace: "2s".into(),
            listeners: Vec::new(),
            tables: String::new(),
        }
    }

    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.shutdown_grace = grace.to_string();
        self
    }

    /// Appends tables written by the caller (e.g. hand-written listeners).
    pub fn tables(mut self, tables: &str) -> Self {
        self.tables.push_str(tables);
        self
    }

    pub fn to_toml(&self) -> String {
        let endpoints = self.endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
        let mut toml = format!(
            "[node]\nid = \"{}\"\nmetrics_interval = \"1s\"\nshutdown_grace = \"{}\"\n\
             [control]\nendpoints = [{endpoints}]\nresolve_timeout = \"2s\"\n\
             [health]\nbind = \"127.0.0.1:0\"\n",
            self.id, self.shutdown_grace
        );
        for listener in &self.listeners {
            toml.push_str(&listener.to_toml());
        }
        toml.push_str(&self.tables);
        toml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_renders_its_table_keys_and_endpoints() {
        let toml = Destination::new("legacy").endpoint("imap", 143).key("forward_client_ip = true").to_toml();
        assert_eq!(
            toml,
            "[destination.legacy]\nhost = \"127.0.0.1\"\nallow_plaintext_auth = true\nforward_client_ip = true\n\
             [destination.legacy.protocol.imap]\nport = 143\ntls = \"plain\"\n"
        );
    }

    #[test]
    fn the_control_plane_config_is_the_one_the_fixtures_always_used() {
        let toml = ControlPlaneConfig::sqlite(Path::new("/m.db"), "legacy").to_toml();
        assert_eq!(
            toml,
            "[server]\nmetrics_interval = \"1s\"\nreport_interval = \"200ms\"\nheartbeat_interval = \"500ms\"\n\
             [grpc]\nbind = \"127.0.0.1:0\"\n[api]\nbind = \"127.0.0.1:0\"\nack_timeout = \"3s\"\n\
             [routing]\ndefault_destination = \"legacy\"\n\
             [breaker]\nfailure_threshold = 2\ncooldown = \"5m\"\nconnect_timeout = \"2s\"\nconnect_retries = 0\n\
             [mapping.sqlite]\npath = \"/m.db\"\n"
        );
    }

    #[test]
    fn an_extra_key_replaces_the_default_it_names() {
        let toml = ControlPlaneConfig::sqlite(Path::new("/m.db"), "legacy")
            .destination(Destination::new("legacy").endpoint("imap", 143))
            .key("server", "heartbeat_interval = \"5s\"")
            .key("grpc", "session_rate = 50\nsession_burst = 10")
            .to_toml();
        assert!(toml.starts_with(
            "[server]\nmetrics_interval = \"1s\"\nreport_interval = \"200ms\"\nheartbeat_interval = \"5s\"\n\
             [grpc]\nbind = \"127.0.0.1:0\"\nsession_rate = 50\nsession_burst = 10\n[api]\n"
        ));
        controlplane::config::Config::from_toml_str(&toml).unwrap();
    }

    #[test]
    fn configs_parse_as_the_binaries_parse_them() {
        let cp = ControlPlaneConfig::sqlite(Path::new("/tmp/m.db"), "legacy")
            .destination(Destination::new("legacy").endpoint("imap", 143))
            .routing("recipient_delimiter = \"+\"");
        controlplane::config::Config::from_toml_str(&cp.to_toml()).unwrap();
        let node = NodeConfig::new("dp-1", &["http://127.0.0.1:1".into()]).listener(Listener::new("imap", "imap"));
        dataplane::config::Config::from_toml_str(&node.to_toml()).unwrap();
    }
}
