//! `switchyard-bench`: runs the benchmark scenarios against the release binaries on
//! loopback and writes the table (stdout, Markdown) and a chart (PNG). `scripts/bench.sh`
//! builds everything in release mode and runs it; see README "Benchmarks".

mod backend;
mod bulk;
mod chart;
mod client;
mod control;
mod fleet;
mod idle;
mod lmtp;
mod load;
mod login;
mod peers;
mod procs;
mod report;
mod resolve;
mod route_cache;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchyard-bench", about = "Switchyard benchmark harness (run it through scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The scripted IMAP backend and LMTP responder (started by the bench itself as a
    /// child process).
    Backend {
        #[arg(long, default_value_t = 4096)]
        fetch_size: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A short smoke run: one run, a few seconds per scenario.
    #[arg(long)]
    quick: bool,
    /// Runs per figure; the table shows the median.
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per measured login phase.
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent clients in the login scenario.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Idle sessions to open through the node.
    #[arg(long)]
    sessions: Option<usize>,
    /// Seconds the idle sessions rest while the node's CPU is measured.
    #[arg(long)]
    rest: Option<u64>,
    /// PUTs and `/stats` requests timed per fleet size.
    #[arg(long)]
    requests: Option<usize>,
    /// Scenarios to run, comma-separated.
    #[arg(long, default_value = "1,2,3,5,6", value_delimiter = ',')]
    scenarios: Vec<u32>,
    /// Skip the real-Dovecot half of scenario 1.
    #[arg(long)]
    no_dovecot: bool,
    /// Where latest.md and latest.png go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Before any thread or child exists, so the node and the backend inherit it.
    let nofile = procs::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Command::Backend { fetch_size }) => runtime.block_on(async move {
            tokio::spawn(lmtp::serve());
            backend::serve(fetch_size).await
        }),
        None => runtime.block_on(run(cli.run, nofile)),
    }
}

async fn run(args: RunArgs, nofile: u64) -> Result<()> {
    let quick = args.quick;
    let runs = args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let duration = Duration::from_secs(args.duration.unwrap_or(if quick { 2 } else { 10 }));
    let login = login::Opts {
        clients: args.clients,
        duration,
        warmup: if quick { Duration::from_millis(500) } else { Duration::from_secs(1) },
        runs,
    };
    let idle = idle::Opts {
        sessions: args.sessions.unwrap_or(if quick { 2000 } else { 10_000 }),
        rest: Duration::from_secs(args.rest.unwrap_or(if quick { 3 } else { 10 })),
        runs,
    };
    let control = control::Opts {
        requests: args.requests.unwrap_or(if quick { 50 } else { 200 }),
        resolve_duration: duration,
        fleet_sizes: [100, 1000],
        runs,
    };
    let route_cache = route_cache::Opts { duration, runs };
    let bulk = bulk::Opts { messages: 20, message_size: 5_000_000, duration, runs };
    let mut figures: Vec<Vec<report::Figure>> = vec![Vec::new(); runs];
    let mut notes = Vec::new();
    let dovecot = !args.no_dovecot && switchyard_tests::find_binary("dovecot").is_some();
    if !peers::available() && args.scenarios.iter().any(|s| *s == 1 || *s == 2) {
        notes.push("nginx (with libnginx-mod-mail) or HAProxy not installed: the peer rows are missing".into());
    }
    for scenario in &args.scenarios {
        match scenario {
            1 => {
                login::scenario(login::Backend::Scripted, &login, &mut figures, &mut notes).await?;
                if dovecot {
                    login::scenario(login::Backend::Dovecot, &login, &mut figures, &mut notes).await?;
                } else {
                    notes.push(
                        "Dovecot not installed (scripts/install-deps.sh) or --no-dovecot: its rows are missing".into(),
                    );
                }
            }
            2 => bulk::scenario(&bulk, dovecot, &mut figures).await?,
            3 => idle::scenario(&idle, &mut figures, &mut notes).await?,
            5 => control::scenario(&control, &mut figures).await?,
            6 => route_cache::scenario(&route_cache, &mut figures).await?,
            other => anyhow::bail!("no scenario {other} (implemented: 1, 2, 3, 5, 6)"),
        }
    }
    let rows = report::summarize(&figures);
    let header = header(runs, &login, nofile);
    let markdown = report::markdown(&header, &rows, &notes);
    println!("{markdown}");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("latest.md"), &markdown)?;
    let png = args.out.join("latest.png");
    match chart::draw(&rows, &png)? {
        true => eprintln!("wrote {} and {}", args.out.join("latest.md").display(), png.display()),
        false => eprintln!("wrote {} (chart without text: no DejaVuSans.ttf found)", png.display()),
    }
    Ok(())
}

fn header(runs: usize, login: &login::Opts, nofile: u64) -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    vec![
        format!(
            "Measured {date} on {cores} cores ({cpu}), release build, everything on loopback on the same machine; \
             each figure is the median of {runs} run(s), each ratio = Switchyard / baseline within a run."
        ),
        format!(
            "Login phases: {} s each, {} concurrent clients (closed loop). File-descriptor limit: {nofile}.",
            login.duration.as_secs(),
            login.clients
        ),
    ]
}
