//! Checks on a parsed `dataplane.toml` that types alone cannot express.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{
    check_at_most, check_http, check_log_level, check_positive, cleartext_off_loopback, key_path, Config,
    ListenerConfig, Problems, Protocol, ProxyProtocol, TlsMode,
};

/// Below this an ordinary `AUTHENTICATE` with an OAuth token would not fit on one line.
const MIN_LINE_LENGTH: usize = 1024;

pub(super) fn validate(config: &Config, p: &mut Problems) {
    if config.node.id.trim().is_empty() {
        p.push("node.id", "must not be empty");
    }
    check_log_level("node.log_level", &config.node.log_level, p);
    check_positive("node.metrics_interval", config.node.metrics_interval, p);
    check_at_most("node.shutdown_grace", config.node.shutdown_grace, p);
    check_http("health", &config.health.http_limits(), p);

    let control = &config.control;
    if control.endpoints.is_empty() {
        p.push("control.endpoints", "at least one control-plane URL is required");
    }
    for (i, url) in control.endpoints.iter().enumerate() {
        let at = format!("control.endpoints[{i}]");
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.push(at, format!("{url:?} must start with http:// or https://"));
        } else if cleartext_off_loopback(url) && !control.allow_insecure_control {
            let why = "the node token would cross the network in clear: use https://, or set \
                       control.allow_insecure_control = true";
            p.push(at, format!("{url:?} is not loopback; {why}"));
        }
    }
    if control.node_token_env.is_empty() {
        p.push("control.node_token_env", "must not be empty");
    }
    check_positive("control.resolve_timeout", control.resolve_timeout, p);
    super::control_tls::check(control, p);

    crate::tls::check_certificates(&config.tls, p);
    let has_certificates = !config.tls.certificate.is_empty();
    if config.listener.is_empty() {
        p.push("listener", "at least one [listener.<id>] is required");
    }
    for (id, listener) in &config.listener {
        check_listener(&key_path("listener", id), listener, has_certificates, p);
    }
    check_bind_conflicts(config, p);
}

fn check_listener(at: &str, l: &ListenerConfig, has_certificates: bool, p: &mut Problems) {
    let key = |k: &str| key_path(at, k);
    // Later issues add the other protocols; until then a config asking for them must
    // fail loudly rather than start a listener that cannot serve.
    let served =
        [Protocol::Imap, Protocol::Pop3, Protocol::Managesieve, Protocol::Submission, Protocol::Smtp, Protocol::Lmtp];
    if !served.contains(&l.protocol) {
        p.push(key("protocol"), format!("protocol {} is not available in this build", l.protocol));
    }
    check_pass_through(&key("pass_through"), l, p);
    check_session_bounds(at, l, p);
    check_recipient_limits(at, l, p);
    if l.proxy_protocol != ProxyProtocol::Off && l.proxy_trusted.is_empty() {
        p.push(key("proxy_trusted"), "proxy_protocol needs the trusted networks (CIDR) whose headers are believed");
    }
    if l.tls != TlsMode::Plain && !has_certificates {
        p.push(key("tls"), format!("tls = \"{}\" needs at least one [tls.certificate.<id>]", l.tls));
    }
    if l.bind.is_empty() {
        p.push(key("bind"), "at least one address is required");
    }
    if l.max_connections == 0 {
        p.push(key("max_connections"), "must be at least 1");
    }
    if l.max_auth_attempts == 0 {
        p.push(key("max_auth_attempts"), "must be at least 1");
    }
    if l.max_line_length < MIN_LINE_LENGTH {
        p.push(key("max_line_length"), format!("must be at least {MIN_LINE_LENGTH}"));
    }
    if l.max_literal_size == 0 {
        p.push(key("max_literal_size"), "must be at least 1");
    }
    check_positive(&key("preauth_timeout"), l.preauth_timeout, p);
    check_positive(&key("idle_timeout"), l.idle_timeout, p);
}

/// Only a listener that routes by recipient can pin them all to one destination; whether
/// the id is declared is up to the control plane's settings (an unknown one is a temporary
/// failure per recipient, never a fallback to another destination).
fn check_pass_through(at: &str, l: &ListenerConfig, p: &mut Problems) {
    let Some(destination) = &l.pass_through else {
        return;
    };
    if !matches!(l.protocol, Protocol::Smtp | Protocol::Lmtp) {
        p.push(at, format!("only smtp and lmtp listeners route by recipient, not {}", l.protocol));
    }
    if destination.trim().is_empty() {
        p.push(at, "must name a destination id");
    }
}

/// The bounds of a session without a login: only where there is no pre-auth budget.
fn check_session_bounds(at: &str, l: &ListenerConfig, p: &mut Problems) {
    let recipient_routed = matches!(l.protocol, Protocol::Smtp | Protocol::Lmtp);
    let only = |key: &str, p: &mut Problems| {
        let why =
            format!("only smtp and lmtp listeners have it ({} sessions end with their pre-auth budget)", l.protocol);
        p.push(key_path(at, key), why);
    };
    if let Some(timeout) = l.session_timeout {
        if !recipient_routed {
            only("session_timeout", p);
        }
        check_positive(&key_path(at, "session_timeout"), timeout, p);
    }
    if let Some(limit) = l.junk_command_limit {
        if !recipient_routed {
            only("junk_command_limit", p);
        }
        if limit == 0 {
            p.push(key_path(at, "junk_command_limit"), "must be at least 1");
        }
    }
}

/// RFC 5321 §4.5.3.1.8: a server must take at least 100 recipients per transaction.
const MIN_RECIPIENTS: u32 = 100;

/// The recipient limits of a listener that routes by recipient.
fn check_recipient_limits(at: &str, l: &ListenerConfig, p: &mut Problems) {
    let by_recipient = matches!(l.protocol, Protocol::Smtp | Protocol::Lmtp);
    let limits = [("max_recipients", l.max_recipients, MIN_RECIPIENTS), ("max_resolves", l.max_resolves, 1)];
    for (name, limit, min) in limits {
        let Some(limit) = limit else {
            continue;
        };
        if !by_recipient {
            p.push(key_path(at, name), format!("only smtp and lmtp listeners take recipients, not {}", l.protocol));
        } else if limit < min {
            p.push(key_path(at, name), format!("must be at least {min}"));
        }
    }
    if l.max_resolves.is_some() && l.pass_through.is_some() {
        p.push(key_path(at, "max_resolves"), "a pass_through listener looks no recipient up");
    }
}

/// Two sockets on one address would make the second bind fail at start-up; port 0 (an
/// ephemeral port, used by tests) never conflicts.
fn check_bind_conflicts(config: &Config, p: &mut Problems) {
    let mut owners: HashMap<SocketAddr, String> = HashMap::new();
    if config.health.bind.port() != 0 {
        owners.insert(config.health.bind, "health.bind".into());
    }
    for (id, listener) in &config.listener {
        let at = key_path(&key_path("listener", id), "bind");
        for addr in listener.bind.iter().filter(|a| a.port() != 0) {
            match owners.get(addr) {
                Some(owner) => p.push(at.clone(), format!("{addr} is already bound by {owner}")),
                None => {
                    owners.insert(*addr, at.clone());
                }
            }
        }
    }
}
