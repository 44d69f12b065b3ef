//! A complete, valid settings message for unit tests here and in the data plane (feature
//! `testing`).

use switchyard_proto::v1 as pb;

/// A valid settings message with destinations `legacy` (default) and `new`.
pub fn sample() -> pb::FleetSettings {
    let dest = |id: &str, port: u32| pb::Destination {
        id: id.into(),
        host: "127.0.0.1".into(),
        forwarding: "none".into(),
        allow_plaintext_auth: true,
        endpoints: vec![pb::Endpoint { protocol: "imap".into(), port, tls: "plain".into(), ..Default::default() }],
        ..Default::default()
    };
    pb::FleetSettings {
        destinations: vec![dest("legacy", 1143), dest("new", 2143)],
        default_destination: "legacy".into(),
        master_user_separators: vec!["%".into()],
        normalize: "lowercase".into(),
        cache: Some(pb::CacheSettings {
            positive_ttl_ms: 600_000,
            negative_ttl_ms: 30_000,
            max_entries: 1000,
            max_stale_ms: 3_600_000,
            max_bytes: 1 << 20,
            negative_max_bytes: 0,
        }),
        breaker: Some(pb::BreakerSettings {
            failure_threshold: 5,
            cooldown_ms: 30_000,
            connect_timeout_ms: 10_000,
            connect_retries: 1,
            login_timeout_ms: Some(20_000),
        }),
        report_interval_ms: 10_000,
        heartbeat_interval_ms: 5_000,
        recipient_delimiter: Some("+".into()),
    }
}
