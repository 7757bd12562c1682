//! The scale benchmark: `cargo bench --bench scale` (add `-- --quick` for a tenth of the sizes,
//! `-- --first` or `-- --latency` for one scenario with the floor, `-- --jobs` for the jobs and
//! steps scenarios only (100k runs x 5 jobs x 9 steps, made from the real jobs example in
//! ../shared), `-- --postgres` for the PostgreSQL ledger beside SQLite (a server at
//! `WORKFLOW_METRICS_BENCH_POSTGRES`, a role that may create databases), `-- --baseline PATH` to run
//! the fresh send, the rerun and the cron pass with another build of the binary too, alternating
//! with this one, for a before/after in one run).
//!
//! Generates its inputs deterministically (seeded, fixed timestamps; sent with --historical),
//! starts a local intake on 127.0.0.1 that decodes every body and checks Datadog's size limits
//! (parsing one body in eight as JSON), measures the work floor in this process, runs the release
//! binary for each scenario and prints one table: scenario, wall time, runs/s, peak RSS, the floor
//! and the ratio to it.

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use workflow_metrics::datadog::{self, Compression};
use workflow_metrics::metrics::{SentPoint, SeriesSpec, TagFields};
use workflow_metrics::model::{validate_job, validate_run, Item, Validated};
use workflow_metrics::source::file::{read_input, Record};
use workflow_metrics::source::Input;

const BIN: &str = env!("CARGO_BIN_EXE_workflow-metrics");
/// 2025-01-01T00:00:00Z: fixed, so inputs are the same bytes every time.
const BASE: i64 = 1_735_689_600;
const DEFAULT_COMPRESSION: Compression = Compression::Zstd;

// A harness, not the product: it reads its own knobs (BENCH_ARGS, BENCH_STDERR).
#[allow(clippy::disallowed_methods)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--list") {
        return;
    }
    let baseline = args.iter().position(|arg| arg == "--baseline").map(|at| args[at + 1].clone());
    let quick = args.iter().any(|arg| arg == "--quick");
    let (gh_runs, rest_runs) = if quick { (100_000, 10_000) } else { (1_000_000, 100_000) };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let gh = dir.join(format!("gh-{gh_runs}.json"));
    let rest = dir.join(format!("rest-{rest_runs}.json"));
    let cron = dir.join("cron-1000.json");
    generate(&gh, || gh_file(gh_runs));
    let gh_small = dir.join("gh-100000.json");
    generate(&gh_small, || gh_file(100_000));
    generate(&rest, || rest_file(rest_runs));
    generate(&cron, cron_file);
    eprintln!("inputs: {} ({} MB), {} ({} MB)", gh.display(), size_mb(&gh), rest.display(), size_mb(&rest));

    let intake = Intake::start();
    let fresh = |path: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    };
    if args.iter().any(|arg| arg == "--jobs") {
        jobs_scenarios(&intake, &dir, if quick { 10_000 } else { 100_000 }, &fresh);
        return;
    }
    if args.iter().any(|arg| arg == "--postgres") {
        postgres_scenarios(&intake, &dir, &gh, &cron, gh_runs, &fresh);
        return;
    }
    let mut table = Vec::new();

    let gh_floor = floor(&gh);
    let rest_floor = floor(&rest);
    eprintln!(
        "floor {}: parse {:.2}s, ledger {:.2}s, encode {:.2}s, compress {:.2}s",
        gh.display(),
        gh_floor.parse,
        gh_floor.ledger,
        gh_floor.encode,
        gh_floor.compress
    );

    let ledger = dir.join("ledger-gh.db");
    fresh(&ledger);
    // Against an intake that takes 100 ms per answer.
    let latency_row = || {
        fresh(&ledger);
        intake.latency_ms.store(100, Ordering::SeqCst);
        let run = intake.send(&gh, &ledger, &[]);
        intake.latency_ms.store(0, Ordering::SeqCst);
        let floor = Some(("floor+5s", gh_floor.total() + 5.0));
        Row::new(&format!("send {gh_runs} gh rows, intake +100 ms"), &run, gh_runs, floor)
    };
    if let Some(baseline) = &baseline {
        compare(&intake, baseline, &gh, &cron, &ledger, gh_runs, &gh_floor, &fresh);
        return;
    }
    if args.iter().any(|arg| arg == "--latency") {
        // Only the latency scenario (with the floor), for tuning it.
        println!("{}", latency_row());
        return;
    }
    let run = intake.send(&gh, &ledger, &[]);
    table.push(Row::new(
        &format!("send {gh_runs} gh rows (fresh ledger)"),
        &run,
        gh_runs,
        Some(("floor", gh_floor.total())),
    ));
    if args.iter().any(|arg| arg == "--first") {
        println!("{}", table[0]);
        return;
    }

    // The same shape at a tenth of the size, for how memory and time grow with the input.
    if !quick {
        let small_ledger = dir.join("ledger-gh-small.db");
        fresh(&small_ledger);
        let small = intake.send(&gh_small, &small_ledger, &[]);
        table.push(Row::new("send 100000 gh rows (fresh ledger)", &small, 100_000, None));
        fresh(&small_ledger);
    }

    let rerun = intake.send(&gh, &ledger, &[]);
    assert_eq!(rerun.summary["requests"], 0, "a rerun makes no request");
    table.push(Row::new(&format!("rerun {gh_runs} (all sent)"), &rerun, gh_runs, Some(("parse", gh_floor.parse))));

    let cron_run = intake.send(&cron, &ledger, &[]);
    assert_eq!(cron_run.summary["sent"], 500);
    table.push(Row::new(&format!("cron: 1k runs, 500 new, ledger of {gh_runs}"), &cron_run, 1000, None));

    let rest_ledger = dir.join("ledger-rest.db");
    fresh(&rest_ledger);
    let run = intake.send(&rest, &rest_ledger, &[]);
    table.push(Row::new(
        &format!("send {rest_runs} REST runs ({} MB)", size_mb(&rest)),
        &run,
        rest_runs,
        Some(("floor", rest_floor.total())),
    ));

    fresh(&ledger);
    let run = intake.send(&gh, &ledger, &["--log-detail", "requests"]);
    let log_cost = 1.0 - run.wall / table[0].wall;
    let no_log_wall = run.wall;
    table.push(Row::new(
        &format!("send {gh_runs} gh rows, log without series"),
        &run,
        gh_runs,
        Some(("floor", gh_floor.total())),
    ));

    fresh(&ledger);
    let full = intake.send(&gh, &ledger, &["--log-detail", "full"]);
    let full_log_cost = 1.0 - no_log_wall / full.wall;
    table.push(Row::new(
        &format!("send {gh_runs} gh rows, --log-detail full"),
        &full,
        gh_runs,
        Some(("floor", gh_floor.total())),
    ));

    table.push(latency_row());
    fresh(&ledger);
    fresh(&rest_ledger);
    jobs_scenarios(&intake, &dir, if quick { 10_000 } else { 100_000 }, &fresh);

    println!();
    println!("| scenario | wall s | runs/s | peak RSS MB | requests | floor s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &table {
        println!("{row}");
    }
    println!();
    println!(
        "floor (this process, one thread): {gh_runs} gh rows: parse {:.2}s + ledger {:.2}s + encode {:.2}s + compress {:.2}s = {:.2}s; \
         {rest_runs} REST runs: {:.2}s (parse {:.2}s)",
        gh_floor.parse, gh_floor.ledger, gh_floor.encode, gh_floor.compress, gh_floor.total(), rest_floor.total(), rest_floor.parse
    );
    println!(
        "run log cost: {:.0}% of the run at the default (compact) detail, {:.0}% at full detail (against request lines only)",
        log_cost * 100.0,
        full_log_cost * 100.0
    );
    println!(
        "intake bodies: {} requests, {} MB compressed",
        intake.requests.load(Ordering::SeqCst),
        intake.bytes.load(Ordering::SeqCst) / 1_000_000
    );
}

