//! `controlplane mappings import|export` through the real binary: large round trips in
//! TSV and CSV, files refused whole, dry runs, malformed lines, and a running fleet on
//! the same SQLite file following an import by itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use switchyard_tests::fleet::{controlplane_toml, Api, Node, ADMIN_TOKEN, NODE_TOKEN};
use switchyard_tests::procs::{binary, write_file, Proc};
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};

/// A config file with the destinations `legacy` and `new` and its own SQLite store.
struct Cli {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cli {
    fn new() -> Result<Cli> {
        Cli::with_ports(1143, 2143, "")
    }

    fn with_ports(legacy: u16, new: u16, extra: &str) -> Result<Cli> {
        let dir = tempfile::tempdir()?;
        let mut toml =
            controlplane_toml(&dir.path().join("mappings.db"), &[("legacy", legacy), ("new", new)], "legacy");
        toml.push_str(extra);
        let config = write_file(dir.path(), "cp.toml", &toml)?;
        Ok(Cli { dir, config })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `controlplane --config cp.toml mappings ARGS…`.
    fn run(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(binary("controlplane")?)
            .arg("--config")
            .arg(&self.config)
            .arg("mappings")
            .args(args)
            .output()?;
        Ok(out)
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs and requires failure; returns stderr.
    fn refused(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(
            !out.status.success(),
            "{args:?} should have failed; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8(out.stderr)?)
    }

    /// Every mapping, from a TSV export to stdout.
    fn mappings(&self) -> Result<BTreeMap<String, String>> {
        Ok(read_tsv(&self.ok(&["export"])?))
    }

    async fn revision(&self) -> Result<u64> {
        let config = controlplane::config::Config::load(&self.config)?;
        Ok(controlplane::store::Store::open(&config.mapping, &config.route_key_rule()).await?.revision().await?)
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// `identifier<TAB>destination` lines, comments skipped.
fn read_tsv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, d)| (k.to_string(), d.to_string()))
        .collect()
}

const LARGE: usize = 200_000;

/// The `i`-th generated account as written in a file (mixed case) and as its route key.
fn account(i: usize) -> (String, String) {
    let written = format!("User{i:06}@Example{}.TEST", i % 7);
    let key = written.to_lowercase();
    (written, key)
}

fn destination(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "new"
    } else {
        "legacy"
    }
}

#[test]
fn a_large_tsv_file_round_trips_and_a_reimport_changes_nothing() -> Result<()> {
    let cli = Cli::new()?;
    let mut text = String::from("# generated\n\n");
    let mut expected = BTreeMap::new();
    for i in 0..LARGE {
        let (written, key) = account(i);
        text.push_str(&format!("{written}\t{}\n", destination(i)));
        expected.insert(key, destination(i).to_string());
    }
    let file = write_file(cli.dir.path(), "large.tsv", &text)?;
    let out = cli.ok(&["import", s(&file), "--no-progress"])?;
    ensure!(out.contains(&format!("{LARGE} added, 0 changed, 0 unchanged; revision 1")), "{out}");

    let export = cli.path("export.tsv");
    cli.ok(&["export", s(&export)])?;
    let exported = std::fs::read_to_string(&export)?;
    ensure!(read_tsv(&exported) == expected, "the export differs from the imported file");
    ensure!(cli.ok(&["export"])? == exported, "stdout and file exports differ");

    let out = cli.ok(&["import", s(&file), "--no-progress"])?;
    ensure!(out.contains(&format!("0 added, 0 changed, {LARGE} unchanged; nothing to write")), "{out}");
    let out = cli.ok(&["import", s(&export), "--no-progress"])?;
    ensure!(out.contains("0 added, 0 changed"), "re-importing the export: {out}");
    Ok(())
}

#[test]
fn a_large_csv_file_round_trips_through_a_csv_export() -> Result<()> {
    let cli = Cli::new()?;
    let mut text = String::from("identifier,destination\r\n");
    let mut expected = BTreeMap::new();
    for i in 0..LARGE {
        let (written, key) = account(i);
        // Every 1000th identifier needs quoting: a comma and a quote inside.
        let (written, key) = if i.is_multiple_of(1000) {
            (format!("\"{written},\"\"x\"\"\""), format!("{key},\"x\""))
        } else {
            (written, key)
        };
        text.push_str(&format!("{written},{}\r\n", destination(i)));
        expected.insert(key, destination(i).to_string());
    }
    // Not named .csv: the format comes from --format.
    let file = write_file(cli.dir.path(), "large.txt", &text)?;
    let out = cli.ok(&["import", s(&file), "--format", "csv", "--no-progress"])?;
    ensure!(out.contains(&format!("{LARGE} added, 0 changed, 0 unchanged")), "{out}");
    ensure!(cli.mappings()? == expected, "the store differs from the CSV file");

    // A CSV export (format from the extension) imported into another store holds the same.
    let export = cli.path("export.csv");
    cli.ok(&["export", s(&export)])?;
    ensure!(std::fs::read_to_string(&export)?.starts_with("identifier,destination\n"));
    let other = Cli::new()?;
    let out = other.ok(&["import", s(&export), "--no-progress"])?;
    ensure!(out.contains(&format!("{LARGE} added")), "{out}");
    ensure!(other.mappings()? == expected, "the CSV export did not round trip");

    let out = cli.ok(&["import", s(&file), "--format", "csv", "--no-progress"])?;
    ensure!(out.contains(&format!("0 added, 0 changed, {LARGE} unchanged")), "{out}");
    Ok(())
}

#[tokio::test]
async fn a_file_naming_an_undeclared_destination_is_refused_whole() -> Result<()> {
    let cli = Cli::new()?;
    let seed = write_file(cli.dir.path(), "seed.tsv", "alice@example.test\tlegacy\nbob@example.test\tnew\n")?;
    cli.ok(&["import", s(&seed)])?;
    let (before, revision) = (cli.mappings()?, cli.revision().await?);

    let bad = write_file(
        cli.dir.path(),
        "bad.tsv",
        "# moves\nalice@example.test\tnew\ncarol@example.test\tnowhere\ndave@example.test\tnew\nerin@example.test\tmars\n",
    )?;
    for args in [vec!["import", s(&bad)], vec!["import", s(&bad), "--dry-run"]] {
        let err = cli.refused(&args)?;
        for needle in [
            "import refused, nothing written (2 problems)",
            "line 3: destination \"nowhere\" is not declared",
            "line 5: destination \"mars\" is not declared",
        ] {
            ensure!(err.contains(needle), "{needle:?} missing from:\n{err}");
        }
        ensure!(!err.contains("line 2") && !err.contains("line 4"), "good lines reported:\n{err}");
    }
    ensure!(cli.mappings()? == before, "a refused import changed mappings");
    ensure!(cli.revision().await? == revision, "a refused import wrote a change");
    Ok(())
}

#[tokio::test]
async fn a_dry_run_names_the_changes_and_writes_nothing() -> Result<()> {
    let cli = Cli::new()?;
    let seed = write_file(cli.dir.path(), "seed.tsv", "alice@example.test\tlegacy\nbob@example.test\tnew\n")?;
    cli.ok(&["import", s(&seed)])?;
    let (before, revision) = (cli.mappings()?, cli.revision().await?);

    let file = write_file(
        cli.dir.path(),
        "moves.csv",
        "Alice@Example.test,new\nbob@example.test,new\n\"carol@example.test\",legacy\n",
    )?;
    let out = cli.ok(&["import", s(&file), "--dry-run"])?;
    for needle in [
        "1 to add, 1 to change, 1 unchanged; nothing written",
        "would add carol@example.test → legacy",
        "would change alice@example.test: legacy → new",
    ] {
        ensure!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    ensure!(!out.contains("bob@"), "an unchanged mapping was listed:\n{out}");
    ensure!(cli.mappings()? == before && cli.revision().await? == revision, "a dry run wrote");

    let out = cli.ok(&["import", s(&file)])?;
    ensure!(out.contains(&format!("1 added, 1 changed, 1 unchanged; revision {}", revision + 1)), "{out}");
    ensure!(cli.mappings()?.get("alice@example.test").map(String::as_str) == Some("new"));
    Ok(())
}

#[test]
fn malformed_lines_are_reported_with_their_line_numbers() -> Result<()> {
    let cli = Cli::new()?;
    let tsv = write_file(cli.dir.path(), "m.tsv", "ok@x\tnew\nalice@x\n\n\tnew\nbob@x\t\nbob@x\tnew\nok@x\tlegacy\n")?;
    let err = cli.refused(&["import", s(&tsv)])?;
    for needle in [
        "(4 problems)",
        "line 2: expected identifier<TAB>destination",
        "line 4: empty identifier",
        "line 5: empty destination",
        "line 7: identifier already mapped to \"new\" on line 1 (here \"legacy\")",
    ] {
        ensure!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }

    let csv = write_file(
        cli.dir.path(),
        "m.csv",
        "identifier,destination\n\"bob@x,new\nok@x,new\n\"a\"b,new\nc\"d,new\ne,new,x\n",
    )?;
    let err = cli.refused(&["import", s(&csv)])?;
    for needle in [
        "(4 problems)",
        "line 2: unterminated quoted field",
        "line 4: text after a closing quote",
        "line 5: quote inside an unquoted field",
        "line 6: expected identifier,destination (found 3 fields)",
    ] {
        ensure!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
    ensure!(cli.mappings()?.is_empty(), "nothing may be written");
    Ok(())
}

/// Logs in through `node` and returns the inbox subjects.
async fn subjects(node: &Node, user: &str) -> Result<Vec<String>> {
    let mut imap = ImapClient::connect(node.imap).await?;
    let tagged = imap.login(user, "pw").await?;
    ensure!(status(&tagged) == "OK", "login refused: {tagged}");
    let subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    Ok(subjects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fleet_follows_an_import_into_its_store() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let users = [("alice@example.test", "pw"), ("bob@example.test", "pw")];
    let (legacy, new) = (Dovecot::start(&users)?, Dovecot::start(&users)?);
    for (user, _) in users {
        legacy.deliver(user, "on legacy")?;
        new.deliver(user, "on new")?;
    }
    let cli = Cli::with_ports(legacy.imap_port(), new.imap_port(), "[mapping]\npoll_interval = \"300ms\"\n")?;
    let tokens = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];
    let cp = Proc::spawn("controlplane", &cli.config, &tokens)?;
    let grpc = cp.bound(&["grpc listening"]).await?;
    let api = Api::new(cp.bound(&["management api listening"]).await?);
    let node = Node::start("dp-bulk", &[format!("http://{grpc}")], Some(NODE_TOKEN)).await?;
    node.until_ready().await?;

    // Alice is mapped to legacy and the node has cached it (positive TTL: 10 minutes).
    let (code, put) = api.put("/mappings/alice@example.test", json!({"destination": "legacy"})).await?;
    ensure!(code == 200, "{put}");
    ensure!(subjects(&node, "alice@example.test").await? == ["on legacy"]);

    let file = write_file(cli.dir.path(), "moves.tsv", "alice@example.test\tnew\nbob@example.test\tnew\n")?;
    let out = cli.ok(&["import", s(&file), "--no-progress"])?;
    let revision: u64 = out.rsplit("revision ").next().and_then(|r| r.trim().parse().ok()).context(out.clone())?;

    // No API call: the control plane's poll finds the bulk change and the node flushes.
    eventually(Duration::from_secs(10), || async {
        let (_, nodes) = api.get("/nodes").await?;
        let applied = nodes.as_array().and_then(|n| n.first()).map(|n| n["applied_revision"].clone());
        ensure!(applied == Some(json!(revision)), "node not at revision {revision} yet: {nodes}");
        Ok(())
    })
    .await?;
    ensure!(subjects(&node, "alice@example.test").await? == ["on new"], "the cached route survived the import");
    ensure!(subjects(&node, "bob@example.test").await? == ["on new"]);
    Ok(())
}

#[tokio::test]
async fn the_cli_works_on_postgresql_whatever_its_collation() -> Result<()> {
    if !switchyard_tests::postgres::require_or_skip() {
        return Ok(());
    }
    let pg = switchyard_tests::postgres::Postgres::start()?;
    // en-US sorts `a_b` < `aB` < `A-c` unlike byte order: the import's comparison with
    // the store must not depend on the order the store lists keys in.
    let url = pg.fresh_database_icu("bulk", "en-US")?;
    let cli = Cli::with_ports(
        1143,
        2143,
        &format!("[mapping]\nsource = \"postgres\"\n[mapping.postgres]\nurl = \"{url}\"\n"),
    )?;
    let mut text = String::new();
    let mut expected = BTreeMap::new();
    let odd = ["a_b@x", "aB@x", "A-c@x", "b@x", "Z@x", "_z@x", "ä@x", "o'brien@x"];
    for (i, written) in odd.iter().map(|s| s.to_string()).chain((0..20_000).map(|i| account(i).0)).enumerate() {
        text.push_str(&format!("{written}\t{}\n", destination(i)));
        expected.insert(written.to_lowercase(), destination(i).to_string());
    }
    let file = write_file(cli.dir.path(), "m.tsv", &text)?;
    let out = cli.ok(&["import", s(&file), "--no-progress"])?;
    ensure!(out.contains(&format!("{} added, 0 changed, 0 unchanged; revision 1", expected.len())), "{out}");
    ensure!(cli.mappings()? == expected, "the PostgreSQL store differs from the file");
    let out = cli.ok(&["import", s(&file), "--no-progress"])?;
    ensure!(out.contains(&format!("0 added, 0 changed, {} unchanged", expected.len())), "{out}");

    let moves = write_file(cli.dir.path(), "moves.tsv", "A_B@x\tlegacy\nnewcomer@x\tnew\n")?;
    let out = cli.ok(&["import", s(&moves), "--dry-run"])?;
    ensure!(out.contains("would change a_b@x: new → legacy") && out.contains("would add newcomer@x → new"), "{out}");
    let out = cli.ok(&["import", s(&moves)])?;
    ensure!(out.contains("1 added, 1 changed, 0 unchanged; revision 2"), "{out}");
    ensure!(cli.revision().await? == 2, "one bulk change per import");
    Ok(())
}
