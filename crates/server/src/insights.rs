//! Pure statistics over one queue's metric time series (trend, anomalies, forecast, worker
//! sizing and health score) that does no I/O and reads no clock.

/// Evenly spaced samples: `values[i]` is at `start_ms + i * step_ms`; `None` = no data.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start_ms: i64,
    pub step_ms: i64,
    pub values: Vec<Option<f64>>,
}

impl Series {
    fn at_ms(&self, index: usize) -> i64 {
        let i = i64::try_from(index).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(i.saturating_mul(self.step_ms))
    }

    /// Non-finite samples are treated as missing so one bad scrape cannot poison every statistic.
    fn observed(&self) -> Vec<(usize, f64)> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| finite(*v).map(|y| (i, y)))
            .collect()
    }
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|y| y.is_finite())
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Smallest spread we divide by, relative to the magnitude of the data, so a perfectly
/// constant history yields a huge-but-finite score instead of a division by zero.
fn spread_floor(center: f64) -> f64 {
    1e-9 * center.abs().max(1.0)
}

/// Scores are capped so they stay finite and sortable when the history had no spread at all.
const MAX_SCORE: f64 = 1e6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Rising,
    Falling,
    Flat,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Rising => "rising",
            Direction::Falling => "falling",
            Direction::Flat => "flat",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    pub slope_per_hour: f64,
    /// Fitted value at `start_ms`.
    pub intercept: f64,
    /// Coefficient of determination in 0..=1; a constant series counts as a perfect (flat) fit.
    pub r2: f64,
    pub points: usize,
    /// Slope times the time covered by the first and last non-missing points.
    pub change: f64,
    /// `change / |mean|`; `None` when the mean is too close to zero for a ratio to mean anything.
    pub relative_change: Option<f64>,
    pub direction: Direction,
    pub summary: String,
}

const MS_PER_HOUR: f64 = 3_600_000.0;

/// Ordinary least squares of value on time over the non-missing points (at least 3).
pub fn trend(series: &Series) -> Option<Trend> {
    let observed = series.observed();
    if observed.len() < 3 || series.step_ms <= 0 {
        return None;
    }
    let step_ms = series.step_ms as f64;
    let xs_ms: Vec<f64> = observed.iter().map(|&(i, _)| i as f64 * step_ms).collect();
    let ys: Vec<f64> = observed.iter().map(|&(_, y)| y).collect();
    let n = ys.len() as f64;
    let mean_x = mean(&xs_ms);
    let mean_y = mean(&ys);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs_ms.iter().zip(&ys) {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return None;
    }
    let max_abs = ys.iter().fold(0.0_f64, |m, y| m.max(y.abs()));
    // Rounding in the mean leaves a residue of a few ulps even for identical values; anything
    // that small is a constant series, which we call a perfect flat fit rather than 0/0.
    let constant = syy <= 1e-24 * n * max_abs.max(1.0).powi(2);
    let (slope_per_ms, r2) = if constant {
        (0.0, 1.0)
    } else {
        (sxy / sxx, (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0))
    };
    let intercept = mean_y - slope_per_ms * mean_x;
    let covered_ms = xs_ms.last().copied().unwrap_or(0.0) - xs_ms.first().copied().unwrap_or(0.0);
    let change = slope_per_ms * covered_ms;
    // A mean tiny next to the data (values swinging around zero) would make the ratio noise.
    let relative_change = (mean_y.abs() > 1e-9 * max_abs).then(|| change / mean_y.abs());
    let negligible = match relative_change {
        Some(rel) => rel.abs() < 0.10,
        None => change.abs() < 1e-9,
    };
    let direction = if r2 < 0.3 || negligible {
        Direction::Flat
    } else if slope_per_ms > 0.0 {
        Direction::Rising
    } else {
        Direction::Falling
    };
    let amount = match relative_change {
        Some(rel) => format!("{:+.0}%", rel * 100.0),
        None => format!("{change:+.3}"),
    };
    let summary = match direction {
        Direction::Flat => format!("flat (R² {r2:.2})"),
        d => {
            let covered = format_duration_ms(covered_ms.round() as i64);
            format!("{}: {amount} over {covered} (R² {r2:.2})", d.as_str())
        }
    };
    Some(Trend {
        slope_per_hour: slope_per_ms * MS_PER_HOUR,
        intercept,
        r2,
        points: observed.len(),
        change,
        relative_change,
        direction,
        summary,
    })
}

/// Two most significant units only: operators read "3h 5m", not "3h 5m 12s".
fn format_duration_ms(duration_ms: i64) -> String {
    let s = duration_ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyConfig {
    /// How many preceding non-missing points each point is judged against.
    pub trailing_len: usize,
    pub z_threshold: f64,
    pub iqr_factor: f64,
    pub ewma_alpha: f64,
    pub ewma_k: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            trailing_len: 30,
            z_threshold: 3.0,
            iqr_factor: 1.5,
            ewma_alpha: 0.3,
            ewma_k: 3.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    ZScore,
    Iqr,
    Ewma,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::ZScore => "zscore",
            Detector::Iqr => "iqr",
            Detector::Ewma => "ewma",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    pub at_ms: i64,
    pub value: f64,
    /// What the detector considered normal: trailing mean (z-score), median (IQR) or EWMA mean.
    pub expected: f64,
    pub detector: Detector,
    /// Distance from normal in detector units (standard deviations, IQRs); capped at 1e6.
    pub score: f64,
    pub above: bool,
}

/// Fewer points than this and mean/spread estimates are too unstable to call anything unusual.
const MIN_HISTORY_LEN: usize = 8;

/// Flags points that are unusual relative to what came before them, once per detector.
pub fn anomalies(series: &Series, config: &AnomalyConfig) -> Vec<Anomaly> {
    let observed = series.observed();
    let mut found = Vec::new();
    let mut ewma = Ewma {
        alpha: config.ewma_alpha,
        mean: 0.0,
        variance: 0.0,
        updates: 0,
    };
    let mut sorted = Vec::with_capacity(config.trailing_len.min(observed.len()));
    for (j, &(index, value)) in observed.iter().enumerate() {
        let at_ms = series.at_ms(index);
        let window = &observed[j.saturating_sub(config.trailing_len)..j];
        if window.len() >= MIN_HISTORY_LEN {
            sorted.clear();
            sorted.extend(window.iter().map(|&(_, y)| y));
            if let Some(a) = zscore_check(&sorted, value, config.z_threshold) {
                found.push(Anomaly { at_ms, ..a });
            }
            sorted.sort_by(f64::total_cmp);
            if let Some(a) = iqr_check(&sorted, value, config.iqr_factor) {
                found.push(Anomaly { at_ms, ..a });
            }
        }
        if let Some(a) = ewma.check(value, config.ewma_k) {
            found.push(Anomaly { at_ms, ..a });
        }
        ewma.update(value);
    }
    found.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then(a.detector.cmp(&b.detector)));
    found
}

