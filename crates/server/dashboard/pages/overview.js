// Overview: health score, totals, server-wide charts, queues at a glance.
//
// Data: GET /v1/health, GET /v1/history (charts over a chosen range), GET /v1/queues
// (paged, 50 a page; `prefix` to find queues by name), and the `stats` events of
// /v1/events for the live totals. Without events, the totals are summed from the queues.

import {
  CursorPager, DEPTH_SERIES, HISTORY_RANGES, api, badge, clear, el, errorNotice, historyQuery,
  lineChart, link, ms, num, qs, queueHref, rangeSelect, scoreBadge, section, table, td, widthOf,
} from '../lib.js';

const PAGE_LEN = 50;
const TOTALS_QUEUES_MAX = 1000; // without live stats, totals sum at most this many queues
const STATS_FRESH_MS = 3000;
const SLOW_GAP_MS = 10000; // health and history: the server writes a sample every 10 s
// GET /v1/health scores every queue: about 0.1 s per 1,000 queues on 2 cores, so 10 s
// at the 100,000-queue limit. It is asked again only after ten times as long as it
// took, so that an open overview costs the server at most a tenth of a core.
const HEALTH_GAP_FACTOR = 10;

export function mount(root, _params, { live }) {
  document.title = 'Overview · Sluice';
  const cards = {};
  const card = (key, label, href) => {
    const value = el('div.value', '—');
    cards[key] = value;
    return el('div.card', { 'data-card': key }, el('div.label', label), href ? el('a', { href, class: 'value-link' }, value) : value);
  };
  let range = HISTORY_RANGES[0];
  const charts = section('Over time');
  charts.insertBefore(rangeSelect('overview-range', (r) => { range = r; loadHistory().then(drawCharts); }), charts.body);
  const queuesPanel = section('Queues');
  const pager = new CursorPager();
  let filter = '';
  const filterInput = el('input', { type: 'search', name: 'prefix', id: 'queue-filter', autocomplete: 'off', placeholder: 'name or prefix' });
  const form = el('form.inline', {
    role: 'search', 'aria-label': 'Queues',
    onsubmit: (e) => { e.preventDefault(); filter = filterInput.value.trim(); pager.reset(); loadQueues(); },
  }, el('label', { for: 'queue-filter' }, 'Find queues by name or prefix', filterInput), el('button', { type: 'submit' }, 'Find'));
  queuesPanel.insertBefore(form, queuesPanel.body);

  root.append(
    el('div.page-head', el('h1', 'Overview')),
    el('div.cards', { role: 'group', 'aria-label': 'Totals' },
      card('health', 'Health score'), card('ready', 'Ready'), card('scheduled', 'Scheduled'),
      card('leased', 'Running'), card('failed', 'Retrying'), card('dead', 'Dead'),
      card('queues', 'Queues'), card('workers', 'Workers', '#/workers'), card('firing', 'Firing alerts', '#/alerts')),
    charts, queuesPanel);

  let health = new Map();
  let history = null;      // the answer of GET /v1/history for `range`
  let historyError = null;
  let historyAt = 0;

  function setCard(key, text) { cards[key].textContent = text; }

  function showStats(s) {
    const jobs = s.jobs || {};
    for (const k of ['ready', 'scheduled', 'leased', 'failed', 'dead']) setCard(k, num(jobs[k]));
    setCard('queues', num(s.queues));
    setCard('workers', num(s.workers));
    setCard('firing', num(s.firing_alerts));
  }

  function drawCharts() {
    if (historyError) { clear(charts.body, errorNotice(historyError, 'Could not load the history')); return; }
    if (!history) return;
    const w = widthOf(charts.body) / (window.innerWidth > 900 ? 2 : 1) - 16;
    const pts = history.points || [];
    const t = pts.map((p) => Date.parse(p.at));
    const step = history.resolution_ms / 1000;
    const series = (key, name, cls, scale = 1) => ({ name, cls, points: pts.map((p, i) => [t[i], p[key] === undefined || p[key] === null ? null : p[key] / scale]) });
    clear(charts.body, el('div.grid',
      lineChart('Jobs per second, all queues', [series('enqueued', 'enqueued', 's1', step), series('succeeded', 'succeeded', 's3', step)], { width: w }),
      lineChart('Failed attempts per second, all queues', [series('failed', 'failed', 's2', step)], { width: w }),
      lineChart('Jobs by state, all queues', DEPTH_SERIES.map((d) => series(d.key, d.name, d.cls)), { width: w }),
      lineChart('Wait and run time p95, worst queue (ms)', [series('wait_p95_ms', 'wait p95', 's4'), series('run_p95_ms', 'run p95', 's5')], { width: w })),
    el('p.muted', 'Every queue’s samples summed per ' + (step >= 60 ? step / 60 + ' min' : step + ' s') + ' step; for wait and run, the highest of any queue.'));
  }

  async function loadHistory() {
    historyAt = Date.now();
    const asked = range;
    try {
      const h = await api('/history' + historyQuery(asked));
      if (asked !== range) return; // another range was chosen meanwhile
      history = h;
      historyError = null;
    } catch (e) {
      if (asked === range) historyError = e;
    }
  }

  // One history request at a time from the refreshes and the stats' beat.
  let historyLoading = null;
  function reloadHistory() {
    historyLoading ||= loadHistory().then(drawCharts).finally(() => { historyLoading = null; });
    return historyLoading;
  }

  let healthGapMs = SLOW_GAP_MS;
  let healthLoading = false;
  async function loadHealth() {
    const started = Date.now();
    healthLoading = true;
    try {
      const h = await api('/health');
      healthGapMs = Math.max(SLOW_GAP_MS, HEALTH_GAP_FACTOR * (Date.now() - started));
      health = new Map((h.queues || []).map((q) => [q.queue, q.score]));
      clear(cards.health, scoreBadge(h.score));
      showQueues();
    } catch (e) {
      setCard('health', '—');
    } finally {
      healthLoading = false;
    }
  }

  let queuesData = null;
  let queuesAsked = 0; // an answer to an earlier question (another page or prefix) is dropped
  async function loadQueues() {
    const asked = ++queuesAsked;
    let data;
    try {
      data = await api('/queues' + qs({ prefix: filter, limit: PAGE_LEN, cursor: pager.cursor }));
    } catch (e) {
      if (asked !== queuesAsked) return;
      queuesData = null;
      clear(queuesPanel.body, errorNotice(e, 'Could not list the queues'));
      return;
    }
    if (asked !== queuesAsked) return;
    queuesData = data;
    pager.next = data.next_cursor;
    showQueues();
  }

  function showQueues() {
    const data = queuesData;
    if (!data) return;
    const rows = data.queues.map((q) => {
      const c = q.counts || {};
      const r = q.recent || {};
      return el('tr', { 'data-queue': q.name },
        td(link(queueHref(q.name), q.name), 'wrap'),
        td(q.paused ? badge('paused', 'warn') : badge('active', 'ok')),
        td(num(c.ready), 'num'), td(num(c.scheduled), 'num hide-narrow'), td(num(c.leased), 'num'),
        td(num(c.failed), 'num hide-narrow'), td(num(c.dead), 'num'), td(num(c.succeeded), 'num hide-narrow'),
        td(ms(r.wait_p95_ms), 'num hide-narrow'), td(ms(r.run_p95_ms), 'num hide-narrow'),
        td(scoreBadge(health.get(q.name)), 'hide-narrow'));
    });
    const h = (label, cls) => ({ label, cls });
    clear(queuesPanel.body,
      filter ? el('p.muted', 'Queues whose name starts with “' + filter + '”.') : null,
      table('Queues', [h('Queue'), h('State'), h('Ready', 'num'), h('Scheduled', 'num hide-narrow'), h('Running', 'num'),
        h('Retrying', 'num hide-narrow'), h('Dead', 'num'), h('Succeeded', 'num hide-narrow'), h('Wait p95', 'num hide-narrow'),
        h('Run p95', 'num hide-narrow'), h('Health', 'hide-narrow')], rows,
      { captionHidden: true, empty: filter ? 'No queue name starts with “' + filter + '”.' : 'No queues yet: they appear with their first job.' }),
      pager.controls('Queues', loadQueues, rows.length));
  }

  // Totals without live stats: one page of up to 1,000 queues summed. While the event
  // stream is up (or opening) its next `stats`, within a second, bring them.
  async function loadTotals() {
    const fresh = live.stats && Date.now() - live.statsAt < STATS_FRESH_MS;
    if (fresh) return showStats(live.stats);
    if (live.state === 'live' || live.state === 'connecting') return;
    try {
      const [qs_, workers, alerts] = await Promise.all([
        api('/queues' + qs({ limit: TOTALS_QUEUES_MAX })), api('/workers'), api('/alerts')]);
      const sum = {};
      for (const q of qs_.queues) {
        for (const [k, v] of Object.entries(q.counts || {})) sum[k] = (sum[k] || 0) + v;
      }
      showStats({ jobs: sum, queues: qs_.queues.length, workers: (workers.workers || []).length, firing_alerts: (alerts.rules || []).length });
      if (qs_.next_cursor) setCard('queues', num(TOTALS_QUEUES_MAX) + '+');
    } catch (e) { /* the cards keep their last values */ }
  }

  // Health and history are computed over a window: at most every SLOW_GAP_MS (health
  // less often when it is slow to compute, above).
  let healthAt = 0;
  async function refresh() {
    const slow = !healthLoading && Date.now() - healthAt >= healthGapMs;
    if (slow) healthAt = Date.now();
    // Health (scored over every queue) is the slow one: the table is drawn first and
    // gets its health column when the scores come.
    await Promise.all([
      slow ? loadHealth() : null,
      Date.now() - historyAt >= SLOW_GAP_MS ? reloadHistory() : null,
      loadTotals(),
      loadQueues(),
    ]);
  }

  refresh();
  return {
    refresh,
    redraw: drawCharts,
    relevant: (type) => type === 'queue' || type === 'jobs' || type === 'alert',
    onStats(s) {
      showStats(s);
      // An idle server sends no other events: the stats' beat fetches new samples.
      if (Date.now() - historyAt >= SLOW_GAP_MS) reloadHistory();
    },
  };
}