/// The PostgreSQL ledger beside SQLite, in one run: a fresh send, a rerun with everything sent
/// and a cron pass over each; then four invocations at once over the same input, against one.
#[allow(clippy::disallowed_methods)]
fn postgres_scenarios(intake: &Intake, dir: &Path, gh: &Path, cron: &Path, runs: u64, fresh: &dyn Fn(&Path)) {
    let server = std::env::var("WORKFLOW_METRICS_BENCH_POSTGRES")
        .expect("--postgres needs WORKFLOW_METRICS_BENCH_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/DB");
    // A fresh database `name`, empty or a copy of `template`.
    let copy_of = |name: &str, template: Option<&str>| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(async move { drop(connection.await) });
            client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
            let template = template.map(|template| format!(" TEMPLATE {template}")).unwrap_or_default();
            client.batch_execute(&format!("CREATE DATABASE {name}{template}")).await.unwrap();
        });
        format!("{}/{name}", server.rsplit_once('/').unwrap().0)
    };
    let database = |name: &str| copy_of(name, None);
    let sqlite = dir.join("ledger-pg-compare.db");
    let mut table = Vec::new();
    fresh(&sqlite);
    let sqlite_ledger = sqlite.to_str().unwrap().to_owned();
    let mut figures = Vec::new();
    for (backend, ledger) in [("sqlite", sqlite_ledger), ("postgres", database("wm_bench_one"))] {
        let run = intake.send_ledger(BIN, gh, &ledger, &[]);
        let rerun = intake.send_ledger(BIN, gh, &ledger, &[]);
        assert_eq!(rerun.summary["requests"], 0, "a rerun makes no request");
        // A cron pass takes tens of milliseconds: the median of five, each on its own copy of
        // the million-run ledger (the pass sends 500 of its runs).
        let mut passes: Vec<Outcome> = (0..5)
            .map(|_| {
                let copy = if backend == "sqlite" {
                    let copy = dir.join("ledger-pg-compare-cron.db");
                    fresh(&copy);
                    std::fs::copy(&sqlite, &copy).unwrap();
                    // On disk before the pass, or its first commit's fsync writes the whole copy.
                    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
                    copy.to_str().unwrap().to_owned()
                } else {
                    copy_of("wm_bench_cron", Some("wm_bench_one"))
                };
                let pass = intake.send_ledger(BIN, cron, &copy, &[]);
                assert_eq!(pass.summary["sent"], 500);
                pass
            })
            .collect();
        passes.sort_by(|a, b| a.wall.total_cmp(&b.wall));
        let cron_run = passes.swap_remove(2);
        figures.push((backend, run, rerun, cron_run));
    }
    let [(_, sqlite_run, sqlite_rerun, sqlite_cron), (_, pg_run, pg_rerun, pg_cron)] = &figures[..] else {
        unreachable!("two backends")
    };
    table.push(Row::new(&format!("sqlite: send {runs} gh rows (fresh)"), sqlite_run, runs, None));
    table.push(Row::new(
        &format!("postgres: send {runs} gh rows (fresh)"),
        pg_run,
        runs,
        Some(("sqlite", sqlite_run.wall)),
    ));
    table.push(Row::new(&format!("sqlite: rerun {runs} (all sent)"), sqlite_rerun, runs, None));
    table.push(Row::new(
        &format!("postgres: rerun {runs} (all sent)"),
        pg_rerun,
        runs,
        Some(("sqlite", sqlite_rerun.wall)),
    ));
    table.push(Row::new(
        &format!("sqlite: cron, 1k runs, 500 new, ledger of {runs} (median of 5)"),
        sqlite_cron,
        1000,
        None,
    ));
    table.push(Row::new(
        &format!("postgres: cron, 1k runs, 500 new, ledger of {runs} (median of 5)"),
        pg_cron,
        1000,
        Some(("sqlite", sqlite_cron.wall)),
    ));
    // Four at once over the same input, on a fresh database, against one alone: with an instant
    // intake (where each must parse all the input on two cores), and with one that answers in
    // 100 ms (Datadog's latency, which four overlap).
    let four_at_once = |name: &str, inputs: [&Path; 4]| {
        let ledger = database(name);
        let started = Instant::now();
        let log_dir = bench_logs();
        let children: Vec<_> =
            inputs.iter().map(|input| intake.command(BIN, input, &ledger, &log_dir, &[]).spawn().unwrap()).collect();
        let (mut sent, mut rss, mut requests) = (0, 0, 0);
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            sent += summary["sent"].as_u64().unwrap();
            requests += summary["requests"].as_u64().unwrap();
            rss = rss.max(summary["peak_rss_bytes"].as_u64().unwrap_or(0));
        }
        let _ = std::fs::remove_dir_all(&log_dir);
        assert_eq!(sent, pg_run.summary["sent"].as_u64().unwrap(), "four invocations sent each run once");
        Outcome {
            wall: started.elapsed().as_secs_f64(),
            summary: serde_json::json!({"peak_rss_bytes": rss, "requests": requests}),
        }
    };
    let four = four_at_once("wm_bench_four", [gh; 4]);
    table.push(Row::new(
        &format!("postgres: 4 invocations at once, same {runs} gh rows"),
        &four,
        runs,
        Some(("one", pg_run.wall)),
    ));
    // As the README advises: each worker a quarter of the repositories.
    let quarters: Vec<_> = (0..4)
        .map(|quarter| {
            let path = dir.join(format!("gh-{runs}-quarter-{quarter}.json"));
            generate(&path, || gh_quarter_file(runs, quarter));
            path
        })
        .collect();
    let split = four_at_once("wm_bench_split", std::array::from_fn(|quarter| quarters[quarter].as_path()));
    table.push(Row::new(
        &format!("postgres: 4 invocations at once, a quarter of the repositories each ({runs} gh rows)"),
        &split,
        runs,
        Some(("one", pg_run.wall)),
    ));
    intake.latency_ms.store(100, Ordering::SeqCst);
    let one = intake.send_ledger(BIN, gh, &database("wm_bench_one_slow"), &[]);
    table.push(Row::new(&format!("postgres: 1 invocation, {runs} gh rows, intake +100 ms"), &one, runs, None));
    let four = four_at_once("wm_bench_four_slow", [gh; 4]);
    table.push(Row::new(
        &format!("postgres: 4 invocations at once, {runs} gh rows, intake +100 ms"),
        &four,
        runs,
        Some(("one", one.wall)),
    ));
    intake.latency_ms.store(0, Ordering::SeqCst);
    fresh(&sqlite);
    println!();
    println!("| scenario | wall s | runs/s | peak RSS MB | requests | against s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &table {
        println!("{row}");
    }
}