fn zscore_check(window: &[f64], value: f64, z_threshold: f64) -> Option<Anomaly> {
    let center = mean(window);
    let variance = window.iter().map(|y| (y - center).powi(2)).sum::<f64>()
        / (window.len().saturating_sub(1).max(1)) as f64;
    let sd = variance.sqrt().max(spread_floor(center));
    let score = ((value - center).abs() / sd).min(MAX_SCORE);
    (score > z_threshold).then_some(Anomaly {
        at_ms: 0,
        value,
        expected: center,
        detector: Detector::ZScore,
        score,
        above: value > center,
    })
}

/// `sorted` must be ascending and non-empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len().saturating_sub(1)) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    match (sorted.get(lo), sorted.get(hi)) {
        (Some(a), Some(b)) => a + (b - a) * (pos - lo as f64),
        _ => 0.0,
    }
}

fn iqr_check(sorted: &[f64], value: f64, iqr_factor: f64) -> Option<Anomaly> {
    let q = |p| quantile(sorted, p);
    let (q1, median, q3) = (q(0.25), q(0.5), q(0.75));
    let iqr = q3 - q1;
    let (lower, upper) = (q1 - iqr_factor * iqr, q3 + iqr_factor * iqr);
    let beyond = if value > upper {
        value - upper
    } else if value < lower {
        lower - value
    } else {
        return None;
    };
    Some(Anomaly {
        at_ms: 0,
        value,
        expected: median,
        detector: Detector::Iqr,
        score: (beyond / iqr.max(spread_floor(median))).min(MAX_SCORE),
        above: value > upper,
    })
}

/// Exponentially weighted mean and variance (Finch 2009 incremental form).
struct Ewma {
    alpha: f64,
    mean: f64,
    variance: f64,
    updates: usize,
}

