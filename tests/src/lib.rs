//! Shared harness for the end-to-end tests: real Dovecot and Postfix instances, a test CA,
//! real clients (imaplib, poplib, smtplib, swaks, curl, our IMAP and ManageSieve clients),
//! fleets on ephemeral ports (`fleet::Fleet::builder()`, configs as typed values in
//! [`config`]), and one start-with-retry for every real server ([`retry`]).
//!
//! Typical use:
//! ```ignore
//! if !require_or_skip("dovecot") { return Ok(()); }
//! let backend = Dovecot::start(&[("alice@example.test", "pw")])?;
//! backend.deliver("alice@example.test", "on backend A")?;
//! let mut imap = ImapClient::connect(proxy_addr).await?;
//! assert_eq!(status(&imap.login("alice@example.test", "pw").await?), "OK");
//! assert_eq!(imap.subjects_in_inbox().await?, ["on backend A"]);
//!
//! // TLS and mail submission (Postfix needs root):
//! let pki = TestPki::new()?;
//! let dovecot = Dovecot::start_tls(&[("bob@example.test", "pw")], &pki)?;
//! let postfix = Postfix::start(&dovecot)?;
//! let tls = ClientTls::implicit(pki.ca_pem_path());
//! let (ok, subjects) = python_pop3(dovecot.pop3s_port(), "bob@example.test", "pw", &tls).await?;
//! ```

mod builder;
mod certs;
pub mod config;
mod dovecot;
mod dovecot_conf;
pub mod fleet;
mod imap;
mod postfix;
mod postfix_conf;
mod python;
mod python_mail;
mod sieve;
mod tools;
mod util;
mod wire;

pub use certs::{first_certificate_der, leaf_sha256_hex, TestPki};
pub use dovecot::{Dovecot, DovecotOptions};
pub use imap::{inbox_of, inbox_subjects, quote, status, until_in_inbox, ImapClient};
pub use postfix::{Postfix, PostfixOptions, TEST_DOMAIN};
pub use python::{python_imap, python_imap_login};
pub use python_mail::{python_lmtp_send, python_pop3, python_smtp_submit};
pub use sieve::{sieve_status, SieveClient};
pub use tools::{curl, run_client, swaks, ClientTls, TlsTrust};
pub use util::{eventually, find_binary, free_port, real_servers_required, require_or_skip, wait_for_port, woken};
pub mod binfleet;
pub mod lineclient;
pub mod lmtp;
pub mod nodeproc;
pub mod postgres;
pub mod procs;
pub mod redis;
pub mod relay;
pub mod retry;
pub mod simnodes;
pub mod store_contract;
