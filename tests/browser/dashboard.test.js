// End-to-end test of the embedded dashboard: a real server with seeded data, a real
// headless Chromium driven over CDP (playwright-core), every page loaded, its actions
// performed and their effects checked through the HTTP API.
//
// SLUICE_BIN: the server binary (default target/debug/sluice from the repo root).
// Screenshots go to target/screenshots/<page>.png.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.resolve(REPO, process.env.SLUICE_BIN || 'target/debug/sluice');
const SHOTS = path.join(REPO, 'target/screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const READY_DEADLINE_MS = 30000;
const WAIT_MS = 15000; // for any one thing to show; the page polls every 5 s without events
const HISTORY_DEADLINE_MS = 25000; // the server writes a history sample every 10 s
const BULK_QUEUES = 55; // with the three named queues, more than one 50-queue page
const BROWSER_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const AXE_SOURCE = path.join(REPO, 'tests/browser/node_modules/axe-core/axe.min.js');
// axe-core's rules for WCAG 2.0, 2.1 and 2.2, levels A and AA.
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'];

let server; // {proc, base, dir, log}
let ctx;    // the browser context
let page;
let userDataDir; // the browser's profile, fresh for each run
let beating;     // the registered worker's beats
const pageErrors = [];
const seed = {}; // ids made while seeding
const MAILER = { host: 'box-1', pid: 4242, version: 'my-app 1.4', concurrency: 4, queues: ['emails'] };

// ---------------------------------------------------------------- server

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function startServer() {
  assert.ok(fs.existsSync(BIN), `no server binary at ${BIN} (build it, or set SLUICE_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-browser-'));
  for (let attempt = 1; attempt <= 5; attempt++) {
    const port = await freePort();
    const log = path.join(dir, `server-${attempt}.log`);
    const out = fs.openSync(log, 'w');
    const proc = spawn(BIN, ['server', '--addr', `127.0.0.1:${port}`, '--data-dir', path.join(dir, `data-${attempt}`)],
      { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    let exited = false;
    proc.on('exit', () => { exited = true; });
    const base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + READY_DEADLINE_MS;
    while (!exited && Date.now() < deadline) {
      try {
        const r = await fetch(base + '/readyz');
        if (r.ok) return { proc, base, dir, log };
      } catch { /* not listening yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!exited) proc.kill('SIGKILL');
    const tail = fs.readFileSync(log, 'utf8').slice(-2000);
    if (!exited) throw new Error(`server not ready within ${READY_DEADLINE_MS} ms:\n${tail}`);
    console.error(`server on port ${port} exited early (port taken?), retrying:\n${tail}`);
  }
  throw new Error('the server did not start in 5 attempts');
}

async function call(method, p, body) {
  const r = await fetch(server.base + p, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

async function ok(method, p, body) {
  const r = await call(method, p, body);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${p} → ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

// ---------------------------------------------------------------- seed

async function seedData() {
  const enqueue = (job) => ok('POST', '/v1/jobs', job).then((r) => r.id);

  // emails: one job leased by a registered worker, ready and scheduled jobs with kinds and tags
  seed.leased = await enqueue({ queue: 'emails', kind: 'welcome', priority: 10, timeout_ms: 600000, tags: ['signup'], payload: { user: 1 } });
  seed.welcome = [];
  for (let i = 2; i <= 4; i++) seed.welcome.push(await enqueue({ queue: 'emails', kind: 'welcome', tags: ['signup'], payload: { user: i } }));
  seed.receipts = [];
  for (let i = 1; i <= 2; i++) seed.receipts.push(await enqueue({ queue: 'emails', kind: 'receipt', tags: ['billing'], payload: { order: i } }));
  seed.scheduled = [];
  for (let i = 1; i <= 2; i++) seed.scheduled.push(await enqueue({ queue: 'emails', kind: 'digest', delay_ms: 3600000, tags: ['weekly'] }));
  await ok('PUT', '/v1/workers/mailer-7', MAILER);
  const leased = await ok('POST', '/v1/lease', { queues: ['emails'], max_jobs: 1, worker: 'mailer-7' });
  assert.equal(leased.jobs[0].id, seed.leased);
  // Beat as a worker does (every 5 s): the registry drops a worker silent for 30 s, and
  // ends its leases, and the test runs longer than that.
  beating = setInterval(() => { call('PUT', '/v1/workers/mailer-7', MAILER).catch(() => {}); }, 5000);

  // billing: a dead job (its one attempt failed), a succeeded one, two ready
  seed.dead = await enqueue({ queue: 'billing', kind: 'charge', max_attempts: 1, payload: { amount: 5 } });
  let l = await ok('POST', '/v1/lease', { queues: ['billing'], max_jobs: 1, worker: 'billing-1' });
  await ok('POST', `/v1/jobs/${seed.dead}/fail`, { lease_id: l.jobs[0].lease_id, error: 'card declined' });
  const done = await enqueue({ queue: 'billing', kind: 'charge', payload: { amount: 7 } });
  l = await ok('POST', '/v1/lease', { queues: ['billing'], max_jobs: 1, worker: 'billing-1' });
  assert.equal(l.jobs[0].id, done);
  await ok('POST', `/v1/jobs/${done}/ack`, { lease_id: l.jobs[0].lease_id });
  for (let i = 0; i < 2; i++) await enqueue({ queue: 'billing', kind: 'refund' });

  // reports: paused, with a ready job
  await enqueue({ queue: 'reports', kind: 'render' });
  await ok('POST', '/v1/queues/reports/pause');

  // enough more queues for the overview to page
  await ok('POST', '/v1/jobs/batch', {
    jobs: Array.from({ length: BULK_QUEUES }, (_, i) => ({ queue: `zz-bulk-${String(i).padStart(2, '0')}`, kind: 'noop' })),
  });

  // alerts: a rule that fires at once (emails has more than one ready job), a silence
  await ok('PUT', '/v1/alerts/rules/emails-backlog', { queue: 'emails', metric: 'depth', op: '>', threshold: 1, severity: 'critical' });
  await ok('PUT', '/v1/alerts/rules/billing-dead', { queue: 'billing', metric: 'dead', op: '>', threshold: 100, severity: 'warning' });
  // one with notifiers (it never fires in the test: the oldest job would need a day)
  await ok('PUT', '/v1/alerts/rules/reports-stale', {
    queue: 'reports', metric: 'oldest_ready_ms', op: '>', threshold: 86400000, severity: 'info',
    notifiers: [{ kind: 'webhook', url: 'http://127.0.0.1:9/never', secret: 'never-shown' }, { kind: 'slack', url: 'http://127.0.0.1:9/never' }],
  });
  await ok('PUT', '/v1/alerts/silences/maintenance', { queue: 'reports', duration_ms: 3600000, comment: 'report rebuild' });

  // a stream: 30 records a minute apart in partition 0, a few elsewhere, a consumer group
  await ok('PUT', '/v1/streams/orders', { partitions: 3, retention_ms: 7 * 86400000 });
  const t0 = Date.now() - 40 * 60000;
  seed.times = Array.from({ length: 30 }, (_, i) => new Date(t0 + i * 60000).toISOString());
  await ok('POST', '/v1/streams/orders/records', {
    records: seed.times.map((t, i) => ({ partition: 0, key: `customer-${i % 5}`, value: { order: i }, timestamp: t, headers: [['source', 'web']] })),
  });
  await ok('POST', '/v1/streams/orders/records', { records: [{ value: 'one', partition: 1 }, { value: 'two', partition: 2 }, { value: 'three', partition: 2 }] });
  const join = await ok('POST', '/v1/streams/orders/groups/billing/join', { strategy: 'range', session_timeout_ms: 300000 });
  await ok('POST', '/v1/streams/orders/groups/billing/commit', {
    member_id: join.member_id, generation: join.generation, offsets: [{ partition: 0, offset: 10 }].filter((o) => join.partitions.includes(o.partition)),
  });
  await ok('POST', '/v1/streams/orders/groups/audit/join', { strategy: 'round_robin', session_timeout_ms: 300000 });
}

// ---------------------------------------------------------------- browser helpers

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

// A fresh load of the page (links between pages are followed in the tests that use them).
async function open(hash) {
  await page.goto('about:blank');
  await page.goto(server.base + '/' + hash);
  await page.waitForSelector('main h1');
}

const text = (sel) => page.locator(sel).first().innerText();

// A chart (found by its caption) and its drawn lines, by series name.
function chart(caption) {
  return page.locator('figure.chart', { has: page.locator('figcaption', { hasText: caption }) });
}

// The overview's charts come from GET /v1/history: each count is a line through the
// hour's points (zeros where nothing happened; p95s only where there were jobs).
const COUNT_SERIES = ['enqueued', 'succeeded', 'failed', 'scheduled', 'ready', 'leased', 'retrying', 'dead'];
async function chartsDrawn() {
  await page.waitForFunction((names) => names.every((n) => {
    const line = document.querySelector(`figure.chart path.line[data-series="${n}"]`);
    return line && (line.getAttribute('d').match(/L/g) || []).length > 300;
  }), COUNT_SERIES);
}

// Waits until GET /v1/history has a sample showing ready jobs (the server writes one
// every 10 s), so the charts have something other than zeros to draw.
async function historySampled() {
  const deadline = Date.now() + HISTORY_DEADLINE_MS;
  for (;;) {
    const h = await ok('GET', '/v1/history');
    const point = h.points.find((p) => p.ready > 0);
    if (point) return point;
    assert.ok(Date.now() < deadline, `no history sample with ready jobs within ${HISTORY_DEADLINE_MS} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// ---------------------------------------------------------------- lifecycle

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  await seedData();
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
  ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: BROWSER_ARGS,
    viewport: { width: 1280, height: 900 },
    colorScheme: 'light',
    timezoneId: 'UTC',
  });
  page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // What the server's Content-Security-Policy refuses (an inline style, say) is an error too.
  page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) pageErrors.push(m.text()); });
});

