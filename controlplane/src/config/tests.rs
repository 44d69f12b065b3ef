//! Tests for `controlplane.toml` loading: the documented example, defaults, every validation
//! rule, and that all problems of a file are reported together.

use super::*;

const SPEC_EXAMPLE: &str = r#"
[server]
log_level = "info"
metrics_interval = "60s"
[grpc]
bind = "127.0.0.1:7400"
node_token_file = "/etc/switchyard/node.token"
[api]
bind = "127.0.0.1:7480"
bearer_token_file = "/etc/switchyard/admin.token"
[routing]
default_destination = "legacy"
master_user_separators = ["%"]
[mapping]
source = "sqlite"                 # sqlite | file | postgres | redis
normalize = "lowercase"           # lowercase | none
[mapping.sqlite]
path = "/var/lib/switchyard/mappings.db"
[cache]
positive_ttl = "10m"
negative_ttl = "30s"
max_entries = 1000000
max_stale = "1h"
[breaker]
failure_threshold = 5
cooldown = "30s"
connect_timeout = "10s"
connect_retries = 1
[destination.legacy]
host = "10.0.1.10"
forwarding = "none"               # none | proxy | xclient
allow_plaintext_auth = false      # may credentials cross a tls = "plain" backend leg
[destination.legacy.protocol.imap]
port = 143
tls = "starttls"                  # plain | starttls | implicit
"#;

const MINIMAL: &str = r#"
[routing]
default_destination = "legacy"
[destination.legacy]
host = "10.0.1.10"
[destination.legacy.protocol.imap]
port = 143
"#;

