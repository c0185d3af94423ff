//! `loadgen`: drives a running ChatSphere stack over loopback and prints a JSON report (stdout)
//! and a markdown table row (appended to `--markdown FILE` when given).
//!
//! ```text
//! loadgen idle    --gateway 127.0.0.1:8003 --gateway-pid PID --checkpoints 5000,15000 [--rooms-per-user 20 --privates-per-user 10]
//! loadgen fanout  --gateways 127.0.0.1:8003,127.0.0.1:8004 --gateway-pids P1,P2 --rooms 10 --members 100 --rate 500 --seconds 10
//! loadgen storm   --victim 127.0.0.1:8003 --victim-pid P1 --survivor 127.0.0.1:8004 --clients 15000 --rate 300 --seconds 60
//! loadgen ingest  --gateway 127.0.0.1:8003 --connections 50 --window 32 --seconds 10
//! loadgen history --chat http://127.0.0.1:8002 --messages 1000000 --workers 4 --seconds 10
//! loadgen search --chat http://127.0.0.1:8002 --messages 1000000 --rooms 50 --workers 4 --seconds 10
//! loadgen login   --auth http://127.0.0.1:8001 --users 100 --workers 8 --seconds 10
//! loadgen floor   --sockets 500 --group 500 --frames 4 --rate 50 --seconds 10
//! ```
//!
//! `floor` needs no stack: it measures what the kernel charges a writer for the gateway's
//! pattern of loopback writes (see its module).
//!
//! `fanout` and `ingest` also report how busy the whole machine was over their window
//! (`machine_cpu`: busy and stolen cores, and the generator's own share, from /proc), and
//! `ingest` what a persisted message cost the machine in CPU: the stack and the generator share
//! the cores, so these say what a rate or a latency was measured against.
//!
//! `fanout` exits with an error when any delivery is missing at the end (lost, or later than ten
//! seconds after the last send), after printing its report.
//!
//! `--threads N` sets the generator's runtime threads; the other scenarios default to one per
//! core. `fanout`'s runtime only opens connections and sends (one thread by default): its
//! clients are read by reader threads of their own (`--readers N`, default one per core), each
//! waiting on one epoll set for its share of the sockets — no task woken or future polled per
//! frame: the generator measured 0.27 of a core at 200k deliveries/s and 0.43 in the hot room,
//! against 0.36 and 0.59 reading on the async runtime (docs/bench/findings.md). A late reader can only make the
//! latency it reports larger, never smaller.
//!
//! It needs `DATABASE_URL` (test data goes straight into Postgres) and `SECRET_KEY` (to mint
//! access tokens, as any service does). Gateways must allow the send rate the scenario uses
//! (`SEND_RATE_PER_SECOND`, `SEND_BURST`).

mod floor;
mod raw;
mod scenarios;
mod setup;
mod stats;
mod storm;
mod ws;

use std::{collections::HashMap, io::Write, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut it = rest.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .with_context(|| format!("expected --option, got {key:?}"))?;
            let value = it
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key}: cannot parse {v:?}")),
        }
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    fn list<T: std::str::FromStr>(&self, key: &str, default: &str) -> anyhow::Result<Vec<T>> {
        self.string(key, default)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--{key}: cannot parse {s:?}"))
            })
            .collect()
    }
}