after(async () => {
  clearInterval(beating);
  if (ctx) await ctx.close();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  if (server) {
    server.proc.kill('SIGTERM');
    await new Promise((r) => { server.proc.once('exit', r); setTimeout(r, 5000); });
    fs.rmSync(server.dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- pages

test('overview shows totals, queues, history charts and the live state, in both themes', async () => {
  await historySampled();
  await open('#/');
  const emails = page.locator('tr[data-queue="emails"]');
  await emails.waitFor();
  // ready: 3 welcome + 2 receipt; the leased one is running
  await page.locator('[data-card="ready"] .value').filter({ hasText: /^\d/ }).waitFor();
  const cells = await emails.locator('td').allInnerTexts();
  assert.equal(cells[0], 'emails');
  assert.equal(cells[2], '5', 'ready jobs of emails');
  assert.equal(cells[3], '2', 'scheduled jobs of emails');
  assert.match(await page.locator('tr[data-queue="reports"]').innerText(), /paused/);
  await page.locator('#live-text', { hasText: /^Live$/ }).waitFor();
  await page.locator('[data-card="health"] .badge').waitFor();
  await chartsDrawn();
  // The server-wide depth chart: a line per state, and ready jobs drawn above zero.
  const depth = chart('Jobs by state, all queues');
  assert.deepEqual(await depth.locator('.legend li').allInnerTexts(), ['scheduled', 'ready', 'leased', 'retrying', 'dead']);
  assert.equal(await depth.locator('path.line').count(), 5);
  const summary = await depth.locator('svg').getAttribute('aria-label');
  const readyMax = /ready: latest [^,]*, max ([^;]+)/.exec(summary)?.[1];
  assert.ok(readyMax && readyMax !== '0' && readyMax !== '—', `the depth chart shows ready jobs: ${summary}`);
  const enqueued = await chart('Jobs per second, all queues').locator('path.line[data-series="enqueued"]').getAttribute('d');
  assert.ok(enqueued.split('L').length > 300, 'an hour of 10 s points');
  await shot('overview-light');

  // The theme toggle switches and is kept in localStorage across a reload.
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme || ''), '');
  await page.click('#theme-toggle');
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  assert.equal(await page.evaluate(() => localStorage.getItem('sluice.theme')), 'dark');
  await page.reload();
  await emails.waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(bg, 'rgb(255, 255, 255)', 'the dark theme has a dark background');
  await page.locator('[data-card="health"] .badge').waitFor();
  await chartsDrawn();
  await shot('overview-dark');

  // Without a stored choice, the system setting decides.
  await page.evaluate(() => { localStorage.removeItem('sluice.theme'); delete document.documentElement.dataset.theme; });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.reload();
  await emails.waitFor();
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).backgroundColor), bg);
  assert.equal(await text('#theme-toggle'), 'Light theme');
  await page.emulateMedia({ colorScheme: 'light' });
});

