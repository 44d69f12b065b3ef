//! A second, independent IMAP client: Python's imaplib, so assertions don't rest only on
//! our own client's reading of the protocol.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

/// Whole-script bound; imaplib's own socket timeout (10 s) normally fires first.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs in, selects INBOX, fetches every Subject and logs out. Prints the subjects one per
/// line on success; on any failure prints `ExceptionType: message` and exits 1.
const SCRIPT: &str = r#"
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    imap.login(user, password)
    typ, data = imap.select("INBOX")
    if typ != "OK":
        raise RuntimeError(f"SELECT INBOX: {typ} {data}")
    subjects = []
    if int(data[0]) > 0:
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                for line in item[1].decode(errors="replace").splitlines():
                    if line.lower().startswith("subject:"):
                        subjects.append(line[len("subject:"):].strip())
    imap.logout()
    print("\n".join(subjects))
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(1)
"#;

/// Runs the imaplib script against 127.0.0.1:`port`. Returns whether login, SELECT and FETCH
/// all succeeded, plus the subjects (one per line) or the error text. `Err` only when python3
/// itself could not be run.
///
/// Async on purpose: a blocking wait here would freeze a proxy running on the test's own
/// single-threaded runtime, and the login would deadlock.
pub async fn python_imap_login(port: u16, user: &str, pass: &str) -> Result<(bool, String)> {
    let child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(port.to_string())
        .arg(user)
        .arg(pass)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running python3 (is it installed?)")?;
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .context("the imaplib script did not finish in time")??;
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        text.push_str(&format!("\n[stderr] {}", stderr.trim()));
    }
    Ok((output.status.success(), text))
}