async fn run(scenario: &str, args: &Args) -> anyhow::Result<scenarios::Outcome> {
    if scenario == "floor" {
        let pattern = floor::Pattern {
            sockets: args.get("sockets", 500)?,
            group: args.get("group", 500)?,
            frames: args.get("frames", 4)?,
            rate: args.get("rate", 50)?,
            frame_bytes: args.get("frame-bytes", 520)?,
            seconds: args.get("seconds", 10)?,
            readers: args.get("readers", cores())?,
        };
        // Threads of its own: nothing else runs on the runtime meanwhile.
        return floor::floor(&pattern);
    }
    let setup = setup::Setup::from_env().await?;
    match scenario {
        "idle" => {
            let gateway: SocketAddr = args.get("gateway", "127.0.0.1:8003".parse()?)?;
            let pid: u32 = args.get("gateway-pid", 0)?;
            let checkpoints: Vec<usize> = args.list("checkpoints", "1000")?;
            let rooms: usize = args.get("rooms-per-user", 0)?;
            let privates: usize = args.get("privates-per-user", 0)?;
            scenarios::idle(&setup, gateway, pid, &checkpoints, rooms, privates).await
        }
        "storm" => {
            storm::storm(
                &setup,
                args.get("victim", "127.0.0.1:8003".parse()?)?,
                args.get("victim-pid", 0)?,
                args.get("survivor", "127.0.0.1:8004".parse()?)?,
                args.get("clients", 15_000)?,
                args.get("rate", 300)?,
                Duration::from_secs(args.get("seconds", 60)?),
            )
            .await
        }
        "fanout" => {
            let gateways: Vec<SocketAddr> = args.list("gateways", "127.0.0.1:8003")?;
            let pids: Vec<u32> = args.list("gateway-pids", "")?;
            scenarios::fanout(
                &setup,
                &gateways,
                &pids,
                args.get("rooms", 10)?,
                args.get("members", 100)?,
                args.get("rate", 200)?,
                args.get("seconds", 10)?,
                args.get("readers", cores())?,
            )
            .await
        }
        "ingest" => {
            let gateway: SocketAddr = args.get("gateway", "127.0.0.1:8003".parse()?)?;
            scenarios::ingest(
                &setup,
                gateway,
                args.get("connections", 50)?,
                args.get("window", 32)?,
                args.get("seconds", 10)?,
            )
            .await
        }
        "history" => {
            scenarios::history(
                &setup,
                &args.string("chat", "http://127.0.0.1:8002"),
                args.get("messages", 1_000_000)?,
                args.get("workers", 4)?,
                args.get("seconds", 10)?,
            )
            .await
        }
        "search" => {
            scenarios::search(
                &setup,
                &args.string("chat", "http://127.0.0.1:8002"),
                args.get("messages", 1_000_000)?,
                args.get("rooms", 50)?,
                args.get("workers", 4)?,
                args.get("seconds", 10)?,
            )
            .await
        }
        "login" => {
            scenarios::login(
                &setup,
                &args.string("auth", "http://127.0.0.1:8001"),
                args.get("users", 100)?,
                args.get("workers", 8)?,
                args.get("seconds", 10)?,
            )
            .await
        }
        other => {
            anyhow::bail!(
                "unknown scenario {other:?}: idle, fanout, storm, ingest, history, search, login or floor"
            )
        }
    }
}

/// The runtime's threads when `--threads` is not given: one for `fanout` (see the header) and
/// `floor` (which only waits on it), one per core for the rest.
fn default_threads(scenario: &str) -> usize {
    match scenario {
        "fanout" | "floor" => 1,
        _ => cores(),
    }
}

/// The machine's cores (one when it cannot tell).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A runtime of `threads` threads: one is a current-thread runtime, where every task runs on
/// the thread that drives it and no wake crosses to another.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = argv.first().cloned() else {
        eprintln!("usage: loadgen idle|fanout|storm|ingest|history|search|login|floor [--option value ...] (see the source's header)");
        return ExitCode::FAILURE;
    };
    let prepared = Args::parse(&argv[1..]).and_then(|args| {
        let threads = args.get("threads", default_threads(&scenario))?;
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        Ok((args, runtime(threads)?))
    });
    let (args, runtime) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let outcome = run(&scenario, &args).await?;
        println!("{}", serde_json::to_string_pretty(&outcome.json)?);
        if let Some(path) = args.0.get("markdown") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{}", outcome.row)?;
        }
        // A lost (or hopelessly late) delivery is a failure, whatever the figures.
        let missing = outcome.json["missing"].as_u64().unwrap_or(0);
        if missing > 0 {
            anyhow::bail!("{missing} deliveries never arrived");
        }
        anyhow::Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn fanout_runs_on_one_thread_unless_told_otherwise() {
        assert_eq!(default_threads("fanout"), 1);
        assert!(default_threads("ingest") >= 1);
        let one = runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let two = runtime(2).unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
    }
}
