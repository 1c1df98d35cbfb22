//! `sluice top`: a live terminal dashboard (ratatui). Queues with their depth, leased
//! jobs, completion rate, wait and run p95 over the last minute, failures and limits; the workers holding the selected queue's
//! jobs; keys to pause/resume a queue, retry its dead jobs, and filter by name.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use serde_json::json;
use sluice_proto::{Job, JobList, QueueInfo, QueueList, WorkerInfo, WorkerList};

use crate::client::Client;

/// Dead jobs `r` retries at most at once (one page).
const RETRY_PAGE: usize = 1_000;

struct App {
    url: String,
    queues: Vec<QueueInfo>,
    /// Finished jobs (succeeded + dead) per queue at the previous refresh, for rates.
    previous: HashMap<String, (Instant, u64)>,
    rates: HashMap<String, f64>,
    /// Leased jobs of the selected queue by worker name (registered workers that lease
    /// from it too, with none).
    workers: BTreeMap<String, Vec<Job>>,
    /// Registered workers by name.
    registered: HashMap<String, WorkerInfo>,
    selected: usize,
    filter: String,
    editing_filter: bool,
    message: String,
    updated: Option<Instant>,
}

impl App {
    fn visible(&self) -> Vec<&QueueInfo> {
        self.queues
            .iter()
            .filter(|q| self.filter.is_empty() || q.name.contains(&self.filter))
            .collect()
    }

    fn selected_queue(&self) -> Option<String> {
        self.visible().get(self.selected).map(|q| q.name.clone())
    }

    async fn refresh(&mut self, client: &Client) -> Result<()> {
        let list: QueueList = serde_json::from_value(client.get("/v1/queues?limit=1000").await?)
            .context("the queue list is not what this version of sluice expects")?;
        let now = Instant::now();
        for queue in &list.queues {
            let done = queue.counts.succeeded + queue.counts.dead;
            if let Some((then, before)) = self.previous.get(&queue.name) {
                let seconds = now.duration_since(*then).as_secs_f64();
                if seconds > 0.0 {
                    // Retention may shrink the finished set: a rate is never negative.
                    let rate = done.saturating_sub(*before) as f64 / seconds;
                    self.rates.insert(queue.name.clone(), rate);
                }
            }
            self.previous.insert(queue.name.clone(), (now, done));
        }
        self.queues = list.queues;
        let visible = self.visible().len();
        self.selected = self.selected.min(visible.saturating_sub(1));
        self.workers.clear();
        let registered: WorkerList = serde_json::from_value(client.get("/v1/workers").await?)
            .context("the worker list is not what this version of sluice expects")?;
        self.registered = registered
            .workers
            .into_iter()
            .map(|w| (w.name.clone(), w))
            .collect();
        if let Some(queue) = self.selected_queue() {
            for worker in self.registered.values() {
                if worker.queues.contains(&queue) {
                    self.workers.entry(worker.name.clone()).or_default();
                }
            }
            let jobs: JobList = serde_json::from_value(
                client
                    .get(&format!("/v1/queues/{queue}/jobs?state=leased&limit=1000"))
                    .await?,
            )?;
            for job in jobs.jobs {
                let worker = job
                    .history
                    .last()
                    .and_then(|a| a.worker.clone())
                    .unwrap_or_else(|| "(unnamed)".to_owned());
                self.workers.entry(worker).or_default().push(job);
            }
        }
        self.updated = Some(now);
        Ok(())
    }

    async fn toggle_pause(&mut self, client: &Client) -> Result<()> {
        let Some(queue) = self
            .visible()
            .get(self.selected)
            .map(|q| (q.name.clone(), q.paused))
        else {
            return Ok(());
        };
        let (name, paused) = queue;
        let action = if paused { "resume" } else { "pause" };
        client
            .post(&format!("/v1/queues/{name}/{action}"), &json!({}))
            .await?;
        self.message = format!("{name}: {}", if paused { "resumed" } else { "paused" });
        Ok(())
    }