/// A fresh folder for one scenario's run logs (removed after it: a million runs log 360 MB).
fn bench_logs() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wm-bench-logs-{:016x}", fastrand::u64(..)))
}

/// Jobs and steps (`--steps`): `runs` runs' jobs lists, 5 jobs of 9 steps each, and a tenth of
/// that for how memory grows with the input; against the floor of the same input.
fn jobs_scenarios(intake: &Intake, dir: &Path, runs: u64, fresh: &dyn Fn(&Path)) {
    let big = dir.join(format!("jobs-{runs}.ndjson"));
    let small = dir.join(format!("jobs-{}.ndjson", runs / 10));
    generate(&big, || jobs_file(runs));
    generate(&small, || jobs_file(runs / 10));
    eprintln!("input: {} ({} MB)", big.display(), size_mb(&big));
    let floor = floor(&big);
    let items = runs * 5 * 10;
    let ledger = dir.join("ledger-jobs.db");
    let mut table = Vec::new();
    fresh(&ledger);
    let run = intake.send(&big, &ledger, &["--steps"]);
    assert_eq!(run.summary["sent"], items, "every job and step sent");
    table.push(Row::new(
        &format!("send {runs} runs' jobs and steps ({} MB; {items} items)", size_mb(&big)),
        &run,
        items,
        Some(("floor", floor.total())),
    ));
    let rerun = intake.send(&big, &ledger, &["--steps"]);
    assert_eq!(rerun.summary["requests"], 0, "a rerun makes no request");
    table.push(Row::new(
        &format!("rerun {items} jobs and steps (all sent)"),
        &rerun,
        items,
        Some(("parse", floor.parse)),
    ));
    fresh(&ledger);
    let run = intake.send(&small, &ledger, &["--steps"]);
    table.push(Row::new(&format!("send {} runs' jobs and steps", runs / 10), &run, items / 10, None));
    fresh(&ledger);
    println!();
    println!("| scenario | wall s | items/s | peak RSS MB | requests | floor s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &table {
        println!("{row}");
    }
    println!(
        "floor (this process, one thread): {items} jobs and steps: parse {:.2}s + ledger {:.2}s + encode {:.2}s + compress {:.2}s = {:.2}s",
        floor.parse,
        floor.ledger,
        floor.encode,
        floor.compress,
        floor.total()
    );
}

