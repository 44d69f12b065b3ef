//! Two throwaway Dovecot servers for the local fleet (`scripts/fleet.sh`): `legacy` and
//! `new`, each with the demo accounts and one message saying which server it is on.
//! Writes `legacy=PORT` and `new=PORT` lines to the file given as the first argument,
//! then runs until stdin closes or it is killed.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use switchyard_tests::Dovecot;

const USERS: &[(&str, &str)] = &[("alice@example.test", "secret"), ("bob@example.test", "secret")];

fn main() -> Result<()> {
    let ports_file = std::env::args().nth(1).context("usage: demo-backends PORTS_FILE")?;
    let mut servers = Vec::new();
    let mut ports = String::new();
    for name in ["legacy", "new"] {
        let server = Dovecot::start(USERS)?;
        for (user, _) in USERS {
            server.deliver(user, &format!("Welcome to the {name} server"))?;
        }
        ports.push_str(&format!("{name}={}\n", server.imap_port()));
        eprintln!("demo-backends: {name} Dovecot IMAP on 127.0.0.1:{}", server.imap_port());
        servers.push(server);
    }
    let tmp = format!("{ports_file}.tmp");
    std::fs::File::create(&tmp)?.write_all(ports.as_bytes())?;
    std::fs::rename(&tmp, &ports_file)?;
    // Dropping the servers stops them: wait for the parent to close our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(servers);
    Ok(())
}
