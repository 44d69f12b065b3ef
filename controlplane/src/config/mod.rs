//! The control plane's config file (`controlplane.toml`): typed, defaulted,
//! validated; loaded with the data plane's strict machinery so both report alike.

mod destination;
mod fleet;
mod stores;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchyard_common::config::{parse_toml, read_file};
use switchyard_common::settings::BreakerSettings;

pub use destination::{DestinationConfig, EndpointConfig, TlsVerify};
pub use stores::{load_store_url, PostgresConfig, RedisConfig};
pub use switchyard_common::config::{load_token, ConfigError};
pub use switchyard_common::wire::{Forwarding, TlsMode};

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub grpc: GrpcConfig,
    pub api: ApiConfig,
    pub routing: RoutingConfig,
    pub mapping: MappingConfig,
    pub cache: CacheConfig,
    pub breaker: BreakerConfig,
    pub cluster: ClusterConfig,
    pub destination: BTreeMap<String, DestinationConfig>,
}

impl Config {
    /// Parses and validates; every problem is reported at once.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        parse_toml(s, validate::validate)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str(&read_file(path)?)
    }

    /// How identifiers become route keys: nodes (pushed in the fleet settings), the API,
    /// bulk imports and every store agree.
    pub fn route_key_rule(&self) -> switchyard_common::routekey::RouteKeyRule {
        switchyard_common::routekey::RouteKeyRule {
            master_user_separators: self.routing.master_user_separators.clone(),
            recipient_delimiter: self.routing.recipient_delimiter.clone(),
            lowercase: self.mapping.normalize == Normalize::Lowercase,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub log_level: String,
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// How often nodes send their reports (pushed to them in Welcome).
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// Heartbeats both ways; a node silent for 3 intervals is stale.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a node that disconnected stays listed before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub node_retention: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            log_level: "info".into(),
            metrics_interval: Duration::from_secs(60),
            report_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            node_retention: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    pub bind: SocketAddr,
    pub node_token_file: Option<PathBuf>,
    pub node_token_env: String,
    /// Node sessions admitted per second on average (a reconnect storm waits its turn).
    pub session_rate: u32,
    /// Node sessions admitted at once before the rate applies.
    pub session_burst: u32,
    /// PEM certificate chain and key; TLS is required off loopback.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, nodes must also present a client certificate it signed.
    pub client_ca: Option<PathBuf>,
    /// Failed node-token attempts from one address within `lockout_window` that lock it
    /// out of gRPC (`RESOURCE_EXHAUSTED`) for `lockout_duration`.
    pub lockout_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
}

impl GrpcConfig {
    pub fn lockout(&self) -> crate::lockout::Policy {
        let (threshold, window, duration) = (self.lockout_threshold, self.lockout_window, self.lockout_duration);
        crate::lockout::Policy { threshold, window, duration }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7400)),
            node_token_file: None,
            node_token_env: "SWITCHYARD_NODE_TOKEN".into(),
            session_rate: 200,
            session_burst: 200,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            lockout_threshold: DEFAULT_LOCKOUT_THRESHOLD,
            lockout_window: DEFAULT_LOCKOUT_WINDOW,
            lockout_duration: DEFAULT_LOCKOUT_DURATION,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    pub bearer_token_file: Option<PathBuf>,
    pub bearer_token_env: String,
    /// How long a PUT, move or reset waits for node acks before answering.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// PEM certificate chain and key; TLS is required off loopback.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Failed bearer-token attempts from one address within `lockout_window` that lock
    /// it out (429) for `lockout_duration`.
    pub lockout_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// Connections held at once; a new one past it closes the oldest idle one.
    pub max_connections: usize,
    /// A request head not complete by then closes its connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7480)),
            bearer_token_file: None,
            bearer_token_env: "SWITCHYARD_ADMIN_TOKEN".into(),
            ack_timeout: Duration::from_secs(5),
            tls_cert: None,
            tls_key: None,
            lockout_threshold: DEFAULT_LOCKOUT_THRESHOLD,
            lockout_window: DEFAULT_LOCKOUT_WINDOW,
            lockout_duration: DEFAULT_LOCKOUT_DURATION,
            max_connections: 512,
            header_read_timeout: switchyard_common::http_server::DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl ApiConfig {
    pub fn http_limits(&self) -> switchyard_common::http_server::HttpLimits {
        let (max_connections, header_read_timeout) = (self.max_connections, self.header_read_timeout);
        switchyard_common::http_server::HttpLimits { max_connections, header_read_timeout }
    }

    pub fn lockout(&self) -> crate::lockout::Policy {
        let (threshold, window, duration) = (self.lockout_threshold, self.lockout_window, self.lockout_duration);
        crate::lockout::Policy { threshold, window, duration }
    }
}

/// The `lockout_*` defaults of `[api]` and `[grpc]`.
const DEFAULT_LOCKOUT_THRESHOLD: u32 = 10;
const DEFAULT_LOCKOUT_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_LOCKOUT_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Where unmapped accounts go; required (checked by validation, so that a missing
    /// value is reported together with everything else).
    pub default_destination: String,
    pub master_user_separators: Vec<String>,
    /// Characters that start a recipient's subaddress (`alice+tag@x` → `alice@x`), each
    /// one a delimiter as in Postfix; `""` cuts nothing.
    pub recipient_delimiter: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_destination: String::new(),
            master_user_separators: vec!["%".into()],
            recipient_delimiter: "+".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct MappingConfig {
    pub source: MappingSource,
    pub normalize: Normalize,
    /// How often the control plane checks the store for changes it did not write itself
    /// (another replica, a bulk import, a missed notification) and pushes them to nodes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub sqlite: SqliteConfig,
    pub file: Option<FileConfig>,
    pub postgres: Option<PostgresConfig>,
    pub redis: Option<RedisConfig>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig {
            source: MappingSource::default(),
            normalize: Normalize::default(),
            poll_interval: Duration::from_secs(1),
            sqlite: SqliteConfig::default(),
            file: None,
            postgres: None,
            redis: None,
        }
    }
}

/// Where mappings live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingSource {
    #[default]
    Sqlite,
    File,
    Postgres,
    Redis,
}