/// Before/after: the fresh send, the rerun and the cron pass, alternating the baseline binary and
/// this one (twice each), beside the floor measured in the same process.
#[allow(clippy::too_many_arguments)]
fn compare(
    intake: &Intake,
    baseline: &str,
    gh: &Path,
    cron: &Path,
    ledger: &Path,
    gh_runs: u64,
    floor: &Floor,
    fresh: &dyn Fn(&Path),
) {
    let mut table = Vec::new();
    for round in 1..=2 {
        for (name, binary) in [("baseline", baseline), ("this build", BIN)] {
            fresh(ledger);
            let run = intake.send_with(binary, gh, ledger, &[]);
            let label = format!("{name} #{round}: send {gh_runs} gh rows (fresh ledger)");
            table.push(Row::new(&label, &run, gh_runs, Some(("floor", floor.total()))));
            let rerun = intake.send_with(binary, gh, ledger, &[]);
            let label = format!("{name} #{round}: rerun {gh_runs} (all sent)");
            table.push(Row::new(&label, &rerun, gh_runs, Some(("parse", floor.parse))));
            let cron_run = intake.send_with(binary, cron, ledger, &[]);
            let label = format!("{name} #{round}: cron: 1k runs, 500 new, ledger of {gh_runs}");
            table.push(Row::new(&label, &cron_run, 1000, None));
        }
    }
    fresh(ledger);
    println!();
    println!("| scenario | wall s | runs/s | peak RSS MB | requests | floor s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &table {
        println!("{row}");
    }
    println!(
        "floor: parse {:.2}s + ledger {:.2}s + encode {:.2}s + compress {:.2}s = {:.2}s",
        floor.parse,
        floor.ledger,
        floor.encode,
        floor.compress,
        floor.total()
    );
}

fn size_mb(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() / 1_000_000).unwrap_or(0)
}

fn generate(path: &Path, make: impl FnOnce() -> Writer) {
    if path.exists() {
        return;
    }
    let started = Instant::now();
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).unwrap();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    make()(&mut out);
    out.flush().unwrap();
    std::fs::rename(&partial, path).unwrap();
    eprintln!("generated {} in {:.1}s", path.display(), started.elapsed().as_secs_f64());
}

/// Writes one generated input.
type Writer = Box<dyn FnOnce(&mut dyn Write)>;

const REPOS: usize = 50;
const BRANCHES: &[&str] =
    &["main", "develop", "release/2025.1", "feature/login", "feature/search", "fix/flaky", "renovate/deps", "docs"];
const EVENTS: &[&str] = &["push", "pull_request", "schedule", "workflow_dispatch"];
const CONCLUSIONS: &[&str] =
    &["success", "success", "success", "success", "success", "success", "failure", "cancelled", "skipped"];

struct Fake {
    id: u64,
    attempt: u32,
    repo_index: usize,
    repo: String,
    workflow: (u64, String),
    branch: &'static str,
    event: &'static str,
    completed: bool,
    conclusion: &'static str,
    created: i64,
    started: i64,
    updated: i64,
}

fn fake(rng: &mut fastrand::Rng, index: u64) -> Fake {
    let repo_index = rng.usize(0..REPOS);
    let workflow_index = rng.u64(0..5);
    let created = BASE + index as i64 * 7;
    let queued = rng.i64(1..120);
    let duration = rng.i64(30..3600);
    Fake {
        id: 10_000_000_000 + index,
        attempt: if rng.u8(0..20) == 0 { 2 } else { 1 },
        repo_index,
        repo: format!("acme/service-{repo_index:02}"),
        workflow: (
            100_000 + repo_index as u64 * 10 + workflow_index,
            ["CI", "Release", "Nightly", "Lint", "Deploy"][workflow_index as usize].to_owned(),
        ),
        branch: BRANCHES[rng.usize(0..BRANCHES.len())],
        event: EVENTS[rng.usize(0..EVENTS.len())],
        completed: rng.u8(0..20) != 0,
        conclusion: CONCLUSIONS[rng.usize(0..CONCLUSIONS.len())],
        created,
        started: created + queued,
        updated: created + queued + duration,
    }
}

