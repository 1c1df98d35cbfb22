// Shared pieces of the dashboard: the API client, DOM building (text only, never
// innerHTML with data), formatting, paging and hand-made SVG charts.

// ---------------------------------------------------------------- API

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

export async function api(path, { method = 'GET', body, signal } = {}) {
  const init = { method, signal, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch('/v1' + path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'cannot reach the server (' + e.message + ')');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const err = data && data.error;
    if (err) throw new ApiError(res.status, err.code, err.message, err.details);
    throw new ApiError(res.status, 'http_' + res.status, text.slice(0, 200) || res.statusText);
  }
  return data;
}

export const enc = encodeURIComponent;

export function qs(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    parts.push(enc(k) + '=' + enc(v));
  }
  return parts.length ? '?' + parts.join('&') : '';
}

// ---------------------------------------------------------------- DOM

// el('div.card#id', {attrs, on*: handler}, ...children). Strings become text nodes.
export function el(spec, attrs, ...children) {
  if (attrs === null || typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs)) {
    if (attrs !== undefined && attrs !== null) children.unshift(attrs);
    attrs = {};
  }
  const m = /^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i.exec(spec);
  const node = document.createElement((m && m[1]) || 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') node.classList.add(part.slice(1));
      else node.id = part.slice(1);
    }
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : String(c));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function link(href, text, attrs = {}) {
  return el('a', { href, ...attrs }, text);
}

export const jobHref = (id) => '#/jobs/' + enc(id);
export const queueHref = (q) => '#/queues/' + enc(q);
export const streamHref = (s) => '#/streams/' + enc(s);

// A message box. kind: error | info | warn | ok
export function notice(kind, ...text) {
  return el('p.notice.' + kind, { role: kind === 'error' ? 'alert' : 'status' }, ...text);
}

export function errorNotice(err, what) {
  if (err instanceof ApiError) {
    const details = err.details.map((d) => el('li', d.path + ': ' + d.message));
    return el('div.notice.error', { role: 'alert' },
      el('strong', (what ? what + ': ' : '') + err.message),
      ' ', el('code', err.code + (err.status ? ' · HTTP ' + err.status : '')),
      details.length ? el('ul', details) : null);
  }
  return notice('error', (what ? what + ': ' : '') + String(err && err.message || err));
}

// A labelled section with an h2 and a body whose contents refresh.
export function section(title, ...rest) {
  const id = 'h-' + title.toLowerCase().replace(/[^a-z0-9]+/g, '-');
  const body = el('div.section-body');
  const s = el('section.panel', { 'aria-labelledby': id }, el('h2', { id }, title), ...rest, body);
  s.body = body;
  return s;
}

// Scrollable wrapper for wide tables: the page itself never scrolls sideways.
export function table(caption, headers, rows, opts = {}) {
  const t = el('table', { class: opts.className || null },
    caption ? el('caption', { class: opts.captionHidden ? 'sr-only' : null }, caption) : null,
    el('thead', el('tr', headers.map((h) => el('th', { scope: 'col', class: h.cls || null }, h.label ?? h)))),
    el('tbody', rows.length ? rows : el('tr', el('td.empty', { colSpan: headers.length }, opts.empty || 'Nothing here.'))));
  // Focusable so that a keyboard can scroll it; named apart from its section.
  return el('div.table-wrap', { tabindex: '0', role: 'region', 'aria-label': (caption || 'data') + ' table' }, t);
}

export function td(content, cls) {
  return el('td', { class: cls || null }, content);
}

export function dl(pairs) {
  return el('dl.facts', pairs.filter(Boolean).map(([k, v]) =>
    el('div', el('dt', k), el('dd', v === undefined || v === null || v === '' ? '—' : v))));
}

export function badge(text, kind) {
  return el('span.badge.' + (kind || 'neutral'), text);
}

export function stateBadge(state) {
  const kinds = { ready: 'info', scheduled: 'neutral', leased: 'info', succeeded: 'ok',
    failed: 'warn', dead: 'bad', cancelled: 'neutral', firing: 'bad', resolved: 'ok' };
  return badge(state, kinds[state]);
}

