//! `sluice-sim`: runs the deterministic simulation for one seed or a range of seeds and
//! prints the failing seed and step, or the figures. It knows only the `sluice_sim` API.

use std::process::ExitCode;
use std::time::Instant;

use sluice_sim::{run, Options, Sabotage, Stats};

const USAGE: &str = "usage: sluice-sim [--seed N | --seeds A..B] [--steps M] [--no-clock-back] \
[--sabotage reply-before-durable|snapshot-before-fsync] [--trace]";

fn parse_u64(text: &str, what: &str) -> Result<u64, String> {
    text.replace('_', "")
        .parse()
        .map_err(|_| format!("{what}: not a number: {text}"))
}

fn parse() -> Result<(std::ops::Range<u64>, Options), String> {
    let mut seeds = 0..1;
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seed" => {
                let seed = parse_u64(&value("--seed")?, "--seed")?;
                seeds = seed..seed + 1;
            }
            "--seeds" => {
                let text = value("--seeds")?;
                let (a, b) = text
                    .split_once("..")
                    .ok_or_else(|| format!("--seeds wants A..B, got {text}"))?;
                seeds = parse_u64(a, "--seeds")?..parse_u64(b, "--seeds")?;
            }
            "--steps" => opts.steps = parse_u64(&value("--steps")?, "--steps")?,
            "--no-clock-back" => opts.clock_back = false,
            "--sabotage" => {
                let name = value("--sabotage")?;
                opts.sabotage =
                    Sabotage::parse(&name).ok_or_else(|| format!("unknown sabotage {name}"))?;
            }
            "--trace" => opts.trace = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok((seeds, opts))
}

fn main() -> ExitCode {
    let (seeds, opts) = match parse() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failures = 0u64;
    let seed_len = seeds.end.saturating_sub(seeds.start);
    for seed in seeds {
        match run(seed, &opts) {
            Ok(stats) => total.add(&stats),
            Err(failure) => {
                failures += 1;
                println!("FAIL {failure}");
            }
        }
    }
    println!(
        "{seed_len} seeds x {} steps, {failures} failed, {:.1} s",
        opts.steps,
        started.elapsed().as_secs_f64()
    );
    for (what, value) in total.lines() {
        println!("{value:>14}  {what}");
    }
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
