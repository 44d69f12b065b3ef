//! The end-to-end tests in one test binary (one link instead of one per file): one module
//! per area. The tests run in parallel threads of this one process, so none may change
//! process-wide state; the tests that raise the open-file limit for floods of connections
//! (`bad_input`, `control_link`, `http_limits`) stay in binaries of their own, as do the
//! store benchmarks `store_postgres` and `store_redis` (run by name with `--ignored`).

mod binaries;
mod bounds;
mod bulk;
mod client_leg;
mod control_security;
mod control_trust;
mod delivery_tls;
mod fleet_imap;
mod fleet_ops;
mod forwarding;
mod harness_mail;
mod harness_smoke;
mod log_redaction;
mod login_timeout;
mod moves;
mod node_identity;
mod pop3_sieve;
mod replicas;
mod route_keys;
mod route_memory;
mod sasl_lines;
mod shutdown;
mod smtp_bounds;
mod smtp_lmtp;
mod store_history;
mod store_outage;
mod store_sqlite;
mod tls;
mod undeclared;