test('overview pages through the queues and finds one by name', async () => {
  await open('#/');
  await page.locator('tr[data-queue="emails"]').waitFor();
  assert.equal(await page.locator('tr[data-queue]').count(), 50);
  await page.getByRole('navigation', { name: 'Queues pages' }).getByRole('button', { name: 'Next' }).click();
  await page.locator(`tr[data-queue="zz-bulk-${BULK_QUEUES - 1}"]`).waitFor();
  const total = (await ok('GET', '/v1/queues?limit=1000')).queues.length;
  assert.ok(total > 50 && total <= 100);
  assert.equal(await page.locator('tr[data-queue]').count(), total - 50);
  await page.getByRole('navigation', { name: 'Queues pages' }).getByRole('button', { name: 'Previous' }).click();
  await page.locator('tr[data-queue="billing"]').waitFor();

  // by prefix: exactly the queues the API lists for it
  const find = async (prefix) => {
    await page.fill('#queue-filter', prefix);
    await page.click('form[role="search"] button[type="submit"]');
    const want = (await ok('GET', `/v1/queues?prefix=${encodeURIComponent(prefix)}&limit=50`)).queues.map((q) => q.name);
    await page.waitForFunction((names) => {
      const rows = [...document.querySelectorAll('tr[data-queue]')].map((r) => r.dataset.queue);
      return rows.length === names.length && names.every((n, i) => rows[i] === n);
    }, want);
    return want;
  };
  assert.deepEqual(await find('zz-bulk-1'), Array.from({ length: 10 }, (_, i) => `zz-bulk-1${i}`));
  assert.deepEqual(await find('reports'), ['reports']);
  assert.match(await page.locator('tr[data-queue="reports"]').innerText(), /paused/);
  await find('no-such-prefix');
  await page.getByText('No queue name starts with “no-such-prefix”.').waitFor();
});

// Records every text the live indicator shows, for the test to look back on.
async function watchLiveText() {
  await page.evaluate(() => {
    window.liveTexts = [document.getElementById('live-text').textContent];
    new MutationObserver(() => window.liveTexts.push(document.getElementById('live-text').textContent))
      .observe(document.getElementById('live-text'), { childList: true, characterData: true, subtree: true });
  });
}

