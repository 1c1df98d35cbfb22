// One stream: partitions and offsets, retention, consumer groups and their lag, feeds,
// and a record browser by offset or time.
//
// Data: GET /v1/streams/{s}, GET /v1/streams/{s}/groups, GET /v1/streams/{s}/feeds,
// GET /v1/streams/{s}/partitions/{p}/records?offset|from|timestamp&max_bytes.

import {
  api, bytes, clear, compact, dl, el, enc, errorNotice, link, notice, num, pageControls,
  pageSlice, queueHref, section, table, td, time,
} from '../lib.js';
import { retention } from './streams.js';

const FETCH_BYTES_MAX = 65536;
const RECORDS_SHOWN_MAX = 50;
const NEWEST_LEN = 20; // "newest" starts this many records before the end
const VALUE_CHARS_MAX = 400;
// Up to 1,000 groups of up to 1,024 partitions each come in one answer: the page draws
// ten groups at a time.
const GROUPS_PAGE_LEN = 10;

export function mount(root, [name], _ctx) {
  document.title = name + ' · Stream · Sluice';
  const path = '/streams/' + enc(name);
  let stream = null;

  const summary = section('Partitions');
  const groups = section('Consumer groups');
  const feeds = section('Feeds into queues');
  const browser = section('Records');
  root.append(el('div.crumbs', link('#/streams', 'Streams'), ' › Stream'),
    el('div.page-head', el('h1', name)), summary, groups, feeds, browser);

  // ---- record browser
  const partSelect = el('select', { id: 'rec-partition', name: 'partition' });
  const modeSelect = el('select', { id: 'rec-mode', name: 'mode' },
    el('option', { value: 'offset' }, 'offset'), el('option', { value: 'time' }, 'time'),
    el('option', { value: 'earliest' }, 'earliest'), el('option', { value: 'newest' }, 'newest'));
  const offsetInput = el('input', { id: 'rec-offset', name: 'offset', type: 'number', min: '0', value: '0' });
  const timeInput = el('input', { id: 'rec-time', name: 'time', type: 'datetime-local', step: '0.001' });
  const offsetLabel = el('label', { for: 'rec-offset' }, 'Offset', offsetInput);
  const timeLabel = el('label', { for: 'rec-time' }, 'Time (local)', timeInput);
  const recordsOut = el('div', { id: 'records', 'aria-live': 'polite' });
  const showMode = () => { offsetLabel.hidden = modeSelect.value !== 'offset'; timeLabel.hidden = modeSelect.value !== 'time'; };
  modeSelect.addEventListener('change', showMode);
  showMode();
  const recForm = el('form.inline', {
    'aria-label': 'Browse records',
    onsubmit: (e) => { e.preventDefault(); browse(); },
  }, el('label', { for: 'rec-partition' }, 'Partition', partSelect), el('label', { for: 'rec-mode' }, 'From', modeSelect),
  offsetLabel, timeLabel, el('button', { type: 'submit' }, 'Fetch'));
  browser.insertBefore(recForm, browser.body);
  browser.body.append(recordsOut);

  function showStream() {
    const parts = stream.partitions || [];
    const total = parts.reduce((n, p) => n + (p.next_offset - p.earliest_offset), 0); // an upper bound under compaction
    const rows = parts.map((p) => el('tr', { 'data-partition': String(p.partition) },
      td(num(p.partition), 'num'), td(num(p.earliest_offset), 'num'), td(num(p.next_offset), 'num'),
      td(num(p.next_offset - p.earliest_offset), 'num'), td(bytes(p.bytes), 'num')));
    clear(summary.body,
      dl([['Partitions', num(parts.length)], [stream.compaction ? 'Offsets kept (compacted)' : 'Records kept', num(total)], ['Size', bytes(parts.reduce((n, p) => n + (p.bytes || 0), 0))],
        ['Retention', retention(stream)], ['Created', time(stream.created_at)]]),
      table('Partitions', [{ label: 'Partition', cls: 'num' }, { label: 'Earliest offset', cls: 'num' }, { label: 'Next offset', cls: 'num' },
        { label: 'Records', cls: 'num' }, { label: 'Size', cls: 'num' }], rows, { captionHidden: true }));
    if (partSelect.options.length !== parts.length) {
      const keep = partSelect.value;
      clear(partSelect, parts.map((p) => el('option', { value: String(p.partition) }, String(p.partition))));
      if (keep && Number(keep) < parts.length) partSelect.value = keep;
    }
  }

  function groupBlock(g) {
    const totalLag = (g.partitions || []).reduce((n, p) => n + (p.lag || 0), 0);
    return el('div.group', { 'data-group': g.group },
      el('h3', g.group),
      dl([['Generation', num(g.generation)], ['Strategy', g.strategy], ['Members', num((g.members || []).length)], ['Total lag', num(totalLag)]]),
      table('Members of ' + g.group, ['Member', 'Partitions'],
        (g.members || []).map((m) => el('tr', td(el('code', m.member_id), 'wrap'), td((m.partitions || []).join(', ') || 'none'))),
        { captionHidden: true, empty: 'No members now (membership is in memory: members rejoin after a restart).' }),
      table('Lag of ' + g.group + ' per partition', [{ label: 'Partition', cls: 'num' }, { label: 'Committed', cls: 'num' }, { label: 'Latest', cls: 'num' }, { label: 'Lag', cls: 'num' }],
        (g.partitions || []).map((p) => el('tr', td(num(p.partition), 'num'), td(p.committed === undefined || p.committed === null ? 'none' : num(p.committed), 'num'),
          td(num(p.latest), 'num'), td(num(p.lag), 'num'))), { captionHidden: true }));
  }

  let groupList = [];
  let groupsPage = 1;
  function showGroups() {
    if (!groupList.length) { clear(groups.body, notice('info', 'No consumer groups.')); return; }
    const p = pageSlice(groupList, groupsPage, GROUPS_PAGE_LEN);
    clear(groups.body, p.items.map(groupBlock),
      p.pages > 1 ? pageControls('Consumer groups', p.page, p.pages, (n) => { groupsPage = n; showGroups(); }) : null);
  }

  async function loadGroups() {
    try {
      groupList = (await api(path + '/groups')).groups || [];
      showGroups();
    } catch (e) {
      clear(groups.body, errorNotice(e, 'Could not list the groups'));
    }
  }

  async function loadFeeds() {
    try {
      const f = (await api(path + '/feeds')).feeds || [];
      clear(feeds.body, table('Feeds', ['Queue', 'Kind', { label: 'Lag', cls: 'num' }, 'Per partition'],
        f.map((x) => el('tr', td(link(queueHref(x.queue), x.queue), 'wrap'), td(x.kind),
          td(num((x.partitions || []).reduce((n, p) => n + (p.lag || 0), 0)), 'num'),
          td((x.partitions || []).map((p) => p.partition + ': ' + num(p.next_offset) + '/' + num(p.latest_offset)).join(', '), 'wrap'))),
        { captionHidden: true, empty: 'No feeds: a feed turns each record into a job (PUT /v1/streams/{stream}/feeds/{queue}).' }));
    } catch (e) { clear(feeds.body, errorNotice(e, 'Could not load the feeds')); }
  }

  async function browse(fromOffset) {
    const part = Number(partSelect.value || 0);
    const params = new URLSearchParams({ max_bytes: String(FETCH_BYTES_MAX) });
    const mode = fromOffset !== undefined ? 'offset' : modeSelect.value;
    let label;
    if (fromOffset !== undefined) { params.set('offset', String(fromOffset)); label = 'from offset ' + fromOffset; }
    else if (mode === 'offset') { params.set('offset', String(Math.max(0, Number(offsetInput.value) || 0))); label = 'from offset ' + params.get('offset'); }
    else if (mode === 'earliest') { params.set('from', 'earliest'); label = 'from the earliest kept'; }
    else if (mode === 'newest') {
      const p = (stream.partitions || [])[part] || { earliest_offset: 0, next_offset: 0 };
      const o = Math.max(p.earliest_offset, p.next_offset - NEWEST_LEN);
      params.set('offset', String(o)); label = 'the newest, from offset ' + o;
    } else {
      if (!timeInput.value) { clear(recordsOut, notice('error', 'Choose a time.')); return; }
      const t = new Date(timeInput.value);
      if (Number.isNaN(t.getTime())) { clear(recordsOut, notice('error', 'That time is not valid.')); return; }
      params.set('timestamp', t.toISOString()); label = 'from ' + t.toISOString();
    }
    clear(recordsOut, el('p.muted', 'Loading…'));
    try {
      const r = await api(path + '/partitions/' + part + '/records?' + params);
      const recs = r.records.slice(0, RECORDS_SHOWN_MAX);
      const next = r.records.length > recs.length ? r.records[recs.length].offset : r.next_offset;
      const rows = recs.map((x) => el('tr', { 'data-offset': String(x.offset) },
        td(num(x.offset), 'num'), td(time(x.timestamp)), td(recordKey(x), 'wrap'), td(recordValue(x), 'wrap'),
        td((x.headers || []).map((h) => h[0] + '=' + h[1]).join(', '), 'wrap hide-narrow')));
      clear(recordsOut,
        el('p', 'Partition ' + part + ', ' + label + ': ', el('strong', num(recs.length) + ' records'),
          ' · kept offsets ' + num(r.earliest_offset) + ' to ' + num(Math.max(r.earliest_offset, r.latest_offset - 1)) + ' · ' + compact(r.latest_offset - next) + ' after these'),
        table('Records of partition ' + part, [{ label: 'Offset', cls: 'num' }, 'Time', 'Key', 'Value', { label: 'Headers', cls: 'hide-narrow' }], rows,
          { captionHidden: true, empty: 'No records there yet.' }),
        next < r.latest_offset ? el('nav.pager', { 'aria-label': 'Records pages' },
          el('button', { type: 'button', class: 'secondary', onclick: () => browse(next) }, 'Next records from offset ' + num(next))) : null);
    } catch (e) {
      clear(recordsOut, errorNotice(e, 'Could not fetch the records'));
    }
  }

  async function refresh() {
    try {
      stream = await api(path);
      showStream();
    } catch (e) {
      clear(summary.body, errorNotice(e, e.status === 404 ? 'No such stream' : 'Could not load the stream'));
      return;
    }
    await Promise.all([loadGroups(), loadFeeds()]);
  }

  refresh();
  return { refresh, relevant: () => false };
}

// A key that is not UTF-8 comes as `key_base64`, a value that is not JSON as
// `value_base64`; a record with neither value is a tombstone.
function recordKey(x) {
  if (x.key_base64 !== undefined && x.key_base64 !== null) return [el('span.muted', 'base64 '), el('code', clip(x.key_base64))];
  return x.key === undefined || x.key === null ? el('span.muted', 'none') : el('code', x.key);
}

function recordValue(x) {
  if (x.value_base64 !== undefined && x.value_base64 !== null) return [el('span.muted', 'bytes, base64 '), el('code', clip(x.value_base64))];
  return x.value === undefined || x.value === null ? el('span.muted', 'tombstone') : el('code', clip(JSON.stringify(x.value)));
}

function clip(text) {
  return text.length > VALUE_CHARS_MAX ? text.slice(0, VALUE_CHARS_MAX) + '…' : text;
}