    async fn retry_dead(&mut self, client: &Client) -> Result<()> {
        let Some(name) = self.selected_queue() else {
            return Ok(());
        };
        let dead: JobList = serde_json::from_value(
            client
                .get(&format!(
                    "/v1/queues/{name}/jobs?state=dead&limit={RETRY_PAGE}"
                ))
                .await?,
        )?;
        let mut retried = 0;
        for job in &dead.jobs {
            client
                .post(&format!("/v1/jobs/{}/retry", job.id), &json!({}))
                .await?;
            retried += 1;
        }
        self.message = format!("{name}: retried {retried} dead jobs");
        Ok(())
    }
}

pub async fn run(url: &str, interval: Duration) -> Result<()> {
    let client = Client::new(url)?;
    let mut app = App {
        url: url.to_owned(),
        queues: Vec::new(),
        previous: HashMap::new(),
        rates: HashMap::new(),
        workers: BTreeMap::new(),
        registered: HashMap::new(),
        selected: 0,
        filter: String::new(),
        editing_filter: false,
        message: String::new(),
        updated: None,
    };
    // Fail before taking over the terminal if the server is not there.
    app.refresh(&client).await?;
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut app, &client, interval).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    client: &Client,
    interval: Duration,
) -> Result<()> {
    let mut next_refresh = Instant::now() + interval;
    loop {
        terminal.draw(|frame| draw(frame, app))?;
        // Up to 100 ms for a key; the refresh runs between keys.
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                if app.editing_filter {
                    match key.code {
                        KeyCode::Enter => app.editing_filter = false,
                        KeyCode::Esc => {
                            app.editing_filter = false;
                            app.filter.clear();
                        }
                        KeyCode::Backspace => {
                            app.filter.pop();
                        }
                        KeyCode::Char(c) => app.filter.push(c),
                        _ => {}
                    }
                    app.selected = 0;
                    continue;
                }
                let acted = match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        app.selected =
                            (app.selected + 1).min(app.visible().len().saturating_sub(1));
                        Ok(true)
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        app.selected = app.selected.saturating_sub(1);
                        Ok(true)
                    }
                    KeyCode::Char('p') => app.toggle_pause(client).await.map(|()| true),
                    KeyCode::Char('r') => app.retry_dead(client).await.map(|()| true),
                    KeyCode::Char('/') => {
                        app.editing_filter = true;
                        app.filter.clear();
                        Ok(false)
                    }
                    _ => Ok(false),
                };
                match acted {
                    Ok(true) => next_refresh = Instant::now(),
                    Ok(false) => {}
                    Err(error) => app.message = format!("error: {error:#}"),
                }
            }
        }
        if Instant::now() >= next_refresh {
            if let Err(error) = app.refresh(client).await {
                app.message = format!("error: {error:#}");
            }
            next_refresh = Instant::now() + interval;
        }
    }
}

fn limits_text(queue: &QueueInfo) -> String {
    let Some(limits) = &queue.limits else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(c) = limits.concurrency {
        parts.push(format!("max {c}"));
    }
    if let Some(rate) = limits.rate {
        parts.push(rate_text(rate));
    }
    if let Some(c) = limits.key_concurrency {
        parts.push(format!("key max {c}"));
    }
    if let Some(rate) = limits.key_rate {
        parts.push(format!("key {}", rate_text(rate)));
    }
    parts.join(" ")
}

fn rate_text(rate: sluice_proto::RateLimit) -> String {
    let per = rate.per_ms;
    let window = match per {
        _ if per.is_multiple_of(3_600_000) => format!("{}h", per / 3_600_000),
        _ if per.is_multiple_of(60_000) => format!("{}m", per / 60_000),
        _ if per.is_multiple_of(1_000) => format!("{}s", per / 1_000),
        _ => format!("{per}ms"),
    };
    format!("{}/{window}", rate.limit)
}