test('live updates: events refresh the page; without them it polls; it reconnects', async () => {
  const billingRow = page.locator('tr[data-queue="billing"]');
  // Through the server's own event stream: the page is refreshed by `queue` events
  // (no polling happens while live).
  await open('#/');
  await page.locator('#live-text', { hasText: /^Live$/ }).waitFor();
  await page.locator('#live-stats', { hasText: /ready/ }).waitFor();
  await billingRow.waitFor();
  await ok('POST', '/v1/queues/billing/pause');
  await billingRow.locator('.badge', { hasText: 'paused' }).waitFor({ timeout: 4000 });
  await ok('POST', '/v1/queues/billing/resume');
  await billingRow.locator('.badge', { hasText: 'active' }).waitFor({ timeout: 4000 });
  // Jobs moving show in the next `stats` (there are no `job` events: too many).
  const ready = Number(await billingRow.locator('td').nth(2).innerText());
  await ok('POST', '/v1/jobs', { queue: 'billing', kind: 'refund' });
  await billingRow.locator('td').nth(2).filter({ hasText: new RegExp(`^${ready + 1}$`) }).waitFor({ timeout: 4000 });

  // A stream that ends at once: the indicator says it reconnects (and stats were shown).
  const stats = { at_ms: Date.now(), jobs: { ready: 4321, leased: 7 }, queues: 3, workers: 2, firing_alerts: 1, per_s: { enqueued: 1, completed: 1, failed: 0 } };
  await page.route('**/v1/events**', (route) => route.fulfill({
    status: 200, headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
    body: `id: 1\nevent: stats\ndata: ${JSON.stringify(stats)}\n\n`,
  }));
  await open('#/');
  await watchLiveText();
  await page.locator('#live-stats', { hasText: '4,321 ready' }).waitFor();
  await page.waitForFunction(() => window.liveTexts.some((t) => t.startsWith('Reconnecting')));
  await page.unroute('**/v1/events**');
  await page.locator('#live-text', { hasText: /^Live$/ }).waitFor();

  // No event stream at all (404): the page says so and polls every 5 s.
  await page.route('**/v1/events**', (route) => route.fulfill({
    status: 404, contentType: 'application/json', body: JSON.stringify({ error: { code: 'not_found', message: 'no such endpoint' } }),
  }));
  try {
    await open('#/');
    await page.locator('#live-text', { hasText: 'Live updates unavailable, polling' }).waitFor();
    await billingRow.waitFor();
    await ok('POST', '/v1/queues/billing/pause');
    await billingRow.locator('.badge', { hasText: 'paused' }).waitFor({ timeout: 8000 });
    await ok('POST', '/v1/queues/billing/resume');
  } finally {
    await page.unroute('**/v1/events**');
  }
});

test('keyboard: Tab reaches the main navigation and Enter follows a link', async () => {
  await open('#/');
  await page.locator('tr[data-queue="emails"]').waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  let reached = false;
  for (let i = 0; i < 10 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement.matches('nav[aria-label="Main"] a[href="#/workers"]'));
  }
  assert.ok(reached, 'Tab reaches the Workers link');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused link shows its focus');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash === '#/workers');
  await page.getByRole('heading', { level: 1, name: 'Workers' }).waitFor();
  assert.equal(await page.locator('nav[aria-label="Main"] a[aria-current="page"]').innerText(), 'Workers');
});

test('workers page lists the registered worker and its current job', async () => {
  // An empty beat keeps what the last one said (docs/api.md).
  await ok('PUT', '/v1/workers/mailer-7', {});
  await open('#/workers');
  const row = page.locator('tr[data-worker="mailer-7"]');
  await row.waitFor();
  const t = await row.innerText();
  assert.match(t, /box-1/);
  assert.match(t, new RegExp(seed.leased));
  assert.match(t, /1 \/ 4/);
  assert.equal(await row.getByRole('meter').getAttribute('aria-valuenow'), '25');
  await shot('workers');
});

test('queue page: counts, charts, insights; pause and resume', async () => {
  await open('#/queues/emails');
  await page.getByRole('heading', { level: 1, name: 'emails' }).waitFor();
  await page.locator(`tr[data-job="${seed.welcome[0]}"]`).waitFor();
  assert.equal(await page.locator('[data-count="ready"] .value').innerText(), '5');
  assert.equal(await page.locator('[data-count="scheduled"] .value').innerText(), '2');
  assert.equal(await page.locator('[data-count="leased"] .value').innerText(), '1');
  await page.locator('figure.chart svg').first().waitFor();
  // Depth by state: a series (legend entry and line) for each of the five states.
  const depth = chart('Depth by state');
  assert.deepEqual(await depth.locator('.legend li').allInnerTexts(), ['scheduled', 'ready', 'leased', 'retrying', 'dead']);
  assert.deepEqual(await depth.locator('path.line').evaluateAll((ps) => ps.map((p) => p.dataset.series)),
    ['scheduled', 'ready', 'leased', 'retrying', 'dead']);
  await page.getByRole('heading', { name: 'Health', exact: true }).waitFor();
  await page.locator('#h-insights ~ .section-body table').first().waitFor();
  await shot('queue');

  await page.click('#pause-toggle');
  await page.locator('#pause-toggle', { hasText: 'Resume queue' }).waitFor();
  assert.equal((await ok('GET', '/v1/queues/emails')).paused, true);
  await page.click('#pause-toggle');
  await page.locator('#pause-toggle', { hasText: 'Pause queue' }).waitFor();
  assert.equal((await ok('GET', '/v1/queues/emails')).paused, false);
});

