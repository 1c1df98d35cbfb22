// One job: state, payload, options, attempts with errors and timings; retry and cancel.
//
// Data: GET /v1/jobs/{id}, POST /v1/jobs/{id}/retry, POST /v1/jobs/{id}/cancel.

import {
  act, api, badge, button, clear, dl, el, enc, errorNotice, link, ms, num, pre,
  queueHref, section, stateBadge, table, td, time,
} from '../lib.js';

const RETRYABLE = ['dead', 'cancelled', 'failed'];
const CANCELLABLE = ['scheduled', 'ready', 'leased', 'failed'];

export function mount(root, [id], _ctx) {
  document.title = 'Job ' + id + ' · Sluice';
  const path = '/jobs/' + enc(id);
  let job = null;

  const crumbs = el('div.crumbs', link('#/', 'Overview'), ' › Job');
  const stateBox = el('span');
  const out = el('div', { 'aria-live': 'polite' });
  const retryButton = button('Retry now', () => run('retry', 'Job retried: it is ready to run again.'), { id: 'job-retry', hidden: true });
  const cancelButton = button('Cancel job', () => run('cancel', 'Job cancelled.'), { id: 'job-cancel', class: 'danger', hidden: true });
  const details = section('Details');
  const options = section('Options');
  const payload = section('Payload');
  const progress = section('Progress');
  const attempts = section('Attempts');
  progress.hidden = true;

  root.append(crumbs,
    el('div.page-head', el('h1', { tabindex: '-1' }, 'Job ', el('code', id)), stateBox, el('div.actions', retryButton, cancelButton)),
    out, details, el('div.grid', payload, options), progress, attempts);

  async function run(action, okText) {
    const btn = action === 'retry' ? retryButton : cancelButton;
    const r = await act(btn, out, () => api(path + '/' + action, { method: 'POST' }), okText);
    if (r !== undefined) await refresh();
    // The button may be gone now (a retried job cannot be retried): keep focus on the page.
    if (btn.hidden) root.querySelector('h1').focus();
  }

  function show() {
    const j = job;
    clear(crumbs, link('#/', 'Overview'), ' › ', link(queueHref(j.queue), j.queue), ' › Job');
    clear(stateBox, stateBadge(j.state));
    retryButton.hidden = !RETRYABLE.includes(j.state);
    retryButton.textContent = j.state === 'failed' ? 'Run retry now' : 'Retry';
    cancelButton.hidden = !CANCELLABLE.includes(j.state);
    clear(details.body, dl([
      ['Queue', link(queueHref(j.queue), j.queue)],
      ['Kind', j.kind],
      ['State', j.state],
      ['Attempts', num(j.attempts) + ' of ' + num(j.max_attempts)],
      ['Enqueued', time(j.enqueued_at)],
      [j.state === 'scheduled' || j.state === 'failed' ? 'Runs at' : 'Due at', time(j.run_at)],
      ['Finished', j.finished_at ? time(j.finished_at) : '—'],
      ['Tags', (j.tags || []).length ? el('span.tags', j.tags.map((t) => badge(t))) : '—'],
      j.lease ? ['Lease', el('span', el('code', j.lease.lease_id), ', expires ', time(j.lease.expires_at))] : null,
    ]));
    const b = j.backoff || {};
    clear(options.body, dl([
      ['Priority', num(j.priority)],
      ['Max attempts', num(j.max_attempts)],
      ['Timeout per attempt', ms(j.timeout_ms)],
      ['Backoff', b.type === 'fixed' ? 'fixed, ' + ms(b.delay_ms) : b.type ? 'exponential, ' + ms(b.base_ms) + ' to ' + ms(b.max_ms) : '—'],
      ['Unique key', j.unique_key ? el('code', j.unique_key) : '—'],
      ['Limit key', j.limit_key ? el('code', j.limit_key) : '—'],
    ]));
    clear(payload.body, pre(j.payload));
    progress.hidden = j.progress === undefined || j.progress === null;
    if (!progress.hidden) clear(progress.body, pre(j.progress));
    const rows = (j.history || []).slice().reverse().map((a) => el('tr',
      td(num(a.attempt), 'num'),
      td(a.worker || '—', 'wrap'),
      td(time(a.leased_at)),
      td(a.finished_at ? time(a.finished_at) : 'running', 'hide-narrow'),
      td(a.finished_at ? ms(Date.parse(a.finished_at) - Date.parse(a.leased_at)) : ms(Date.now() - Date.parse(a.leased_at)), 'num'),
      td(a.outcome ? stateBadge(a.outcome) : badge('running', 'info')),
      td(a.error ? el('code', a.error) : '', 'wrap')));
    clear(attempts.body, table('Attempts, newest first (the newest 25 are kept)',
      [{ label: '#', cls: 'num' }, 'Worker', 'Leased', { label: 'Finished', cls: 'hide-narrow' }, { label: 'Took', cls: 'num' }, 'Outcome', 'Error'],
      rows, { empty: 'Not run yet.' }));
  }

  async function refresh() {
    try {
      job = await api(path);
      show();
    } catch (e) {
      clear(details.body, errorNotice(e, e.status === 404 ? 'No such job (it may have been removed by retention)' : 'Could not load the job'));
      retryButton.hidden = cancelButton.hidden = true;
    }
  }

  refresh();
  return { refresh, relevant: (type) => type === 'jobs' };
}
