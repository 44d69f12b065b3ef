//! Checks on a parsed `controlplane.toml` that types alone cannot express.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use switchyard_common::config::{
    check_at_most, check_http, check_log_level, check_positive, cleartext_off_loopback, key_path, Problems,
};
use switchyard_common::wire::Protocol;

use super::{Config, DestinationConfig, MappingSource, TlsMode, TlsVerify};

pub(super) fn validate(config: &Config, p: &mut Problems) {
    let server = &config.server;
    check_log_level("server.log_level", &server.log_level, p);
    check_positive("server.metrics_interval", server.metrics_interval, p);
    check_positive("server.report_interval", server.report_interval, p);
    check_positive("server.heartbeat_interval", server.heartbeat_interval, p);
    check_positive("server.node_retention", server.node_retention, p);
    check_http("api", &config.api.http_limits(), p);

    if config.grpc.node_token_env.is_empty() {
        p.push("grpc.node_token_env", "must not be empty");
    }
    if config.api.bearer_token_env.is_empty() {
        p.push("api.bearer_token_env", "must not be empty");
    }
    check_positive("api.ack_timeout", config.api.ack_timeout, p);
    if config.grpc.session_rate == 0 {
        p.push("grpc.session_rate", "must be at least 1 session per second");
    }
    if config.grpc.session_burst == 0 {
        p.push("grpc.session_burst", "must be at least 1");
    }
    // Port 0 (ephemeral, used by tests) never conflicts.
    if config.api.bind == config.grpc.bind && config.api.bind.port() != 0 {
        p.push("api.bind", format!("{} is already bound by grpc.bind", config.api.bind));
    }

    check_lockout(config, p);
    check_tls(config, p);
    check_routing(config, p);
    check_mapping(config, p);
    check_cluster(config, p);
    check_cache_and_breaker(config, p);

    if config.destination.is_empty() {
        p.push("destination", "at least one [destination.<id>] is required");
    }
    for (id, destination) in &config.destination {
        check_destination(&key_path("destination", id), id, destination, p);
    }
}

fn check_lockout(config: &Config, p: &mut Problems) {
    for (section, policy) in [("api", config.api.lockout()), ("grpc", config.grpc.lockout())] {
        if policy.threshold == 0 {
            p.push(format!("{section}.lockout_threshold"), "must be at least 1");
        }
        check_positive(&format!("{section}.lockout_window"), policy.window, p);
        check_positive(&format!("{section}.lockout_duration"), policy.duration, p);
    }
}

fn check_tls(config: &Config, p: &mut Problems) {
    let (api, grpc) = (&config.api, &config.grpc);
    check_listener_tls("api", api.bind, (&api.tls_cert, &api.tls_key), None, p);
    check_listener_tls("grpc", grpc.bind, (&grpc.tls_cert, &grpc.tls_key), grpc.client_ca.as_deref(), p);
}

/// Tokens cross the network in clear without TLS, so only loopback may go without it.
/// The files are read here so that `--check` names an unreadable or mismatched one.
fn check_listener_tls(
    section: &str,
    bind: SocketAddr,
    (cert, key): (&Option<PathBuf>, &Option<PathBuf>),
    client_ca: Option<&Path>,
    p: &mut Problems,
) {
    let at = |key: &str| format!("{section}.{key}");
    match (cert, key) {
        (Some(cert), Some(key)) => {
            for (key, message) in crate::tls::check_files(cert, key, client_ca) {
                p.push(at(key), message);
            }
        }
        (Some(_), None) => p.push(at("tls_key"), "required with tls_cert"),
        (None, Some(_)) => p.push(at("tls_cert"), "required with tls_key"),
        (None, None) => {
            let set = format!("set {section}.tls_cert and {section}.tls_key");
            if !bind.ip().to_canonical().is_loopback() {
                p.push(at("bind"), format!("TLS required when bound to a non-loopback address ({bind}): {set}"));
            }
            if client_ca.is_some() {
                p.push(at("client_ca"), format!("client certificates need TLS: {set}"));
            }
        }
    }
}

