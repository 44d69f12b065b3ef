//! The strict config loading both binaries share: [`parse_toml`] collects every unknown
//! key, type error and validation problem at once; the checks here are the bounds both
//! configs apply (durations, HTTP server limits, log levels, cleartext control traffic).

mod checks;
mod parse;

pub use checks::{check_at_most, check_http, check_log_level, check_positive, cleartext_off_loopback, MAX_DURATION};
pub use parse::{key_path, load_token, parse_toml, read_file, ConfigError, Problems};

/// Shortest node (and admin) token accepted on either side: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 32;
