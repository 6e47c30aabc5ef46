// The Duplicates tab: start a near-duplicate run on a collection (an operation with progress),
// then review each group: keep one image, delete the others. REST:
// POST/GET /api/collections/{name}/duplicates, /api/operations/{id},
// POST /api/collections/{name}/images/delete.
import { $, el, sleep } from './dom.js';
import { api, enc, withKey } from './api.js';
import { banner, reportError } from './status.js';
import { fmtInt, fmtPct, fmtTime, num, plural } from './format.js';
import { on, state, TERMINAL_JOB_STATES } from './state.js';
import { refreshDetail } from './collections.js';
import { confirmDelete, deleteImages, openViewer } from './viewer.js';

const dupes = { visible: false, seq: 0, loadedFor: null, polling: null, groups: [] };

function showProgress(op) {
  const box = $('dupes-progress');
  if (!op) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const done = num(op.done) || 0;
  const total = num(op.total) || 0;
  const ended = TERMINAL_JOB_STATES.has(op.state);
  const frac = total > 0 ? Math.min(1, done / total) : ended ? 1 : 0;
  box.dataset.state = op.state || 'pending';
  box.classList.toggle('running', !ended);
  box.classList.toggle('finished', ended);
  box.classList.toggle('has-failures', op.state === 'failed' || op.state === 'cancelled');
  $('dupes-progress-fill').style.width = `${(frac * 100).toFixed(1)}%`;
  box.querySelector('[role="progressbar"]').setAttribute('aria-valuenow', String(Math.round(frac * 100)));
  $('dupes-progress-count').textContent = `${fmtInt(done)} / ${fmtInt(total)}`;
  $('dupes-progress-title').textContent = ended
    ? op.state === 'succeeded' ? `Finished ${fmtTime(num(op.updated_at_ms))}` : `The run ended: ${op.state}${op.message ? ` — ${op.message}` : ''}`
    : 'Looking for duplicates…';
  $('dupes-progress-state').textContent = op.state || '';
}

async function loadGroups() {
  const coll = state.current;
  const seq = ++dupes.seq;
  const box = $('dupes-groups');
  if (!coll) {
    box.replaceChildren();
    $('dupes-note').textContent = 'No collection yet.';
    return;
  }
  box.dataset.state = 'loading';
  let d;
  try {
    d = (await api(`/api/collections/${enc(coll)}/duplicates`)) || {};
    banner.clear('dupes');
  } catch (err) {
    if (seq !== dupes.seq) return;
    box.dataset.state = 'error';
    reportError(err, 'dupes', `Could not read the duplicates of "${coll}"`);
    return;
  }
  if (seq !== dupes.seq) return;
  dupes.loadedFor = coll;
  const op = d.operation || null;
  showProgress(op);
  if (num(d.min_similarity) > 0 && !$('dupes-threshold').value) $('dupes-threshold').placeholder = `default ${d.min_similarity}`;
  dupes.groups = d.groups || [];
  renderGroups(d, op);
  if (op && !TERMINAL_JOB_STATES.has(op.state)) follow(op.id || op.operation_id, coll);
}

function renderGroups(d, op) {
  const box = $('dupes-groups');
  const groups = dupes.groups;
  const extra = groups.reduce((n, g) => n + Math.max(0, (g.members || []).length - 1), 0);
  const total = num(d.total_groups) > groups.length ? ` of ${fmtInt(num(d.total_groups))}, largest first` : '';
  $('dupes-summary').textContent = groups.length
    ? `(${plural(groups.length, 'group')}${total}, ${plural(extra, 'image')} to review at similarity ≥ ${d.min_similarity ?? '?'})` : '';
  if (!groups.length) {
    $('dupes-note').textContent = !op ? 'No run yet on this collection: choose a threshold and press "Find duplicates".'
      : TERMINAL_JOB_STATES.has(op.state) ? 'No near-duplicates at this threshold.' : 'The groups show here when the run ends.';
  } else {
    $('dupes-note').textContent = 'In each group, choose the image to keep (the first is the oldest), then delete the others.';
  }
  box.replaceChildren(...groups.map((g, i) => groupView(g, i)));
  box.dataset.state = 'done';
  box.dataset.count = String(groups.length);
}

