//! A second, independent IMAP client: Python's imaplib, so assertions don't rest only on
//! our own client's reading of the protocol. Also the shared runner of every Python client.

use anyhow::Result;

use crate::tools::{run_client, ClientTls};

/// Prepended to every script: argv[1..3] are the TLS mode and CA file (see
/// `ClientTls::script_args`), and `tls_context()` builds what the stdlib clients take.
/// `create_default_context(cafile=...)` trusts only that CA, so a wrong CA really fails.
pub(crate) const PRELUDE: &str = r#"
import ssl, sys
HOST = "127.0.0.1"
MODE, CAFILE, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]
def tls_context():
    if CAFILE:
        return ssl.create_default_context(cafile=CAFILE)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
def subjects_in(lines):
    out = []
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode(errors="replace")
        if line.lower().startswith("subject:"):
            out.append(line[len("subject:"):].strip())
    return out
"#;

/// Logs in, selects INBOX, fetches every Subject and logs out. Prints the subjects one per
/// line on success; on any failure prints `ExceptionType: message` and exits 1.
const IMAP: &str = r#"
import imaplib
port, user, password = int(ARGS[0]), ARGS[1], ARGS[2]
try:
    if MODE == "implicit":
        imap = imaplib.IMAP4_SSL(HOST, port, ssl_context=tls_context(), timeout=10)
    else:
        imap = imaplib.IMAP4(HOST, port, timeout=10)
        if MODE == "starttls":
            imap.starttls(ssl_context=tls_context())
    imap.login(user, password)
    typ, data = imap.select("INBOX")
    if typ != "OK":
        raise RuntimeError(f"SELECT INBOX: {typ} {data}")
    subjects = []
    if int(data[0]) > 0:
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                subjects += subjects_in(item[1].decode(errors="replace").splitlines())
    imap.logout()
    print("\n".join(subjects))
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(1)
"#;

/// Runs `PRELUDE + body` with the TLS arguments and then `args`; see [`run_client`].
pub(crate) async fn run_script(body: &str, tls: &ClientTls, args: &[String]) -> Result<(bool, String)> {
    let script = format!("{PRELUDE}{body}");
    let argv = ["-c".to_string(), script].into_iter().chain(tls.script_args()).chain(args.iter().cloned());
    run_client("python3", argv).await
}

/// Runs the imaplib script against 127.0.0.1:`port` in cleartext. Returns whether login,
/// SELECT and FETCH all succeeded, plus the subjects (one per line) or the error text. `Err`
/// only when python3 itself could not be run.
///
/// Async on purpose: a blocking wait here would freeze a proxy running on the test's own
/// single-threaded runtime, and the login would deadlock.
pub async fn python_imap_login(port: u16, user: &str, pass: &str) -> Result<(bool, String)> {
    python_imap(port, user, pass, &ClientTls::Plain).await
}

/// [`python_imap_login`] over IMAPS (`ClientTls::Implicit`) or after STARTTLS.
pub async fn python_imap(port: u16, user: &str, pass: &str, tls: &ClientTls) -> Result<(bool, String)> {
    run_script(IMAP, tls, &[port.to_string(), user.to_string(), pass.to_string()]).await
}
