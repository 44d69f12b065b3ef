//! Tests for `dataplane.toml` loading: the SPEC example, defaults, every validation rule,
//! and that all problems of a file are reported together.

use super::*;

const MINIMAL: &str = r#"
[control]
endpoints = ["http://127.0.0.1:7400"]
[listener.imap]
protocol = "imap"
bind = ["127.0.0.1:1143"]
tls = "plain"
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
fn spec_example_needs_a_certificate_for_client_tls() {
    let spec = r#"
[node]
id = "dp-1"                       # default: the host name
log_level = "info"
metrics_interval = "60s"
[control]
endpoints = ["http://127.0.0.1:7400"]
node_token_file = "/etc/switchyard/node.token"
[health]
bind = "127.0.0.1:7481"
[listener.imap]
protocol = "imap"                 # imap | pop3 | managesieve | submission | smtp | lmtp | http
bind = ["0.0.0.0:143"]
tls = "starttls"                  # plain | starttls | implicit
allow_plaintext_auth = false      # accept cleartext credentials before TLS
max_connections = 8192
preauth_timeout = "30s"
max_auth_attempts = 3
"#;
    assert_eq!(problems(spec), ["listener.imap.tls: tls = \"starttls\" needs at least one [tls.certificate.<id>]"]);
    let pki = crate::tls::testing::Pki::new();
    let leaf = pki.issue("imap", &["imap.example.test"]);
    let with_certificate = format!(
        "{spec}[tls.certificate.main]\ncert = {:?}\nkey = {:?}\n",
        leaf.cert_path.display().to_string(),
        leaf.key_path.display().to_string()
    );
    let config = Config::from_toml_str(&with_certificate).unwrap();
    assert_eq!(config.listener["imap"].tls, TlsMode::Starttls);
    assert_eq!(config.tls.certificate["main"].names, None);
    let config = Config::from_toml_str(&spec.replace("\"starttls\"", "\"plain\"")).unwrap();
    assert_eq!(config.node.id, "dp-1");
    assert_eq!(config.control.node_token_file.as_deref(), Some(Path::new("/etc/switchyard/node.token")));
    let imap = &config.listener["imap"];
    assert_eq!(imap.protocol, Protocol::Imap);
    assert_eq!(imap.bind, ["0.0.0.0:143".parse().unwrap()]);
    assert_eq!((imap.tls, imap.max_connections, imap.max_auth_attempts), (TlsMode::Plain, 8192, 3));
}

#[test]
fn defaults_are_applied() {
    let config = Config::from_toml_str(MINIMAL).unwrap();
    assert!(!config.node.id.is_empty());
    assert_eq!(config.node.log_level, "info");
    assert_eq!(config.node.metrics_interval, Duration::from_secs(60));
    assert_eq!(config.control.node_token_env, "SWITCHYARD_NODE_TOKEN");
    assert_eq!(config.control.node_token_file, None);
    assert_eq!(config.control.resolve_timeout, Duration::from_secs(5));
    assert_eq!(config.health.bind, "127.0.0.1:7481".parse().unwrap());
    let l = &config.listener["imap"];
    assert!(!l.allow_plaintext_auth);
    assert_eq!((l.max_connections, l.max_auth_attempts), (8192, 3));
    assert_eq!((l.max_line_length, l.max_literal_size), (8192, 65536));
    assert_eq!(l.preauth_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(1800));
}

#[test]
fn durations_are_human_readable() {
    let text = with(
        "[listener.imap]\npreauth_timeout = \"90s\"\nidle_timeout = \"1h 30m\"\n[control]\nresolve_timeout = \"250ms\"",
    );
    let config = Config::from_toml_str(&text).unwrap();
    assert_eq!(config.listener["imap"].preauth_timeout, Duration::from_secs(90));
    assert_eq!(config.listener["imap"].idle_timeout, Duration::from_secs(5400));
    assert_eq!(config.control.resolve_timeout, Duration::from_millis(250));
}

