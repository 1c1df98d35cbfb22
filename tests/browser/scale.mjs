// The dashboard against a large server (run by scripts/dashboard-scale.sh; not a test).
//
// SCALE_BASE: the server, e.g. http://127.0.0.1:7481. If it has no queue `big` yet, it is
// filled first: 1,000 queues and 1,000,000 jobs (900,100 in `big`, 100 in each of 999
// others) in batches of 10,000. Then, in headless Chromium, it loads the overview (and
// its charts over 6 hours, 2,160 points a series), flips
// through every page of its queue list, loads `big` with its jobs, and searches them by a
// common kind and by a rare one (18 jobs, 50,000 apart: the server looks at 10,000 jobs a
// request, so that search comes back short with a cursor). One line per page: the time to
// each part of its content, the longest main-thread task (PerformanceObserver 'longtask'),
// and the slowest API request. Last, with a worker loop enqueueing, leasing and acking
// 1,000 jobs at a time in the queue `churn` as fast as the server goes, it watches the
// overview and the big queue for 5 s each: the longest task then, and the rate.
//
// DASHBOARD_DIR: serve `/` and `/ui/` from this folder rather than from the binary (a
// release binary embeds the files it was built with).

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.SCALE_BASE;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DASHBOARD_DIR = process.env.DASHBOARD_DIR;
const QUEUES = 1000;
const OTHER_JOBS = 100;             // in each queue but `big`
const BIG_JOBS = 1000000 - (QUEUES - 1) * OTHER_JOBS; // 900,100
const BATCH_LEN = 10000;            // ENQUEUE_BATCH_LEN_MAX
const RARE_EVERY = 50000;
const WAIT_MS = 60000;
const FREEZE_MS = 200;              // a task this long is a visible freeze
const SLOW_MS = 2000;
const BUSY_WATCH_MS = 5000;

if (!BASE) throw new Error('set SCALE_BASE (scripts/dashboard-scale.sh does)');