fn check_routing(config: &Config, p: &mut Problems) {
    let routing = &config.routing;
    let default = &routing.default_destination;
    if default.is_empty() {
        p.push("routing.default_destination", "is required");
    } else if !config.destination.contains_key(default) {
        p.push("routing.default_destination", format!("{default:?} is not a declared [destination.<id>]"));
    }
    for (i, sep) in routing.master_user_separators.iter().enumerate() {
        if sep.is_empty() {
            p.push(format!("routing.master_user_separators[{i}]"), "must not be empty");
        }
    }
    // `@` ends the local part and `"` quotes it: as delimiters they would cut addresses
    // apart; whitespace and control characters are never in an address.
    if let Some(c) =
        routing.recipient_delimiter.chars().find(|c| matches!(c, '@' | '"') || c.is_whitespace() || c.is_control())
    {
        p.push("routing.recipient_delimiter", format!("{c:?} cannot be a recipient delimiter"));
    }
}

fn check_mapping(config: &Config, p: &mut Problems) {
    let mapping = &config.mapping;
    match mapping.source {
        MappingSource::Sqlite if mapping.sqlite.path.as_os_str().is_empty() => {
            p.push("mapping.sqlite.path", "must not be empty");
        }
        MappingSource::File => match &mapping.file {
            None => p.push("mapping.file", "[mapping.file] path is required when source = \"file\""),
            Some(file) if file.path.as_os_str().is_empty() => p.push("mapping.file.path", "must not be empty"),
            Some(_) => {}
        },
        MappingSource::Postgres => match &mapping.postgres {
            None => p.push("mapping.postgres", "[mapping.postgres] is required when source = \"postgres\""),
            Some(pg) => {
                check_url_source("mapping.postgres", pg.url.as_deref(), pg.url_file.as_deref(), &pg.url_env, p);
                if pg.max_connections == 0 {
                    p.push("mapping.postgres.max_connections", "must be at least 1");
                }
                check_positive("mapping.postgres.connect_timeout", pg.connect_timeout, p);
            }
        },
        MappingSource::Redis => match &mapping.redis {
            None => p.push("mapping.redis", "[mapping.redis] is required when source = \"redis\""),
            Some(redis) => {
                check_url_source("mapping.redis", redis.url.as_deref(), redis.url_file.as_deref(), &redis.url_env, p);
                if redis.history < 1000 {
                    p.push("mapping.redis.history", "must keep at least 1000 changes");
                }
                check_positive("mapping.redis.connect_timeout", redis.connect_timeout, p);
            }
        },
        MappingSource::Sqlite => {}
    }
    check_positive("mapping.poll_interval", mapping.poll_interval, p);
}

/// A store URL comes from exactly one of `url` and `url_file` (or, with neither, from the
/// environment at start-up).
fn check_url_source(section: &str, url: Option<&str>, file: Option<&Path>, env: &str, p: &mut Problems) {
    if url.is_some() && file.is_some() {
        p.push(format!("{section}.url"), "set either url or url_file, not both");
    }
    if url.is_none() && file.is_none() && env.is_empty() {
        p.push(format!("{section}.url"), "set url, url_file or url_env");
    }
}

fn check_cluster(config: &Config, p: &mut Problems) {
    for (i, peer) in config.cluster.peers.iter().enumerate() {
        let ok = peer.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() && u.path() == "/"
        });
        let at = format!("cluster.peers[{i}]");
        if !ok {
            p.push(at, format!("{peer:?} is not an http(s)://host:port URL"));
        } else if cleartext_off_loopback(peer) && !config.cluster.allow_insecure_control {
            let why = "the admin token would cross the network in clear: use https://, or set \
                       cluster.allow_insecure_control = true";
            p.push(at, format!("{peer:?} is not loopback; {why}"));
        }
    }
    check_positive("cluster.peer_timeout", config.cluster.peer_timeout, p);
}

/// Below this a byte bound holds only a few dozen of the longest keys.
const MIN_CACHE_BYTES: u64 = 64 * 1024;