#[test]
fn each_rule_reports_its_own_problem() {
    let l = "[listener.imap]\n";
    let cases: &[(String, &str)] = &[
        ("[node]\nid = \" \"".into(), "node.id: must not be empty"),
        ("[node]\nlog_level = \"inf\"".into(), "node.log_level: \"inf\" is not one of"),
        ("[node]\nmetrics_interval = \"0s\"".into(), "node.metrics_interval: must be greater than zero"),
        ("[control]\nendpoints = []".into(), "control.endpoints: at least one control-plane URL"),
        ("[control]\nendpoints = [\"cp:7400\"]".into(), "control.endpoints[0]: \"cp:7400\" must start with http:// or https://"),
        ("[control]\nnode_token_env = \"\"".into(), "control.node_token_env: must not be empty"),
        ("[control]\nresolve_timeout = \"0s\"".into(), "control.resolve_timeout: must be greater than zero"),
        (format!("{l}protocol = \"http\""), "listener.imap.protocol: protocol http is not available in this build"),
        (format!("{l}tls = \"implicit\""), "listener.imap.tls: tls = \"implicit\" needs at least one [tls.certificate.<id>]"),
        (format!("{l}bind = []"), "listener.imap.bind: at least one address is required"),
        (format!("{l}max_connections = 0"), "listener.imap.max_connections: must be at least 1"),
        (format!("{l}max_auth_attempts = 0"), "listener.imap.max_auth_attempts: must be at least 1"),
        (format!("{l}max_line_length = 100"), "listener.imap.max_line_length: must be at least 1024"),
        (format!("{l}max_literal_size = 0"), "listener.imap.max_literal_size: must be at least 1"),
        (format!("{l}preauth_timeout = \"0s\""), "listener.imap.preauth_timeout: must be greater than zero"),
        (format!("{l}idle_timeout = \"0s\""), "listener.imap.idle_timeout: must be greater than zero"),
        ("[listener.b]\nprotocol = \"imap\"\ntls = \"plain\"\nbind = [\"127.0.0.1:1143\"]".into(),
            "listener.imap.bind: 127.0.0.1:1143 is already bound by listener.b.bind"),
        ("[health]\nbind = \"127.0.0.1:1143\"".into(), "listener.imap.bind: 127.0.0.1:1143 is already bound by health.bind"),
        (format!("{l}protocol = \"gopher\""), "listener.imap.protocol: unknown variant `gopher`"),
        (format!("{l}bind = [\"nowhere\"]"), "listener.imap.bind[0]: invalid socket address syntax"),
        (format!("{l}preauth_timeout = \"30x\""), "listener.imap.preauth_timeout: invalid value: string \"30x\", expected a duration such as \"30s\""),
        (format!("{l}max_connections = -1"), "listener.imap.max_connections: invalid value: integer `-1`"),
        (format!("{l}proxy_protocol = \"sometimes\""), "listener.imap.proxy_protocol"),
        (format!("{l}proxy_trusted = [\"not-a-cidr\"]"), "listener.imap.proxy_trusted"),
        (format!("{l}proxy_maybe = true"), "listener.imap.proxy_maybe: unknown key"),
        ("[tls.certificate.a]\ncert = \"x\"".into(), "tls.certificate.a: missing field `key`"),
        ("[tls]\ncertificates = {}".into(), "tls.certificates: unknown key"),
        ("[\"listener\".\"a.b\"]\nprotocol = \"imap\"\ntls = \"plain\"\nbind = [\"127.0.0.1:0\"]\nmax_connections = 0".into(),
            "listener.\"a.b\".max_connections: must be at least 1"),
    ];
    for (overrides, expected) in cases {
        let found = problems(&with(overrides));
        assert_eq!(found.len(), 1, "{overrides}: {found:?}");
        assert!(found[0].starts_with(expected), "{overrides}: {found:?} lacks {expected:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = with("[node]\nidd = \"x\"\n[listener.imap]\nmax_conections = 5\nmax_auth_attempts = 0");
    assert_eq!(
        problems(&text),
        [
            "listener.imap.max_auth_attempts: must be at least 1",
            "listener.imap.max_conections: unknown key",
            "node.idd: unknown key",
        ]
    );
}

#[test]
fn type_errors_do_not_hide_other_problems_or_invent_new_ones() {
    let text = with(concat!(
        "[control]\nendpoints = [\"cp\"]\nresolve_timeout = \"soon\"\n",
        "[listener.imap]\nprotocol = \"gopher\"\nbind = [\"127.0.0.1:1\", \"x\", \"y\"]\n",
        "max_connections = 0\ntypo = 1\n",
    ));
    let found = problems(&text);
    let prefixes: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        prefixes,
        [
            "control.endpoints[0]",
            "control.resolve_timeout",
            "listener.imap.bind[1]",
            "listener.imap.protocol",
            "listener.imap.typo",
        ],
        "{found:?}"
    );
    // max_connections = 0 is only checked once the listener parses; a missing required
    // key is reported as such.
    let text = "[control]\nendpoints = [\"http://127.0.0.1\"]\n[listener.imap]\nprotocol = \"imap\"\nbind = []\n";
    assert_eq!(problems(text), ["listener.imap: missing field `tls`"]);
}

