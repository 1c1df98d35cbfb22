//! Cron schedules: a croner expression (5 fields, or 6 with seconds) in a time zone, and
//! the job each occurrence enqueues. The schedule is parsed when it is set and again when
//! it is replayed; when an occurrence is due is decided when the tick fires it (and logged
//! with it), so replay never computes a time.

use std::str::FromStr;

use chrono::TimeZone;
use serde::{Deserialize, Serialize};

use crate::event::NewJob;
use crate::Millis;

/// What a schedule does with occurrences that came due while the server was down (more
/// than [`MISSED_AFTER_MS`] ago when the tick sees them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// Drop them (Sidekiq-cron's default): only occurrences on time run.
    #[default]
    Skip,
    /// Run one job for all of them together.
    RunOnce,
    /// Run one job for each (at most [`CATCH_UP_MAX`] a tick).
    RunAll,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
            Missed::RunAll => "run_all",
        }
    }

    pub fn parse(text: &str) -> Option<Missed> {
        match text {
            "skip" => Some(Missed::Skip),
            "run_once" => Some(Missed::RunOnce),
            "run_all" => Some(Missed::RunAll),
            _ => None,
        }
    }
}

/// An occurrence this much older than the tick that sees it counts as missed.
pub const MISSED_AFTER_MS: Millis = 60_000;
/// Occurrences one schedule may enqueue in one tick.
pub const CATCH_UP_MAX: usize = 1_000;

/// A schedule as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronSpec {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    /// The job each occurrence enqueues: id and run_at are set when it fires.
    pub job: NewJob,
    pub missed: Missed,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses `schedule` in `timezone`; the error names the field that is wrong.
    pub fn parse(schedule: &str, timezone: &str) -> Result<Schedule, (&'static str, String)> {
        let cron = croner::Cron::from_str(schedule)
            .map_err(|e| ("schedule", format!("not a cron expression: {e}")))?;
        let tz = chrono_tz::Tz::from_str(timezone)
            .map_err(|_| ("timezone", format!("unknown time zone {timezone:?}")))?;
        Ok(Schedule { cron, tz })
    }

    /// The first occurrence strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let start = self.tz.timestamp_millis_opt(after).single()?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp_millis())
    }
}