test('queue page: jobs by state with search by id, kind and tag', async () => {
  await open('#/queues/emails');
  await page.locator(`tr[data-job="${seed.welcome[0]}"]`).waitFor();
  assert.equal(await page.locator('tr[data-job]').count(), 5);

  await page.click('button[data-state="scheduled"]');
  await page.locator(`tr[data-job="${seed.scheduled[0]}"]`).waitFor();
  assert.equal(await page.locator('tr[data-job]').count(), 2);
  await page.click('button[data-state="ready"]');
  await page.locator(`tr[data-job="${seed.welcome[0]}"]`).waitFor();

  // by id: one job, whatever its state
  await page.selectOption('#search-field', 'id');
  await page.fill('#search-value', seed.scheduled[1]);
  await page.click('form[aria-label="Jobs"] button[type="submit"]');
  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll('tr[data-job]');
    return rows.length === 1 && rows[0].dataset.job === id;
  }, seed.scheduled[1]);
  assert.match(await page.locator(`tr[data-job="${seed.scheduled[1]}"]`).innerText(), /scheduled/);

  // by kind and by tag: exactly the ready jobs of that kind / with that tag, in id order
  const searchFor = async (field, value, expected) => {
    await page.selectOption('#search-field', field);
    await page.fill('#search-value', value);
    await page.click('form[aria-label="Jobs"] button[type="submit"]');
    await page.getByText(`Showing ready jobs with ${field} “${value}”.`).waitFor();
    await page.waitForFunction((ids) => {
      const rows = [...document.querySelectorAll('tr[data-job]')].map((r) => r.dataset.job);
      return rows.length === ids.length && ids.every((id, i) => rows[i] === id);
    }, expected);
    for (const id of expected) {
      const cells = await page.locator(`tr[data-job="${id}"] td`).allInnerTexts();
      if (field === 'kind') assert.equal(cells[1], value);
      else assert.match(cells[2], new RegExp(`\\b${value}\\b`));
    }
  };
  await searchFor('kind', 'receipt', seed.receipts);
  await searchFor('tag', 'signup', seed.welcome);
  await searchFor('kind', 'no-such-kind', []);
  await page.getByText('No ready jobs match.').waitFor();

  // A filtered listing may come back short, even empty, with a cursor (the server looks
  // at 10,000 jobs per request): the page asks on a few times, then says so and offers
  // Next rather than "no jobs". Faked here: a million jobs would take too long to seed.
  // The fake's cursors count the requests of a walk: cursor n answers n + 1.
  const cursors = [];
  await page.route('**/v1/queues/emails/jobs?*kind=rare*', (route) => {
    const cursor = new URL(route.request().url()).searchParams.get('cursor');
    cursors.push(cursor);
    route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ jobs: [], next_cursor: String(Number(cursor) + 1) }) });
  });
  try {
    await page.selectOption('#search-field', 'kind');
    await page.fill('#search-value', 'rare');
    await page.click('form[aria-label="Jobs"] button[type="submit"]');
    await page.getByText('None found so far.').waitFor();
    assert.deepEqual(cursors.slice(0, 4), [null, '1', '2', '3'], 'a page asks four times, each from the last cursor');
    assert.ok(!cursors.includes('4'), 'and no more');
    assert.match(await text('#h-jobs ~ .section-body td.empty'), /press Next to keep looking/);
    const next = page.getByRole('navigation', { name: 'Jobs pages' }).getByRole('button', { name: 'Next' });
    assert.equal(await next.isEnabled(), true);
    await next.click();
    await page.getByText(/^Page 2/).waitFor();
    assert.deepEqual([...new Set(cursors.filter((c) => Number(c) >= 4))], ['4', '5', '6', '7'], 'Next goes on from where the page stopped');
  } finally {
    await page.unroute('**/v1/queues/emails/jobs?*kind=rare*');
  }
  await page.click('form[aria-label="Jobs"] button:has-text("Clear")');
  await page.locator(`tr[data-job="${seed.welcome[0]}"]`).waitFor();
});

test('job page: a dead job shows its attempts and is retried', async () => {
  await open('#/jobs/' + seed.dead);
  await page.getByText('card declined').waitFor();
  const attempt = await page.locator('#h-attempts ~ .section-body tbody tr').first().innerText();
  assert.match(attempt, /billing-1/);
  assert.match(attempt, /failed/);
  assert.match(await text('#h-payload ~ .section-body pre'), /"amount": 5/);
  await shot('job');
  assert.equal(await page.locator('#job-cancel').isHidden(), true, 'a dead job cannot be cancelled');
  await page.click('#job-retry');
  await page.getByText('Job retried').waitFor();
  assert.equal((await ok('GET', '/v1/jobs/' + seed.dead)).state, 'ready');
  await page.locator('.page-head .badge', { hasText: 'ready' }).waitFor();
});

