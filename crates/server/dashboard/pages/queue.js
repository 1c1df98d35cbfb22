// One queue: state, pause/resume, latency, history charts, insights, and its jobs
// by state with paging and search.
//
// Data: GET /v1/queues/{q}, POST /v1/queues/{q}/pause|resume, GET /v1/queues/{q}/history,
// GET /v1/queues/{q}/insights, GET /v1/queues/{q}/jobs?state&kind&tag&limit&cursor,
// GET /v1/jobs/{id}.

import {
  ApiError, CursorPager, DEPTH_SERIES, HISTORY_RANGES, STATES, act, api, badge, button, clear,
  compact, dl, el, enc, errorNotice, historyQuery, jobHref, lineChart, link, ms, notice, num,
  pct, qs, rangeSelect, scoreBadge, section, stateBadge, table, td, time, widthOf,
} from '../lib.js';

const JOBS_PAGE_LEN = 25;
// A listing by kind or tag looks at no more than JOB_SCAN_MAX (10,000) jobs per request,
// so its pages may come short, or empty, with a cursor: one page of the table asks at
// most this many times to fill itself (40,000 jobs looked at), then offers "Next".
const FILTERED_REQUESTS_MAX = 4;
const JOB_SCAN_MAX = 10000;
const ANOMALIES_SHOWN_MAX = 20;
const CHARTS_GAP_MS = 10000;
const SEARCH_FIELDS = { id: 'Job id', kind: 'Kind', tag: 'Tag' };

