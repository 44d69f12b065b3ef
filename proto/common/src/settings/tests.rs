//! Decoding the control plane's settings message, and the round trip through `encode`.

use std::time::Duration;

use switchyard_proto::v1 as pb;

use super::testing::sample;
use super::*;

#[test]
fn converts_a_valid_message() {
    let s = FleetSettings::try_from(sample()).unwrap();
    assert_eq!(s.destinations.len(), 2);
    let new = s.destination("new").unwrap();
    assert_eq!(
        new.endpoints[&Protocol::Imap],
        Endpoint { port: 2143, tls: TlsMode::Plain, forwarding: Forwarding::None }
    );
    assert_eq!(s.cache.negative_ttl, Duration::from_secs(30));
    // An older control plane sends no byte bound: the node's default applies.
    assert_eq!((s.cache.max_bytes, s.cache.negative_max_bytes), (1 << 20, DEFAULT_NEGATIVE_MAX_BYTES));
    assert!(s.route_key.lowercase);
    assert_eq!(s.route_key.recipient_delimiter, "+");
}

/// A control plane that did not bound its durations cannot make the cache panic.
#[test]
fn durations_past_the_bound_are_held_to_it() {
    let mut m = sample();
    m.cache.as_mut().unwrap().max_stale_ms = u64::MAX;
    let s = FleetSettings::try_from(m).unwrap();
    assert_eq!(s.cache.max_stale, crate::config::MAX_DURATION);
}

/// An older control plane sends no login timeout: the 30 s nodes always waited.
#[test]
fn login_timeout_unset_is_the_old_fixed_wait() {
    assert_eq!(FleetSettings::try_from(sample()).unwrap().breaker.login_timeout, Duration::from_secs(20));
    for unusable in [None, Some(0)] {
        let mut m = sample();
        m.breaker.as_mut().unwrap().login_timeout_ms = unusable;
        assert_eq!(FleetSettings::try_from(m).unwrap().breaker.login_timeout, Duration::from_secs(30));
    }
}

/// An older control plane does not send the field: the default `+` applies, as it
/// does for a current one without the key; an explicit empty string cuts nothing.
#[test]
fn recipient_delimiter_unset_is_the_default_and_empty_disables() {
    let mut m = sample();
    m.recipient_delimiter = None;
    assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "+");
    let mut m = sample();
    m.recipient_delimiter = Some(String::new());
    assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "");
    let mut m = sample();
    m.recipient_delimiter = Some("+-".into());
    assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "+-");
}

#[test]
fn rejects_an_undeclared_default_and_bad_endpoints() {
    let mut m = sample();
    m.default_destination = "nowhere".into();
    assert!(FleetSettings::try_from(m).is_err());
    let mut m = sample();
    m.destinations[0].endpoints[0].tls = "maybe".into();
    assert!(FleetSettings::try_from(m).is_err());
    let mut m = sample();
    m.destinations[0].endpoints[0].port = 70_000;
    assert!(FleetSettings::try_from(m).is_err());
}

#[test]
fn backend_tls_defaults_to_system_roots_and_the_host() {
    let s = FleetSettings::try_from(sample()).unwrap();
    let tls = &s.destination("legacy").unwrap().tls;
    assert_eq!(tls.verify, TlsVerify::System);
    assert_eq!(tls.server_name, "127.0.0.1");
    assert_eq!(tls.client_cert, None);
    // Plain endpoints only: the host never becomes a TLS name, so it is not judged.
    let mut m = sample();
    m.destinations[0].host = "back end".into();
    assert!(FleetSettings::try_from(m).is_ok());
}

#[test]
fn backend_tls_fields_convert() {
    let mut m = sample();
    let d = &mut m.destinations[0];
    d.tls_verify = "pinned".into();
    d.tls_pin_sha256 = vec!["AB:".repeat(31) + "AB", "00".repeat(32)];
    d.tls_server_name = "imap.example.test".into();
    d.tls_client_cert = "/etc/sy/client.pem".into();
    d.tls_client_key = "/etc/sy/client.key".into();
    m.destinations[1].tls_verify = "insecure".into();
    let s = FleetSettings::try_from(m).unwrap();
    let tls = &s.destination("legacy").unwrap().tls;
    assert_eq!(tls.verify, TlsVerify::Pinned(vec![[0xab; 32], [0; 32]]));
    assert_eq!(tls.server_name, "imap.example.test");
    assert_eq!(
        tls.client_cert,
        Some(ClientCert { cert: "/etc/sy/client.pem".into(), key: "/etc/sy/client.key".into() })
    );
    let new = &s.destination("new").unwrap().tls;
    assert_eq!(new.verify, TlsVerify::Insecure);
}