async function call(method, p, body) {
  const r = await fetch(BASE + p, {
    method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p} → ${r.status} ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
}

// A worker's loop: enqueue 1,000 jobs, lease them, ack them; until told to stop.
async function churn(state) {
  while (!state.done) {
    await call('POST', '/v1/jobs/batch', { jobs: Array.from({ length: 1000 }, (_, i) => ({ queue: 'churn', kind: 'tick', payload: { i } })) });
    const l = await call('POST', '/v1/lease', { queues: ['churn'], max_jobs: 1000, worker: 'scale' });
    await call('POST', '/v1/ack', { acks: l.jobs.map((j) => ({ id: j.id, lease_id: j.lease_id })) });
    state.jobs += l.jobs.length;
  }
}

const bigKind = (i) => (i % RARE_EVERY === RARE_EVERY / 2 ? 'rare' : i % 10 === 0 ? 'report' : 'email');

async function fill() {
  const t0 = Date.now();
  for (let start = 0; start < BIG_JOBS; start += BATCH_LEN) {
    const jobs = [];
    for (let i = start; i < Math.min(BIG_JOBS, start + BATCH_LEN); i++) {
      jobs.push({ queue: 'big', kind: bigKind(i), payload: { n: i }, tags: i % 100 === 0 ? ['vip'] : undefined });
    }
    await call('POST', '/v1/jobs/batch', { jobs });
  }
  const others = [];
  for (let q = 0; q < QUEUES - 1; q++) {
    for (let i = 0; i < OTHER_JOBS; i++) others.push({ queue: 'q-' + String(q).padStart(3, '0'), kind: 'task', payload: { n: i } });
  }
  for (let start = 0; start < others.length; start += BATCH_LEN) {
    await call('POST', '/v1/jobs/batch', { jobs: others.slice(start, start + BATCH_LEN) });
  }
  console.log(`filled: ${QUEUES} queues, ${BIG_JOBS + others.length} jobs in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

// Waits until GET /v1/history has a sample (written every 10 s), so the charts and
// health have something to read.
async function sampled() {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    const h = await call('GET', '/v1/history');
    if (h.points.some((p) => p.ready > 0)) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error('no history sample within a minute');
}

// ---------------------------------------------------------------- browser

let page;
const requests = []; // [{url, ms, at}] of finished API requests

async function longestTask(sinceMs) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  return page.evaluate((since) => Math.max(0, ...window.__longtasks.filter(([t]) => t >= since).map(([, d]) => d)), sinceMs);
}

function slowest(sinceWall) {
  const rs = requests.filter((r) => r.at >= sinceWall);
  if (!rs.length) return '—';
  const r = rs.reduce((a, b) => (b.ms > a.ms ? b : a));
  return `${r.url} ${Math.round(r.ms)} ms`;
}

// Times from `t0` until each selector (or predicate) shows.
async function until(t0, parts) {
  const out = {};
  await Promise.all(Object.entries(parts).map(async ([name, what]) => {
    if (typeof what === 'string') await page.waitForSelector(what, { state: 'attached', timeout: WAIT_MS });
    else await page.waitForFunction(what, null, { timeout: WAIT_MS });
    out[name] = Date.now() - t0;
  }));
  return out;
}

const flags = [];
function line(name, times, task, since) {
  const parts = Object.entries(times).map(([k, v]) => `${k} ${(v / 1000).toFixed(2)} s`).join(', ');
  const worst = Math.max(...Object.values(times));
  if (task > FREEZE_MS || worst > SLOW_MS) flags.push(name);
  console.log(`${name.padEnd(22)} ${parts}; longest task ${Math.round(task)} ms; slowest request ${slowest(since)}`);
}

async function load(hash) {
  await page.goto('about:blank');
  const t0 = Date.now();
  await page.goto(BASE + '/' + hash);
  return t0;
}

async function measure(profile) {
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 900 }, colorScheme: 'light',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update'],
  });
  page = ctx.pages()[0] || await ctx.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.addInitScript(() => {
    window.__longtasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
    }).observe({ type: 'longtask', buffered: true });
  });
  page.on('requestfinished', (r) => {
    const url = new URL(r.url());
    if (!url.pathname.startsWith('/v1/')) return;
    const t = r.timing();
    requests.push({ url: 'GET ' + url.pathname + url.search, ms: t.responseEnd, at: Date.now() });
  });
  if (DASHBOARD_DIR) {
    const types = { html: 'text/html', js: 'text/javascript', css: 'text/css' };
    await page.route((url) => url.origin === BASE && (url.pathname === '/' || url.pathname.startsWith('/ui/')), (route) => {
      const p = new URL(route.request().url()).pathname;
      const file = p === '/' ? 'index.html' : p.slice(4);
      route.fulfill({ status: 200, contentType: types[file.split('.').pop()] || 'application/octet-stream', body: fs.readFileSync(path.join(DASHBOARD_DIR, file)) });
    });
  }

  // overview
  let t0 = await load('#/');
  line('overview', await until(t0, {
    queues: 'tr[data-queue="big"]',
    charts: 'figure.chart path.line[data-series="ready"]',
    health: '[data-card="health"] .badge',
  }), await longestTask(0), t0);

  // the longest 10 s range: 2,160 points a series
  {
    const s = await page.evaluate(() => performance.now());
    const t = Date.now();
    await page.selectOption('#overview-range', '6h');
    line('overview, 6 h range', await until(t, {
      charts: () => (document.querySelector('figure.chart path.line[data-series="ready"]')?.getAttribute('d').match(/L/g) || []).length > 2000,
    }), await longestTask(s), t);
  }

  // every page of the queue list
  const flips = [];
  const since = await page.evaluate(() => performance.now());
  const sinceWall = Date.now();
  const next = page.getByRole('navigation', { name: 'Queues pages' }).getByRole('button', { name: 'Next' });
  while (await next.isEnabled()) {
    const first = await page.locator('tr[data-queue]').first().getAttribute('data-queue');
    const t = Date.now();
    await next.click();
    await page.waitForFunction((f) => {
      const row = document.querySelector('tr[data-queue]');
      return row && row.dataset.queue !== f;
    }, first, { timeout: WAIT_MS });
    flips.push(Date.now() - t);
  }
  const rows = await page.locator('tr[data-queue]').count();
  const sorted = flips.slice().sort((a, b) => a - b);
  line(`queue list (${flips.length} flips)`, { 'median flip': sorted[sorted.length >> 1], 'slowest flip': sorted[sorted.length - 1] },
    await longestTask(since), sinceWall);
  if (flips.length + 1 !== Math.ceil(QUEUES / 50) || rows !== 50) console.log(`  (expected ${QUEUES / 50} pages of 50; last page has ${rows} rows)`);

  // the big queue
  t0 = await load('#/queues/big');
  line('queue big', await until(t0, {
    counts: () => /\d/.test(document.querySelector('[data-count="ready"] .value')?.textContent || ''),
    jobs: 'tr[data-job]',
    charts: 'figure.chart path.line[data-series="ready"]',
    insights: '#h-insights ~ .section-body table',
  }), await longestTask(0), t0);

  for (const [kind, expect] of [['report', 'full'], ['rare', 'short']]) {
    const s = await page.evaluate(() => performance.now());
    const t = Date.now();
    await page.selectOption('#search-field', 'kind');
    await page.fill('#search-value', kind);
    await page.click('form[aria-label="Jobs"] button[type="submit"]');
    const times = await until(t, {
      results: expect === 'full'
        ? () => document.querySelectorAll('tr[data-job]').length === 25 && /“report”/.test(document.querySelector('#h-jobs ~ .section-body')?.textContent || '')
        : () => /found so far/.test(document.querySelector('#h-jobs ~ .section-body')?.textContent || ''),
    });
    const shown = await page.locator('tr[data-job]').count();
    line(`kind search "${kind}"`, times, await longestTask(s), t);
    console.log(`  ${shown} jobs shown` + (expect === 'short' ? ', short page with Next' : ''));
  }
  // a busy server: the pages stay live (and refresh every 2 s) while jobs churn
  const busy = { done: false, jobs: 0 };
  const churning = churn(busy);
  for (const [name, hash] of [['overview, busy', '#/'], ['queue big, busy', '#/queues/big']]) {
    const t = await load(hash);
    await until(t, { live: () => document.getElementById('live-text')?.textContent === 'Live' });
    const s = await page.evaluate(() => performance.now());
    const jobs0 = busy.jobs;
    const w = Date.now();
    await page.waitForTimeout(BUSY_WATCH_MS); // a window to measure over, not a wait for something
    const rate = (busy.jobs - jobs0) / ((Date.now() - w) / 1000);
    const task = await longestTask(s);
    if (task > FREEZE_MS) flags.push(name);
    console.log(`${name.padEnd(22)} ${Math.round(rate).toLocaleString('en')} jobs/s through the server; longest task ${Math.round(task)} ms; slowest request ${slowest(w)}`);
  }
  busy.done = true;
  await churning;
  await ctx.close();
}

const have = await call('GET', '/v1/queues?prefix=big&limit=1');
if (!have.queues.some((q) => q.name === 'big')) await fill();
await sampled();
const profile = fs.mkdtempSync('/tmp/sluice-scale-chromium-');
try {
  await measure(profile);
} finally {
  fs.rmSync(profile, { recursive: true, force: true });
}
if (flags.length) console.log(`over ${FREEZE_MS} ms of main thread or ${SLOW_MS / 1000} s: ${flags.join(', ')}`);