function groupView(g, gi) {
  const members = [...(g.members || [])].sort((a, b) => num(a.created_at_ms) - num(b.created_at_ms));
  const name = `keep-${gi}`;
  const resolve = el('button', { type: 'button', class: 'btn btn-small btn-danger', 'data-testid': 'dupe-resolve' },
    `Keep the chosen one, delete ${plural(members.length - 1, 'other')}`);
  const node = el('section', { class: 'dupe-group', 'data-testid': 'dupe-group', 'data-ids': members.map((m) => m.id).join(',') },
    el('h3', { text: `Group ${gi + 1} · ${plural(members.length, 'image')}` }),
    el('div', { class: 'dupe-members' }, ...members.map((m, i) => {
      const open = el('button', { type: 'button', class: 'thumb-btn', 'aria-label': `Open ${m.file_name}` },
        el('span', { class: 'thumb' }, el('img', { src: withKey(m.thumbnail_url), alt: '', loading: 'lazy' })));
      open.addEventListener('click', () => openViewer(m, { collection: state.current, opener: open, onChanged: () => loadGroups() }));
      return el('div', { class: 'card dupe-member', 'data-testid': 'dupe-member', 'data-id': String(m.id) },
        open,
        el('label', { class: 'card-body keep-choice' },
          el('span', { class: 'sim-row' },
            el('input', { type: 'radio', name, value: String(m.id), checked: i === 0, 'data-testid': 'dupe-keep' }),
            el('span', { class: 'strong', text: 'Keep' }),
            num(m.similarity) > 0 && i > 0 ? el('span', { class: 'muted small', text: fmtPct(num(m.similarity)) }) : null),
          el('span', { class: 'fname', title: m.path || m.file_name, text: m.file_name }),
          el('span', { class: 'muted small', text: `${m.label || '(no label)'} · ${fmtTime(num(m.created_at_ms))}` })));
    })),
    el('div', { class: 'form-actions' }, resolve,
      el('button', { type: 'button', class: 'btn btn-small', text: 'Not duplicates: skip', onclick: () => dropGroup(node) })));
  resolve.addEventListener('click', async () => {
    const keep = node.querySelector(`input[name="${name}"]:checked`);
    const ids = members.map((m) => String(m.id)).filter((id) => !keep || id !== keep.value);
    if (!keep || !ids.length || !confirmDelete(ids.length, state.current)) return;
    resolve.disabled = true;
    try {
      const n = await deleteImages(state.current, ids);
      banner.clear('dupes-edit');
      $('dupes-note').textContent = `Group ${gi + 1}: kept ${keep.value}, deleted ${plural(n, 'image')}.`;
      dropGroup(node);
      refreshDetail().catch(() => {});
    } catch (err) {
      resolve.disabled = false;
      reportError(err, 'dupes-edit', 'Could not delete the duplicates');
    }
  });
  return node;
}

// A reviewed group leaves the list; the focus moves to the next one's first choice.
function dropGroup(node) {
  const next = node.nextElementSibling || node.previousElementSibling;
  node.remove();
  const box = $('dupes-groups');
  box.dataset.count = String(box.children.length);
  const target = next && next.querySelector('input[type="radio"]:checked');
  if (target) target.focus();
  else $('dupes-start').focus();
}

async function start() {
  const coll = state.current;
  if (!coll) {
    banner.show('Choose a collection first.', 'dupes');
    return;
  }
  const raw = $('dupes-threshold').value.trim();
  const body = {};
  if (raw) {
    const v = Number(raw);
    if (!Number.isFinite(v) || v < 0 || v > 1) {
      banner.show('The minimum similarity is a number from 0 to 1, e.g. 0.8; leave it empty for the default.', 'dupes');
      $('dupes-threshold').focus();
      return;
    }
    body.min_similarity = v;
  }
  const btn = $('dupes-start');
  btn.disabled = true;
  try {
    const r = await api(`/api/collections/${enc(coll)}/duplicates`, { method: 'POST', json: body });
    banner.clear('dupes');
    $('dupes-groups').replaceChildren();
    $('dupes-groups').dataset.state = 'running'; // the groups of this run are not listed yet
    $('dupes-note').textContent = 'The groups show here when the run ends.';
    showProgress({ state: 'pending', done: 0, total: 0 });
    await follow(r.operation_id, coll);
  } catch (err) {
    reportError(err, 'dupes', `Could not look for duplicates in "${coll}"`);
  } finally {
    btn.disabled = false;
  }
}

// Polls the operation until it ends, then lists the groups.
async function follow(id, coll) {
  if (!id || dupes.polling === id) return;
  dupes.polling = id;
  try {
    for (let misses = 0; ;) {
      let op;
      try {
        op = await api(`/api/operations/${enc(id)}`);
        misses = 0;
      } catch (err) {
        misses += 1;
        if (err.code === 'not_found' || misses > 20) {
          reportError(err, 'dupes', 'Lost track of the duplicate search');
          return;
        }
        await sleep(1000);
        continue;
      }
      if (coll !== state.current) return;
      showProgress(op);
      if (TERMINAL_JOB_STATES.has(op.state)) break;
      await sleep(700);
    }
    if (coll === state.current) await loadGroups();
  } finally {
    if (dupes.polling === id) dupes.polling = null;
  }
}

export function setDupesVisible(visible) {
  dupes.visible = visible;
  if (visible && state.current && dupes.loadedFor !== state.current) loadGroups();
}

export function wireDupes() {
  $('dupes-start').addEventListener('click', start);
  $('dupes-refresh').addEventListener('click', loadGroups);
  on('collection', () => {
    dupes.loadedFor = null;
    dupes.groups = [];
    $('dupes-groups').replaceChildren();
    showProgress(null);
    if (dupes.visible) loadGroups();
  });
}