#[test]
fn rejects_unusable_backend_tls() {
    let cases: [fn(&mut pb::Destination); 6] = [
        |d| d.tls_verify = "maybe".into(),
        |d| d.tls_verify = "pinned".into(),
        |d| {
            d.tls_verify = "pinned".into();
            d.tls_pin_sha256 = vec!["abc".into()];
        },
        |d| d.tls_client_cert = "/c.pem".into(),
        |d| d.tls_server_name = "not a name".into(),
        |d| {
            d.host = "back end".into();
            d.endpoints[0].tls = "implicit".into();
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let mut m = sample();
        case(&mut m.destinations[0]);
        assert!(FleetSettings::try_from(m).is_err(), "case {i}");
    }
}

#[test]
fn unknown_protocols_are_skipped() {
    let mut m = sample();
    m.destinations[0].endpoints.push(pb::Endpoint {
        protocol: "gopher".into(),
        port: 70,
        tls: "plain".into(),
        ..Default::default()
    });
    let s = FleetSettings::try_from(m).unwrap();
    assert_eq!(s.destination("legacy").unwrap().endpoints.len(), 1);
}

/// A settings value with every field set, none of them to what decoding would default to.
fn every_field_set() -> FleetSettings {
    let endpoint = |port, tls, forwarding| Endpoint { port, tls, forwarding };
    let pinned = Destination {
        id: "new".into(),
        host: "imap.new.test".into(),
        allow_plaintext_auth: false,
        endpoints: HashMap::from([
            (Protocol::Imap, endpoint(993, TlsMode::Implicit, Forwarding::Proxy)),
            (Protocol::Lmtp, endpoint(24, TlsMode::Starttls, Forwarding::Xclient)),
            (Protocol::Pop3, endpoint(110, TlsMode::Plain, Forwarding::None)),
        ]),
        tls: BackendTls {
            verify: TlsVerify::Pinned(vec![[0xab; 32], [7; 32]]),
            server_name: "backend.new.test".into(),
            client_cert: Some(ClientCert { cert: "/etc/sy/client.pem".into(), key: "/etc/sy/client.key".into() }),
        },
    };
    let insecure = Destination {
        id: "legacy".into(),
        host: "10.0.0.5".into(),
        allow_plaintext_auth: true,
        endpoints: HashMap::from([(Protocol::Managesieve, endpoint(4190, TlsMode::Starttls, Forwarding::Xclient))]),
        tls: BackendTls { verify: TlsVerify::Insecure, server_name: "10.0.0.5".into(), client_cert: None },
    };
    FleetSettings {
        destinations: [pinned, insecure].into_iter().map(|d| (d.id.clone(), Arc::new(d))).collect(),
        default_destination: "legacy".into(),
        route_key: RouteKeyRule {
            master_user_separators: vec!["*".into(), "%".into()],
            recipient_delimiter: "+-".into(),
            lowercase: false,
        },
        cache: CacheSettings {
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_millis(30_500),
            max_stale: Duration::from_secs(3600),
            max_bytes: 1 << 20,
            negative_max_bytes: 1 << 16,
        },
        breaker: BreakerSettings {
            failure_threshold: 3,
            cooldown: Duration::from_secs(45),
            connect_timeout: Duration::from_millis(2500),
            connect_retries: 2,
            login_timeout: Duration::from_secs(12),
        },
        report_interval: Duration::from_secs(7),
        heartbeat_interval: Duration::from_millis(1500),
    }
}

/// What the control plane encodes is what a node decodes, field for field.
#[test]
fn encode_then_decode_is_the_identity() {
    let settings = every_field_set();
    let message = pb::FleetSettings::from(&settings);
    assert_eq!(FleetSettings::try_from(message.clone()).unwrap(), settings);
    // Stable: the same value always encodes to the same message.
    assert_eq!(pb::FleetSettings::from(&settings), message);
}

/// A server name equal to the host goes out empty (the default), so a destination with
/// plain endpoints only is never judged on its host's TLS syntax.
#[test]
fn a_server_name_that_is_the_host_is_not_sent() {
    let message = pb::FleetSettings::from(&every_field_set());
    let sent = |id: &str| message.destinations.iter().find(|d| d.id == id).unwrap().tls_server_name.clone();
    assert_eq!(sent("legacy"), "");
    assert_eq!(sent("new"), "backend.new.test");
}

/// Decoding the sample and encoding it again gives a message that decodes the same.
#[test]
fn decode_then_encode_keeps_the_meaning() {
    let decoded = FleetSettings::try_from(sample()).unwrap();
    assert_eq!(FleetSettings::try_from(pb::FleetSettings::from(&decoded)).unwrap(), decoded);
}