/// A duration in ms, short: `12ms`, `1.5s`, `2.0m`; `-` without data.
fn duration_text(ms: Option<u64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        Some(ms) => format!("{:.1}m", ms as f64 / 60_000.0),
    }
}

fn draw(frame: &mut Frame, app: &App) {
    let [header, queues, workers, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(10),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let updated = app.updated.map_or("never".to_owned(), |t| {
        format!("{:.1} s ago", t.elapsed().as_secs_f64())
    });
    frame.render_widget(
        Paragraph::new(format!(
            "sluice top  {}  {} queues  updated {updated}",
            app.url,
            app.queues.len()
        )),
        header,
    );

    let visible = app.visible();
    let rows: Vec<Row> = visible
        .iter()
        .map(|q| {
            let c = &q.counts;
            Row::new(vec![
                q.name.clone(),
                if q.paused { "paused" } else { "active" }.to_owned(),
                c.ready.to_string(),
                c.scheduled.to_string(),
                c.leased.to_string(),
                format!("{:.1}", app.rates.get(&q.name).copied().unwrap_or(0.0)),
                duration_text(q.recent.and_then(|r| r.wait_p95_ms)),
                duration_text(q.recent.and_then(|r| r.run_p95_ms)),
                c.failed.to_string(),
                c.dead.to_string(),
                c.succeeded.to_string(),
                limits_text(q),
            ])
        })
        .collect();
    let title = if app.filter.is_empty() && !app.editing_filter {
        " queues ".to_owned()
    } else {
        format!(" queues matching \"{}\" ", app.filter)
    };
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(24),
        ],
    )
    .header(
        Row::new(vec![
            "QUEUE",
            "STATE",
            "READY",
            "SCHED",
            "LEASED",
            "DONE/S",
            "WAIT95",
            "RUN95",
            "RETRY",
            "DEAD",
            "SUCCEEDED",
            "LIMITS",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .highlight_symbol("> ")
    .block(Block::new().borders(Borders::ALL).title(title));
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, queues, &mut state);

    let selected = app.selected_queue().unwrap_or_default();
    let worker_rows: Vec<Row> = app
        .workers
        .iter()
        .map(|(worker, jobs)| {
            let current: Vec<String> = jobs
                .iter()
                .take(3)
                .map(|j| format!("{} {}", j.id, j.kind))
                .collect();
            let more = if jobs.len() > 3 {
                format!(" +{}", jobs.len() - 3)
            } else {
                String::new()
            };
            // Registered workers report their host and how full they are (all queues).
            let registered = app.registered.get(worker);
            let host = registered
                .and_then(|w| w.host.clone())
                .unwrap_or_else(|| "-".to_owned());
            let busy = registered.map_or("-".to_owned(), |w| match w.concurrency {
                Some(c) => format!("{}/{c}", w.current_jobs.len()),
                None => w.current_jobs.len().to_string(),
            });
            Row::new(vec![
                worker.clone(),
                host,
                jobs.len().to_string(),
                busy,
                format!("{}{more}", current.join(", ")),
            ])
        })
        .collect();
    let workers_table = Table::new(
        worker_rows,
        [
            Constraint::Length(28),
            Constraint::Length(16),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Min(20),
        ],
    )
    .header(
        Row::new(vec!["WORKER", "HOST", "JOBS", "BUSY", "CURRENT JOBS"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::new()
            .borders(Borders::ALL)
            .title(format!(" workers on {selected} ")),
    );
    frame.render_widget(workers_table, workers);

    let footer_text = if app.editing_filter {
        format!("filter: {}_   (Enter keeps it, Esc clears it)", app.filter)
    } else if !app.message.is_empty() {
        format!(
            "{}   |   ↑↓ select  p pause/resume  r retry dead  / filter  q quit",
            app.message
        )
    } else {
        "↑↓ select  p pause/resume  r retry dead  / filter  q quit".to_owned()
    };
    frame.render_widget(Paragraph::new(Line::from(footer_text)), footer);
}
