//! Deterministic simulation of Sluice: the real state machine (`sluice_core::State`) run
//! over a simulated clock, log and network with seeded faults, checked after every step
//! against a reference model of what clients were told. It must not know the WAL's files,
//! HTTP, threads or the wall clock: one seed is one exact, replayable run.

mod disk;
mod oracle;
mod rng;
mod world;

use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use rng::Rng;

/// A deliberate bug in the simulated server, to show that the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    #[default]
    None,
    /// Replies go out as soon as a command is decided, before its record is durable.
    ReplyBeforeDurable,
    /// Snapshots are written without first making the log durable up to them.
    SnapshotBeforeFsync,
}

impl Sabotage {
    const NAMES: [(Sabotage, &'static str); 3] = [
        (Sabotage::None, "none"),
        (Sabotage::ReplyBeforeDurable, "reply-before-durable"),
        (Sabotage::SnapshotBeforeFsync, "snapshot-before-fsync"),
    ];

    pub fn parse(name: &str) -> Option<Sabotage> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("none", |(_, n)| n)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub steps: u64,
    /// Also step the clock backwards now and then (as an NTP correction would).
    pub clock_back: bool,
    pub sabotage: Sabotage,
    /// Print every action to stderr.
    pub trace: bool,
}

impl Options {
    /// The command-line options, beyond seed and steps, that make a run differ.
    pub fn extra_args(&self) -> String {
        let mut args = String::new();
        if !self.clock_back {
            args.push_str(" --no-clock-back");
        }
        if self.sabotage != Sabotage::None {
            args.push_str(" --sabotage ");
            args.push_str(self.sabotage.name());
        }
        args
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 10_000,
            clock_back: true,
            sabotage: Sabotage::None,
            trace: false,
        }
    }
}

macro_rules! stats {
    ($($field:ident: $what:literal,)*) => {
        /// What a run did, summed over runs.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Stats {
            $(pub $field: u64,)*
        }

        impl Stats {
            pub fn add(&mut self, other: &Stats) {
                let (jobs_max, log_records_max) = (
                    self.jobs_max.max(other.jobs_max),
                    self.log_records_max.max(other.log_records_max),
                );
                $(self.$field += other.$field;)*
                self.jobs_max = jobs_max;
                self.log_records_max = log_records_max;
            }

            /// Each figure with what it counts.
            pub fn lines(&self) -> Vec<(&'static str, u64)> {
                vec![$(($what, self.$field),)*]
            }
        }
    };
}

stats! {
    steps: "steps",
    events: "events decided and logged",
    fsyncs: "fsyncs (group commits)",
    snapshots: "snapshots",
    crashes: "crashes (power loss + restart)",
    records_lost: "unsynced records lost in crashes",
    records_kept_unsynced: "unsynced records that survived crashes",
    torn_prefix: "torn records (a prefix written)",
    torn_garbled: "torn records (full length, garbage tail)",
    scratch_replays: "restarts also replayed from lsn 0 and probed",
    state_comparisons: "whole-state comparisons (live/restored vs scratch replay)",
    clock_jumps_forward: "clock jumps forward (10 s to 2 h)",
    clock_jumps_back: "clock steps backwards (up to 30 s)",
    deliveries: "messages delivered",
    reordered: "messages that overtook an earlier one of the same client",
    late_messages: "messages delayed 0.5 to 10 s",
    unknown_outcomes: "requests with unknown outcome (crash)",
    resends: "requests resent after an unknown outcome",
    duplicates_sent: "duplicate acks/heartbeats sent",
    stale_ops_sent: "acks/heartbeats/fails sent on a lease known to be over",
    stale_rejections: "lease operations rejected (stale or gone)",
    admin_refused: "cancels/retries/pauses/purges refused",
    enqueues_confirmed: "enqueues confirmed to producers",
    leases_confirmed: "leases confirmed to workers",
    acks_confirmed: "acks confirmed to workers",
    leases_expired: "leases expired",
    limits_set: "queue limits set (concurrency, rate, or none)",
    limited_leases: "lease decisions checked against a queue's limits",
    key_limited_leases: "lease decisions checked against per-key limits",
    keyed_jobs: "jobs enqueued with a limit key",
    jobs_moved: "jobs moved between queues",
    cron_jobs: "jobs enqueued by cron schedules",
    batches: "batches enqueued (their callbacks fire as members finish)",
    batch_callbacks: "batch callbacks enqueued",
    retained: "jobs removed by retention",
    purged: "jobs purged",
    jobs_max: "most jobs at once",
    log_records_max: "longest log (records)",
}

/// A run that broke an invariant (or panicked): enough to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub steps: u64,
    /// Options to repeat on the command line (see `Options::extra_args`).
    pub extra_args: String,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\n  replay: cargo run -p sluice-sim -- --seed {} --steps {}{}",
            self.seed, self.step, self.message, self.seed, self.steps, self.extra_args
        )
    }
}

/// Runs one seed for `opts.steps` steps; the same seed and options always do the same.
pub fn run(seed: u64, opts: &Options) -> Result<Stats, Failure> {
    let step = Cell::new(0);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut world = world::World::new(seed, opts.clone());
        for _ in 0..opts.steps {
            let result = world.step();
            step.set(world.step);
            result?;
        }
        Ok(world.stats)
    }));
    let failure = |message: String| Failure {
        seed,
        step: step.get(),
        steps: opts.steps,
        extra_args: opts.extra_args(),
        message,
    };
    match outcome {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(message)) => Err(failure(message)),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(failure(format!("panicked: {text}")))
        }
    }
}
