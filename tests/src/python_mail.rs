//! Python's poplib and smtplib (incl. `smtplib.LMTP`) as independent POP3, SMTP submission
//! and LMTP clients. Each returns (success, text) like `python_imap_login`; `Err` only when
//! python3 could not be run.

use anyhow::Result;

use crate::python::run_script;
use crate::tools::ClientTls;

/// USER/PASS, then the Subject of every message via `TOP n 0`. Prints the subjects.
const POP3: &str = r#"
import poplib
port, user, password = int(ARGS[0]), ARGS[1], ARGS[2]
try:
    if MODE == "implicit":
        pop = poplib.POP3_SSL(HOST, port, timeout=10, context=tls_context())
    else:
        pop = poplib.POP3(HOST, port, timeout=10)
        if MODE == "starttls":
            pop.stls(context=tls_context())
    pop.user(user)
    pop.pass_(password)
    count, _ = pop.stat()
    subjects = []
    for i in range(1, count + 1):
        _, lines, _ = pop.top(i, 0)
        subjects += subjects_in(lines)
    pop.quit()
    print("\n".join(subjects))
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(1)
"#;

/// Builds the test message every SMTP/LMTP script sends.
const MESSAGE: &str = r#"
import email.utils
def message(mail_from, rcpts, subject):
    return (f"From: <{mail_from}>\r\nTo: {', '.join('<' + r + '>' for r in rcpts)}\r\n"
            f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='switchyard.test')}\r\n\r\n"
            "Sent by the Switchyard test harness.\r\n")
def text(reply):
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
"#;

/// EHLO, optional STARTTLS and AUTH, then one transaction. Prints `RCPT <rcpt> <code> <text>`
/// per recipient and `DATA <code> <text>`; succeeds only if every reply was positive.
const SMTP: &str = r#"
import smtplib
port, user, password, mail_from, rcpts, subject = int(ARGS[0]), ARGS[1], ARGS[2], ARGS[3], ARGS[4].split(","), ARGS[5]
lines, ok = [], True
try:
    if MODE == "implicit":
        smtp = smtplib.SMTP_SSL(HOST, port, timeout=10, context=tls_context())
    else:
        smtp = smtplib.SMTP(HOST, port, timeout=10)
    smtp.ehlo("client.example.test")
    if MODE == "starttls":
        smtp.starttls(context=tls_context())
        smtp.ehlo("client.example.test")
    if user:
        code, reply = smtp.login(user, password)
        lines.append(f"AUTH {code} {text(reply)}")
    code, reply = smtp.mail(mail_from)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, mail_from)
    accepted = []
    for rcpt in rcpts:
        code, reply = smtp.rcpt(rcpt)
        lines.append(f"RCPT {rcpt} {code} {text(reply)}")
        if code in (250, 251):
            accepted.append(rcpt)
        else:
            ok = False
    if accepted:
        code, reply = smtp.data(message(mail_from, accepted, subject))
        lines.append(f"DATA {code} {text(reply)}")
        ok = ok and code == 250
    smtp.quit()
except Exception as err:
    lines.append(f"{type(err).__name__}: {err}")
    ok = False
print("\n".join(lines))
sys.exit(0 if ok else 1)
"#;

/// LHLO and one transaction; after DATA, LMTP answers once per accepted recipient (smtplib's
/// `sendmail` would read only the first), so the rest are read with `getreply()`. Prints
/// `RCPT <rcpt> <code> <text>` and `DATA <rcpt> <code> <text>` lines.
const LMTP: &str = r#"
import smtplib
port, mail_from, rcpts, subject = int(ARGS[0]), ARGS[1], ARGS[2].split(","), ARGS[3]
lines, ok = [], True
try:
    lmtp = smtplib.LMTP(HOST, port, timeout=10)
    lmtp.ehlo("client.example.test")  # sends LHLO on an LMTP connection
    code, reply = lmtp.mail(mail_from)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, mail_from)
    accepted = []
    for rcpt in rcpts:
        code, reply = lmtp.rcpt(rcpt)
        lines.append(f"RCPT {rcpt} {code} {text(reply)}")
        if code == 250:
            accepted.append(rcpt)
        else:
            ok = False
    if accepted:
        code, reply = lmtp.data(message(mail_from, accepted, subject))
        replies = [(code, reply)] + [lmtp.getreply() for _ in accepted[1:]]
        for rcpt, (code, reply) in zip(accepted, replies):
            lines.append(f"DATA {rcpt} {code} {text(reply)}")
            ok = ok and code == 250
    lmtp.quit()
except Exception as err:
    lines.append(f"{type(err).__name__}: {err}")
    ok = False
print("\n".join(lines))
sys.exit(0 if ok else 1)
"#;

/// poplib against 127.0.0.1:`port`: login, then the subjects (one per line) of every
/// message, or the error text.
pub async fn python_pop3(port: u16, user: &str, pass: &str, tls: &ClientTls) -> Result<(bool, String)> {
    run_script(POP3, tls, &[port.to_string(), user.to_string(), pass.to_string()]).await
}

/// smtplib: one message with `subject` from `from` to every address in `to`, after AUTH
/// (PLAIN or LOGIN, whichever smtplib prefers) when `login` is given. The text has one line
/// per step (`AUTH 235 ...`, `RCPT bob@example.test 250 ...`, `DATA 250 2.0.0 Ok: queued`);
/// success means every step was accepted.
pub async fn python_smtp_submit(
    port: u16,
    login: Option<(&str, &str)>,
    from: &str,
    to: &[&str],
    subject: &str,
    tls: &ClientTls,
) -> Result<(bool, String)> {
    let (user, pass) = login.unwrap_or(("", ""));
    let args = [port.to_string(), user.into(), pass.into(), from.into(), to.join(","), subject.into()];
    run_script(&format!("{MESSAGE}{SMTP}"), tls, &args).await
}

/// smtplib.LMTP in cleartext: one message to all of `to`, with the per-recipient results
/// (`RCPT <rcpt> <code> ...` and `DATA <rcpt> <code> ...` lines); success means every
/// recipient got 250 for both.
pub async fn python_lmtp_send(port: u16, from: &str, to: &[&str], subject: &str) -> Result<(bool, String)> {
    let args = [port.to_string(), from.into(), to.join(","), subject.into()];
    run_script(&format!("{MESSAGE}{LMTP}"), &ClientTls::Plain, &args).await
}
