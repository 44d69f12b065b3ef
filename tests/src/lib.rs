//! Shared harness for the end-to-end tests: real Dovecot instances, fleets on ephemeral ports.
//!
//! Typical use:
//! ```ignore
//! if !require_or_skip("dovecot") { return Ok(()); }
//! let backend = Dovecot::start(&[("alice@example.test", "pw")])?;
//! backend.deliver("alice@example.test", "on backend A")?;
//! let mut imap = ImapClient::connect(proxy_addr).await?;
//! assert_eq!(status(&imap.login("alice@example.test", "pw").await?), "OK");
//! assert_eq!(imap.subjects_in_inbox().await?, ["on backend A"]);
//! ```

mod dovecot;
mod dovecot_conf;
pub mod fleet;
mod imap;
mod python;
mod util;

pub use dovecot::Dovecot;
pub use imap::{quote, status, ImapClient};
pub use python::python_imap_login;
pub use util::{eventually, find_binary, free_port, real_servers_required, require_or_skip, wait_for_port};
pub mod simnodes;
