// Live updates from `GET /v1/events` (Server-Sent Events), with reconnect.
//
// States: connecting → live; on a dropped stream or a server that cannot be reached:
// reconnecting (backoff 1 s … 15 s, for ever); when the server has no such endpoint
// (404): polling, retried every minute. Whenever the state is not `live` the app polls
// the visible page.
//
// Not `job` events: a busy server makes one for every enqueue, lease and ack, and
// handling them kept the page's main thread busy for good (27,000 jobs a second on two
// cores: tasks of 450-600 ms, back to back). Once a second `stats` tell whether any
// job moved (counts or rates changed), as a `jobs` change for the page to refetch.

const TYPES = 'stats,queue,alert';
const BACKOFF_MS = [1000, 2000, 5000, 10000, 15000];
const UNAVAILABLE_RETRY_MS = 60000;

export class Live extends EventTarget {
  constructor() {
    super();
    this.state = 'connecting';
    this.stats = null;
    this.statsAt = 0;
    this.failures = 0;
    this.es = null;
    this.timer = null;
  }

  start() {
    if (typeof EventSource === 'undefined') return this.setState('polling');
    this.connect();
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  connect() {
    clearTimeout(this.timer);
    let opened = false;
    const es = new EventSource('/v1/events?types=' + TYPES);
    this.es = es;
    es.onopen = () => {
      opened = true;
      const wasDown = this.failures > 0;
      this.failures = 0;
      this.setState('live');
      // Events may have been missed while disconnected: the page refetches.
      if (wasDown) this.emit('resync', {});
    };
    es.addEventListener('stats', (e) => {
      const data = parse(e.data);
      if (!data) return;
      const moved = this.stats && jobsMoved(this.stats, data);
      this.stats = data;
      this.statsAt = Date.now();
      this.dispatchEvent(new CustomEvent('stats', { detail: data }));
      if (moved) this.emit('jobs', {});
    });
    for (const type of ['queue', 'alert', 'lagged']) {
      es.addEventListener(type, (e) => {
        const data = parse(e.data);
        if (data) this.emit(type === 'lagged' ? 'resync' : type, data);
      });
    }
    es.onerror = () => {
      es.close();
      if (this.es !== es) return;
      this.es = null;
      this.failures++;
      if (opened) {
        this.setState('reconnecting');
        this.retry();
      } else {
        this.probe();
      }
    };
  }

  emit(type, data) {
    this.dispatchEvent(new CustomEvent('change', { detail: { type, data } }));
  }

  retry(delay) {
    clearTimeout(this.timer);
    const d = delay ?? BACKOFF_MS[Math.min(this.failures - 1, BACKOFF_MS.length - 1)];
    this.timer = setTimeout(() => this.connect(), d);
  }

  // The stream failed before it opened: find out whether the endpoint exists at all.
  async probe() {
    const ctl = new AbortController();
    let status = 0;
    try {
      const res = await fetch('/v1/events?types=' + TYPES, { signal: ctl.signal, headers: { accept: 'text/event-stream' } });
      status = res.status;
    } catch { /* network error: the server is down or restarting */ }
    ctl.abort();
    if (status === 404 || status === 405) {
      this.setState('polling');
      this.retry(UNAVAILABLE_RETRY_MS);
    } else {
      this.setState('reconnecting');
      this.retry();
    }
  }
}

// Whether jobs were enqueued, leased, finished or changed state between two `stats`.
function jobsMoved(before, now) {
  const r = now.per_s || {};
  if (r.enqueued || r.completed || r.failed) return true;
  const a = before.jobs || {};
  const b = now.jobs || {};
  return Object.keys({ ...a, ...b }).some((k) => (a[k] || 0) !== (b[k] || 0));
}

function parse(text) {
  try { return JSON.parse(text); } catch { return null; }
}