export function pre(value) {
  return el('pre.json', { tabindex: '0' }, value === undefined ? '(none)' : JSON.stringify(value, null, 2));
}

export function button(text, onclick, attrs = {}) {
  return el('button', { type: 'button', onclick, ...attrs }, text);
}

// Runs an action behind a button: disables it meanwhile and reports into `out`.
export async function act(btn, out, fn, okText) {
  btn.disabled = true;
  btn.setAttribute('aria-busy', 'true');
  try {
    const r = await fn();
    if (out) clear(out, notice('ok', typeof okText === 'function' ? okText(r) : okText));
    return r;
  } catch (e) {
    if (out) clear(out, errorNotice(e));
    return undefined;
  } finally {
    btn.disabled = false;
    btn.removeAttribute('aria-busy');
  }
}

// ---------------------------------------------------------------- paging

// Cursor paging over an API list: keeps the cursors of earlier pages for "Previous".
export class CursorPager {
  constructor() { this.reset(); }
  reset() { this.stack = [undefined]; this.next = undefined; }
  get cursor() { return this.stack[this.stack.length - 1]; }
  get page() { return this.stack.length; }
  forward() { if (this.next) { this.stack.push(this.next); this.next = undefined; } }
  back() { if (this.stack.length > 1) this.stack.pop(); }
  controls(label, onchange, shown) {
    const prev = button('Previous', () => { this.back(); onchange(); }, { disabled: this.page <= 1 });
    const next = button('Next', () => { this.forward(); onchange(); }, { disabled: !this.next });
    return el('nav.pager', { 'aria-label': label + ' pages' }, prev,
      el('span', { 'aria-live': 'polite' }, 'Page ' + this.page + (shown !== undefined ? ' · ' + shown + ' shown' : '')), next);
  }
}

// Paging of a list already in memory (workers, alert history).
export function pageSlice(items, page, size) {
  const pages = Math.max(1, Math.ceil(items.length / size));
  const p = Math.min(Math.max(1, page), pages);
  return { items: items.slice((p - 1) * size, p * size), page: p, pages };
}

export function pageControls(label, page, pages, go) {
  return el('nav.pager', { 'aria-label': label + ' pages' },
    button('Previous', () => go(page - 1), { disabled: page <= 1 }),
    el('span', 'Page ' + page + ' of ' + pages),
    button('Next', () => go(page + 1), { disabled: page >= pages }));
}

// ---------------------------------------------------------------- formatting

const nf = new Intl.NumberFormat('en');
export function num(n, digits = 0) {
  if (n === undefined || n === null || Number.isNaN(n)) return '—';
  if (!Number.isFinite(n)) return String(n);
  return digits ? n.toLocaleString('en', { maximumFractionDigits: digits }) : nf.format(Math.round(n));
}

export function compact(n) {
  if (n === undefined || n === null) return '—';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
  if (a > 0 && a < 10 && !Number.isInteger(n)) return n.toFixed(a < 1 ? 2 : 1);
  return nf.format(Math.round(n));
}

export function ms(v) {
  if (v === undefined || v === null) return '—';
  if (v < 1000) return Math.round(v) + ' ms';
  const s = v / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
  const m = s / 60;
  if (m < 60) return Math.floor(m) + ' min ' + Math.round(s % 60) + ' s';
  const h = m / 60;
  if (h < 48) return Math.floor(h) + ' h ' + Math.round(m % 60) + ' min';
  return (h / 24).toFixed(1) + ' days';
}

export function bytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

export function pct(x) {
  return x === undefined || x === null ? '—' : (x * 100).toFixed(x < 0.1 ? 1 : 0) + ' %';
}

// An absolute time with the relative one beside it, in a <time> element.
export function time(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return el('time', { datetime: iso, title: iso }, d.toLocaleString('en-GB', {
    year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }) + ' (' + ago(d) + ')');
}

