// Live updates from `GET /v1/events` (Server-Sent Events), with reconnect.
//
// States: connecting → live; on a dropped stream or a server that cannot be reached:
// reconnecting (backoff 1 s … 15 s, for ever); when the server has no such endpoint
// (404): polling, retried every minute. Whenever the state is not `live` the app polls
// the visible page.

const TYPES = 'stats,job,queue,alert';
const BACKOFF_MS = [1000, 2000, 5000, 10000, 15000];
const UNAVAILABLE_RETRY_MS = 60000;
const RATES_LEN_MAX = 600; // ten minutes of one-second stats

export class Live extends EventTarget {
  constructor() {
    super();
    this.state = 'connecting';
    this.stats = null;
    this.statsAt = 0;
    this.rates = []; // [{t, enqueued, completed, failed}] from `stats`, oldest first
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
      this.stats = data;
      this.statsAt = Date.now();
      const r = data.per_s || {};
      this.rates.push({ t: data.at_ms || Date.now(), enqueued: r.enqueued || 0, completed: r.completed || 0, failed: r.failed || 0 });
      if (this.rates.length > RATES_LEN_MAX) this.rates.splice(0, this.rates.length - RATES_LEN_MAX);
      this.dispatchEvent(new CustomEvent('stats', { detail: data }));
    });
    for (const type of ['job', 'queue', 'alert', 'lagged']) {
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

function parse(text) {
  try { return JSON.parse(text); } catch { return null; }
}