/// `MINIMAL` with `overrides` merged in table by table (a value in `overrides` wins).
fn with(overrides: &str) -> String {
    fn merge(base: &mut toml::Table, over: toml::Table) {
        for (k, v) in over {
            match (base.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
    let mut base: toml::Table = toml::from_str(MINIMAL).unwrap();
    merge(&mut base, toml::from_str(overrides).unwrap());
    toml::to_string(&base).unwrap()
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

#[test]
fn spec_example_parses() {
    let c = Config::from_toml_str(SPEC_EXAMPLE).unwrap();
    assert_eq!(c.grpc.bind, "127.0.0.1:7400".parse().unwrap());
    assert_eq!(c.grpc.node_token_file.as_deref(), Some(Path::new("/etc/switchyard/node.token")));
    assert_eq!(c.api.bearer_token_file.as_deref(), Some(Path::new("/etc/switchyard/admin.token")));
    assert_eq!(c.routing.default_destination, "legacy");
    assert_eq!(c.mapping.sqlite.path, Path::new("/var/lib/switchyard/mappings.db"));
    assert_eq!(c.cache.positive_ttl, Duration::from_secs(600));
    assert_eq!(c.cache.max_stale, Duration::from_secs(3600));
    let legacy = &c.destination["legacy"];
    assert_eq!(legacy.host, "10.0.1.10");
    assert_eq!(legacy.forwarding, Forwarding::None);
    assert_eq!(legacy.protocol["imap"], EndpointConfig { port: 143, tls: TlsMode::Starttls, forwarding: None });
}

#[test]
fn defaults_are_applied() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.server.log_level, "info");
    assert_eq!(c.server.metrics_interval, Duration::from_secs(60));
    assert_eq!(c.server.report_interval, Duration::from_secs(10));
    assert_eq!(c.server.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(c.grpc.bind, "127.0.0.1:7400".parse().unwrap());
    assert_eq!(c.grpc.node_token_env, "SWITCHYARD_NODE_TOKEN");
    assert_eq!(c.api.bind, "127.0.0.1:7480".parse().unwrap());
    assert_eq!(c.api.bearer_token_env, "SWITCHYARD_ADMIN_TOKEN");
    assert_eq!(c.api.ack_timeout, Duration::from_secs(5));
    assert_eq!(c.routing.master_user_separators, ["%"]);
    assert_eq!(c.routing.recipient_delimiter, "+");
    assert_eq!(c.route_key_rule(), switchyard_common::routekey::RouteKeyRule::default());
    assert_eq!(c.mapping.source, MappingSource::Sqlite);
    assert_eq!(c.mapping.normalize, Normalize::Lowercase);
    assert_eq!(c.mapping.sqlite.path, Path::new("switchyard-mappings.db"));
    assert_eq!(c.mapping.file, None);
    assert_eq!(c.cache, CacheConfig::default());
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(30));
    assert_eq!(c.cache.max_entries, 1_000_000);
    assert_eq!((c.cache.max_bytes, c.cache.negative_max_bytes), (512 << 20, 32 << 20));
    assert_eq!(c.breaker.failure_threshold, 5);
    assert_eq!(c.breaker.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.breaker.connect_retries, 1);
    assert_eq!(c.breaker.login_timeout, Duration::from_secs(30), "the wait nodes had before the key");
    let legacy = &c.destination["legacy"];
    assert_eq!((legacy.forwarding, legacy.allow_plaintext_auth), (Forwarding::None, false));
    assert_eq!(legacy.protocol["imap"].tls, TlsMode::Starttls);
}

#[test]
fn durations_and_enums_parse() {
    let text = with(concat!(
        "[cache]\npositive_ttl = \"2h 5m\"\nnegative_ttl = \"1500ms\"\n",
        "[mapping]\nsource = \"file\"\nnormalize = \"none\"\n[mapping.file]\npath = \"m.tsv\"\n",
        "[destination.legacy]\nforwarding = \"xclient\"\n",
        "[destination.legacy.protocol.pop3]\nport = 995\ntls = \"implicit\"\n",
    ));
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.cache.positive_ttl, Duration::from_secs(7500));
    assert_eq!(c.cache.negative_ttl, Duration::from_millis(1500));
    assert_eq!((c.mapping.source, c.mapping.normalize), (MappingSource::File, Normalize::None));
    assert_eq!(c.mapping.file.as_ref().unwrap().path, Path::new("m.tsv"));
    assert_eq!(c.destination["legacy"].forwarding.as_str(), "xclient");
    assert_eq!(c.destination["legacy"].protocol["pop3"].tls, TlsMode::Implicit);
    let rule = c.route_key_rule();
    assert!(!rule.lowercase);
    let delimiters = Config::from_toml_str(&with("[routing]\nrecipient_delimiter = \"+-\"\n")).unwrap();
    assert_eq!(delimiters.route_key_rule().recipient_delimiter, "+-");
    let none = Config::from_toml_str(&with("[routing]\nrecipient_delimiter = \"\"\n")).unwrap();
    assert_eq!(none.route_key_rule().recipient_delimiter, "");
}

#[test]
fn plaintext_backends_are_allowed_without_plaintext_auth() {
    let text = with("[destination.legacy.protocol.imap]\ntls = \"plain\"");
    let c = Config::from_toml_str(&text).unwrap();
    assert!(!c.destination["legacy"].allow_plaintext_auth);
}

#[test]
fn backend_tls_keys_parse_with_their_defaults() {
    let legacy = &Config::from_toml_str(MINIMAL).unwrap().destination["legacy"];
    assert_eq!(legacy.tls_verify, TlsVerify::System);
    assert_eq!((&legacy.tls_server_name, &legacy.tls_client_cert, &legacy.tls_client_key), (&None, &None, &None));
    assert!(legacy.tls_pin_sha256.is_empty());
    let pin = ["AB"; 32].join(":");
    let text = with(&format!(
        "[destination.legacy]\ntls_verify = \"pinned\"\ntls_pin_sha256 = [\"{pin}\"]\n\
         tls_server_name = \"imap.example.test\"\ntls_client_cert = \"/etc/sy/node.pem\"\n\
         tls_client_key = \"/etc/sy/node.key\"\n"
    ));
    let legacy = &Config::from_toml_str(&text).unwrap().destination["legacy"];
    assert_eq!(legacy.tls_verify.as_str(), "pinned");
    assert_eq!(legacy.tls_pin_sha256, [pin]);
    assert_eq!(legacy.tls_server_name.as_deref(), Some("imap.example.test"));
    assert_eq!(legacy.tls_client_key.as_deref(), Some(Path::new("/etc/sy/node.key")));
    let insecure = with("[destination.legacy]\ntls_verify = \"insecure\"\ntls_server_name = \"10.0.1.10\"");
    assert_eq!(Config::from_toml_str(&insecure).unwrap().destination["legacy"].tls_verify, TlsVerify::Insecure);
}

#[test]
fn each_rule_reports_its_own_problem() {
    let d = "[destination.legacy]\n";
    let imap = "[destination.legacy.protocol.imap]\n";
    let cases: &[(String, &str)] = &[
        ("[server]\nlog_level = \"loud\"".into(), "server.log_level: \"loud\" is not one of"),
        ("[server]\nmetrics_interval = \"0s\"".into(), "server.metrics_interval: must be greater than zero"),
        ("[server]\nreport_interval = \"0s\"".into(), "server.report_interval: must be greater than zero"),
        ("[server]\nheartbeat_interval = \"0s\"".into(), "server.heartbeat_interval: must be greater than zero"),
        ("[grpc]\nnode_token_env = \"\"".into(), "grpc.node_token_env: must not be empty"),
        ("[api]\nbearer_token_env = \"\"".into(), "api.bearer_token_env: must not be empty"),
        ("[api]\nack_timeout = \"0s\"".into(), "api.ack_timeout: must be greater than zero"),
        ("[api]\nbind = \"127.0.0.1:7400\"".into(), "api.bind: 127.0.0.1:7400 is already bound by grpc.bind"),
        ("[routing]\ndefault_destination = \"\"".into(), "routing.default_destination: is required"),
        ("[routing]\ndefault_destination = \"new\"".into(), "routing.default_destination: \"new\" is not a declared"),
        (
            "[routing]\nmaster_user_separators = [\"%\", \"\"]".into(),
            "routing.master_user_separators[1]: must not be empty",
        ),
        ("[routing]\nrecipient_delimiter = \"+@\"".into(), "routing.recipient_delimiter: '@' cannot be a recipient"),
        ("[routing]\nrecipient_delimiter = \"+ \"".into(), "routing.recipient_delimiter: ' ' cannot be a recipient"),
        ("[mapping]\nsource = \"file\"".into(), "mapping.file: [mapping.file] path is required when source = \"file\""),
        ("[mapping]\nsource = \"postgres\"".into(), "mapping.postgres: [mapping.postgres] is required"),
        ("[mapping]\nsource = \"redis\"".into(), "mapping.redis: [mapping.redis] is required"),
        ("[mapping]\npoll_interval = \"0s\"".into(), "mapping.poll_interval: must be greater than zero"),
        (
            "[mapping]\nsource = \"postgres\"\n[mapping.postgres]\nurl = \"postgres://h/db\"\nurl_file = \"/f\"".into(),
            "mapping.postgres.url: set either url or url_file, not both",
        ),
        (
            "[mapping]\nsource = \"postgres\"\n[mapping.postgres]\nmax_connections = 0".into(),
            "mapping.postgres.max_connections: must be at least 1",
        ),
        (
            "[mapping]\nsource = \"redis\"\n[mapping.redis]\nurl_env = \"\"".into(),
            "mapping.redis.url: set url, url_file or url_env",
        ),
        (
            "[mapping]\nsource = \"redis\"\n[mapping.redis]\nhistory = 10".into(),
            "mapping.redis.history: must keep at least 1000 changes",
        ),
        (
            "[cluster]\npeers = [\"10.0.0.2:7480\"]".into(),
            "cluster.peers[0]: \"10.0.0.2:7480\" is not an http(s)://host:port URL",
        ),
        ("[cluster]\npeers = [\"https://10.0.0.2:7480/api\"]".into(), "cluster.peers[0]"),
        (
            "[mapping]\nsource = \"mysql\"".into(),
            "mapping.source: unknown variant `mysql`, expected one of `sqlite`, `file`, `postgres`, `redis`",
        ),
        ("[mapping]\nnormalize = \"upper\"".into(), "mapping.normalize: unknown variant `upper`"),
        ("[mapping.sqlite]\npath = \"\"".into(), "mapping.sqlite.path: must not be empty"),
        ("[mapping.file]".into(), "mapping.file: missing field `path`"),
        ("[cache]\npositive_ttl = \"0s\"".into(), "cache.positive_ttl: must be greater than zero"),
        ("[cache]\nnegative_ttl = \"0s\"".into(), "cache.negative_ttl: must be greater than zero"),
        ("[cache]\nmax_entries = 0".into(), "cache.max_entries: must be at least 1"),
        ("[cache]\nmax_bytes = 1000".into(), "cache.max_bytes: must be at least 65536 (bytes)"),
        ("[cache]\nnegative_max_bytes = 0".into(), "cache.negative_max_bytes: must be at least 65536 (bytes)"),
        ("[cache]\nmax_bytes = \"1GB\"".into(), "cache.max_bytes: invalid type: string \"1GB\""),
        ("[breaker]\nfailure_threshold = 0".into(), "breaker.failure_threshold: must be at least 1"),
        ("[breaker]\ncooldown = \"0s\"".into(), "breaker.cooldown: must be greater than zero"),
        ("[breaker]\nconnect_timeout = \"0s\"".into(), "breaker.connect_timeout: must be greater than zero"),
        ("[breaker]\nlogin_timeout = \"0s\"".into(), "breaker.login_timeout: must be greater than zero"),
        (format!("{d}host = \"\""), "destination.legacy.host: is required"),
        (format!("{d}forwarding = \"haproxy\""), "destination.legacy.forwarding: unknown variant `haproxy`"),
        (format!("{imap}port = 0"), "destination.legacy.protocol.imap.port: must be 1..=65535"),
        (format!("{imap}port = 70000"), "destination.legacy.protocol.imap.port: invalid value: integer `70000`"),
        (format!("{imap}tls = \"ssl\""), "destination.legacy.protocol.imap.tls: unknown variant `ssl`"),
        (
            "[destination.legacy.protocol.imap4]\nport = 143".into(),
            "destination.legacy.protocol.imap4: unknown protocol; expected one of imap, pop3",
        ),
        (
            "[destination.\"a b\"]\nhost = \"h\"\n[destination.\"a b\".protocol.imap]\nport = 1".into(),
            "destination.\"a b\": destination ids may use only",
        ),
        ("[destination.other]\nhost = \"h\"".into(), "destination.other.protocol: at least one"),
        (
            format!("{d}tls_verify = \"pinned\""),
            "destination.legacy.tls_pin_sha256: required when tls_verify = \"pinned\"",
        ),
        (
            format!("{d}tls_pin_sha256 = [\"{}\"]", "ab".repeat(32)),
            "destination.legacy.tls_pin_sha256: only used with tls_verify = \"pinned\"",
        ),
        (
            format!("{d}tls_verify = \"pinned\"\ntls_pin_sha256 = [\"{}\", \"xyz\"]", "ab".repeat(32)),
            "destination.legacy.tls_pin_sha256[1]: \"xyz\" is not a SHA-256 in hex",
        ),
        (format!("{d}tls_verify = \"trusting\""), "destination.legacy.tls_verify: unknown variant `trusting`"),
        (
            format!("{d}tls_server_name = \"not a name\""),
            "destination.legacy.tls_server_name: \"not a name\" is not a DNS name",
        ),
        (
            format!("{d}host = \"back end\""),
            "destination.legacy.host: \"back end\" cannot be checked against a certificate",
        ),
        (
            format!("{d}tls_client_cert = \"/etc/sy/node.pem\""),
            "destination.legacy.tls_client_key: required with tls_client_cert",
        ),
        (
            format!("{d}tls_client_key = \"/etc/sy/node.key\""),
            "destination.legacy.tls_client_cert: required with tls_client_key",
        ),
        (
            format!("{d}tls_client_cert = \"\"\ntls_client_key = \"k\""),
            "destination.legacy.tls_client_cert: must not be empty",
        ),
        ("[api]\nlockout = 5".into(), "api.lockout: unknown key"),
    ];
    for (overrides, expected) in cases {
        let found = problems(&with(overrides));
        assert_eq!(found.len(), 1, "{overrides}: {found:?}");
        assert!(found[0].starts_with(expected), "{overrides}: {found:?} lacks {expected:?}");
    }
}

#[test]
fn no_destination_at_all() {
    let found = problems("[routing]\ndefault_destination = \"legacy\"\n");
    assert_eq!(
        found,
        [
            "destination: at least one [destination.<id>] is required",
            "routing.default_destination: \"legacy\" is not a declared [destination.<id>]",
        ]
    );
}

#[test]
fn two_unknown_keys_and_a_bad_value_are_all_reported() {
    let text = with(concat!(
        "[server]\nlogging = \"debug\"\n",
        "[destination.legacy]\nhots = \"x\"\n",
        "[destination.legacy.protocol.imap]\nport = 0\n",
    ));
    assert_eq!(
        problems(&text),
        [
            "destination.legacy.hots: unknown key",
            "destination.legacy.protocol.imap.port: must be 1..=65535",
            "server.logging: unknown key",
        ]
    );
}

#[test]
fn type_errors_and_validation_problems_come_together() {
    let text = with(concat!(
        "[breaker]\ncooldown = \"soon\"\nfailure_threshold = 0\n",
        "[mapping]\nsource = \"postgres\"\n",
        "[destination.legacy.protocol.imap]\nport = \"imap\"\n",
        "[destination.legacy.protocol.smtp]\nport = 0\n",
    ));
    let found = problems(&text);
    let paths: Vec<&str> = found.iter().map(|p| p.split(": ").next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "breaker.cooldown",
            "breaker.failure_threshold",
            "destination.legacy.protocol.imap.port",
            "destination.legacy.protocol.smtp.port",
            "mapping.postgres",
        ],
        "{found:?}"
    );
}

#[test]
fn the_deployed_example_is_valid() {
    let example = include_str!("../../../deploy/examples/controlplane.toml");
    if let Err(e) = Config::from_toml_str(example) {
        panic!("deploy/examples/controlplane.toml: {e}");
    }
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controlplane.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(Config::load(&path).unwrap().destination.len(), 1);
    assert!(matches!(Config::load(&dir.path().join("absent.toml")), Err(ConfigError::Io { .. })));
}