export function ago(d) {
  const diff = Date.now() - new Date(d).getTime();
  const a = Math.abs(diff);
  const word = a < 1000 ? 'now' : a < 60e3 ? Math.round(a / 1e3) + ' s' : a < 3600e3 ? Math.round(a / 60e3) + ' min'
    : a < 172800e3 ? Math.round(a / 3600e3) + ' h' : Math.round(a / 86400e3) + ' d';
  if (word === 'now') return 'now';
  return diff >= 0 ? word + ' ago' : 'in ' + word;
}

export const STATES = ['scheduled', 'ready', 'leased', 'failed', 'dead', 'succeeded', 'cancelled'];

// The gauges of a history point (queue or server-wide), as the depth charts draw them:
// `retrying` is the `failed` state (failed, waiting to retry).
export const DEPTH_SERIES = [
  { key: 'scheduled', name: 'scheduled', cls: 's6' },
  { key: 'ready', name: 'ready', cls: 's1' },
  { key: 'leased', name: 'leased', cls: 's3' },
  { key: 'retrying', name: 'retrying', cls: 's4' },
  { key: 'dead', name: 'dead', cls: 's2' },
];

// Ranges of the history charts: 10 s steps up to 6 hours (2,160 points), 5 min beyond.
export const HISTORY_RANGES = [
  { key: '1h', label: 'Last hour', ms: 3600e3, resolution: '10s' },
  { key: '6h', label: 'Last 6 hours', ms: 6 * 3600e3, resolution: '10s' },
  { key: '24h', label: 'Last 24 hours', ms: 86400e3, resolution: '5m' },
  { key: '7d', label: 'Last 7 days', ms: 7 * 86400e3, resolution: '5m' },
];

// A labelled select of HISTORY_RANGES; onchange gets the chosen range.
export function rangeSelect(id, onchange) {
  const select = el('select', { id, onchange: () => onchange(HISTORY_RANGES.find((r) => r.key === select.value)) },
    HISTORY_RANGES.map((r) => el('option', { value: r.key }, r.label)));
  return el('div.toolbar', el('label', { for: id }, 'Range', select));
}

// The query of a history request over a range, ending now.
export function historyQuery(range) {
  return qs({ resolution: range.resolution, from: new Date(Date.now() - range.ms).toISOString() });
}

// ---------------------------------------------------------------- charts

const SVG = 'http://www.w3.org/2000/svg';
function s(name, attrs, ...children) {
  const n = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) n.setAttribute(k, String(v));
  for (const c of children) if (c) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return n;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function timeLabel(t, spanMs) {
  const d = new Date(t);
  if (spanMs > 2 * 86400e3) return d.toLocaleDateString('en-GB', { month: 'short', day: '2-digit' });
  return d.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: spanMs < 600e3 ? '2-digit' : undefined });
}

