//! What the Switchyard control plane and its nodes must agree on, in one small crate both
//! link: the control plane no longer links the data plane to share it.
//!
//! - the contract: [`routekey`] (the route-key rule and log redaction), [`wire`] (the
//!   protocol, TLS-mode and forwarding names both configs and the gRPC messages use),
//!   [`settings`] (the fleet settings as domain types, encoded by the control plane and
//!   decoded by nodes, side by side), [`tls`] (pin and server-name syntax, PEM files);
//! - the strict config loader both binaries read their TOML with, and the duration bounds
//!   both validate against: [`config`];
//! - what both binaries run alike: [`http_server`] (the small admin/health HTTP server),
//!   [`telemetry`] (log set-up and signal handling), [`error::chain`], [`metrics`].

#![warn(unreachable_pub, missing_debug_implementations)]

pub mod config;
pub mod error;
pub mod http_server;
pub mod metrics;
pub mod routekey;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod wire;
