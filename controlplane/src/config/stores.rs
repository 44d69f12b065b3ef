//! `[mapping.postgres]` and `[mapping.redis]`: the shared mapping stores' connection settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{load_token, ConfigError};

/// `[mapping.postgres]`: the connection URL comes from `url`, `url_file` or the
/// environment variable named by `url_env` (the URL usually carries a password).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PostgresConfig {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub url_env: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            url_file: None,
            url_env: "SWITCHYARD_POSTGRES_URL".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `[mapping.redis]`: URL as for PostgreSQL; every key the store uses starts with `key_prefix`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub url_env: String,
    pub key_prefix: String,
    /// How many changes the change stream keeps; a node further behind flushes its cache.
    pub history: u64,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            url_file: None,
            url_env: "SWITCHYARD_REDIS_URL".into(),
            key_prefix: "switchyard:".into(),
            history: 100_000,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Reads a store URL from the config, its file, or its environment variable, in that order.
pub fn load_store_url(url: Option<&str>, file: Option<&Path>, env: &str) -> Result<String, ConfigError> {
    if let Some(url) = url {
        return Ok(url.to_string());
    }
    load_token(file, env)?.ok_or_else(|| ConfigError::Invalid {
        problems: vec![format!("no store URL: set url, url_file, or the environment variable {env}")],
    })
}