export function mount(root, [name], { live }) {
  document.title = name + ' · Queue · Sluice';
  const path = '/queues/' + enc(name);
  let range = HISTORY_RANGES[0];
  let queue = null;
  let history = null;
  let insights = null;
  let state = 'ready';
  let search = null; // {field, value}
  const pager = new CursorPager();

  const pausedBadge = el('span');
  const pauseButton = button('Pause queue', () => togglePause(), { id: 'pause-toggle', class: 'secondary' });
  const actionOut = el('div', { 'aria-live': 'polite' });
  const summary = section('Summary');
  const latency = section('Latency, last minute');
  const charts = section('Over time');
  const insightPanel = section('Insights');
  const jobsPanel = section('Jobs');

  charts.insertBefore(rangeSelect('range', (r) => { range = r; loadCharts(); }), charts.body);

  // jobs: state tabs, search, table
  const tabs = el('div.tabs', { role: 'group', 'aria-label': 'Job state' });
  const searchField = el('select', { id: 'search-field', name: 'field' }, Object.entries(SEARCH_FIELDS).map(([k, v]) => el('option', { value: k }, v)));
  const searchInput = el('input', { id: 'search-value', name: 'q', type: 'search', autocomplete: 'off', required: true });
  const searchForm = el('form.inline', {
    role: 'search', 'aria-label': 'Jobs',
    onsubmit: (e) => {
      e.preventDefault();
      const value = searchInput.value.trim();
      search = value ? { field: searchField.value, value } : null;
      pager.reset();
      loadJobs();
    },
  }, el('label', { for: 'search-field' }, 'Search by', searchField),
  el('label', { for: 'search-value' }, 'Value', searchInput),
  el('button', { type: 'submit' }, 'Search'),
  button('Clear', () => { search = null; searchInput.value = ''; pager.reset(); loadJobs(); }, { class: 'secondary' }));
  jobsPanel.insertBefore(el('div', tabs, searchForm), jobsPanel.body);

  root.append(
    el('div.crumbs', link('#/', 'Overview'), ' › Queue'),
    el('div.page-head', el('h1', name), pausedBadge, el('div.actions', pauseButton)),
    actionOut, summary, latency, charts, insightPanel, jobsPanel);

  function showQueue() {
    if (!queue) return;
    clear(pausedBadge, queue.paused ? badge('paused', 'warn') : badge('active', 'ok'));
    pauseButton.textContent = queue.paused ? 'Resume queue' : 'Pause queue';
    pauseButton.setAttribute('aria-pressed', String(!!queue.paused));
    const c = queue.counts || {};
    clear(tabs, STATES.map((s) => button(s[0].toUpperCase() + s.slice(1) + ' ' + compact(c[s] || 0), () => {
      state = s; pager.reset(); search = search && search.field === 'id' ? null : search; loadJobs(); showQueue();
    }, { 'aria-pressed': String(s === state && !(search && search.field === 'id')), 'data-state': s })));
    const l = queue.limits || {};
    const rate = (r) => r ? num(r.limit) + ' per ' + ms(r.per_ms) : null;
    clear(summary.body, el('div.cards', STATES.map((s) => el('div.card', { 'data-count': s },
      el('div.label', s), el('div.value', num(c[s] || 0))))),
    dl([
      ['State', queue.paused ? 'paused: leases skip it' : 'active'],
      ['Concurrency limit', l.concurrency ? num(l.concurrency) : 'none'],
      ['Rate limit', rate(l.rate) || 'none'],
      l.key_concurrency || l.key_rate ? ['Per-key limits', [l.key_concurrency ? num(l.key_concurrency) + ' at once' : '', l.key_rate ? rate(l.key_rate) : ''].filter(Boolean).join(', ')] : null,
      queue.rate_tokens !== undefined ? ['Rate tokens now', num(queue.rate_tokens)] : null,
      queue.limit_keys !== undefined ? ['Limit keys', num(queue.limit_keys)] : null,
    ]));
    const r = queue.recent || {};
    clear(latency.body, table('Latency percentiles, last minute', [{ label: el('span.sr-only', 'Measure') }, { label: 'p50', cls: 'num' }, { label: 'p95', cls: 'num' }, { label: 'p99', cls: 'num' }], [
      el('tr', el('th', { scope: 'row' }, 'Wait (due → leased)'), td(ms(r.wait_p50_ms), 'num'), td(ms(r.wait_p95_ms), 'num'), td(ms(r.wait_p99_ms), 'num')),
      el('tr', el('th', { scope: 'row' }, 'Run (leased → done)'), td(ms(r.run_p50_ms), 'num'), td(ms(r.run_p95_ms), 'num'), td(ms(r.run_p99_ms), 'num')),
    ], { captionHidden: true }),
    el('p.muted', num(r.succeeded) + ' succeeded and ' + num(r.failed) + ' failed in the last minute.'));
  }

  async function togglePause() {
    const to = queue && queue.paused ? 'resume' : 'pause';
    const q = await act(pauseButton, actionOut, () => api(path + '/' + to, { method: 'POST' }),
      (v) => 'Queue ' + (v.paused ? 'paused: workers get no jobs from it until it is resumed.' : 'resumed.'));
    if (q) { queue = { ...queue, ...q }; showQueue(); }
  }

  async function loadQueue() {
    try {
      queue = await api(path);
      showQueue();
      return true;
    } catch (e) {
      clear(summary.body, errorNotice(e, e.status === 404 ? 'No such queue' : 'Could not load the queue'));
      return false;
    }
  }

  function drawCharts() {
    if (!history) return;
    const w = widthOf(charts.body) / (window.innerWidth > 900 ? 2 : 1) - 16;
    const t = (p) => Date.parse(p.at);
    const step = history.resolution_ms / 1000;
    const pts = history.points;
    const depthSeries = DEPTH_SERIES.map((d) => ({ name: d.name, cls: d.cls, points: pts.map((p) => [t(p), p[d.key] ?? null]) }));
    const marks = insights ? dedupAnomalies(insights.anomalies || []).filter((a) => a.metric === 'depth').map((a) => ({ t: Date.parse(a.at), v: a.value, label: 'anomaly: ' + a.value + ' (expected ' + compact(a.expected) + ')' })) : [];
    clear(charts.body, el('div.grid',
      lineChart('Depth by state', depthSeries, { width: w, marks }),
      lineChart('Jobs per second', [
        { name: 'enqueued', points: pts.map((p) => [t(p), p.enqueued / step]), cls: 's1' },
        { name: 'succeeded', points: pts.map((p) => [t(p), p.succeeded / step]), cls: 's3' },
        { name: 'failed', points: pts.map((p) => [t(p), p.failed / step]), cls: 's2' }], { width: w }),
      lineChart('Wait and run time, p95 (ms)', [
        { name: 'wait p95', points: pts.map((p) => [t(p), p.wait_p95_ms ?? null]), cls: 's4' },
        { name: 'run p95', points: pts.map((p) => [t(p), p.run_p95_ms ?? null]), cls: 's5' }], { width: w }),
      forecastChart(w)));
  }

  function forecastChart(w) {
    const f = insights && (insights.forecasts || []).find((x) => x.metric === 'depth');
    const past = history.points.map((p) => [Date.parse(p.at), p.ready]);
    if (!f) return lineChart('Depth forecast', [{ name: 'ready', points: past, cls: 's1' }], { width: w });
    const fp = f.points.map((p) => [Date.parse(p.at), p.value]);
    return lineChart('Depth forecast (' + f.method + ')', [
      { name: 'ready', points: past, cls: 's1' },
      { name: 'forecast', points: fp, cls: 's5', dashed: true }],
    { width: w, band: { points: f.points.map((p) => [Date.parse(p.at), p.lower, p.upper]), cls: 's5' } });
  }

  async function loadCharts() {
    const asked = range;
    const [h, i] = await Promise.allSettled([
      api(path + '/history' + historyQuery(asked)),
      api(path + '/insights' + qs({ window_ms: asked.ms })),
    ]);
    if (asked !== range) return; // another range was chosen meanwhile
    if (h.status === 'fulfilled') { history = h.value; drawCharts(); }
    else clear(charts.body, errorNotice(h.reason, 'Could not load the history'));
    if (i.status === 'fulfilled') { insights = i.value; showInsights(); drawCharts(); }
    else clear(insightPanel.body, errorNotice(i.reason, 'Could not load the insights'));
  }

  function showInsights() {
    const ins = insights;
    const hl = ins.health || {};
    const trends = (ins.trends || []).map((t) => el('tr', td(t.metric), td(badge(t.direction, t.direction === 'flat' ? 'neutral' : 'info')),
      td(compact(t.slope_per_hour) + ' /h', 'num'), td(t.r2 === undefined ? '—' : t.r2.toFixed(2), 'num'), td(t.summary, 'wrap')));
    const anomalies = dedupAnomalies(ins.anomalies || []).slice(-ANOMALIES_SHOWN_MAX).reverse()
      .map((a) => el('tr', td(time(a.at)), td(a.metric), td(compact(a.value), 'num'), td(compact(a.expected), 'num'),
        td(a.detectors.join(', ')), td(a.above ? 'above' : 'below')));
    const b = ins.backlog || {};
    const rec = ins.recommendation;
    clear(insightPanel.body,
      el('div.grid',
        el('div',
          el('h3', 'Health'),
          el('p', el('span.big-score', scoreBadge(hl.score)), ' ', el('span.muted', 'out of 100' + (queue && queue.paused ? ' · paused (noted, not penalised)' : ''))),
          table('Health components', ['Component', { label: 'Score', cls: 'num' }, { label: 'Weight', cls: 'num' }, 'Detail'],
            (hl.components || []).map((c) => el('tr', td(c.name), td(num(c.score), 'num'), td(pct(c.weight), 'num'), td(c.detail, 'wrap')))),
        ),
        el('div',
          el('h3', 'Backlog and capacity'),
          dl([
            ['Ready now', num(b.ready)],
            ['Arriving', compact(b.arrival_per_s) + ' /s'],
            ['Finishing', compact(b.throughput_per_s) + ' /s'],
            ['Drained', b.drained_at ? time(b.drained_at) : b.ready ? 'not at these rates' : 'empty'],
            ['Reaches threshold', b.threshold_at ? time(b.threshold_at) : '—'],
            ['Handler slots advised', rec ? num(rec.workers) : 'no runs in the last minute'],
          ]),
          rec ? el('p.muted', 'From an ' + (rec.model || 'M/M/c') + ' model: ' + compact(rec.arrival_per_s) + ' arrivals/s, mean run ' + ms(rec.mean_run_ms) +
            ', utilisation ' + pct(rec.utilisation) + ', p95 wait ' + ms(rec.wait_p95_ms) + ' against a target of ' + ms(rec.target_wait_p95_ms) + '.') : null)),
      el('h3', 'Trends over ' + ms(ins.window_ms)),
      table('Trends', ['Series', 'Direction', { label: 'Slope', cls: 'num' }, { label: 'R²', cls: 'num' }, 'Summary'], trends, { captionHidden: true }),
      el('h3', 'Anomalies'),
      table('Anomalies, newest first', ['Time', 'Series', { label: 'Value', cls: 'num' }, { label: 'Expected', cls: 'num' }, 'Detectors', 'Side'], anomalies,
        { captionHidden: true, empty: 'No anomalies in this window.' }));
  }

  // ------------------------------------------------------------ jobs

  function jobRow(j, showState) {
    const last = (j.history || [])[(j.history || []).length - 1];
    return el('tr', { 'data-job': j.id },
      td(link(jobHref(j.id), el('code', j.id))),
      showState ? td(stateBadge(j.state)) : null,
      td(j.kind, 'wrap'),
      td(el('span.tags', (j.tags || []).map((t) => badge(t))), 'hide-narrow'),
      td(num(j.attempts) + ' / ' + num(j.max_attempts), 'num'),
      td(num(j.priority), 'num hide-narrow'),
      td(time(j.finished_at || (j.state === 'scheduled' || j.state === 'failed' ? j.run_at : j.enqueued_at)), 'hide-narrow'),
      td(last && last.error ? last.error : '', 'wrap hide-narrow'));
  }

  function jobsTable(jobs, showState, caption, empty) {
    const when = state === 'scheduled' || state === 'failed' ? 'Runs at' : ['succeeded', 'dead', 'cancelled'].includes(state) ? 'Finished' : 'Enqueued';
    return table(caption, ['Id', showState ? 'State' : null, 'Kind', { label: 'Tags', cls: 'hide-narrow' }, { label: 'Attempts', cls: 'num' },
      { label: 'Priority', cls: 'num hide-narrow' }, { label: when, cls: 'hide-narrow' }, { label: 'Last error', cls: 'hide-narrow' }].filter(Boolean),
    jobs.map((j) => jobRow(j, showState)), { empty: empty || 'No ' + state + ' jobs' + (search ? ' match.' : '.') });
  }

  let jobsAsked = 0; // answers to an earlier question (another state or search) are dropped
  async function loadJobs() {
    const asked = ++jobsAsked;
    if (search && search.field === 'id') {
      showQueue();
      try {
        const j = await api('/jobs/' + enc(search.value));
        if (asked !== jobsAsked) return;
        clear(jobsPanel.body,
          j.queue !== name ? notice('info', 'Job ' + j.id + ' is in queue ', link('#/queues/' + enc(j.queue), j.queue), '.') : null,
          jobsTable([j], true, 'Job ' + j.id));
      } catch (e) {
        if (asked !== jobsAsked) return;
        clear(jobsPanel.body, e instanceof ApiError && e.status === 404 ? notice('info', 'No job has the id “' + search.value + '”.') : errorNotice(e));
      }
      return;
    }
    const filter = search ? { [search.field]: search.value } : {};
    let jobs = [];
    let cursor = pager.cursor;
    let requests = 0;
    try {
      // A filtered page may come short with a cursor (the server stopped looking):
      // ask on from the cursor, a bounded number of times, to fill the page.
      do {
        const data = await api(path + '/jobs' + qs({ state, ...filter, limit: JOBS_PAGE_LEN - jobs.length, cursor }));
        if (asked !== jobsAsked) return;
        requests++;
        jobs = jobs.concat(data.jobs || []);
        cursor = data.next_cursor;
      } while (search && cursor && jobs.length < JOBS_PAGE_LEN && requests < FILTERED_REQUESTS_MAX);
    } catch (e) {
      if (asked === jobsAsked) clear(jobsPanel.body, errorNotice(e, 'Could not list the jobs'));
      return;
    }
    pager.next = cursor;
    // Short with a cursor: there may be more matches further on; never "no jobs".
    const looked = num(requests * JOB_SCAN_MAX);
    const short = search && cursor && jobs.length < JOBS_PAGE_LEN;
    const what = state + ' jobs with ' + search?.field + ' “' + search?.value + '”';
    clear(jobsPanel.body,
      search ? notice('info', 'Showing ' + what + '.') : null,
      short ? notice('warn', el('strong', jobs.length ? 'Only ' + num(jobs.length) + ' found so far. ' : 'None found so far. '),
        'This page looked through ' + looked + ' ' + state + ' jobs (the server looks at up to ' + num(JOB_SCAN_MAX) +
        ' per request); more remain: Next keeps looking from there.') : null,
      jobsTable(jobs, false, state[0].toUpperCase() + state.slice(1) + ' jobs',
        short ? 'No match among the ' + looked + ' jobs looked at so far: press Next to keep looking.' : null),
      pager.controls('Jobs', loadJobs, jobs.length));
  }

  // Counts and jobs follow every change; history and insights (computed by the server
  // over the whole window) at most every CHARTS_GAP_MS.
  let chartsAt = 0;
  async function refresh() {
    if (!(await loadQueue())) return;
    const charts = Date.now() - chartsAt >= CHARTS_GAP_MS;
    if (charts) chartsAt = Date.now();
    await Promise.all([charts ? loadCharts() : null, loadJobs()]);
  }

  refresh();
  return {
    refresh,
    redraw: drawCharts,
    relevant: (type, d) => type === 'jobs' || (type === 'queue' && d.queue === name),
  };
}

// The three detectors often flag the same point: one row per point and series.
function dedupAnomalies(list) {
  const byKey = new Map();
  for (const a of list) {
    const k = a.metric + '@' + a.at;
    const have = byKey.get(k);
    if (have) have.detectors.push(a.detector);
    else byKey.set(k, { ...a, detectors: [a.detector] });
  }
  return [...byKey.values()].sort((x, y) => Date.parse(x.at) - Date.parse(y.at));
}
