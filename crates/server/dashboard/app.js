// The dashboard's shell: hash routing, the theme toggle, the live-update indicator,
// and refreshing the visible page on events (or by polling when events are down).

import { api, clear, el, errorNotice, num } from './lib.js';
import { Live } from './live.js';
import * as overview from './pages/overview.js';
import * as queue from './pages/queue.js';
import * as job from './pages/job.js';
import * as workers from './pages/workers.js';
import * as alerts from './pages/alerts.js';
import * as streams from './pages/streams.js';
import * as stream from './pages/stream.js';

const REFRESH_GAP_MS = 2000; // at most one event-driven refresh per 2 s
const POLL_MS = 5000;

const routes = [
  [/^\/?$/, 'overview', overview],
  [/^\/queues\/([^/]+)$/, 'overview', queue],
  [/^\/jobs\/([^/]+)$/, 'overview', job],
  [/^\/workers\/?$/, 'workers', workers],
  [/^\/alerts\/?$/, 'alerts', alerts],
  [/^\/streams\/?$/, 'streams', streams],
  [/^\/streams\/([^/]+)$/, 'streams', stream],
];

const main = document.getElementById('main');
const live = new Live();
let page = null;         // the mounted page: {refresh, relevant, onStats, unmount}
let lastRefresh = 0;
let refreshTimer = null;
let refreshing = false;
let firstRoute = true;

// ---------------------------------------------------------------- routing

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const path = hash.split('?')[0];
  if (page && page.unmount) page.unmount();
  page = null;
  clearTimeout(refreshTimer);
  let found = null;
  for (const [re, nav, mod] of routes) {
    const m = re.exec(path);
    if (m) { found = { nav, mod, params: m.slice(1).map(decodeParam) }; break; }
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (found && a.dataset.nav === found.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  clear(main);
  if (!found) {
    document.title = 'Not found · Sluice';
    main.append(el('h1', { tabindex: '-1' }, 'Page not found'), el('p', 'No page at ', el('code', hash), '. ', el('a', { href: '#/' }, 'Go to the overview'), '.'));
  } else {
    try {
      page = found.mod.mount(main, found.params, { live }) || {};
    } catch (e) {
      main.append(errorNotice(e, 'The page failed to load'));
    }
    lastRefresh = Date.now();
  }
  if (!firstRoute) {
    const h1 = main.querySelector('h1');
    if (h1) { h1.setAttribute('tabindex', '-1'); h1.focus({ preventScroll: false }); }
    window.scrollTo(0, 0);
  }
  firstRoute = false;
}

function decodeParam(p) {
  try { return decodeURIComponent(p); } catch { return p; }
}

async function refreshNow() {
  if (!page || !page.refresh) return;
  if (refreshing) { scheduleRefresh(); return; }
  refreshing = true;
  lastRefresh = Date.now();
  const focus = focusKey();
  try { await page.refresh(); } catch (e) { console.error(e); } finally { refreshing = false; }
  restoreFocus(focus);
}

// A refresh redraws tables: a keyboard user's focus inside one is put back on the
// same control of the same row (rows carry data-* keys).
function focusKey() {
  const a = document.activeElement;
  if (!a || a === document.body || !main.contains(a)) return null;
  const row = a.closest('tr');
  if (!row) return null;
  const attr = [...row.attributes].find((x) => x.name.startsWith('data-'));
  if (!attr) return null;
  const controls = [...row.querySelectorAll('a, button, input, select')];
  return { sel: `tr[${attr.name}="${CSS.escape(attr.value)}"]`, index: controls.indexOf(a), el: a };
}

function restoreFocus(key) {
  if (!key || document.contains(key.el)) return;
  const row = main.querySelector(key.sel);
  const target = row && row.querySelectorAll('a, button, input, select')[key.index];
  if (target) target.focus({ preventScroll: true });
}

function scheduleRefresh() {
  if (refreshTimer) return;
  const wait = Math.max(0, lastRefresh + REFRESH_GAP_MS - Date.now());
  refreshTimer = setTimeout(() => { refreshTimer = null; refreshNow(); }, wait);
}

// ---------------------------------------------------------------- live status

const liveBox = document.getElementById('live');
const liveText = document.getElementById('live-text');
const liveStats = document.getElementById('live-stats');
const navFiring = document.getElementById('nav-firing');
const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting… polling meanwhile',
  polling: 'Live updates unavailable, polling',
};

live.addEventListener('state', (e) => {
  liveBox.className = 'live ' + e.detail;
  liveText.textContent = STATE_TEXT[e.detail] || e.detail;
  if (e.detail !== 'live') refreshHeader();
});

live.addEventListener('stats', (e) => {
  const s = e.detail;
  const jobs = s.jobs || {};
  liveStats.textContent = num(jobs.ready) + ' ready · ' + num(jobs.leased) + ' running · ' + num(s.workers) + ' workers';
  setFiring(s.firing_alerts);
  if (page && page.onStats) page.onStats(s);
});

live.addEventListener('change', (e) => {
  const { type, data } = e.detail;
  if (type === 'alert') scheduleHeader();
  if (!page) return;
  if (type === 'resync' || !page.relevant || page.relevant(type, data)) scheduleRefresh();
});

function setFiring(n) {
  navFiring.hidden = !n;
  navFiring.textContent = n ? String(n) : '';
  navFiring.setAttribute('aria-label', n ? n + ' firing' : '');
}

let headerTimer = null;
function scheduleHeader() {
  if (!headerTimer) headerTimer = setTimeout(() => { headerTimer = null; refreshHeader(); }, REFRESH_GAP_MS);
}

// Without the event stream, the header's numbers come from the API.
async function refreshHeader() {
  try {
    const a = await api('/alerts');
    setFiring((a.rules || []).length);
  } catch { /* shown on the pages themselves */ }
}

setInterval(() => {
  if (document.hidden) return;
  if (live.state !== 'live') refreshHeader();
  if (live.state !== 'live' || (page && page.pollAlways)) refreshNow();
}, POLL_MS);

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && Date.now() - lastRefresh > POLL_MS) scheduleRefresh();
});

let resizeTimer = null;
let lastWidth = window.innerWidth;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (Math.abs(window.innerWidth - lastWidth) < 40) return;
    lastWidth = window.innerWidth;
    if (page && page.redraw) page.redraw(); else refreshNow();
  }, 300);
});

// ---------------------------------------------------------------- theme

const themeButton = document.getElementById('theme-toggle');
const systemDark = window.matchMedia('(prefers-color-scheme: dark)');
function effectiveTheme() {
  return document.documentElement.dataset.theme || (systemDark.matches ? 'dark' : 'light');
}
function showTheme() {
  const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
  themeButton.textContent = next === 'dark' ? 'Dark theme' : 'Light theme';
  themeButton.setAttribute('aria-label', 'Switch to the ' + next + ' theme');
}
themeButton.addEventListener('click', () => {
  const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem('sluice.theme', next); } catch { /* not kept */ }
  showTheme();
});
systemDark.addEventListener('change', showTheme);
showTheme();

// ---------------------------------------------------------------- start

window.addEventListener('hashchange', route);
route();
live.start();
refreshHeader();
