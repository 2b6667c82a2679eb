//! `p2p-mpc-bench`: the benchmark suite. Real node processes on loopback, a real API server;
//! every figure that matters beside a baseline measured in the same run. Prints a table and
//! writes `target/bench/results.json`. See BENCHMARKS.md.

mod aggregation;
mod flood;
mod footprint;
mod frost;
mod gossip;
mod nodes;
mod operator;
mod results;
mod transfer;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Every benchmark below.
    All,
    /// FROST DKG and signing through the API, against the frost crate in one process.
    Frost,
    /// 5-node gossip mesh against raw TCP fan-out.
    Gossip,
    /// MpcClusters to children on a real API server, against direct apply.
    Operator,
    /// Node start time and memory.
    Footprint,
    /// Signing while an outsider, then a member, floods the coordinator, against quiet.
    Flood,
    /// Secure aggregation: ingest and a million-value vector, against plaintext and transfers.
    Aggregation,
    /// Point-to-point transfer over request-response, against raw TCP.
    Transfer,
    /// Vault put and get through the CLI, against the transfer test of the same bytes.
    Vault,
}

/// The p2p-mpc benchmark suite.
#[derive(Debug, Parser)]
#[command(name = "p2p-mpc-bench")]
struct Cli {
    /// Which benchmarks to run.
    #[arg(value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Small sizes: checks that the suite works (a few minutes at most), not the numbers.
    #[arg(long)]
    quick: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/results.json"))]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut figures = Vec::new();
    let wanted = |s: Suite| cli.suite == Suite::All || cli.suite == s;
    let mut failed = false;
    type Bench = fn(
        bool,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<Vec<results::Figure>>>>,
    >;
    let suites: [(Suite, &str, Bench); 8] = [
        (Suite::Footprint, "footprint", |q| {
            Box::pin(footprint::run(q))
        }),
        (Suite::Frost, "frost", |q| {
            Box::pin(async move {
                let (mut figures, rss) = frost::run(q).await?;
                if let Some(rss) = rss {
                    figures.push(results::Figure::plain(
                        "node RSS under the signing load",
                        rss as f64 / 1048576.0,
                        "MiB",
                    ));
                }
                Ok(figures)
            })
        }),
        (Suite::Flood, "flood", |q| Box::pin(flood::run(q))),
        (Suite::Gossip, "gossip", |q| Box::pin(gossip::run(q))),
        (Suite::Aggregation, "aggregation", |q| {
            Box::pin(aggregation::run_standalone(q))
        }),
        (Suite::Transfer, "transfer", |q| {
            Box::pin(transfer::run_standalone(q))
        }),
        (Suite::Vault, "vault", |q| {
            Box::pin(vault::run_standalone(q))
        }),
        (Suite::Operator, "operator", |q| Box::pin(operator::run(q))),
    ];

    for (suite, name, run) in suites {
        if !wanted(suite) {
            continue;
        }
        eprintln!(
            "running {name}{} ...",
            if cli.quick { " (quick)" } else { "" }
        );
        match run(cli.quick).await {
            Ok(f) => figures.extend(f),
            Err(e) => {
                eprintln!("error: benchmark {name} failed: {e:#}");
                failed = true;
            }
        }
    }
    print!("{}", results::table(&figures));
    if let Err(e) = results::write_json(&cli.out, &figures) {
        eprintln!("error: cannot write {}: {e}", cli.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("results written to {}", cli.out.display());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
