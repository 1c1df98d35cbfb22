// Streams: every stream with its partitions, records kept, bytes and retention.
//
// Data: GET /v1/streams (at most 1,000 streams; paged here, 50 a page).

import {
  api, bytes, clear, compact, el, errorNotice, link, ms, num, pageControls, pageSlice,
  section, streamHref, table, td, time,
} from '../lib.js';

const PAGE_LEN = 50;

export function mount(root, _params, _ctx) {
  document.title = 'Streams · Sluice';
  let streams = [];
  let page = 1;
  const list = section('Streams');
  root.append(el('div.page-head', el('h1', 'Streams')), list);

  function show() {
    const p = pageSlice(streams, page, PAGE_LEN);
    const rows = p.items.map((s) => {
      const parts = s.partitions || [];
      // Under compaction some offsets in the range are gone: the count is an upper bound.
      const records = parts.reduce((n, x) => n + (x.next_offset - x.earliest_offset), 0);
      return el('tr', { 'data-stream': s.name },
        td(link(streamHref(s.name), s.name), 'wrap'),
        td(num(parts.length), 'num'),
        td((s.compaction ? '≤ ' : '') + compact(records), 'num'),
        td(bytes(parts.reduce((n, x) => n + (x.bytes || 0), 0)), 'num'),
        td(retention(s), 'hide-narrow'),
        td(time(s.created_at), 'hide-narrow'));
    });
    clear(list.body,
      table('Streams', ['Stream', { label: 'Partitions', cls: 'num' }, { label: 'Records kept', cls: 'num' }, { label: 'Size', cls: 'num' },
        { label: 'Retention', cls: 'hide-narrow' }, { label: 'Created', cls: 'hide-narrow' }], rows,
      { captionHidden: true, empty: 'No streams yet. Create one with PUT /v1/streams/{name} or `sluice stream create`.' }),
      p.pages > 1 ? pageControls('Streams', p.page, p.pages, (n) => { page = n; show(); }) : null);
  }

  async function refresh() {
    try {
      streams = (await api('/streams')).streams || [];
      streams.sort((a, b) => a.name.localeCompare(b.name));
      show();
    } catch (e) {
      clear(list.body, errorNotice(e, 'Could not list the streams'));
    }
  }

  refresh();
  return { refresh, relevant: () => false };
}

export function retention(s) {
  const parts = [];
  if (s.retention_ms) parts.push(ms(s.retention_ms));
  if (s.retention_bytes) parts.push(bytes(s.retention_bytes) + ' per partition');
  const kept = parts.length ? parts.join(', ') : 'kept for ever';
  if (!s.compaction) return kept;
  return kept + '; compacted by key (tombstones kept ' + ms(s.compaction.tombstone_retention_ms ?? 86400000) + ')';
}
