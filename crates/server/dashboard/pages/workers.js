// Workers: the live registry with current jobs and utilisation.
//
// Data: GET /v1/workers (the whole registry, at most 10,000; paged here, 50 a page).

import {
  api, clear, compact, el, errorNotice, jobHref, link, meter, num, pageControls, pageSlice,
  pct, queueHref, section, table, td, time,
} from '../lib.js';

const PAGE_LEN = 50;
const JOBS_SHOWN_MAX = 5;

export function mount(root, _params, _ctx) {
  document.title = 'Workers · Sluice';
  let workers = [];
  let page = 1;
  let filter = '';
  const cards = el('div.cards', { role: 'group', 'aria-label': 'Worker totals' });
  const list = section('Registered workers');
  const filterInput = el('input', { type: 'search', id: 'worker-filter', autocomplete: 'off', placeholder: 'name, host or queue' });
  filterInput.addEventListener('input', () => { filter = filterInput.value.trim().toLowerCase(); page = 1; show(); });
  list.insertBefore(el('div.toolbar', el('label', { for: 'worker-filter' }, 'Filter', filterInput)), list.body);
  root.append(el('div.page-head', el('h1', 'Workers')), cards, list);

  function show() {
    const slots = workers.reduce((n, w) => n + (w.concurrency || 0), 0);
    const busy = workers.reduce((n, w) => n + (w.current_jobs || []).length, 0);
    clear(cards,
      card('Workers', num(workers.length)), card('Handler slots', num(slots)), card('Running jobs', num(busy)),
      card('Utilisation', slots ? pct(busy / slots) : '—'),
      card('Succeeded', compact(workers.reduce((n, w) => n + (w.succeeded || 0), 0))),
      card('Failed', compact(workers.reduce((n, w) => n + (w.failed || 0), 0))));
    const shown = filter ? workers.filter((w) => [w.name, w.host || '', ...(w.queues || [])].some((x) => x.toLowerCase().includes(filter))) : workers;
    const p = pageSlice(shown, page, PAGE_LEN);
    const rows = p.items.map((w) => {
      const jobs = w.current_jobs || [];
      const u = w.utilisation ?? (w.concurrency ? jobs.length / w.concurrency : undefined);
      return el('tr', { 'data-worker': w.name },
        td(el('strong', w.name), 'wrap'),
        td([w.host || '—', w.pid ? ' · pid ' + w.pid : ''], 'wrap hide-narrow'),
        td(w.version || '—', 'hide-narrow'),
        td((w.queues || []).length ? el('span.tags', w.queues.map((q, i) => [i ? ', ' : '', link(queueHref(q), q)])) : 'any', 'wrap'),
        td(u === undefined ? num(jobs.length) + ' running' : meter(u, jobs.length + ' / ' + num(w.concurrency), 'utilisation of ' + w.name)),
        td(jobs.length ? [el('ul.plain', jobs.slice(0, JOBS_SHOWN_MAX).map((j) => el('li', link(jobHref(j.id), el('code', j.id)), ' ', j.kind, ' · ', j.queue))),
          jobs.length > JOBS_SHOWN_MAX ? el('span.muted', '+' + (jobs.length - JOBS_SHOWN_MAX) + ' more') : null] : el('span.muted', 'idle'), 'wrap'),
        td(num(w.succeeded) + ' / ' + num(w.failed), 'num hide-narrow'),
        td(time(w.last_seen_at), 'hide-narrow'));
    });
    clear(list.body,
      table('Registered workers', ['Name', { label: 'Host', cls: 'hide-narrow' }, { label: 'Version', cls: 'hide-narrow' }, 'Queues', 'Utilisation', 'Current jobs',
        { label: 'Succeeded / failed', cls: 'num hide-narrow' }, { label: 'Last seen', cls: 'hide-narrow' }], rows,
      { captionHidden: true, empty: filter ? 'No worker matches.' : 'No worker is registered. Workers register with PUT /v1/workers/{name} (the SDK and `sluice work` do it).' }),
      p.pages > 1 ? pageControls('Workers', p.page, p.pages, (n) => { page = n; show(); }) : null);
  }

  async function refresh() {
    try {
      workers = (await api('/workers')).workers || [];
      workers.sort((a, b) => a.name.localeCompare(b.name));
      show();
    } catch (e) {
      clear(list.body, errorNotice(e, 'Could not list the workers'));
    }
  }

  refresh();
  // Which worker holds a job is in the registry only: any job change may move one.
  // Beats and last-seen times come without events: the page polls even when live.
  return { refresh, relevant: (type) => type === 'jobs', pollAlways: true };
}

function card(label, value) {
  return el('div.card', el('div.label', label), el('div.value', value));
}
