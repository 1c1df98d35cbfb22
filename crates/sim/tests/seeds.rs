//! A fixed set of simulation seeds, run on every `cargo test`, and proof that the checks
//! catch a server that breaks the durability rules.

use std::ops::Range;

use sluice_sim::{run, Failure, Options, Sabotage};

const STEPS: u64 = 2_000;

fn options(sabotage: Sabotage) -> Options {
    Options {
        steps: STEPS,
        sabotage,
        ..Options::default()
    }
}

fn failures(seeds: Range<u64>, opts: &Options) -> Vec<Failure> {
    seeds.filter_map(|seed| run(seed, opts).err()).collect()
}

fn assert_all_pass(seeds: Range<u64>) {
    let failed = failures(seeds, &options(Sabotage::None));
    let report: Vec<String> = failed.iter().map(|f| f.to_string()).collect();
    assert!(failed.is_empty(), "{}", report.join("\n"));
}

#[test]
fn seeds_0_to_32_keep_every_invariant() {
    assert_all_pass(0..32);
}

#[test]
fn seeds_32_to_64_keep_every_invariant() {
    assert_all_pass(32..64);
}

/// The first seed below 64 that catches `sabotage`; its report names seed and step.
fn first_catch(sabotage: Sabotage) -> Failure {
    let opts = options(sabotage);
    let failure = (0..64)
        .find_map(|seed| run(seed, &opts).err())
        .unwrap_or_else(|| panic!("no seed in 0..64 caught {sabotage:?}"));
    let text = failure.to_string();
    assert!(
        text.contains(&format!(
            "seed {} failed at step {}",
            failure.seed, failure.step
        )) && text.contains(&format!(
            "--seed {} --steps {STEPS} --sabotage {}",
            failure.seed,
            sabotage.name()
        )),
        "{text}"
    );
    failure
}

#[test]
fn replies_sent_before_their_record_is_durable_are_caught() {
    first_catch(Sabotage::ReplyBeforeDurable);
}

#[test]
fn snapshots_that_cover_unsynced_records_are_caught() {
    first_catch(Sabotage::SnapshotBeforeFsync);
}

#[test]
fn a_failing_seed_replays_exactly() {
    let first = first_catch(Sabotage::ReplyBeforeDurable);
    let again = run(first.seed, &options(Sabotage::ReplyBeforeDurable))
        .expect_err("the same seed fails again");
    assert_eq!((again.step, &again.message), (first.step, &first.message));
}

#[test]
fn a_passing_seed_replays_exactly() {
    let opts = Options {
        steps: 500,
        ..Options::default()
    };
    assert_eq!(run(7, &opts).ok(), run(7, &opts).ok());
    assert!(run(7, &opts).is_ok());
}