impl MappingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MappingSource::Sqlite => "sqlite",
            MappingSource::File => "file",
            MappingSource::Postgres => "postgres",
            MappingSource::Redis => "redis",
        }
    }
}

/// `[cluster]`: the other control-plane replicas sharing this mapping store. The fleet
/// views and fleet-wide commands of the API gather their answers from every peer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Management API base URLs of the other replicas, e.g. `https://10.0.0.2:7480`.
    pub peers: Vec<String>,
    /// PEM CA that signs the peers' API certificates (system roots otherwise).
    pub peer_ca: Option<PathBuf>,
    /// How long a call to one peer may take before it is reported as unreachable.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Accept `http://` peers off loopback (the admin token crosses the network in clear);
    /// each is logged as a warning at start.
    pub allow_insecure_control: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let peer_timeout = Duration::from_secs(10);
        ClusterConfig { peers: Vec::new(), peer_ca: None, peer_timeout, allow_insecure_control: false }
    }
}

/// How an identifier becomes a route key after its cut (applied by `RouteKeyRule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    #[default]
    Lowercase,
    None,
}

impl Normalize {
    pub fn as_str(self) -> &'static str {
        match self {
            Normalize::Lowercase => "lowercase",
            Normalize::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig { path: "switchyard-mappings.db".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Superseded by `max_bytes`: only nodes of earlier versions, which bound their cache
    /// by entries, still use it.
    pub max_entries: u64,
    /// How long past its TTL a node may serve a cached mapped route while the control plane
    /// is unreachable; zero disables stale answers. Unmapped answers are never served stale.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// Bytes the mapped routes may take on each node (keys, destinations and bookkeeping).
    pub max_bytes: u64,
    /// Bytes the unmapped answers may take on each node, apart from `max_bytes`, so answers
    /// about invented addresses never evict a mapped route.
    pub negative_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            max_entries: 1_000_000,
            max_stale: Duration::from_secs(3600),
            max_bytes: switchyard_common::settings::DEFAULT_MAX_BYTES,
            negative_max_bytes: switchyard_common::settings::DEFAULT_NEGATIVE_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    /// How long a backend may take to answer the replayed credential; a login without an
    /// answer in time is a breaker failure.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
}

/// The fleet's shared breaker defaults (`switchyard-common`), which nodes use too.
impl Default for BreakerConfig {
    fn default() -> Self {
        let BreakerSettings { failure_threshold, cooldown, connect_timeout, connect_retries, login_timeout } =
            BreakerSettings::default();
        BreakerConfig { failure_threshold, cooldown, connect_timeout, connect_retries, login_timeout }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