#[test]
fn errors_display_one_problem_per_line() {
    let err = Config::from_toml_str(&with("[node]\na = 1\nb = 2")).unwrap_err();
    assert_eq!(err.to_string(), "2 configuration problem(s):\n  node.a: unknown key\n  node.b: unknown key");
    let err = Config::from_toml_str("[node\nid = 1").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn load_reads_the_file_and_names_it_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataplane.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(Config::load(&path).unwrap().listener.len(), 1);
    let missing = dir.path().join("absent.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn the_deployed_example_is_valid() {
    let example = include_str!("../../../deploy/examples/dataplane.toml");
    if let Err(e) = Config::from_toml_str(example) {
        panic!("deploy/examples/dataplane.toml: {e}");
    }
}

#[test]
fn tokens_come_from_env_first_then_the_trimmed_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.token");
    std::fs::write(&file, "  s3cret\n").unwrap();
    // Each case uses its own variable: tests run in parallel threads.
    let env = "SWITCHYARD_TEST_TOKEN_DP_A";
    assert_eq!(load_token(Some(&file), env).unwrap().as_deref(), Some("s3cret"));
    std::env::set_var(env, "from-env\n");
    assert_eq!(load_token(Some(&file), env).unwrap().as_deref(), Some("from-env"));
    std::env::set_var("SWITCHYARD_TEST_TOKEN_DP_B", "");
    assert_eq!(load_token(Some(&file), "SWITCHYARD_TEST_TOKEN_DP_B").unwrap().as_deref(), Some("s3cret"));
    assert_eq!(load_token(None, "SWITCHYARD_TEST_TOKEN_DP_C").unwrap(), None);
    std::fs::write(&file, "\n").unwrap();
    assert!(load_token(Some(&file), "SWITCHYARD_TEST_TOKEN_DP_C").is_err());
    let absent = dir.path().join("absent");
    assert!(matches!(load_token(Some(&absent), ""), Err(ConfigError::Io { .. })));
}

#[test]
fn protocol_and_tls_names_round_trip() {
    for p in Protocol::ALL {
        assert_eq!(Protocol::from_name(p.as_str()), Some(p));
    }
    assert_eq!(Protocol::from_name("gopher"), None);
    assert_eq!(TlsMode::Starttls.to_string(), "starttls");
}

