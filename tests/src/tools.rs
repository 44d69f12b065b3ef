//! Runs real command-line clients (python3, swaks, curl) without blocking the runtime.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

/// Whole-run bound; the clients' own 10 s socket timeouts normally fire first.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client reaches the server: cleartext, upgraded in-band (STARTTLS/STLS), or TLS from
/// the first byte (IMAPS, POP3S, SMTPS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTls {
    Plain,
    StartTls(TlsTrust),
    Implicit(TlsTrust),
}

/// What a TLS client trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsTrust {
    /// Only this CA (PEM), e.g. [`crate::TestPki::ca_pem_path`]; the name checked is
    /// `127.0.0.1`, which test leaves carry as an IP SAN.
    CaFile(PathBuf),
    /// No verification at all.
    Insecure,
}

impl ClientTls {
    pub fn starttls(ca_pem: impl AsRef<Path>) -> Self {
        Self::StartTls(TlsTrust::CaFile(ca_pem.as_ref().to_path_buf()))
    }
    pub fn implicit(ca_pem: impl AsRef<Path>) -> Self {
        Self::Implicit(TlsTrust::CaFile(ca_pem.as_ref().to_path_buf()))
    }

    /// `[mode, cafile]` as the Python scripts expect them (empty cafile: no verification).
    pub(crate) fn script_args(&self) -> [String; 2] {
        let (mode, trust) = match self {
            Self::Plain => ("plain", None),
            Self::StartTls(trust) => ("starttls", Some(trust)),
            Self::Implicit(trust) => ("implicit", Some(trust)),
        };
        let cafile = match trust {
            Some(TlsTrust::CaFile(path)) => path.display().to_string(),
            _ => String::new(),
        };
        [mode.to_string(), cafile]
    }
}

/// Runs `program` with `args` and returns (exit status was 0, stdout + stderr). `Err` only
/// when the program could not be run or did not finish within 30 s.
///
/// Async on purpose: a blocking wait would freeze a proxy under test running on the same
/// (single-threaded) runtime, and the client would wait for it forever.
pub async fn run_client<I, S>(program: &str, args: I) -> Result<(bool, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program} (scripts/install-deps.sh installs it)"))?;
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{program} did not finish within {RUN_TIMEOUT:?}"))??;
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        text.push_str(&format!("\n[stderr] {}", stderr.trim()));
    }
    Ok((output.status.success(), text))
}

/// Runs swaks, e.g. `["--server", "127.0.0.1", "--port", &port, "--to", "bob@example.test",
/// "--auth", "PLAIN", "--auth-user", ..]`; the transcript is in the returned text. `--tls`
/// needs Net::SSLeay (installed by scripts/install-deps.sh).
pub async fn swaks<S: AsRef<OsStr>>(args: &[S]) -> Result<(bool, String)> {
    run_client("swaks", args).await
}

/// Runs curl with `args` plus `--silent --show-error --max-time 10`, e.g. an IMAPS listing
/// with `--cacert`. curl exits non-zero on protocol errors, so the bool is meaningful.
pub async fn curl<S: AsRef<OsStr>>(args: &[S]) -> Result<(bool, String)> {
    let base = ["--silent", "--show-error", "--max-time", "10"].map(std::ffi::OsString::from);
    let all = base.into_iter().chain(args.iter().map(|a| a.as_ref().to_os_string()));
    run_client("curl", all).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_args_carry_mode_and_trust() {
        assert_eq!(ClientTls::Plain.script_args(), ["plain", ""]);
        assert_eq!(ClientTls::starttls("/ca.pem").script_args(), ["starttls", "/ca.pem"]);
        assert_eq!(ClientTls::Implicit(TlsTrust::Insecure).script_args(), ["implicit", ""]);
    }

    #[tokio::test]
    async fn reports_exit_status_and_both_streams() {
        let (ok, out) = run_client("sh", ["-c", "echo out; echo err >&2; exit 3"]).await.unwrap();
        assert!(!ok);
        assert_eq!(out, "out\n[stderr] err");
        assert!(run_client("definitely-not-a-switchyard-client", ["x"]).await.is_err());
    }
}