// A time-series line chart.
//   series: [{name, points: [[t_ms, value], ...], cls: 's1'..'s6', dashed}]
//   band:   optional {points: [[t, lower, upper]], cls}
// The chart is an <svg role="img"> with a summary as its label, and a legend in HTML.
// A point whose value is null is a gap in its line.
export function lineChart(title, series, { band, unit = '', height = 170, width, marks = [] } = {}) {
  const w = Math.max(260, Math.round(width || 600));
  const pad = { l: 46, r: 10, t: 10, b: 22 };
  const all = series.flatMap((x) => x.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const ts = series.flatMap((x) => x.points.map((p) => p[0])).concat(band ? band.points.map((p) => p[0]) : []);
  const wrap = el('figure.chart');
  const summary = series.map((x) => {
    const vals = x.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined);
    const last = vals.length ? vals[vals.length - 1] : undefined;
    return x.name + ': latest ' + compact(last) + unit + ', max ' + compact(vals.length ? Math.max(...vals) : undefined) + unit;
  }).join('; ');
  if (!all.length) {
    wrap.append(el('figcaption', title), el('p.muted.chart-empty', 'No data in this range yet.'));
    return wrap;
  }
  const t0 = Math.min(...ts), t1 = Math.max(...ts, t0 + 1);
  const vmax = niceMax(Math.max(0, ...all.map((p) => p[1]), ...(band ? band.points.map((p) => p[2]) : [])));
  const x = (t) => pad.l + (t - t0) / (t1 - t0) * (w - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / vmax) * (height - pad.t - pad.b);
  const svg = s('svg', { viewBox: `0 0 ${w} ${height}`, width: '100%', height, role: 'img', 'aria-label': title + '. ' + summary, preserveAspectRatio: 'none' });
  svg.append(s('title', {}, title + '. ' + summary));
  const grid = s('g', { class: 'axis' });
  for (const f of [0, 0.5, 1]) {
    const yy = y(vmax * f);
    grid.append(s('line', { x1: pad.l, x2: w - pad.r, y1: yy, y2: yy }),
      s('text', { x: pad.l - 6, y: yy + 4, 'text-anchor': 'end' }, compact(vmax * f) + unit));
  }
  const span = t1 - t0;
  for (const f of [0, 0.5, 1]) {
    const t = t0 + span * f;
    grid.append(s('text', { x: x(t), y: height - 6, 'text-anchor': f === 0 ? 'start' : f === 1 ? 'end' : 'middle' }, timeLabel(t, span)));
  }
  svg.append(grid);
  if (band && band.points.length) {
    const up = band.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`);
    const lo = band.points.slice().reverse().map((p) => `${x(p[0]).toFixed(1)},${y(Math.max(0, p[1])).toFixed(1)}`);
    svg.append(s('polygon', { points: up.concat(lo).join(' '), class: 'band ' + (band.cls || 's2') }));
  }
  for (const m of marks) {
    if (m.t < t0 || m.t > t1) continue;
    svg.append(s('circle', { cx: x(m.t), cy: y(Math.min(m.v, vmax)), r: 4, class: 'mark' }, s('title', {}, m.label)));
  }
  for (const ser of series) {
    let d = '';
    const pts = ser.points;
    const has = (i) => i >= 0 && i < pts.length && pts[i][1] !== null && pts[i][1] !== undefined;
    for (let i = 0; i < pts.length; i++) {
      if (!has(i)) continue;
      const px = x(pts[i][0]), py = y(pts[i][1]);
      d += (has(i - 1) ? 'L' : 'M') + px.toFixed(1) + ' ' + py.toFixed(1) + ' ';
      // A point with no neighbour draws no line: show it as a dot.
      if (!has(i - 1) && !has(i + 1)) svg.append(s('circle', { cx: px, cy: py, r: 2.5, class: 'dot ' + (ser.cls || 's1') }));
    }
    if (!d) continue;
    svg.append(s('path', { d, class: 'line ' + (ser.cls || 's1') + (ser.dashed ? ' dashed' : ''), 'vector-effect': 'non-scaling-stroke', 'data-series': ser.name }));
  }
  wrap.append(el('figcaption', title), svg,
    el('ul.legend', series.map((ser) => el('li', { 'data-series': ser.name }, el('span.swatch.' + (ser.cls || 's1') + (ser.dashed ? '.dashed' : ''), { 'aria-hidden': 'true' }), ser.name))
      .concat(band ? [el('li', el('span.swatch.band.' + (band.cls || 's2'), { 'aria-hidden': 'true' }), band.name || '95 % interval')] : [])));
  return wrap;
}

// A horizontal bar of a fraction (utilisation, health), with text beside it.
export function meter(fraction, text, label) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  const cls = f >= 0.9 ? 'bad' : f >= 0.7 ? 'warn' : 'ok';
  const fill = el('span.meter-fill.' + cls);
  // Through the CSSOM: the Content-Security-Policy refuses style attributes.
  fill.style.width = (f * 100).toFixed(1) + '%';
  return el('span.meter-wrap',
    el('span.meter', { role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.round(f * 100)), 'aria-label': label || text }, fill),
    el('span.meter-text', text));
}

export function scoreBadge(score) {
  if (score === undefined || score === null) return badge('—');
  return badge(String(score), score >= 80 ? 'ok' : score >= 50 ? 'warn' : 'bad');
}

// Width available to a chart inside `node` (charts are drawn for the real width,
// so that their text stays readable on a narrow window).
export function widthOf(node) {
  return (node && node.clientWidth) || Math.min(900, window.innerWidth - 40);
}
