// Overview: health score, totals, throughput and failure charts, queues at a glance.
//
// Data: GET /v1/health, GET /v1/queues (paged, 50 a page), GET /v1/alerts, and the
// `stats` events of /v1/events for live totals and rates. Server-wide history comes
// from GET /v1/history (not in the API yet: without it the charts show the live rates
// gathered since the dashboard opened).

import {
  ApiError, CursorPager, api, badge, clear, el, errorNotice, lineChart, link, ms, notice,
  num, qs, queueHref, scoreBadge, section, table, td, unavailable, widthOf,
} from '../lib.js';

const PAGE_LEN = 50;
const TOTALS_QUEUES_MAX = 1000; // without live stats, totals sum at most this many queues
const STATS_FRESH_MS = 3000;
const SLOW_GAP_MS = 10000;

let historySupported = true; // GET /v1/history: remembered while the dashboard is open
let prefixSupported = true;  // GET /v1/queues?prefix=
// Without history or live stats: each poll's sum of the queues' last-minute counts.
const polled = [];
const POLLED_LEN_MAX = 720;

export function mount(root, _params, { live }) {
  document.title = 'Overview · Sluice';
  const cards = {};
  const card = (key, label, href) => {
    const value = el('div.value', '—');
    cards[key] = value;
    return el('div.card', { 'data-card': key }, el('div.label', label), href ? el('a', { href, class: 'value-link' }, value) : value);
  };
  const charts = section('Throughput and failures');
  const queuesPanel = section('Queues');
  const pager = new CursorPager();
  let filter = '';
  const filterInput = el('input', { type: 'search', name: 'prefix', id: 'queue-filter', autocomplete: 'off', placeholder: 'name or prefix' });
  const form = el('form.inline', {
    role: 'search', 'aria-label': 'Queues',
    onsubmit: (e) => { e.preventDefault(); filter = filterInput.value.trim(); pager.reset(); loadQueues(); },
  }, el('label', { for: 'queue-filter' }, 'Find queues', filterInput), el('button', { type: 'submit' }, 'Find'));
  queuesPanel.insertBefore(form, queuesPanel.body);

  root.append(
    el('div.page-head', el('h1', 'Overview')),
    el('div.cards', { role: 'group', 'aria-label': 'Totals' },
      card('health', 'Health score'), card('ready', 'Ready'), card('scheduled', 'Scheduled'),
      card('leased', 'Running'), card('failed', 'Retrying'), card('dead', 'Dead'),
      card('queues', 'Queues'), card('workers', 'Workers', '#/workers'), card('firing', 'Firing alerts', '#/alerts')),
    charts, queuesPanel);

  let health = new Map();
  let history = null; // points of GET /v1/history, or null when unavailable

  function setCard(key, text) { cards[key].textContent = text; }

  function showStats(s) {
    const jobs = s.jobs || {};
    for (const k of ['ready', 'scheduled', 'leased', 'failed', 'dead']) setCard(k, num(jobs[k]));
    setCard('queues', num(s.queues));
    setCard('workers', num(s.workers));
    setCard('firing', num(s.firing_alerts));
  }

  function drawCharts() {
    const w = widthOf(charts.body) / (window.innerWidth > 900 ? 2 : 1) - 16;
    let rate, fail, note = null;
    if (history) {
      const per = (k) => history.points.map((p) => [Date.parse(p.at), (p[k] || 0) / (history.resolution_ms / 1000)]);
      rate = [{ name: 'enqueued /s', points: per('enqueued'), cls: 's1' }, { name: 'succeeded /s', points: per('succeeded'), cls: 's3' }];
      fail = [{ name: 'failed /s', points: per('failed'), cls: 's2' }];
    } else if (live.state !== 'live' && polled.length) {
      const per = (k) => polled.map((x) => [x.t, x[k] / 60]);
      rate = [{ name: 'succeeded /s', points: per('succeeded'), cls: 's3' }];
      fail = [{ name: 'failed /s', points: per('failed'), cls: 's2' }];
      note = el('p.muted', 'Neither server-wide history (GET /v1/history) nor live events (/v1/events) are available: the charts show each queue’s last-minute counts, summed at every poll since the dashboard opened.');
    } else {
      const r = live.rates;
      rate = [{ name: 'enqueued /s', points: r.map((x) => [x.t, x.enqueued]), cls: 's1' }, { name: 'completed /s', points: r.map((x) => [x.t, x.completed]), cls: 's3' }];
      fail = [{ name: 'failed /s', points: r.map((x) => [x.t, x.failed]), cls: 's2' }];
      note = live.state === 'live'
        ? el('p.muted', 'Server-wide history (GET /v1/history) is not available: the charts show the live rates since the dashboard opened.')
        : unavailable('Server-wide history', 'GET /v1/history?resolution=10s&from=…');
    }
    clear(charts.body, note, el('div.grid',
      lineChart('Jobs per second' + (history ? ', last hour' : ', live'), rate, { width: w }),
      lineChart('Failures per second' + (history ? ', last hour' : ', live'), fail, { width: w })));
  }

  async function loadHistory() {
    if (!historySupported) { history = null; return; }
    try {
      history = await api('/history' + qs({ resolution: '10s', from: new Date(Date.now() - 3600e3).toISOString() }));
    } catch (e) {
      history = null;
      if (e instanceof ApiError && (e.missingEndpoint || e.status === 404)) historySupported = false;
    }
  }

  async function loadHealth() {
    try {
      const h = await api('/health');
      health = new Map((h.queues || []).map((q) => [q.queue, q.score]));
      clear(cards.health, scoreBadge(h.score));
      showQueues();
    } catch (e) {
      setCard('health', '—');
    }
  }

  async function fetchQueues() {
    if (filter && prefixSupported) {
      try {
        return await api('/queues' + qs({ prefix: filter, limit: PAGE_LEN, cursor: pager.cursor }));
      } catch (e) {
        if (!(e instanceof ApiError && e.unknownParam('prefix'))) throw e;
        prefixSupported = false;
      }
    }
    if (filter) {
      // Without prefix search, a full name still finds its queue.
      try {
        const q = await api('/queues/' + encodeURIComponent(filter));
        return { queues: [q], exactOnly: true };
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 400)) return { queues: [], exactOnly: true };
        throw e;
      }
    }
    return api('/queues' + qs({ limit: PAGE_LEN, cursor: pager.cursor }));
  }

  let queuesData = null;
  async function loadQueues() {
    try {
      queuesData = await fetchQueues();
    } catch (e) {
      queuesData = null;
      clear(queuesPanel.body, errorNotice(e, 'Could not list the queues'));
      return;
    }
    pager.next = queuesData.next_cursor;
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
      data.exactOnly && !prefixSupported ? unavailable('Prefix search of queues', 'GET /v1/queues?prefix=<text>&limit=50') : null,
      data.exactOnly && !data.queues.length ? notice('info', 'No queue is named “' + filter + '”.') : null,
      table('Queues', [h('Queue'), h('State'), h('Ready', 'num'), h('Scheduled', 'num hide-narrow'), h('Running', 'num'),
        h('Retrying', 'num hide-narrow'), h('Dead', 'num'), h('Succeeded', 'num hide-narrow'), h('Wait p95', 'num hide-narrow'),
        h('Run p95', 'num hide-narrow'), h('Health', 'hide-narrow')], rows,
      { captionHidden: true, empty: filter ? 'No queue matches.' : 'No queues yet: they appear with their first job.' }),
      data.exactOnly ? null : pager.controls('Queues', loadQueues, rows.length));
  }

  // Totals without live stats: one page of up to 1,000 queues summed.
  async function loadTotals() {
    const fresh = live.stats && Date.now() - live.statsAt < STATS_FRESH_MS;
    if (fresh) return showStats(live.stats);
    try {
      const [qs_, workers, alerts] = await Promise.all([
        api('/queues' + qs({ limit: TOTALS_QUEUES_MAX })), api('/workers'), api('/alerts')]);
      const sum = {};
      const recent = { t: Date.now(), succeeded: 0, failed: 0 };
      for (const q of qs_.queues) {
        for (const [k, v] of Object.entries(q.counts || {})) sum[k] = (sum[k] || 0) + v;
        recent.succeeded += (q.recent && q.recent.succeeded) || 0;
        recent.failed += (q.recent && q.recent.failed) || 0;
      }
      polled.push(recent);
      if (polled.length > POLLED_LEN_MAX) polled.shift();
      showStats({ jobs: sum, queues: qs_.queues.length, workers: (workers.workers || []).length, firing_alerts: (alerts.rules || []).length });
      if (qs_.next_cursor) setCard('queues', num(TOTALS_QUEUES_MAX) + '+');
    } catch (e) { /* the cards keep their last values */ }
  }

  // Health and history are computed over the last hour: at most every SLOW_GAP_MS.
  let slowAt = 0;
  async function refresh() {
    const slow = Date.now() - slowAt >= SLOW_GAP_MS;
    if (slow) slowAt = Date.now();
    // Health (scored over every queue) is the slow one: the table is drawn first and
    // gets its health column when the scores come.
    await Promise.all([
      slow ? loadHealth() : null,
      Promise.all([slow ? loadHistory() : null, loadTotals()]).then(drawCharts),
      loadQueues(),
    ]);
  }

  refresh();
  let lastDraw = 0;
  return {
    refresh,
    redraw: drawCharts,
    relevant: (type) => type === 'queue' || type === 'job' || type === 'alert',
    onStats(s) {
      showStats(s);
      // Live charts move with each stat; history charts change with the refresh.
      if (!history && Date.now() - lastDraw > 900) { lastDraw = Date.now(); drawCharts(); }
    },
  };
}