fn check_cache_and_breaker(config: &Config, p: &mut Problems) {
    let cache = &config.cache;
    check_positive("cache.positive_ttl", cache.positive_ttl, p);
    check_positive("cache.negative_ttl", cache.negative_ttl, p);
    check_at_most("cache.max_stale", cache.max_stale, p);
    if cache.max_entries == 0 {
        p.push("cache.max_entries", "must be at least 1");
    }
    for (at, bytes) in [("cache.max_bytes", cache.max_bytes), ("cache.negative_max_bytes", cache.negative_max_bytes)] {
        if bytes < MIN_CACHE_BYTES {
            p.push(at, format!("must be at least {MIN_CACHE_BYTES} (bytes)"));
        }
    }
    let breaker = &config.breaker;
    if breaker.failure_threshold == 0 {
        p.push("breaker.failure_threshold", "must be at least 1");
    }
    check_positive("breaker.cooldown", breaker.cooldown, p);
    check_positive("breaker.connect_timeout", breaker.connect_timeout, p);
    check_positive("breaker.login_timeout", breaker.login_timeout, p);
}

/// Destination ids travel in API paths and query strings, metrics and logs, so they are
/// kept to characters that need no escaping anywhere.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_destination(at: &str, id: &str, d: &DestinationConfig, p: &mut Problems) {
    if !valid_id(id) {
        p.push(at, "destination ids may use only letters, digits, '-', '_' and '.'");
    }
    if d.host.trim().is_empty() {
        p.push(key_path(at, "host"), "is required");
    }
    let protocols = key_path(at, "protocol");
    if d.protocol.is_empty() {
        p.push(&protocols, "at least one [destination.<id>.protocol.<protocol>] is required");
    }
    for (name, endpoint) in &d.protocol {
        let at = key_path(&protocols, name);
        if Protocol::from_name(name).is_none() {
            let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
            p.push(&at, format!("unknown protocol; expected one of {}", known.join(", ")));
        }
        if endpoint.port == 0 {
            p.push(key_path(&at, "port"), "must be 1..=65535");
        }
    }
    check_destination_tls(at, d, p);
}

/// The node parses these same values with the same functions, so a config that passes
/// here never makes a node reject its fleet settings.
fn check_destination_tls(at: &str, d: &DestinationConfig, p: &mut Problems) {
    let pins_at = key_path(at, "tls_pin_sha256");
    match d.tls_verify {
        TlsVerify::Pinned if d.tls_pin_sha256.is_empty() => p.push(&pins_at, "required when tls_verify = \"pinned\""),
        TlsVerify::System | TlsVerify::Insecure if !d.tls_pin_sha256.is_empty() => {
            p.push(&pins_at, "only used with tls_verify = \"pinned\"")
        }
        _ => {}
    }
    for (i, pin) in d.tls_pin_sha256.iter().enumerate() {
        if switchyard_common::tls::parse_pin(pin).is_none() {
            p.push(
                format!("{pins_at}[{i}]"),
                format!("{pin:?} is not a SHA-256 in hex (64 hex digits, ':' between bytes allowed)"),
            );
        }
    }
    let uses_tls = d.protocol.values().any(|e| e.tls != TlsMode::Plain);
    match &d.tls_server_name {
        Some(name) if switchyard_common::tls::server_name(name).is_none() => {
            p.push(key_path(at, "tls_server_name"), format!("{name:?} is not a DNS name or IP address"))
        }
        None if uses_tls && !d.host.trim().is_empty() && switchyard_common::tls::server_name(&d.host).is_none() => p
            .push(
                key_path(at, "host"),
                format!("{:?} cannot be checked against a certificate; set tls_server_name", d.host),
            ),
        _ => {}
    }
    let empty = |path: &Option<std::path::PathBuf>| path.as_ref().is_some_and(|p| p.as_os_str().is_empty());
    for (key, path) in [("tls_client_cert", &d.tls_client_cert), ("tls_client_key", &d.tls_client_key)] {
        if empty(path) {
            p.push(key_path(at, key), "must not be empty");
        }
    }
    match (&d.tls_client_cert, &d.tls_client_key) {
        (Some(_), None) => p.push(key_path(at, "tls_client_key"), "required with tls_client_cert"),
        (None, Some(_)) => p.push(key_path(at, "tls_client_cert"), "required with tls_client_key"),
        _ => {}
    }
}