test('job page: a scheduled job is cancelled', async () => {
  await open('#/jobs/' + seed.scheduled[0]);
  await page.locator('.page-head .badge', { hasText: 'scheduled' }).waitFor();
  await page.click('#job-cancel');
  await page.getByText('Job cancelled.').waitFor();
  assert.equal((await ok('GET', '/v1/jobs/' + seed.scheduled[0])).state, 'cancelled');
  await page.locator('#job-retry').waitFor(); // a cancelled job can be retried
});

test('alerts page: firing alert, rules, history; a silence is added and deleted', async () => {
  await open('#/alerts');
  await page.locator('#h-firing-now ~ .section-body tr[data-rule="emails-backlog"]').waitFor();
  await page.locator('#h-rules ~ .section-body tr[data-rule="billing-dead"]').waitFor();
  await page.locator('tr[data-silence="maintenance"]').waitFor();
  await page.locator('#h-history ~ .section-body tbody tr', { hasText: 'emails-backlog' }).first().waitFor();
  await shot('alerts');

  await page.click('summary:has-text("New silence")');
  await page.fill('#silence-id', 'ui-test');
  await page.fill('#silence-queue', 'emails');
  await page.fill('#silence-minutes', '30');
  await page.fill('#silence-comment', 'from the browser test');
  await page.click('form[aria-label="New silence"] button[type="submit"]');
  await page.locator('tr[data-silence="ui-test"]').waitFor();
  const added = (await ok('GET', '/v1/alerts/silences')).silences.find((s) => s.id === 'ui-test');
  assert.ok(added, 'the silence exists');
  assert.equal(added.queue, 'emails');
  assert.equal(added.comment, 'from the browser test');

  const del = page.locator('tr[data-silence="ui-test"] button');
  await del.click();
  await page.locator('tr[data-silence="ui-test"] button', { hasText: 'Confirm delete' }).click();
  await page.locator('tr[data-silence="ui-test"]').waitFor({ state: 'detached' });
  assert.ok(!(await ok('GET', '/v1/alerts/silences')).silences.some((s) => s.id === 'ui-test'));
});

// Receives a rule's notifications on a loopback port: {base, received, close}.
async function notificationReceiver() {
  const received = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      received.push({ path: req.url, signature: req.headers['x-sluice-signature'], body });
      res.end('ok');
    });
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${srv.address().port}`, received, close: () => new Promise((r) => srv.close(r)) };
}

test('alerts page: a rule is edited; what the form does not show is kept', async () => {
  const hooks = await notificationReceiver();
  const SECRET = 'from-the-edit-test';
  try {
    await ok('PUT', '/v1/alerts/rules/ui-edit', {
      queue: 'emails', metric: 'depth', op: '>', threshold: 1000, for_ms: 1500, severity: 'critical',
      notifiers: [{ kind: 'webhook', url: hooks.base + '/hook', secret: SECRET }, { kind: 'slack', url: hooks.base + '/slack' }],
    });
    const before = await ok('GET', '/v1/alerts/rules/ui-edit');
    await open('#/alerts');
    const row = page.locator('#h-rules ~ .section-body tr[data-rule="ui-edit"]');
    await row.waitFor();

    // Cancel leaves the form as it was, for a new rule.
    await page.getByRole('button', { name: 'Edit rule billing-dead' }).click();
    await page.locator('form[aria-label="Edit alert rule billing-dead"]').waitFor();
    await page.click('#rule-cancel');
    await page.locator('form[aria-label="New alert rule"]').waitFor();
    assert.equal(await page.inputValue('#rule-name'), '');
    assert.equal(await page.locator('#rule-name').evaluate((e) => e.readOnly), false);

    // By keyboard: Enter on the row's Edit button fills the form and moves focus into it.
    await row.getByRole('button', { name: 'Edit rule ui-edit' }).focus();
    await page.keyboard.press('Enter');
    await page.locator('form[aria-label="Edit alert rule ui-edit"]').waitFor();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'rule-queue');
    assert.equal(await page.inputValue('#rule-name'), 'ui-edit');
    assert.equal(await page.locator('#rule-name').evaluate((e) => e.readOnly), true, 'the name cannot change');
    assert.equal(await page.inputValue('#rule-queue'), 'emails');
    assert.equal(await page.inputValue('#rule-metric'), 'depth');
    assert.equal(await page.inputValue('#rule-op'), '>');
    assert.equal(await page.inputValue('#rule-threshold'), '1000');
    assert.equal(await page.inputValue('#rule-for'), '1.5');
    assert.equal(await page.inputValue('#rule-severity'), 'critical');
    assert.match(await text('fieldset.notifiers'), /Notifier 1: webhook .* \(signed\)/);
    assert.match(await text('fieldset.notifiers'), /Notifier 2: slack/);
    await page.fill('#rule-threshold', '2');

    // The server never shows the webhook's secret back, and the form does not ask for
    // it: left empty, the webhook keeps it (`keep_secret`).
    assert.equal(await page.inputValue('#rule-secret-0'), '');
    await page.click('#rule-submit');
    await page.getByText('Rule ui-edit saved.').waitFor();
    await page.locator('form[aria-label="New alert rule"]').waitFor();
    assert.equal(await page.locator('#rule-secret-0').count(), 0, 'the secret is not kept in the page');
    await row.locator('td', { hasText: 'depth > 2' }).waitFor();

    // Through the API: the threshold changed, and nothing else of the rule did.
    const after = await ok('GET', '/v1/alerts/rules/ui-edit');
    assert.equal(after.threshold, 2);
    for (const field of ['name', 'queue', 'metric', 'op', 'for_ms', 'severity', 'notifiers']) {
      assert.deepEqual(after[field], before[field], field);
    }
    assert.equal(after.notifiers.length, 2);

    // The secret, which the API never shows, was kept too: the rule fires (emails has
    // more than two ready jobs) and its webhook's notification is signed with it.
    const deadline = Date.now() + WAIT_MS;
    while (!['/hook', '/slack'].every((p) => hooks.received.some((r) => r.path === p))) {
      assert.ok(Date.now() < deadline, `no notifications within ${WAIT_MS} ms: ${JSON.stringify(hooks.received)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const hook = hooks.received.find((r) => r.path === '/hook');
    assert.equal(hook.signature, 'sha256=' + crypto.createHmac('sha256', SECRET).update(hook.body).digest('hex'));
    const sent = JSON.parse(hook.body);
    assert.equal(sent.alert, 'ui-edit');
    assert.equal(sent.status, 'firing');
    assert.equal(sent.threshold, 2);
  } finally {
    await call('DELETE', '/v1/alerts/rules/ui-edit');
    await hooks.close();
  }
});