fn iso(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn gh_row(run: &Fake) -> serde_json::Value {
    serde_json::json!({
        "attempt": run.attempt,
        "conclusion": if run.completed { run.conclusion } else { "" },
        "createdAt": iso(run.created),
        "databaseId": run.id,
        "displayTitle": format!("Merge pull request #{} from acme/{}", run.id % 10_000, run.branch),
        "event": run.event,
        "headBranch": run.branch,
        "headSha": format!("{:040x}", run.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        "name": run.workflow.1,
        "number": run.id % 100_000,
        "startedAt": iso(run.started),
        "status": if run.completed { "completed" } else { "in_progress" },
        "updatedAt": if run.completed { iso(run.updated) } else { "0001-01-01T00:00:00Z".to_owned() },
        "url": format!("https://github.com/{}/actions/runs/{}", run.repo, run.id),
        "workflowDatabaseId": run.workflow.0,
        "workflowName": run.workflow.1,
    })
}

/// `gh run list --json ...` output, one array per 1000 rows as a paginating script would write.
fn gh_file(count: u64) -> Writer {
    gh_file_of(count, |_| true)
}

/// The rows of `gh_file(count)` whose repository number leaves `quarter` divided by four: what
/// one of four workers splitting the repositories reads.
fn gh_quarter_file(count: u64, quarter: usize) -> Writer {
    gh_file_of(count, move |run| run.repo_index % 4 == quarter)
}

fn gh_file_of(count: u64, keep: impl Fn(&Fake) -> bool + 'static) -> Writer {
    Box::new(move |out| {
        let mut rng = fastrand::Rng::with_seed(4);
        for start in (0..count).step_by(1000) {
            let rows: Vec<_> = (start..(start + 1000).min(count))
                .map(|i| fake(&mut rng, i))
                .filter(|run| keep(run))
                .map(|run| gh_row(&run))
                .collect();
            serde_json::to_writer(&mut *out, &rows).unwrap();
            out.write_all(b"\n").unwrap();
        }
    })
}

/// `runs` jobs lists (`GET .../runs/{id}/attempts/1/jobs` bodies, one per line) made from the real
/// example of 5 jobs with 9 steps each: ids, repositories, branches and times change per run,
/// the shape (job times `Z`, step times with milliseconds and an offset) stays GitHub's.
fn jobs_file(runs: u64) -> Writer {
    Box::new(move |out| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/github/examples/rest_jobs_pygithub_2023-01_5jobs_steps.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("the jobs benchmark is made from {}: {error}", path.display()));
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let templates = body["jobs"].as_array().unwrap().clone();
        assert_eq!(templates.len(), 5);
        let at = |value: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap().timestamp_millis()
        };
        let origin = at(&templates[0]["created_at"]);
        let offset = chrono::FixedOffset::west_opt(8 * 3600).unwrap();
        let step_time = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .with_timezone(&offset)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        };
        let mut rng = fastrand::Rng::with_seed(5);
        for index in 0..runs {
            let run_id = 20_000_000_000 + index;
            let repo = format!("acme/service-{:02}", rng.usize(0..REPOS));
            let branch = BRANCHES[rng.usize(0..BRANCHES.len())];
            let shift = (BASE + index as i64 * 7) * 1000 - origin;
            let jobs: Vec<serde_json::Value> = templates
                .iter()
                .enumerate()
                .map(|(number, template)| {
                    let mut job = template.clone();
                    job["id"] = (run_id * 10 + number as u64).into();
                    job["run_id"] = run_id.into();
                    job["head_branch"] = branch.into();
                    job["run_url"] = format!("https://api.github.com/repos/{repo}/actions/runs/{run_id}").into();
                    job["url"] =
                        format!("https://api.github.com/repos/{repo}/actions/jobs/{}", run_id * 10 + number as u64)
                            .into();
                    job["html_url"] = format!("https://github.com/{repo}/actions/runs/{run_id}/job/{}", number).into();
                    if rng.u8(0..10) == 0 {
                        job["conclusion"] = "failure".into();
                    }
                    for field in ["created_at", "started_at", "completed_at"] {
                        job[field] = iso((at(&template[field]) + shift).div_euclid(1000)).into();
                    }
                    for step in job["steps"].as_array_mut().unwrap() {
                        for field in ["started_at", "completed_at"] {
                            if !step[field].is_null() {
                                step[field] = step_time(at(&step[field]) + shift).into();
                            }
                        }
                    }
                    job
                })
                .collect();
            serde_json::to_writer(&mut *out, &serde_json::json!({"total_count": 5, "jobs": jobs})).unwrap();
            out.write_all(b"\n").unwrap();
        }
    })
}