#[test]
fn mail_delivery_listeners_are_served_and_only_they_take_a_pass_through() {
    for protocol in ["submission", "smtp", "lmtp"] {
        let config = Config::from_toml_str(&with(&format!("[listener.imap]\nprotocol = \"{protocol}\""))).unwrap();
        assert_eq!(config.listener["imap"].pass_through, None, "{protocol}");
    }
    let lmtp = Config::from_toml_str(&with("[listener.imap]\nprotocol = \"lmtp\"\npass_through = \"legacy\"")).unwrap();
    assert_eq!(lmtp.listener["imap"].pass_through.as_deref(), Some("legacy"));
    assert_eq!(
        problems(&with("[listener.imap]\nprotocol = \"submission\"\npass_through = \"legacy\"")),
        ["listener.imap.pass_through: only smtp and lmtp listeners route by recipient, not submission"]
    );
    assert_eq!(
        problems(&with("[listener.imap]\nprotocol = \"smtp\"\npass_through = \" \"")),
        ["listener.imap.pass_through: must name a destination id"]
    );
}

#[test]
fn smtp_and_lmtp_sessions_have_a_time_limit_and_a_junk_command_limit() {
    let lmtp = Config::from_toml_str(&with("[listener.imap]\nprotocol = \"lmtp\"")).unwrap();
    let l = &lmtp.listener["imap"];
    assert_eq!((l.session_timeout(), l.junk_command_limit()), (Duration::from_secs(600), 100));
    let set = "[listener.imap]\nprotocol = \"smtp\"\nsession_timeout = \"90s\"\njunk_command_limit = 7";
    let smtp = Config::from_toml_str(&with(set)).unwrap();
    let l = &smtp.listener["imap"];
    assert_eq!((l.session_timeout(), l.junk_command_limit()), (Duration::from_secs(90), 7));
    assert_eq!(
        problems(&with("[listener.imap]\nprotocol = \"lmtp\"\nsession_timeout = \"0s\"\njunk_command_limit = 0")),
        [
            "listener.imap.junk_command_limit: must be at least 1",
            "listener.imap.session_timeout: must be greater than zero",
        ]
    );
    assert_eq!(
        problems(&with("[listener.imap]\nsession_timeout = \"5m\"\njunk_command_limit = 5")),
        [
            "listener.imap.junk_command_limit: only smtp and lmtp listeners have it (imap sessions end with their pre-auth budget)",
            "listener.imap.session_timeout: only smtp and lmtp listeners have it (imap sessions end with their pre-auth budget)",
        ]
    );
}

#[test]
fn recipient_limits_default_and_apply_only_to_listeners_taking_recipients() {
    let lmtp = Config::from_toml_str(&with("[listener.imap]\nprotocol = \"lmtp\"")).unwrap();
    let l = &lmtp.listener["imap"];
    assert_eq!((l.recipient_limit(), l.resolve_limit()), (1000, 1000));
    let set = "[listener.imap]\nprotocol = \"smtp\"\nmax_recipients = 100\nmax_resolves = 1";
    let l = &Config::from_toml_str(&with(set)).unwrap().listener["imap"];
    assert_eq!((l.recipient_limit(), l.resolve_limit()), (100, 1));
    assert_eq!(
        problems(&with("[listener.imap]\nmax_recipients = 500\nmax_resolves = 10")),
        [
            "listener.imap.max_recipients: only smtp and lmtp listeners take recipients, not imap",
            "listener.imap.max_resolves: only smtp and lmtp listeners take recipients, not imap"
        ]
    );
    assert_eq!(
        problems(&with("[listener.imap]\nprotocol = \"lmtp\"\nmax_recipients = 99\nmax_resolves = 0")),
        ["listener.imap.max_recipients: must be at least 100", "listener.imap.max_resolves: must be at least 1"]
    );
    assert_eq!(
        problems(&with("[listener.imap]\nprotocol = \"lmtp\"\npass_through = \"legacy\"\nmax_resolves = 5")),
        ["listener.imap.max_resolves: a pass_through listener looks no recipient up"]
    );
}