test('streams: list, partitions, group lag, records by offset and by time', async () => {
  await open('#/streams');
  const row = page.locator('tr[data-stream="orders"]');
  await row.waitFor();
  const cells = await row.locator('td').allInnerTexts();
  assert.equal(cells[1], '3');
  assert.equal(cells[2], '33');
  await shot('streams');
  await row.getByRole('link', { name: 'orders' }).click();
  await page.getByRole('heading', { level: 1, name: 'orders' }).waitFor();
  await page.locator('tr[data-partition="0"]').waitFor();
  assert.match(await page.locator('tr[data-partition="0"]').innerText(), /30/);

  // consumer groups: each group GET /v1/streams/{s}/groups lists, with its lag
  const { groups } = await ok('GET', '/v1/streams/orders/groups');
  assert.deepEqual(groups.map((g) => g.group).sort(), ['audit', 'billing']);
  await page.waitForFunction((n) => document.querySelectorAll('[data-group]').length === n, groups.length);
  assert.deepEqual(await page.locator('[data-group]').evaluateAll((gs) => gs.map((g) => g.dataset.group)), groups.map((g) => g.group));
  for (const g of groups) {
    const lag = g.partitions.reduce((n, p) => n + p.lag, 0);
    assert.match(await page.locator(`[data-group="${g.group}"]`).innerText(), new RegExp(`Total lag\\s+${lag}\\b`));
  }

  // by offset
  await page.selectOption('#rec-partition', '0');
  await page.selectOption('#rec-mode', 'offset');
  await page.fill('#rec-offset', '5');
  await page.click('form[aria-label="Browse records"] button[type="submit"]');
  await page.locator('#records tr[data-offset="5"]').waitFor();
  const api5 = await ok('GET', '/v1/streams/orders/partitions/0/records?offset=5');
  assert.equal(await page.locator('#records tbody tr').first().getAttribute('data-offset'), String(api5.records[0].offset));
  assert.match(await page.locator('#records tr[data-offset="5"]').innerText(), /customer-0/);
  await page.locator('#records button', { hasText: 'Next records' }).count(); // present only when more than a page

  // by time: the record at seed.times[12] and on
  const at = seed.times[12];
  await page.selectOption('#rec-mode', 'time');
  await page.fill('#rec-time', at.replace(/Z$/, '')); // the browser runs in UTC
  await page.click('form[aria-label="Browse records"] button[type="submit"]');
  const byTime = await ok('GET', '/v1/streams/orders/partitions/0/records?timestamp=' + encodeURIComponent(at));
  assert.equal(byTime.records[0].offset, 12);
  await page.locator('#records tbody tr[data-offset="12"]').waitFor();
  assert.equal(await page.locator('#records tbody tr').first().getAttribute('data-offset'), '12');
  await shot('stream');
});

test('errors from the API are shown', async () => {
  await open('#/queues/no-such-queue');
  await page.getByRole('alert').filter({ hasText: 'queue no-such-queue not found' }).waitFor();
  await open('#/jobs/0000000000000');
  await page.getByRole('alert').filter({ hasText: 'not_found' }).waitFor();
});

