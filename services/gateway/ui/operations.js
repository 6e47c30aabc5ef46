// Rebuild operations (re-embedding a collection), followed until they end. Trackers survive a
// reload of the page: their ids are kept for the browser session.
import { $, button, el, sleep } from './dom.js';
import { api, enc, parseJson } from './api.js';
import { banner, reportError } from './status.js';
import { fmtDuration, fmtInt, isNum, num } from './format.js';
import { emit, LS_OPERATIONS, maint, TERMINAL_JOB_STATES } from './state.js';
import { loadCollections } from './collections.js';

function saveOperations() {
  const list = [...maint.operations.values()].filter((t) => !t.ended)
    .map((t) => ({ id: t.id, title: t.title, collection: t.collection }));
  sessionStorage.setItem(LS_OPERATIONS, JSON.stringify(list));
}

export function resumeOperations() {
  const list = parseJson(sessionStorage.getItem(LS_OPERATIONS) || '') || [];
  for (const o of Array.isArray(list) ? list : []) {
    if (o && o.id) {
      trackOperation(o.id, o.title || `Rebuild ${o.id}`, o.collection || null).finished
        .then(() => loadCollections().catch(() => {}));
    }
  }
}

function opView(t) {
  const fill = el('div', { class: 'bar-fill' });
  const count = el('b', { text: '0 / 0' });
  const failed = el('b', { text: '0' });
  const ips = el('b', { text: '0.0' });
  const status = el('span', { text: 'pending' });
  const message = el('p', { class: 'progress-summary' });
  const dismiss = button('Dismiss', 'dismiss', () => {
    t.node.remove();
    maint.operations.delete(t.id);
    $('operations-panel').hidden = maint.operations.size === 0;
  }, { attrs: { hidden: true } });
  t.node = el('div', { class: 'progress running op', 'data-testid': 'operation', 'data-id': t.id, 'data-state': 'pending' },
    el('div', { class: 'progress-head' }, el('span', { class: 'progress-title', text: t.title }), dismiss),
    el('div', { class: 'bar', role: 'progressbar', 'aria-label': t.title, 'aria-valuemin': 0, 'aria-valuemax': 100 }, fill),
    el('div', { class: 'progress-stats' },
      el('span', {}, count, ' done'), el('span', {}, failed, ' failed'), el('span', {}, ips, ' images/s'), status),
    message);
  t.show = (d) => {
    const done = num(d.done) || 0;
    const bad = num(d.failed) || 0;
    const total = num(d.total) || 0;
    const ended = TERMINAL_JOB_STATES.has(d.state);
    const frac = total > 0 ? Math.min(1, (done + bad) / total) : ended ? 1 : 0;
    fill.style.width = `${(frac * 100).toFixed(1)}%`;
    fill.parentElement.setAttribute('aria-valuenow', String(Math.round(frac * 100)));
    count.textContent = `${fmtInt(done)} / ${fmtInt(total)}`;
    failed.textContent = fmtInt(bad);
    ips.textContent = num(d.items_per_second) > 0 ? num(d.items_per_second).toFixed(1) : '0.0';
    const secs = (num(d.updated_at_ms) - num(d.started_at_ms)) / 1000;
    status.textContent = `${d.state}${isNum(secs) && secs > 0 ? ` · ${fmtDuration(secs)}` : ''}`;
    message.textContent = d.message || '';
    t.node.dataset.state = d.state;
    t.node.classList.toggle('running', !ended);
    t.node.classList.toggle('finished', ended);
    t.node.classList.toggle('has-failures', bad > 0 || d.state === 'failed' || d.state === 'cancelled');
    dismiss.hidden = !ended;
    if (t.rowView) t.rowView(d);
  };
}

// Follows /api/operations/{id} about once a second until it ends. Returns the tracker;
// tracker.finished resolves with the last state read.
export function trackOperation(id, title, collection = null) {
  const existing = maint.operations.get(id);
  if (existing) return existing;
  const t = { id, title, collection, data: null, ended: false, node: null, show: null, rowView: null };
  opView(t);
  maint.operations.set(id, t);
  if (collection) maint.rebuilding.set(collection, t);
  $('operations').prepend(t.node);
  $('operations-panel').hidden = false;
  saveOperations();
  emit('collections');
  t.finished = pollOperation(t);
  return t;
}

async function pollOperation(t) {
  let misses = 0;
  for (;;) {
    try {
      const d = await api(`/api/operations/${enc(t.id)}`);
      banner.clear(`op:${t.id}`);
      misses = 0;
      t.data = d || {};
      t.show(t.data);
      if (TERMINAL_JOB_STATES.has(t.data.state)) break;
    } catch (err) {
      misses += 1;
      if (err.code === 'not_found' || misses >= 30) {
        t.data = { state: 'failed', message: `Lost track of the rebuild: ${err.message}` };
        t.show(t.data);
        break;
      }
      reportError(err, `op:${t.id}`, 'Could not read the rebuild progress');
    }
    await sleep(1000);
  }
  t.ended = true;
  if (t.data.state === 'failed') banner.show(`${t.title} failed: ${t.data.message || 'no reason given'}`, `op:${t.id}`);
  if (t.collection && maint.rebuilding.get(t.collection) === t) maint.rebuilding.delete(t.collection);
  saveOperations();
  emit('collections');
  return t.data;
}