fn cron_file() -> Writer {
    Box::new(|out| {
        // 500 runs the big ledger has (completed ones of the first rows) and 500 new ones.
        let mut rng = fastrand::Rng::with_seed(4);
        let mut rows = Vec::new();
        let mut index = 0;
        while rows.len() < 500 {
            let run = fake(&mut rng, index);
            if run.completed {
                rows.push(gh_row(&run));
            }
            index += 1;
        }
        let mut rng = fastrand::Rng::with_seed(5);
        let mut index = 2_000_000;
        while rows.len() < 1000 {
            let run = fake(&mut rng, index);
            if run.completed {
                rows.push(gh_row(&run));
            }
            index += 1;
        }
        serde_json::to_writer(&mut *out, &rows).unwrap();
    })
}

fn user(login: &str, id: u64) -> serde_json::Value {
    let api = format!("https://api.github.com/users/{login}");
    serde_json::json!({
        "login": login, "id": id, "node_id": "MDQ6VXNlcjU4MzIzMQ==", "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "", "url": api, "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/followers"), "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"), "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"), "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"), "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"), "type": "User", "user_view_type": "public", "site_admin": false
    })
}

fn repository(full_name: &str) -> serde_json::Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    let api = format!("https://api.github.com/repos/{full_name}");
    let mut repo = serde_json::json!({
        "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full_name, "private": true,
        "owner": user(owner, 9919), "html_url": format!("https://github.com/{full_name}"),
        "description": "Services of the acme platform", "fork": false, "url": api,
    });
    for (key, suffix) in [
        ("forks_url", "/forks"),
        ("keys_url", "/keys{/key_id}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("teams_url", "/teams"),
        ("hooks_url", "/hooks"),
        ("issue_events_url", "/issues/events{/number}"),
        ("events_url", "/events"),
        ("assignees_url", "/assignees{/user}"),
        ("branches_url", "/branches{/branch}"),
        ("tags_url", "/tags"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("trees_url", "/git/trees{/sha}"),
        ("statuses_url", "/statuses/{sha}"),
        ("languages_url", "/languages"),
        ("stargazers_url", "/stargazers"),
        ("contributors_url", "/contributors"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("commits_url", "/commits{/sha}"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("comments_url", "/comments{/number}"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("contents_url", "/contents/{+path}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("merges_url", "/merges"),
        ("archive_url", "/{archive_format}{/ref}"),
        ("downloads_url", "/downloads"),
        ("issues_url", "/issues{/number}"),
        ("pulls_url", "/pulls{/number}"),
        ("milestones_url", "/milestones{/number}"),
        ("notifications_url", "/notifications{?since,all,participating}"),
        ("labels_url", "/labels{/name}"),
        ("releases_url", "/releases{/id}"),
        ("deployments_url", "/deployments"),
    ] {
        repo[key] = serde_json::json!(format!("{api}{suffix}"));
    }
    repo
}

fn rest_run(run: &Fake) -> serde_json::Value {
    let api = format!("https://api.github.com/repos/{}/actions/runs/{}", run.repo, run.id);
    let sha = format!("{:040x}", run.id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    serde_json::json!({
        "id": run.id, "name": run.workflow.1, "node_id": "WFR_kwLOBp9g3s8AAAACYX4QMA", "head_branch": run.branch, "head_sha": sha,
        "path": format!(".github/workflows/{}.yml", run.workflow.1.to_lowercase()), "display_title": format!("Merge pull request #{} from acme/{}", run.id % 10_000, run.branch),
        "run_number": run.id % 100_000, "event": run.event, "status": if run.completed { "completed" } else { "in_progress" },
        "conclusion": if run.completed { serde_json::json!(run.conclusion) } else { serde_json::Value::Null },
        "workflow_id": run.workflow.0, "check_suite_id": run.id + 7, "check_suite_node_id": "CS_kwDOBp9g3s8AAAAIZ0J0aA",
        "url": api, "html_url": format!("https://github.com/{}/actions/runs/{}", run.repo, run.id),
        "pull_requests": [{"url": format!("https://api.github.com/repos/{}/pulls/42", run.repo), "id": 1934, "number": 42,
            "head": {"ref": run.branch, "sha": sha, "repo": {"id": 1296269, "url": format!("https://api.github.com/repos/{}", run.repo), "name": "x"}},
            "base": {"ref": "main", "sha": sha, "repo": {"id": 1296269, "url": format!("https://api.github.com/repos/{}", run.repo), "name": "x"}}}],
        "created_at": iso(run.created), "updated_at": iso(run.updated), "actor": user("octocat", 583231),
        "run_attempt": run.attempt, "referenced_workflows": [], "run_started_at": iso(run.started),
        "triggering_actor": user("octocat", 583231), "jobs_url": format!("{api}/jobs"), "logs_url": format!("{api}/logs"),
        "check_suite_url": format!("https://api.github.com/repos/{}/check-suites/{}", run.repo, run.id + 7),
        "artifacts_url": format!("{api}/artifacts"), "cancel_url": format!("{api}/cancel"), "rerun_url": format!("{api}/rerun"),
        "previous_attempt_url": if run.attempt > 1 { serde_json::json!(format!("{api}/attempts/1")) } else { serde_json::Value::Null },
        "workflow_url": format!("https://api.github.com/repos/{}/actions/workflows/{}", run.repo, run.workflow.0),
        "head_commit": {"id": sha, "tree_id": sha, "message": "Merge pull request #42 from acme/feature\n\nAdd the login form", "timestamp": iso(run.created),
            "author": {"name": "Octo Cat", "email": "octocat@github.com"}, "committer": {"name": "GitHub", "email": "noreply@github.com"}},
        "repository": repository(&run.repo), "head_repository": repository(&run.repo)
    })
}

/// `gh api --paginate` output: pages of 100 runs back to back.
fn rest_file(count: u64) -> Writer {
    Box::new(move |out| {
        let mut rng = fastrand::Rng::with_seed(6);
        for start in (0..count).step_by(100) {
            let runs: Vec<_> = (start..(start + 100).min(count)).map(|i| rest_run(&fake(&mut rng, i))).collect();
            serde_json::to_writer(&mut *out, &serde_json::json!({"total_count": count, "workflow_runs": runs}))
                .unwrap();
        }
    })
}

/// The work floor, single-threaded in this process, streaming as the binary does (holding every
/// item would make the floor pay for memory the tool never uses): parse into items, and per
/// 2,500 items insert their keys (one SQLite transaction for all), encode the series JSON,
/// compress with the default codec.
struct Floor {
    parse: f64,
    ledger: f64,
    encode: f64,
    compress: f64,
}

impl Floor {
    fn total(&self) -> f64 {
        self.parse + self.ledger + self.encode + self.compress
    }
}

fn floor(path: &Path) -> Floor {
    struct Work<'t> {
        insert: rusqlite::Statement<'t>,
        spec: SeriesSpec,
        batch: Vec<Item>,
        ledger: Duration,
        encode: Duration,
        compress: Duration,
        gzip: Duration,
        bodies: usize,
        gzip_bytes: usize,
    }
    impl Work<'_> {
        fn flush(&mut self) {
            if self.batch.is_empty() {
                return;
            }
            let started = Instant::now();
            for item in &self.batch {
                self.insert.execute([item.key()]).unwrap();
            }
            self.ledger += started.elapsed();
            let started = Instant::now();
            let planned: Vec<_> = self
                .batch
                .drain(..)
                .map(|item| {
                    let timestamp = item.completed_at();
                    self.spec.plan(item, timestamp)
                })
                .collect();
            let body = datadog::encode_series(&self.spec.series(&planned, &|_| SentPoint::default()));
            self.encode += started.elapsed();
            let started = Instant::now();
            self.bodies += DEFAULT_COMPRESSION.compress(&body).unwrap().len();
            self.compress += started.elapsed();
            // The alternative codec, for the choice of the default (not part of the floor).
            let started = Instant::now();
            self.gzip_bytes += Compression::Gzip.compress(&body).unwrap().len();
            self.gzip += started.elapsed();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut connection = rusqlite::Connection::open(dir.path().join("floor.db")).unwrap();
    connection.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE k (key TEXT PRIMARY KEY) WITHOUT ROWID").unwrap();
    let transaction = connection.transaction().unwrap();
    let started = Instant::now();
    let (ledger, encode, compress, gzip, bodies, gzip_bytes) = {
        let mut work = Work {
            insert: transaction.prepare("INSERT INTO k VALUES (?1)").unwrap(),
            spec: SeriesSpec {
                prefix: "github.actions".into(),
                extra_tags: vec![],
                fields: TagFields::default(),
                ..SeriesSpec::default()
            },
            batch: Vec::with_capacity(2500),
            ledger: Duration::ZERO,
            encode: Duration::ZERO,
            compress: Duration::ZERO,
            gzip: Duration::ZERO,
            bodies: 0,
            gzip_bytes: 0,
        };
        let mut sink = |record: Record| {
            let validated = match record {
                Record::Run(raw) => validate_run(&raw, None),
                Record::Job(raw) => validate_job(&raw),
                Record::Unrecognised { .. } => return Ok(()),
            };
            match validated {
                // A job's steps are items of their own (`--steps`), as the pipeline makes them.
                Validated::Completed(Item::Job(mut job)) => {
                    let steps = std::mem::take(&mut job.steps);
                    work.batch.push(Item::Job(job));
                    work.batch.extend(steps.into_iter().map(|step| Item::Step(Box::new(step))));
                }
                Validated::Completed(item) => work.batch.push(item),
                _ => {}
            }
            if work.batch.len() >= 2500 {
                work.flush();
            }
            Ok(())
        };
        read_input(&Input::File(path.to_owned()), &mut sink).expect("bench input reads");
        work.flush();
        (work.ledger, work.encode, work.compress, work.gzip, work.bodies, work.gzip_bytes)
    };
    let all = started.elapsed();
    let started = Instant::now();
    transaction.commit().unwrap();
    let ledger = ledger + started.elapsed();
    assert!(bodies > 0);
    eprintln!(
        "codecs on {}: zstd 3 {:.2}s -> {} MB, gzip 6 {:.2}s -> {} MB",
        path.display(),
        compress.as_secs_f64(),
        bodies / 1_000_000,
        gzip.as_secs_f64(),
        gzip_bytes / 1_000_000
    );
    // Parsing is what the rest of the pass took (the gzip comparison left out).
    let parse = all.saturating_sub(ledger + encode + compress + gzip);
    Floor {
        parse: parse.as_secs_f64(),
        ledger: ledger.as_secs_f64(),
        encode: encode.as_secs_f64(),
        compress: compress.as_secs_f64(),
    }
}

struct Intake {
    url: String,
    latency_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

#[derive(Clone)]
struct IntakeState {
    latency_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

struct Outcome {
    wall: f64,
    summary: serde_json::Value,
}

impl Intake {
    fn start() -> Intake {
        let state = IntakeState {
            latency_ms: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
            bytes: Arc::new(AtomicU64::new(0)),
        };
        let shared = state.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                sender.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().route("/api/v2/series", post(series)).with_state(shared);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = receiver.recv().unwrap();
        Intake {
            url: format!("http://{addr}"),
            latency_ms: state.latency_ms,
            requests: state.requests,
            bytes: state.bytes,
        }
    }

    fn send(&self, input: &Path, ledger: &Path, extra: &[&str]) -> Outcome {
        self.send_with(BIN, input, ledger, extra)
    }

    fn send_with(&self, binary: &str, input: &Path, ledger: &Path, extra: &[&str]) -> Outcome {
        self.send_ledger(binary, input, ledger.to_str().expect("a UTF-8 path"), extra)
    }

    /// The binary's `send` over `input` into this intake, with `--ledger ledger` (a path or a URL).
    #[allow(clippy::disallowed_methods)]
    fn command(&self, binary: &str, input: &Path, ledger: &str, log_dir: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(binary);
        command
            .args(["send", "--historical", "--output", "json", "--api-url", &self.url])
            .args(["--ledger", ledger])
            .arg("--log-dir")
            .arg(log_dir)
            .args(extra)
            .args(std::env::var("BENCH_ARGS").unwrap_or_default().split_whitespace())
            .arg(input)
            .env("DD_API_KEY", "bench-key")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    #[allow(clippy::disallowed_methods)]
    fn send_ledger(&self, binary: &str, input: &Path, ledger: &str, extra: &[&str]) -> Outcome {
        let log_dir = bench_logs();
        let started = Instant::now();
        let output = self.command(binary, input, ledger, &log_dir, extra).output().unwrap();
        let _ = std::fs::remove_dir_all(&log_dir);
        let wall = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        if std::env::var_os("BENCH_STDERR").is_some() {
            eprint!("{stderr}");
        }
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        Outcome { wall, summary }
    }
}

async fn series(
    State(state): State<IntakeState>,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, &'static str) {
    // A stand-in, not the system under test: it checks the encoding and Datadog's two size limits
    // on every body, decoding into a reused buffer, and parses one body in eight as JSON, so its
    // own CPU (on the same two cores) stays small beside the binary's.
    thread_local! {
        static RAW: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(5_242_880 + 1));
    }
    assert!(body.len() <= 512_000, "over Datadog's compressed limit");
    let number = state.requests.fetch_add(1, Ordering::SeqCst);
    RAW.with_borrow_mut(|raw| {
        raw.clear();
        match headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
            Some("zstd1") => {
                let mut decoder = zstd::bulk::Decompressor::new().unwrap();
                decoder.decompress_to_buffer(&body[..], raw).expect("zstd body within 5,242,880 bytes");
            }
            Some("gzip") => {
                flate2::read::GzDecoder::new(&body[..]).take(5_242_881).read_to_end(raw).unwrap();
            }
            Some("deflate") => {
                flate2::read::ZlibDecoder::new(&body[..]).take(5_242_881).read_to_end(raw).unwrap();
            }
            _ => raw.extend_from_slice(&body),
        }
        assert!(raw.len() <= 5_242_880, "over Datadog's decompressed limit");
        assert!(raw.starts_with(b"{\"series\":[") && raw.ends_with(b"]}"), "a series body");
        if number % 8 == 0 {
            serde_json::from_slice::<serde::de::IgnoredAny>(raw).expect("valid JSON");
        }
    });
    state.bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
    let latency = state.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    (axum::http::StatusCode::ACCEPTED, "{\"errors\":[]}")
}

struct Row {
    name: String,
    wall: f64,
    runs: u64,
    rss_mb: f64,
    requests: u64,
    floor: Option<(&'static str, f64)>,
}

impl Row {
    fn new(name: &str, outcome: &Outcome, runs: u64, floor: Option<(&'static str, f64)>) -> Row {
        let rss = outcome.summary["peak_rss_bytes"].as_u64().unwrap_or(0);
        Row {
            name: name.to_owned(),
            wall: outcome.wall,
            runs,
            rss_mb: rss as f64 / 1_048_576.0,
            requests: outcome.summary["requests"].as_u64().unwrap_or(0),
            floor,
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Milliseconds show under a second (a cron pass), where two decimals would round away
        // the difference the ratio measures.
        let seconds = |value: f64| if value < 1.0 { format!("{value:.3}") } else { format!("{value:.2}") };
        let (floor, ratio) = match self.floor {
            Some((label, floor)) => (format!("{} ({label})", seconds(floor)), format!("{:.2}", self.wall / floor)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        write!(
            f,
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} |",
            self.name,
            seconds(self.wall),
            self.runs as f64 / self.wall,
            self.rss_mb,
            self.requests,
            floor,
            ratio
        )
    }
}
