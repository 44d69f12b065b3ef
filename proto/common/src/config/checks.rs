//! The bounds both configs check their values against: durations, the small HTTP servers'
//! limits, log levels, and control traffic in clear off loopback.

use std::time::Duration;

use super::Problems;
use crate::http_server::HttpLimits;

/// The longest duration any key takes. Past it timers and the route cache would fail at
/// run time (moka refuses a TTL over 1000 years; `Instant + 1001y` panics); nothing a
/// mail proxy waits for is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The limits of one of the small HTTP servers (`[health]` here, `[api]` on the control plane).
pub fn check_http(section: &str, limits: &HttpLimits, p: &mut Problems) {
    if limits.max_connections < 2 {
        p.push(format!("{section}.max_connections"), "must be at least 2");
    }
    check_positive(&format!("{section}.header_read_timeout"), limits.header_read_timeout, p);
}

/// Greater than zero and at most [`MAX_DURATION`].
pub fn check_positive(at: &str, d: Duration, p: &mut Problems) {
    if d.is_zero() {
        p.push(at, "must be greater than zero");
    }
    check_at_most(at, d, p);
}

/// At most [`MAX_DURATION`] (zero allowed).
pub fn check_at_most(at: &str, d: Duration, p: &mut Problems) {
    if d > MAX_DURATION {
        p.push(at, "must be at most 365d");
    }
}

/// `http://` to anything but this host sends the node token in clear.
pub fn cleartext_off_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    !loopback
}

/// `log_level` is a level or an `EnvFilter` directive list (`warn,dataplane=debug`). A
/// lone word must be a level: `EnvFilter` would take a typo like `inf` as a target name.
pub fn check_log_level(at: &str, level: &str, p: &mut Problems) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = level.trim();
    if !level.contains(['=', ',']) {
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            p.push(at, format!("{level:?} is not one of {}", LEVELS.join(", ")));
        }
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        p.push(at, format!("invalid filter {level:?}: {e}"));
    }
}
