// Metrics and alerts: firing alerts, rules, silences and the history of transitions.
//
// Data: GET /v1/alerts, GET|PUT|DELETE /v1/alerts/rules[/{name}],
// GET|PUT|DELETE /v1/alerts/silences[/{id}], GET /v1/alerts/history.

import {
  act, api, badge, button, clear, el, enc, errorNotice, link, ms, notice, num,
  pageControls, pageSlice, queueHref, section, stateBadge, table, td, time,
} from '../lib.js';

const HISTORY_PAGE_LEN = 25;
const METRICS = ['depth', 'dead', 'oldest_ready_ms', 'wait_p95_ms', 'run_p95_ms', 'failure_rate', 'throughput_per_min'];
const CONFIRM_MS = 5000;

export function mount(root, _params, _ctx) {
  document.title = 'Alerts · Sluice';
  let historyPage = 1;
  let history = [];
  const firing = section('Firing now');
  const rules = section('Rules');
  const silences = section('Silences');
  const historyPanel = section('History');
  const out = el('div', { 'aria-live': 'polite' });

  // ---- new rule, or editing one
  // PUT replaces the whole rule. The form shows all of it but the notifiers, which an
  // edit sends back as the rule had them. The server never shows a webhook's secret
  // back: an edit sends `keep_secret` for each webhook, unless a new secret is typed or
  // the secret is to be removed.
  const f = (id, label, input) => el('label', { for: id }, label, input);
  const ruleName = el('input', { id: 'rule-name', required: true, autocomplete: 'off' });
  const ruleQueue = el('input', { id: 'rule-queue', required: true, autocomplete: 'off' });
  const ruleMetric = el('select', { id: 'rule-metric' }, METRICS.map((m) => el('option', { value: m }, m)));
  const ruleOp = el('select', { id: 'rule-op' }, el('option', { value: '>' }, '>'), el('option', { value: '<' }, '<'));
  const ruleThreshold = el('input', { id: 'rule-threshold', type: 'number', step: 'any', required: true, value: '0' });
  const ruleFor = el('input', { id: 'rule-for', type: 'number', min: '0', max: '86400', step: 'any', value: '0' });
  const ruleSeverity = el('select', { id: 'rule-severity' }, ['warning', 'critical', 'info'].map((s) => el('option', { value: s }, s)));
  const ruleNotifiers = el('fieldset.notifiers', { hidden: true });
  const ruleOut = el('div', { 'aria-live': 'polite' });
  const ruleSubmit = el('button', { type: 'submit', id: 'rule-submit' }, 'Save rule');
  const ruleCancel = button('Cancel edit', () => { stopEditing(); clear(ruleOut); ruleSummary.focus(); },
    { class: 'secondary', id: 'rule-cancel', hidden: true });
  let editing = null; // the rule being edited, as GET /v1/alerts/rules/{name} gave it
  let secrets = [];   // per webhook notifier of `editing`: {index, secret, remove} inputs
  const ruleForm = el('form.inline', {
    'aria-label': 'New alert rule',
    onsubmit: async (e) => {
      e.preventDefault();
      const name = editing ? editing.name : ruleName.value.trim();
      const body = { queue: ruleQueue.value.trim(), metric: ruleMetric.value, op: ruleOp.value, threshold: Number(ruleThreshold.value),
        for_ms: Math.round(Number(ruleFor.value || 0) * 1000), severity: ruleSeverity.value };
      if (editing) body.notifiers = keptNotifiers();
      const r = await act(ruleSubmit, ruleOut, () => api('/alerts/rules/' + enc(name), { method: 'PUT', body }), (v) => 'Rule ' + v.name + ' saved.');
      if (r) {
        if (editing) stopEditing();
        refresh();
      }
    },
  }, f('rule-name', 'Name', ruleName), f('rule-queue', 'Queue', ruleQueue), f('rule-metric', 'Metric', ruleMetric), f('rule-op', 'Op', ruleOp),
  f('rule-threshold', 'Threshold', ruleThreshold), f('rule-for', 'For (s)', ruleFor), f('rule-severity', 'Severity', ruleSeverity),
  ruleNotifiers, ruleSubmit, ruleCancel);
  const ruleSummary = el('summary', 'New rule');
  const ruleDetails = el('details', ruleSummary, ruleForm, ruleOut);
  rules.append(ruleDetails);

  // The edited rule's notifiers, each as it was (fields this page does not know
  // included): each webhook keeps its secret, takes the new one typed, or loses it.
  function keptNotifiers() {
    const notifiers = (editing.notifiers || []).map((n) => ({ ...n }));
    for (const { index, secret, remove } of secrets) {
      const n = notifiers[index];
      delete n.secret;
      delete n.keep_secret;
      delete n.signed; // read back as signed and sent without a secret, it would be kept
      if (secret.value) n.secret = secret.value;
      else if (!remove.checked) n.keep_secret = true;
    }
    return notifiers;
  }

  // Selects `value`, adding it as an option if the page does not list it (a metric
  // newer than this page, say): an edit must not change what it does not touch.
  function choose(select, value) {
    if (![...select.options].some((o) => o.value === value)) select.append(el('option', { value }, value));
    select.value = value;
  }

  async function startEditing(name, btn) {
    let rule;
    try {
      btn.disabled = true;
      rule = await api('/alerts/rules/' + enc(name)); // fresh: the table may be 2 s old
    } catch (e) {
      clear(out, errorNotice(e, 'Could not load rule ' + name));
      return;
    } finally {
      btn.disabled = false;
    }
    editing = rule;
    ruleName.value = rule.name;
    ruleName.readOnly = true;
    ruleQueue.value = rule.queue;
    choose(ruleMetric, rule.metric);
    choose(ruleOp, rule.op);
    ruleThreshold.value = String(rule.threshold);
    ruleFor.value = String((rule.for_ms || 0) / 1000);
    choose(ruleSeverity, rule.severity);
    showNotifiers(rule.notifiers || []);
    ruleForm.setAttribute('aria-label', 'Edit alert rule ' + rule.name);
    ruleSummary.textContent = 'Edit rule ' + rule.name;
    ruleSubmit.textContent = 'Save changes';
    ruleCancel.hidden = false;
    ruleDetails.open = true;
    clear(ruleOut, notice('info', 'Editing rule ' + rule.name + '. Its name stays; saving replaces the rule' +
      ((rule.notifiers || []).length ? ', with its notifiers as they are.' : '.')));
    ruleQueue.focus();
  }

  function stopEditing() {
    editing = null;
    secrets = [];
    ruleForm.reset();
    ruleName.readOnly = false;
    showNotifiers([]);
    ruleForm.setAttribute('aria-label', 'New alert rule');
    ruleSummary.textContent = 'New rule';
    ruleSubmit.textContent = 'Save rule';
    ruleCancel.hidden = true;
  }

  function showNotifiers(list) {
    secrets = [];
    const items = list.map((n, i) => {
      const what = el('span', 'Notifier ' + (i + 1) + ': ' + n.kind + ' ', el('code', n.url || ''));
      if (n.kind !== 'webhook') return el('li', what);
      what.append(n.signed ? ' (signed)' : ' (unsigned)');
      const secret = el('input', { id: 'rule-secret-' + i, type: 'password', autocomplete: 'new-password' });
      const remove = el('input', {
        id: 'rule-secret-remove-' + i, type: 'checkbox',
        onchange: () => { secret.disabled = remove.checked; if (remove.checked) secret.value = ''; },
      });
      secrets.push({ index: i, secret, remove });
      return el('li', what, el('div.secret',
        f('rule-secret-' + i, 'New secret of notifier ' + (i + 1), secret),
        n.signed ? el('label.check', { for: 'rule-secret-remove-' + i }, remove, 'Remove the secret of notifier ' + (i + 1)) : null));
    });
    clear(ruleNotifiers, list.length ? [
      el('legend', 'Notifiers, kept as they are'),
      el('ul.plain', items),
      secrets.length ? el('p.muted', 'A webhook keeps its secret (the server never shows it) unless a new one is typed ' +
        'or it is removed.') : null,
    ] : []);
    ruleNotifiers.hidden = !list.length;
  }

  // ---- new silence
  const silId = el('input', { id: 'silence-id', required: true, autocomplete: 'off' });
  const silRule = el('input', { id: 'silence-rule', autocomplete: 'off', placeholder: 'every rule' });
  const silQueue = el('input', { id: 'silence-queue', autocomplete: 'off', placeholder: 'every queue' });
  const silMinutes = el('input', { id: 'silence-minutes', type: 'number', min: '1', max: '43200', value: '60', required: true });
  const silComment = el('input', { id: 'silence-comment', autocomplete: 'off' });
  const silOut = el('div', { 'aria-live': 'polite' });
  const silSubmit = el('button', { type: 'submit' }, 'Add silence');
  const silForm = el('form.inline', {
    'aria-label': 'New silence',
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { duration_ms: Math.round(Number(silMinutes.value) * 60000) };
      if (silRule.value.trim()) body.rule = silRule.value.trim();
      if (silQueue.value.trim()) body.queue = silQueue.value.trim();
      if (silComment.value.trim()) body.comment = silComment.value.trim();
      const r = await act(silSubmit, silOut, () => api('/alerts/silences/' + enc(silId.value.trim()), { method: 'PUT', body }), (v) => 'Silence ' + v.id + ' added until ' + new Date(v.until).toLocaleString('en-GB') + '.');
      if (r) { silId.value = ''; refresh(); }
    },
  }, f('silence-id', 'Id', silId), f('silence-rule', 'Rule', silRule), f('silence-queue', 'Queue', silQueue),
  f('silence-minutes', 'Minutes', silMinutes), f('silence-comment', 'Comment', silComment), silSubmit);
  silences.append(el('details', el('summary', 'New silence'), silForm, silOut));

  root.append(el('div.page-head', el('h1', 'Metrics and alerts')), out, firing, rules, silences, historyPanel);

  // A delete button that asks to be pressed a second time (kept armed across the
  // table being redrawn by a refresh).
  const armed = new Map(); // label -> disarm timer
  function deleteButton(label, what, fn) {
    const b = button('Delete', async () => {
      if (!armed.has(label)) {
        arm(true);
        armed.set(label, setTimeout(() => { armed.delete(label); arm(false); }, CONFIRM_MS));
        return;
      }
      clearTimeout(armed.get(label));
      armed.delete(label);
      const r = await act(b, out, async () => { await fn(); return true; }, what + ' deleted.');
      if (r) refresh(); else arm(false);
    }, { class: 'secondary', 'aria-label': 'Delete ' + label });
    function arm(on) {
      b.textContent = on ? 'Confirm delete' : 'Delete';
      b.classList.toggle('danger', on);
      b.classList.toggle('secondary', !on);
      b.setAttribute('aria-label', (on ? 'Confirm: delete ' : 'Delete ') + label);
    }
    if (armed.has(label)) arm(true);
    return b;
  }

  function editButton(name) {
    const b = button('Edit', () => startEditing(name, b), { class: 'secondary', 'aria-label': 'Edit rule ' + name });
    return b;
  }

  const condition = (r) => r.metric + ' ' + r.op + ' ' + num(r.threshold, 3) + (r.for_ms ? ' for ' + ms(r.for_ms) : '');

  async function loadFiring() {
    try {
      const a = await api('/alerts');
      const rows = (a.rules || []).map((r) => el('tr', { 'data-rule': r.name },
        td(el('strong', r.name), 'wrap'), td(link(queueHref(r.queue), r.queue), 'wrap'), td(condition(r)),
        td(r.value === undefined || r.value === null ? '—' : num(r.value, 3), 'num'),
        td(badge(r.severity, r.severity === 'critical' ? 'bad' : r.severity === 'warning' ? 'warn' : 'info')),
        td(time(r.firing_since), 'hide-narrow'), td(r.silenced ? badge('silenced', 'neutral') : 'notifying')));
      clear(firing.body, table('Firing alerts', ['Rule', 'Queue', 'Condition', { label: 'Value', cls: 'num' }, 'Severity', { label: 'Since', cls: 'hide-narrow' }, 'Notifications'],
        rows, { captionHidden: true, empty: 'Nothing is firing.' }));
    } catch (e) { clear(firing.body, errorNotice(e, 'Could not load the firing alerts')); }
  }

  async function loadRules() {
    try {
      const a = await api('/alerts/rules');
      const rows = (a.rules || []).map((r) => el('tr', { 'data-rule': r.name },
        td(el('strong', r.name), 'wrap'), td(link(queueHref(r.queue), r.queue), 'wrap'), td(condition(r)),
        td(badge(r.severity, r.severity === 'critical' ? 'bad' : r.severity === 'warning' ? 'warn' : 'info')),
        td(r.firing ? stateBadge('firing') : badge('ok', 'ok')), td(r.silenced ? 'yes' : 'no', 'hide-narrow'),
        td(num((r.notifiers || []).length), 'num hide-narrow'),
        td(el('div.row-actions', editButton(r.name),
          deleteButton('rule ' + r.name, 'Rule ' + r.name, () => api('/alerts/rules/' + enc(r.name), { method: 'DELETE' }))))));
      clear(rules.body, table('Alert rules', ['Rule', 'Queue', 'Condition', 'Severity', 'State', { label: 'Silenced', cls: 'hide-narrow' },
        { label: 'Notifiers', cls: 'num hide-narrow' }, 'Actions'], rows, { captionHidden: true, empty: 'No rules yet.' }));
    } catch (e) { clear(rules.body, errorNotice(e, 'Could not load the rules')); }
  }

  async function loadSilences() {
    try {
      const a = await api('/alerts/silences');
      const rows = (a.silences || []).map((s) => el('tr', { 'data-silence': s.id },
        td(el('strong', s.id), 'wrap'),
        td([s.rule ? 'rule ' + s.rule : null, s.queue ? 'queue ' + s.queue : null].filter(Boolean).join(', ') || 'every alert', 'wrap'),
        td(time(s.until)), td(s.active ? badge('active', 'info') : badge('expired', 'neutral')), td(s.comment || '', 'wrap hide-narrow'),
        td(deleteButton('silence ' + s.id, 'Silence ' + s.id, () => api('/alerts/silences/' + enc(s.id), { method: 'DELETE' })))));
      clear(silences.body, table('Silences', ['Id', 'Mutes', 'Until', 'State', { label: 'Comment', cls: 'hide-narrow' }, 'Actions'], rows,
        { captionHidden: true, empty: 'No silences.' }));
    } catch (e) { clear(silences.body, errorNotice(e, 'Could not load the silences')); }
  }

  function showHistory() {
    const p = pageSlice(history, historyPage, HISTORY_PAGE_LEN);
    const rows = p.items.map((t) => el('tr', td(time(t.at)), td(t.rule, 'wrap'), td(stateBadge(t.status)),
      td(num(t.value, 3), 'num'), td(t.silenced ? 'silenced' : 'notified')));
    clear(historyPanel.body,
      table('Alert transitions, newest first', ['Time', 'Rule', 'Status', { label: 'Value', cls: 'num' }, 'Notification'], rows,
        { captionHidden: true, empty: 'No transitions yet.' }),
      p.pages > 1 ? pageControls('History', p.page, p.pages, (n) => { historyPage = n; showHistory(); }) : null,
      el('p.muted', 'The server keeps the last 1,000 transitions.'));
  }

  async function loadHistory() {
    try {
      history = (await api('/alerts/history')).transitions || [];
      showHistory();
    } catch (e) { clear(historyPanel.body, errorNotice(e, 'Could not load the history')); }
  }

  async function refresh() {
    await Promise.all([loadFiring(), loadRules(), loadSilences(), loadHistory()]);
  }

  refresh();
  return { refresh, relevant: (type) => type === 'alert' };
}