impl Ewma {
    fn check(&self, value: f64, k: f64) -> Option<Anomaly> {
        // An alpha outside (0, 1] would freeze or overshoot the mean; disable rather than mislead.
        if self.updates < MIN_HISTORY_LEN || !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return None;
        }
        let sd = self.variance.sqrt().max(spread_floor(self.mean));
        let distance = (value - self.mean).abs();
        (distance > k * sd).then_some(Anomaly {
            at_ms: 0,
            value,
            expected: self.mean,
            detector: Detector::Ewma,
            score: (distance / sd).min(MAX_SCORE),
            above: value > self.mean,
        })
    }

    /// Anomalous points are absorbed too, so a genuine level shift becomes the new normal
    /// instead of being reported again on every following sample.
    fn update(&mut self, value: f64) {
        if self.updates == 0 {
            self.mean = value;
        } else {
            let diff = value - self.mean;
            let increment = self.alpha * diff;
            self.mean += increment;
            self.variance = (1.0 - self.alpha) * (self.variance + diff * increment);
        }
        self.updates += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Holt,
    HoltWinters,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Holt => "holt",
            Method::HoltWinters => "holt_winters",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub method: Method,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: Option<f64>,
    pub points: Vec<ForecastPoint>,
    /// Root mean square of the in-sample one-step-ahead errors.
    pub residual_sd: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastPoint {
    pub at_ms: i64,
    pub value: f64,
    /// 95% prediction interval.
    pub lower: f64,
    pub upper: f64,
}

/// Guards against a caller passing something like `usize::MAX` and aborting on allocation.
const MAX_HORIZON_LEN: usize = 100_000;
const Z_95: f64 = 1.96;

struct Fit {
    method: Method,
    alpha: f64,
    beta: f64,
    gamma: Option<f64>,
    level: f64,
    trend: f64,
    /// Latest seasonal term per phase `t % m`; empty for Holt.
    seasonal: Vec<f64>,
    sse: f64,
    errors_len: usize,
}

/// Forecasts `horizon_len` steps after the last non-missing sample.
///
/// Gaps between the first and last observed sample are filled by carrying the last value
/// forward: the smoothers need an unbroken grid, and repeating the last known value is the
/// assumption that adds the least invented movement. Trailing gaps are not filled; the
/// forecast starts from the last real observation.
pub fn forecast(
    series: &Series,
    horizon_len: usize,
    season_len: Option<usize>,
) -> Option<Forecast> {
    let observed = series.observed();
    if observed.len() < 4 || series.step_ms <= 0 {
        return None;
    }
    let (first, _) = *observed.first()?;
    let (last, _) = *observed.last()?;
    let mut carried = 0.0;
    let filled: Vec<f64> = series.values[first..=last]
        .iter()
        .map(|v| {
            if let Some(y) = finite(*v) {
                carried = y;
            }
            carried
        })
        .collect();
    let seasonal_len = season_len.filter(|&m| {
        m >= 2
            && m.checked_mul(2).is_some_and(|need| observed.len() >= need)
            && autocorrelation(&filled, m) > 0.3
    });
    let fit = match seasonal_len {
        Some(m) => fit_holt_winters(&filled, m)?,
        None => fit_holt(&filled)?,
    };
    let residual_sd = (fit.sse / fit.errors_len.max(1) as f64).sqrt();
    let last_index = filled.len() - 1;
    let season = fit.gamma.zip(seasonal_len);
    let last_at_ms = series.at_ms(last);
    let mut variance_factor = 1.0;
    let points = (1..=horizon_len.min(MAX_HORIZON_LEN))
        .map(|h| {
            if h > 1 {
                variance_factor += innovation_weight(h - 1, fit.alpha, fit.beta, season).powi(2);
            }
            let seasonal = seasonal_len.and_then(|m| fit.seasonal.get((last_index + h) % m));
            let value = fit.level + h as f64 * fit.trend + seasonal.copied().unwrap_or(0.0);
            let half_width = Z_95 * residual_sd * variance_factor.sqrt();
            let steps = i64::try_from(h).unwrap_or(i64::MAX);
            ForecastPoint {
                at_ms: last_at_ms.saturating_add(steps.saturating_mul(series.step_ms)),
                value,
                lower: value - half_width,
                upper: value + half_width,
            }
        })
        .collect();
    Some(Forecast {
        method: fit.method,
        alpha: fit.alpha,
        beta: fit.beta,
        gamma: fit.gamma,
        points,
        residual_sd,
    })
}

/// Weight `c_j` of a past one-step error in the h-step forecast error, from the innovations
/// state-space form (Hyndman et al. 2008, "Forecasting with Exponential Smoothing", class 1):
///   Var(h) = σ² · (1 + Σ_{j=1}^{h−1} c_j²),
///   c_j = α·(1 + j·β)                    for Holt (ETS(A,A,N)),
///   c_j = α·(1 + j·β) + γ·[j mod m = 0]  for additive Holt-Winters (ETS(A,A,A)),
/// where σ is `residual_sd` and β is Holt's trend smoothing in component form. For Holt the
/// sum has the closed form (h−1)·α²·(1 + β·h + β²·h(2h−1)/6). The interval is ±1.96·√Var(h).
fn innovation_weight(j: usize, alpha: f64, beta: f64, season: Option<(f64, usize)>) -> f64 {
    let seasonal = match season {
        Some((gamma, m)) if m > 0 && j.is_multiple_of(m) => gamma,
        _ => 0.0,
    };
    alpha * (1.0 + j as f64 * beta) + seasonal
}

fn grid(step: f64, last: usize) -> impl Iterator<Item = f64> + Clone {
    (1..=last).map(move |i| i as f64 * step)
}

fn fit_holt(y: &[f64]) -> Option<Fit> {
    let (&y0, &y1) = (y.first()?, y.get(1)?);
    let mut best: Option<Fit> = None;
    for alpha in grid(0.05, 19) {
        for beta in grid(0.05, 19) {
            let (mut level, mut trend, mut sse) = (y0, y1 - y0, 0.0);
            for (t, &yt) in y.iter().enumerate().skip(1) {
                // The initial trend makes the t = 1 prediction exact by construction; counting
                // it would only flatter every (α, β) equally and understate the residual spread.
                if t >= 2 {
                    sse += (yt - (level + trend)).powi(2);
                }
                let next_level = alpha * yt + (1.0 - alpha) * (level + trend);
                trend = beta * (next_level - level) + (1.0 - beta) * trend;
                level = next_level;
            }
            if best.as_ref().is_none_or(|b| sse < b.sse) {
                best = Some(Fit {
                    method: Method::Holt,
                    alpha,
                    beta,
                    gamma: None,
                    level,
                    trend,
                    seasonal: Vec::new(),
                    sse,
                    errors_len: y.len().saturating_sub(2),
                });
            }
        }
    }
    best
}

/// Additive Holt-Winters in Hyndman's component form; initial level/trend come from the means of
/// the first two seasons and the first season's deviations from that line seed the seasonals.
fn fit_holt_winters(y: &[f64], m: usize) -> Option<Fit> {
    let first_season = y.get(..m)?;
    let second_season = y.get(m..2 * m)?;
    let (mean1, mean2) = (mean(first_season), mean(second_season));
    let trend0 = (mean2 - mean1) / m as f64;
    let centre = (m as f64 - 1.0) / 2.0;
    let level0 = mean1 + trend0 * centre;
    let seasonal0: Vec<f64> = first_season
        .iter()
        .enumerate()
        .map(|(i, yi)| yi - (mean1 + trend0 * (i as f64 - centre)))
        .collect();
    let mut best: Option<Fit> = None;
    let mut seasonal = seasonal0.clone();
    for alpha in grid(0.05, 19) {
        for beta in grid(0.05, 19) {
            for gamma in grid(0.1, 9) {
                seasonal.copy_from_slice(&seasonal0);
                let (mut level, mut trend, mut sse) = (level0, trend0, 0.0);
                for (t, &yt) in y.iter().enumerate().skip(m) {
                    let phase = t % m;
                    let s = seasonal[phase];
                    sse += (yt - (level + trend + s)).powi(2);
                    let next_level = alpha * (yt - s) + (1.0 - alpha) * (level + trend);
                    seasonal[phase] = gamma * (yt - level - trend) + (1.0 - gamma) * s;
                    trend = beta * (next_level - level) + (1.0 - beta) * trend;
                    level = next_level;
                }
                if best.as_ref().is_none_or(|b| sse < b.sse) {
                    best = Some(Fit {
                        method: Method::HoltWinters,
                        alpha,
                        beta,
                        gamma: Some(gamma),
                        level,
                        trend,
                        seasonal: seasonal.clone(),
                        sse,
                        errors_len: y.len() - m,
                    });
                }
            }
        }
    }
    best
}

/// Sample autocorrelation at `lag`; 0 for a constant series, which has no season to model.
fn autocorrelation(y: &[f64], lag: usize) -> f64 {
    if lag == 0 || lag >= y.len() {
        return 0.0;
    }
    let center = mean(y);
    let denominator: f64 = y.iter().map(|v| (v - center).powi(2)).sum();
    if denominator <= 1e-24 * y.len() as f64 * center.abs().max(1.0).powi(2) {
        return 0.0;
    }
    let numerator: f64 = y
        .iter()
        .zip(&y[lag..])
        .map(|(a, b)| (a - center) * (b - center))
        .sum();
    numerator / denominator
}

/// `at_ms` of the first forecast point at or beyond `threshold` (>= when rising, <= when falling).
pub fn time_to_cross(forecast: &Forecast, threshold: f64, rising: bool) -> Option<i64> {
    let crossed = |v: f64| (rising && v >= threshold) || (!rising && v <= threshold);
    let first = forecast.points.iter().find(|p| crossed(p.value));
    first.map(|p| p.at_ms)
}

/// Time to empty a backlog of `depth` jobs at the current net rate; `None` if it never drains.
pub fn time_to_drain_ms(depth: f64, arrival_per_s: f64, service_per_s: f64) -> Option<i64> {
    if depth <= 0.0 {
        return Some(0);
    }
    let net_per_s = service_per_s - arrival_per_s;
    if !depth.is_finite() || !net_per_s.is_finite() || net_per_s <= 0.0 {
        return None;
    }
    let drain_ms = (depth / net_per_s * 1000.0).ceil();
    (drain_ms < i64::MAX as f64).then_some(drain_ms as i64)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub workers: u32,
    /// ρ = λ / (c·μ).
    pub utilisation: f64,
    /// Predicted 95th percentile of time spent waiting for a free slot with `workers` slots.
    pub wait_p95_s: f64,
    /// Erlang C: probability that an arriving job has to wait at all.
    pub probability_of_waiting: f64,
    pub model: &'static str,
}

/// The target is on the 95th percentile, i.e. P(wait > target) ≤ 5%.
const WAIT_TAIL: f64 = 0.05;

/// Erlang C probability of waiting for `offered_erlangs` (a = λ/μ) on `servers` slots; `None`
/// when the queue is unstable (a ≥ c). Uses the Erlang B recursion, which stays in [0, 1] and
/// never forms a! or a^c, then C = B / (1 − ρ(1 − B)).
pub fn erlang_c(offered_erlangs: f64, servers: u32) -> Option<f64> {
    let c = f64::from(servers);
    let stable = offered_erlangs.is_finite() && offered_erlangs > 0.0 && offered_erlangs < c;
    if !stable {
        return None;
    }
    let mut b = 1.0;
    for k in 1..=servers {
        b = offered_erlangs * b / (f64::from(k) + offered_erlangs * b);
    }
    let rho = offered_erlangs / c;
    Some(b / (1.0 - rho * (1.0 - b)))
}

/// Smallest number of concurrent handler slots, up to `max_workers`, whose predicted p95 wait
/// meets `target_wait_p95_s`, modelling the queue as M/M/c. Work is O(recommended workers).
pub fn recommend_workers(
    arrival_per_s: f64,
    mean_run_s: f64,
    target_wait_p95_s: f64,
    max_workers: u32,
) -> Option<Recommendation> {
    let valid = |x: f64| x.is_finite() && x > 0.0;
    if !(valid(arrival_per_s) && valid(mean_run_s) && target_wait_p95_s >= 0.0) {
        return None;
    }
    let service_per_s = 1.0 / mean_run_s;
    let offered_erlangs = arrival_per_s * mean_run_s;
    if offered_erlangs >= f64::from(max_workers) {
        return None;
    }
    // Erlang B is built up incrementally so each extra slot costs O(1); C is only meaningful
    // once c > a, and beyond that P(wait > t) falls with every slot, so the first hit is minimal.
    let mut b = 1.0;
    for c in 1..=max_workers {
        let slots = f64::from(c);
        b = offered_erlangs * b / (slots + offered_erlangs * b);
        if offered_erlangs >= slots {
            continue;
        }
        let rho = offered_erlangs / slots;
        let wait_prob = b / (1.0 - rho * (1.0 - b));
        let drain_rate_per_s = slots * service_per_s - arrival_per_s;
        let tail = wait_prob * (-drain_rate_per_s * target_wait_p95_s).exp();
        if tail <= WAIT_TAIL {
            let wait_p95_s = if wait_prob <= WAIT_TAIL {
                0.0
            } else {
                (wait_prob / WAIT_TAIL).ln() / drain_rate_per_s
            };
            return Some(Recommendation {
                workers: c,
                utilisation: rho,
                wait_p95_s,
                probability_of_waiting: wait_prob,
                model: "M/M/c (Erlang C)",
            });
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthInputs {
    /// Fraction of finished jobs that failed over the window, 0..=1.
    pub failure_rate: Option<f64>,
    pub wait_p95_ms: Option<u64>,
    pub wait_target_ms: u64,
    pub backlog_trend: Option<Direction>,
    pub oldest_ready_age_ms: Option<u64>,
    pub anomalies_len: usize,
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthComponent {
    pub name: &'static str,
    pub score: u8,
    pub weight: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub score: u8,
    pub components: Vec<HealthComponent>,
}

fn to_score(x: f64) -> u8 {
    if x.is_nan() {
        return 0;
    }
    x.round().clamp(0.0, 100.0) as u8
}

/// 100 up to `target`, falling linearly to 0 at `zero_at_multiple` × `target`.
fn ramp_score(value: u64, target: u64, zero_at_multiple: f64) -> f64 {
    if value <= target {
        return 100.0;
    }
    if target == 0 {
        return 0.0;
    }
    let over = (value - target) as f64 / (target as f64 * (zero_at_multiple - 1.0));
    100.0 * (1.0 - over).max(0.0)
}

/// Component weights sum to 1. Failures dominate because they lose work; wait is what users
/// feel; backlog direction and oldest-job age are early warnings; anomalies are a hint only.
/// - failures  0.35: 100 at 0% failed, 0 at >= 20%, linear between; 100 with no finished jobs
/// - wait      0.30: 100 when p95 <= target, 0 at >= 4x target, linear between; 100 if unknown
/// - backlog   0.15: 100 flat, falling or unknown; 50 rising
/// - age       0.10: 100 when the oldest ready job <= target, 0 at >= 10x target, linear
/// - anomalies 0.10: 100 with none, minus 25 each, floor 0
pub fn health(inputs: &HealthInputs) -> Health {
    let target_ms = inputs.wait_target_ms;
    let failures = match inputs.failure_rate.filter(|r| r.is_finite()) {
        Some(rate) => {
            let rate = rate.clamp(0.0, 1.0);
            let detail = format!("{:.1}% of jobs failed", rate * 100.0);
            (100.0 * (1.0 - rate / 0.20), detail)
        }
        None => (100.0, "no finished jobs".to_string()),
    };
    let wait = match inputs.wait_p95_ms {
        Some(p95) => {
            let detail = format!("p95 wait {p95} ms (target {target_ms} ms)");
            (ramp_score(p95, target_ms, 4.0), detail)
        }
        None => (100.0, "no wait samples".to_string()),
    };
    let trend = inputs.backlog_trend;
    let backlog = (
        if trend == Some(Direction::Rising) {
            50.0
        } else {
            100.0
        },
        format!("backlog {}", trend.map_or("unknown", Direction::as_str)),
    );
    let age = match inputs.oldest_ready_age_ms {
        Some(age) => {
            let detail = format!("oldest ready job {age} ms old (target {target_ms} ms)");
            (ramp_score(age, target_ms, 10.0), detail)
        }
        None => (100.0, "no ready jobs".to_string()),
    };
    let n = inputs.anomalies_len;
    let anomalies = (100.0 - 25.0 * n.min(4) as f64, format!("{n} anomalies"));
    let mut parts = vec![
        ("failures", 0.35, failures),
        ("wait", 0.30, wait),
        ("backlog", 0.15, backlog),
        ("age", 0.10, age),
        ("anomalies", 0.10, anomalies),
    ];
    if inputs.paused {
        // Zero weight: pausing is an operator's deliberate choice, so the backlog it builds is
        // expected and must not page anyone; the component only explains the numbers.
        let note = "queue is paused; not penalised because pausing is intentional";
        parts.push(("paused", 0.0, (100.0, note.to_string())));
    }
    let components: Vec<HealthComponent> = parts
        .into_iter()
        .map(|(name, weight, (score, detail))| HealthComponent {
            name,
            score: to_score(score),
            weight,
            detail,
        })
        .collect();
    let total_weight: f64 = components.iter().map(|c| c.weight).sum();
    let weighted: f64 = components
        .iter()
        .map(|c| f64::from(c.score) * c.weight)
        .sum();
    Health {
        score: to_score(weighted / total_weight),
        components,
    }
}

/// Weighted mean of per-queue scores (e.g. weighted by throughput). Non-finite or negative
/// weights are ignored; if no weight is positive (all queues idle) every queue counts equally.
pub fn overall(healths: &[(Health, f64)]) -> u8 {
    if healths.is_empty() {
        return 100;
    }
    let usable = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
    let total_weight: f64 = healths.iter().map(|(_, w)| usable(*w)).sum();
    if total_weight > 0.0 {
        let sum: f64 = healths
            .iter()
            .map(|(h, w)| f64::from(h.score) * usable(*w))
            .sum();
        to_score(sum / total_weight)
    } else {
        let sum: f64 = healths.iter().map(|(h, _)| f64::from(h.score)).sum();
        to_score(sum / healths.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;

    fn series(values: Vec<Option<f64>>) -> Series {
        Series {
            start_ms: 1_000_000,
            step_ms: MINUTE_MS,
            values,
        }
    }

    fn dense(values: impl IntoIterator<Item = f64>) -> Series {
        series(values.into_iter().map(Some).collect())
    }

    fn at(i: usize) -> i64 {
        1_000_000 + i as i64 * MINUTE_MS
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Deterministic, trendless wiggle in [-1, 1].
    fn wobble(i: usize) -> f64 {
        (i as f64).sin()
    }

    #[test]
    fn linear_series_has_exact_slope_and_perfect_fit() {
        let t = trend(&dense((0..=60).map(|i| 5.0 + 2.0 * i as f64))).expect("trend");
        assert!(close(t.slope_per_hour, 120.0, 1e-9), "{}", t.slope_per_hour);
        assert!(close(t.intercept, 5.0, 1e-9));
        assert!(close(t.r2, 1.0, 1e-12));
        assert!(close(t.change, 120.0, 1e-9));
        assert!(close(t.relative_change.expect("rel"), 120.0 / 65.0, 1e-12));
        assert_eq!((t.points, t.direction), (61, Direction::Rising));
        assert_eq!(t.summary, "rising: +185% over 1h 0m (R² 1.00)");
    }

    #[test]
    fn constant_and_noisy_and_tiny_trends_are_flat() {
        let t = trend(&dense(vec![7.3; 20])).expect("constant");
        assert_eq!(
            (t.slope_per_hour, t.r2, t.direction),
            (0.0, 1.0, Direction::Flat)
        );
        assert_eq!(t.summary, "flat (R² 1.00)");
        let t = trend(&dense((0..40).map(|i| [10.0, 14.0][i % 2]))).expect("noise");
        assert!(t.r2 < 0.3, "{}", t.r2);
        assert_eq!(t.direction, Direction::Flat);
        // A perfect fit is still flat when the change is under 10% of the level: 5.9 / 103 here.
        let t = trend(&dense((0..60).map(|i| 100.0 + 0.1 * i as f64))).expect("small");
        assert!(close(t.r2, 1.0, 1e-9));
        assert_eq!(t.direction, Direction::Flat);
        let t = trend(&dense((0..60).map(|i| 100.0 + 0.2 * i as f64))).expect("11%");
        assert_eq!(t.direction, Direction::Rising);
    }

    #[test]
    fn falling_trend_skips_missing_points() {
        let values = (0..30).map(|i| (i % 4 != 1).then_some(100.0 - 3.0 * i as f64));
        let t = trend(&series(values.collect())).expect("trend");
        assert_eq!(t.points, 22);
        assert!(close(t.slope_per_hour, -180.0, 1e-9));
        assert_eq!(t.direction, Direction::Falling);
        assert!(t.summary.starts_with("falling: -"), "{}", t.summary);
    }

    #[test]
    fn zero_mean_trend_reports_absolute_change() {
        let t = trend(&dense((-3..=3).map(f64::from))).expect("trend");
        assert_eq!(t.relative_change, None);
        assert!(close(t.change, 6.0, 1e-9));
        assert_eq!(t.summary, "rising: +6.000 over 6m 0s (R² 1.00)");
    }

    #[test]
    fn trend_needs_three_points() {
        assert_eq!(trend(&series(vec![])), None);
        assert_eq!(trend(&dense([1.0])), None);
        assert_eq!(trend(&dense([1.0, 2.0])), None);
        assert_eq!(trend(&series(vec![Some(1.0), None, Some(2.0), None])), None);
        assert_eq!(trend(&dense([1.0, f64::NAN, 2.0])), None);
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(format_duration_ms(999), "0s");
        assert_eq!(format_duration_ms(45_000), "45s");
        assert_eq!(format_duration_ms(125_000), "2m 5s");
        assert_eq!(format_duration_ms(3_900_000), "1h 5m");
        assert_eq!(format_duration_ms(2 * 86_400_000 + 3 * 3_600_000), "2d 3h");
        assert_eq!(format_duration_ms(-5), "0s");
    }

    fn only(found: &[Anomaly], detector: Detector) -> Vec<Anomaly> {
        found
            .iter()
            .filter(|a| a.detector == detector)
            .copied()
            .collect()
    }

    #[test]
    fn single_spike_flagged_by_zscore_and_iqr_at_its_time() {
        let values = (0..40).map(|i| if i == 30 { 150.0 } else { 100.0 + wobble(i) });
        let found = anomalies(&dense(values), &AnomalyConfig::default());
        for detector in [Detector::ZScore, Detector::Iqr] {
            let hits = only(&found, detector);
            assert_eq!(hits.len(), 1, "{detector:?}: {hits:?}");
            assert_eq!(
                (hits[0].at_ms, hits[0].value, hits[0].above),
                (at(30), 150.0, true)
            );
            assert!(hits[0].score > 10.0 && hits[0].score.is_finite());
            assert!(close(hits[0].expected, 100.0, 1.0));
        }
        let order = |a: &Anomaly| (a.at_ms, a.detector);
        assert!(found.windows(2).all(|w| order(&w[0]) <= order(&w[1])));
    }

    #[test]
    fn ewma_flags_level_shift_once() {
        let values = (0..60).map(|i| if i < 30 { 10.0 } else { 20.0 } + 0.1 * wobble(i));
        let hits = only(
            &anomalies(&dense(values), &AnomalyConfig::default()),
            Detector::Ewma,
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].at_ms, hits[0].above), (at(30), true));
        assert!(close(hits[0].expected, 10.0, 0.2));
    }

    #[test]
    fn constant_history_scores_deviation_finitely() {
        let mut values = vec![5.0; 20];
        assert!(anomalies(&dense(values.clone()), &AnomalyConfig::default()).is_empty());
        values[15] = 4.0;
        let z = only(
            &anomalies(&dense(values), &AnomalyConfig::default()),
            Detector::ZScore,
        );
        assert_eq!(z.len(), 1);
        assert_eq!(
            (z[0].at_ms, z[0].score, z[0].above),
            (at(15), MAX_SCORE, false)
        );
    }

    #[test]
    fn anomalies_need_eight_points_of_history() {
        let config = AnomalyConfig::default();
        assert!(anomalies(&series(vec![]), &config).is_empty());
        assert!(anomalies(&dense([1.0]), &config).is_empty());
        let mut values = vec![1.0; 8];
        values.push(9.0);
        assert_eq!(anomalies(&dense(values.clone()), &config).len(), 3);
        values.remove(0);
        assert!(anomalies(&dense(values), &config).is_empty());
    }

    #[test]
    fn quantiles_interpolate_linearly() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&sorted, 0.25), 1.75);
        assert_eq!(quantile(&sorted, 0.5), 2.5);
        assert_eq!(quantile(&sorted, 1.0), 4.0);
        assert_eq!(quantile(&[7.0], 0.75), 7.0);
    }

    #[test]
    fn ewma_state_follows_the_recurrence() {
        let mut ewma = Ewma {
            alpha: 0.5,
            mean: 0.0,
            variance: 0.0,
            updates: 0,
        };
        for value in [0.0, 2.0, 0.0] {
            ewma.update(value);
        }
        // mean 0 -> 1 -> 0.5; variance 0 -> 0.5·(0 + 2·1) = 1 -> 0.5·(1 + (-1)(-0.5)) = 0.75.
        assert_eq!((ewma.mean, ewma.variance, ewma.updates), (0.5, 0.75, 3));
    }

    #[test]
    fn holt_residual_sd_uses_non_trivial_errors_only() {
        // The first two steps are exact for every (α, β) and the last error is 10 − 3 = 7 for
        // all of them, so the grid keeps its first candidate.
        let f = forecast(&dense([0.0, 1.0, 2.0, 10.0]), 1, None).expect("forecast");
        assert_eq!((f.alpha, f.beta), (0.05, 0.05));
        assert!(close(f.residual_sd, (49.0_f64 / 2.0).sqrt(), 1e-12));
        // level = 0.05·10 + 0.95·3 = 3.35; trend = 0.05·(3.35 − 2) + 0.95·1 = 1.0175.
        assert!(close(f.points[0].value, 3.35 + 1.0175, 1e-12));
    }

    #[test]
    fn holt_reproduces_a_line() {
        let line = |i: usize| 20.0 + 3.5 * i as f64;
        let f = forecast(&dense((0..50).map(line)), 10, None).expect("forecast");
        assert_eq!(
            (f.method, f.gamma, f.points.len()),
            (Method::Holt, None, 10)
        );
        for (h, p) in (1..).zip(&f.points) {
            assert_eq!(p.at_ms, at(49 + h));
            // Scale of the data is ~250, so 1e-6 of scale.
            assert!(
                close(p.value, line(49 + h), 2.5e-4),
                "{} vs {}",
                p.value,
                line(49 + h)
            );
            assert!(p.lower <= p.value && p.value <= p.upper);
        }
        assert!(f.residual_sd < 1e-9);
    }

    #[test]
    fn holt_fills_gaps_and_starts_after_last_observation() {
        let mut values: Vec<Option<f64>> = (0..20).map(|i| Some(i as f64)).collect();
        values[5] = None;
        values.push(None);
        let f = forecast(&series(values), 3, None).expect("forecast");
        assert_eq!(f.points[0].at_ms, at(20));
        assert!(close(f.points[0].value, 20.0, 0.5), "{}", f.points[0].value);
    }

    #[test]
    fn holt_winters_tracks_a_clean_seasonal_series() {
        let m = 12;
        let tau = 2.0 * std::f64::consts::PI;
        let truth = |i: usize| 50.0 + 0.1 * i as f64 + 8.0 * (tau * i as f64 / m as f64).sin();
        let worst_error = |f: &Forecast| {
            let errors = (96..)
                .zip(&f.points)
                .map(|(i, p)| (p.value - truth(i)).abs());
            errors.fold(0.0, f64::max)
        };
        let f = forecast(&dense((0..96).map(truth)), 24, Some(m)).expect("forecast");
        assert_eq!(f.method, Method::HoltWinters);
        assert!(f.gamma.is_some());
        assert!(worst_error(&f) < 1e-6 * 60.0, "{}", worst_error(&f));
        let holt = forecast(&dense((0..96).map(truth)), 24, None).expect("holt");
        assert!(worst_error(&holt) > 1.0, "holt cannot follow the season");
    }

    #[test]
    fn season_rejected_without_autocorrelation_or_enough_points() {
        assert!(autocorrelation(&[1.0, -1.0, 1.0, -1.0, 1.0, -1.0], 3) < 0.0);
        let alternating = dense((0..30).map(|i| [1.0, -1.0][i % 2]));
        assert_eq!(
            forecast(&alternating, 2, Some(3)).expect("f").method,
            Method::Holt
        );
        let short = dense((0..10).map(|i| (i % 4) as f64));
        assert_eq!(
            forecast(&short, 2, Some(6)).expect("f").method,
            Method::Holt
        );
        let constant = forecast(&dense([3.0; 6]), 2, Some(2)).expect("f");
        assert_eq!(constant.method, Method::Holt);
        assert!(close(constant.points[1].value, 3.0, 1e-12));
    }

    #[test]
    fn holt_variance_matches_closed_form_and_intervals_widen() {
        let (alpha, beta) = (0.4, 0.3);
        let mut sum = 1.0;
        for h in 2..=12_usize {
            sum += innovation_weight(h - 1, alpha, beta, None).powi(2);
            let hf = h as f64;
            let bracket = 1.0 + beta * hf + beta * beta * hf * (2.0 * hf - 1.0) / 6.0;
            let closed = 1.0 + (hf - 1.0) * alpha * alpha * bracket;
            assert!(close(sum, closed, 1e-9), "h={h}: {sum} vs {closed}");
        }
        assert_eq!(innovation_weight(4, 0.5, 0.0, Some((0.25, 4))), 0.75);
        assert_eq!(innovation_weight(3, 0.5, 0.0, Some((0.25, 4))), 0.5);
        let noisy = dense((0..60).map(|i| 10.0 + i as f64 + 2.0 * wobble(i * 7)));
        let f = forecast(&noisy, 8, None).expect("forecast");
        assert!(f.residual_sd > 0.1);
        let widths: Vec<f64> = f.points.iter().map(|p| p.upper - p.lower).collect();
        assert!(close(widths[0], 2.0 * 1.96 * f.residual_sd, 1e-9));
        assert!(widths.windows(2).all(|w| w[1] > w[0]), "{widths:?}");
    }

    #[test]
    fn forecast_needs_four_points() {
        assert_eq!(forecast(&series(vec![]), 5, None), None);
        assert_eq!(forecast(&dense([1.0]), 5, Some(2)), None);
        assert_eq!(
            forecast(
                &series(vec![Some(1.0), None, Some(2.0), Some(3.0)]),
                5,
                None
            ),
            None
        );
        let f = forecast(&dense([1.0, 2.0, 3.0, 4.0]), 0, None).expect("forecast");
        assert!(f.points.is_empty());
    }

    #[test]
    fn time_to_cross_finds_first_crossing() {
        let f = forecast(&dense((0..20).map(|i| 2.0 * i as f64)), 10, None).expect("forecast");
        // Forecast values are 40, 42, 44, 46, ...: 45 is first reached at index 23.
        assert_eq!(time_to_cross(&f, 45.0, true), Some(at(23)));
        assert_eq!(time_to_cross(&f, 40.0, true), Some(at(20)));
        assert_eq!(time_to_cross(&f, 1000.0, true), None);
        assert_eq!(time_to_cross(&f, 30.0, false), None);
        let down = forecast(&dense((0..20).map(|i| 100.0 - i as f64)), 10, None).expect("f");
        assert_eq!(time_to_cross(&down, 78.0, false), Some(at(22)));
    }

    #[test]
    fn time_to_drain_edges() {
        assert_eq!(time_to_drain_ms(100.0, 3.0, 5.0), Some(50_000));
        assert_eq!(time_to_drain_ms(1.0, 0.0, 3.0), Some(334));
        assert_eq!(time_to_drain_ms(0.0, 5.0, 1.0), Some(0));
        assert_eq!(time_to_drain_ms(-3.0, 0.0, 0.0), Some(0));
        assert_eq!(time_to_drain_ms(10.0, 5.0, 5.0), None);
        assert_eq!(time_to_drain_ms(10.0, 6.0, 5.0), None);
        assert_eq!(time_to_drain_ms(f64::INFINITY, 0.0, 3.0), None);
        assert_eq!(time_to_drain_ms(1e300, 0.0, 1.0), None);
    }

    #[test]
    fn erlang_c_known_values() {
        assert!(close(erlang_c(2.0, 3).expect("c"), 4.0 / 9.0, 1e-12));
        // M/M/2 at ρ = 0.5: 2ρ²/(1+ρ) = 1/3; M/M/1: ρ.
        assert!(close(erlang_c(1.0, 2).expect("c"), 1.0 / 3.0, 1e-12));
        assert!(close(erlang_c(0.7, 1).expect("c"), 0.7, 1e-12));
        assert_eq!(erlang_c(3.0, 3), None);
        assert_eq!(erlang_c(0.0, 3), None);
        // a^c / c! would overflow here.
        let big = erlang_c(900.0, 1000).expect("c");
        assert!(big > 0.0 && big < 1.0, "{big}");
    }

    fn wait_tail(arrival_per_s: f64, mean_run_s: f64, c: u32, t_s: f64) -> Option<f64> {
        let prob = erlang_c(arrival_per_s * mean_run_s, c)?;
        Some(prob * (-(f64::from(c) / mean_run_s - arrival_per_s) * t_s).exp())
    }

    #[test]
    fn recommended_workers_is_minimal_and_meets_target() {
        let (arrival_per_s, mean_run_s, target_s) = (10.0, 0.5, 0.2);
        let r = recommend_workers(arrival_per_s, mean_run_s, target_s, 100).expect("rec");
        assert!(r.workers >= 6 && r.wait_p95_s <= target_s, "{r:?}");
        let tail = |c| wait_tail(arrival_per_s, mean_run_s, c, target_s);
        assert!(tail(r.workers).expect("stable") <= 0.05);
        assert!(tail(r.workers - 1).is_none_or(|p| p > 0.05));
        assert!(close(r.utilisation, 5.0 / f64::from(r.workers), 1e-12));
        let expected = erlang_c(5.0, r.workers).expect("c");
        assert!(close(r.probability_of_waiting, expected, 1e-12));
        assert_eq!(r.model, "M/M/c (Erlang C)");
        // The reported p95 really is where P(W > t) = 5%.
        let at_p95 = wait_tail(arrival_per_s, mean_run_s, r.workers, r.wait_p95_s);
        assert!(
            r.wait_p95_s > 0.0 && close(at_p95.expect("t"), 0.05, 1e-9),
            "{r:?}"
        );
    }

    #[test]
    fn recommend_workers_edges() {
        let r = recommend_workers(0.01, 1.0, 0.0, 10).expect("rec");
        assert_eq!((r.workers, r.wait_p95_s), (1, 0.0));
        assert_eq!(recommend_workers(0.0, 1.0, 1.0, 10), None);
        assert_eq!(recommend_workers(1.0, 0.0, 1.0, 10), None);
        assert_eq!(recommend_workers(1.0, f64::NAN, 1.0, 10), None);
        assert_eq!(recommend_workers(50.0, 1.0, 1.0, 40), None);
        assert_eq!(recommend_workers(1.0, 1.0, 1.0, 0), None);
        // With a lax target the answer is the smallest stable pool: c > a = 5.
        assert_eq!(
            recommend_workers(10.0, 0.5, 1e6, 100).expect("rec").workers,
            6
        );
        // a = 1.9 on 2 slots is stable, but 93% of jobs would wait: no way to meet a zero target.
        assert_eq!(recommend_workers(1.9, 1.0, 0.0, 2), None);
    }

    fn health_with(change: impl FnOnce(&mut HealthInputs)) -> Health {
        let mut inputs = HealthInputs {
            failure_rate: Some(0.0),
            wait_p95_ms: Some(100),
            wait_target_ms: 1000,
            backlog_trend: Some(Direction::Falling),
            oldest_ready_age_ms: Some(500),
            anomalies_len: 0,
            paused: false,
        };
        change(&mut inputs);
        health(&inputs)
    }

    fn part(h: &Health, name: &str) -> Option<u8> {
        h.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.score)
    }

    #[test]
    fn healthy_queue_scores_100_and_weights_sum_to_one() {
        let h = health_with(|_| {});
        assert_eq!(h.score, 100);
        assert!(close(
            h.components.iter().map(|c| c.weight).sum(),
            1.0,
            1e-12
        ));
        let unknown = health_with(|i| {
            (i.failure_rate, i.wait_p95_ms, i.oldest_ready_age_ms) = (None, None, None);
            i.backlog_trend = None;
        });
        assert_eq!(unknown.score, 100);
    }

    #[test]
    fn health_component_boundaries() {
        let failing = health_with(|i| i.failure_rate = Some(0.2));
        assert_eq!((part(&failing, "failures"), failing.score), (Some(0), 65));
        let half = health_with(|i| i.failure_rate = Some(0.1));
        assert_eq!(part(&half, "failures"), Some(50));
        let slow = |p95| health_with(|i| i.wait_p95_ms = Some(p95));
        assert_eq!(part(&slow(1000), "wait"), Some(100));
        assert_eq!(part(&slow(2500), "wait"), Some(50));
        assert_eq!((part(&slow(4000), "wait"), slow(4000).score), (Some(0), 70));
        let old = |age| health_with(|i| i.oldest_ready_age_ms = Some(age));
        assert_eq!(part(&old(1000), "age"), Some(100));
        assert_eq!(part(&old(5500), "age"), Some(50));
        assert_eq!(part(&old(20_000), "age"), Some(0));
        let rising = health_with(|i| i.backlog_trend = Some(Direction::Rising));
        assert_eq!((part(&rising, "backlog"), rising.score), (Some(50), 93));
        assert_eq!(
            part(&health_with(|i| i.anomalies_len = 1), "anomalies"),
            Some(75)
        );
        assert_eq!(
            part(&health_with(|i| i.anomalies_len = 9), "anomalies"),
            Some(0)
        );
        let zero_target = health_with(|i| (i.wait_target_ms, i.wait_p95_ms) = (0, Some(1)));
        assert_eq!(part(&zero_target, "wait"), Some(0));
    }

    #[test]
    fn paused_queue_is_noted_not_penalised() {
        let h = health_with(|i| i.paused = true);
        assert_eq!((h.score, part(&h, "paused")), (100, Some(100)));
        assert_eq!(part(&health_with(|_| {}), "paused"), None);
        let failing = health_with(|i| i.failure_rate = Some(0.2));
        let failing_paused = health_with(|i| (i.failure_rate, i.paused) = (Some(0.2), true));
        assert_eq!(failing_paused.score, failing.score);
    }

    #[test]
    fn overall_is_weighted_mean() {
        assert_eq!(overall(&[]), 100);
        let with = |score| Health {
            score,
            components: Vec::new(),
        };
        assert_eq!(overall(&[(with(100), 3.0), (with(20), 1.0)]), 80);
        assert_eq!(overall(&[(with(100), 0.0), (with(20), 0.0)]), 60);
        assert_eq!(overall(&[(with(100), f64::NAN), (with(20), 1.0)]), 20);
    }
}