test('narrow window (380 px): no horizontal scroll', async () => {
  await page.setViewportSize({ width: 380, height: 800 });
  try {
    for (const hash of ['#/', '#/queues/emails', '#/workers', '#/alerts', '#/streams/orders']) {
      await open(hash);
      await page.waitForFunction(() => !document.querySelector('main .section-body:empty'), null, { timeout: WAIT_MS }).catch(() => {});
      const [scroll, client] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
      assert.ok(scroll <= client, `${hash}: page is ${scroll} px wide in a ${client} px window`);
      if (hash === '#/') {
        await page.locator('tr[data-queue="emails"]').waitFor();
        await shot('overview-narrow');
      }
    }
  } finally {
    await page.setViewportSize({ width: 1280, height: 900 });
  }
});

// ---------------------------------------------------------------- accessibility

// What shows that each page has drawn its content (forms opened where there are any), so
// that axe looks at the page as a user sees it, not at a loading state.
function axePages() {
  return [
    ['overview', '#/', async (p) => {
      await p.locator('tr[data-queue="emails"]').waitFor();
      await p.locator('[data-card="health"] .badge').waitFor();
      await p.locator('figure.chart path.line').first().waitFor();
    }],
    ['queue', '#/queues/emails', async (p) => {
      await p.locator('tr[data-job]').first().waitFor();
      await p.locator('figure.chart path.line').first().waitFor();
      await p.locator('#h-insights ~ .section-body table').first().waitFor();
    }],
    ['job', '#/jobs/' + seed.dead, (p) => p.locator('#h-attempts ~ .section-body tbody tr').first().waitFor()],
    ['workers', '#/workers', (p) => p.locator('tr[data-worker="mailer-7"]').waitFor()],
    ['alerts', '#/alerts', async (p) => {
      await p.locator('#h-rules ~ .section-body tr[data-rule="billing-dead"]').waitFor();
      await p.locator('tr[data-silence="maintenance"]').waitFor();
      await p.locator('#h-history ~ .section-body tbody tr').first().waitFor();
      for (const summary of await p.locator('main details > summary').all()) await summary.click();
      // and the rule form editing a rule with a webhook (with its new-secret field)
      await p.getByRole('button', { name: 'Edit rule reports-stale' }).click();
      await p.locator('#rule-secret-0').waitFor();
    }],
    ['streams', '#/streams', (p) => p.locator('tr[data-stream="orders"]').waitFor()],
    ['stream', '#/streams/orders', async (p) => {
      await p.locator('tr[data-partition="0"]').waitFor();
      await p.locator('[data-group]').first().waitFor();
      await p.selectOption('#rec-partition', '0');
      await p.selectOption('#rec-mode', 'offset');
      await p.fill('#rec-offset', '0');
      await p.click('form[aria-label="Browse records"] button[type="submit"]');
      await p.locator('#records tbody tr[data-offset]').first().waitFor();
    }],
  ];
}

// Runs axe-core in the page (already injected) and returns its violations, one line each.
async function axeViolations(p) {
  const { passed, violations } = await p.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] });
    return {
      passed: r.passes.length,
      violations: r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) })),
    };
  }, AXE_TAGS);
  // Guards against a check that checks nothing (tags that match no rule, say).
  assert.ok(passed + violations.length >= 20, `axe-core applied only ${passed + violations.length} rules to ${p.url()}`);
  return violations.map((v) => `${v.id} (${v.impact}): ${v.help}; at ${v.targets.join(', ')}`);
}

test('accessibility: axe-core finds no WCAG 2 A/AA violation on any page, light or dark', async () => {
  const axeSource = fs.readFileSync(AXE_SOURCE, 'utf8');
  // The server's Content-Security-Policy (scripts only from the server) refuses an
  // injected script, as it should. So axe runs in a browser context of its own that
  // bypasses the policy; the other tests' context keeps it, and still catches anything
  // the dashboard itself does against it.
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: BROWSER_ARGS });
  const found = [];
  try {
    const axeCtx = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 }, timezoneId: 'UTC' });
    const p = await axeCtx.newPage();
    p.setDefaultTimeout(WAIT_MS);
    for (const scheme of ['light', 'dark']) {
      await p.emulateMedia({ colorScheme: scheme });
      for (const [name, hash, ready] of axePages()) {
        await p.goto('about:blank');
        await p.goto(server.base + '/' + hash);
        await p.waitForSelector('main h1');
        await ready(p);
        const bg = await p.evaluate(() => getComputedStyle(document.body).backgroundColor);
        assert.equal(bg === 'rgb(255, 255, 255)', scheme === 'light', `${name}: the ${scheme} theme is shown (background ${bg})`);
        await p.addScriptTag({ content: axeSource });
        for (const v of await axeViolations(p)) found.push(`${name}, ${scheme}: ${v}`);
      }
    }
  } finally {
    await browser.close();
  }
  assert.deepEqual(found, [], 'axe-core violations:\n' + found.join('\n'));
});

test('no script errors or policy violations on any page', () => {
  assert.deepEqual(pageErrors, []);
});
