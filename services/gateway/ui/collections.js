// The Index tab's collections: the list, the selects of both tabs, the detail panel, create,
// clear and delete.
import { $, el } from './dom.js';
import { api, enc } from './api.js';
import { banner, reportError } from './status.js';
import { fmtBytes, fmtInt, refinementText } from './format.js';
import { emit, LS_COLLECTION, state } from './state.js';

export const selects = () => [$('collection-select'), $('index-collection-select'), $('browse-collection'), $('dupes-collection')];

export async function loadCollections() {
  let data;
  try {
    data = await api('/api/collections');
    banner.clear('collections');
  } catch (err) {
    reportError(err, 'collections', 'Could not list the collections');
    throw err;
  }
  state.collections = (data && data.collections) || [];
  const names = state.collections.map((c) => c.name);
  if (!state.current || !names.includes(state.current)) {
    const stored = localStorage.getItem(LS_COLLECTION);
    const def = state.config.default_collection;
    state.current = names.includes(stored) ? stored
      : names.includes(def) ? def
        : names[0] || null;
  }
  renderCollectionSelects();
  renderCollectionList();
  return state.collections;
}

function renderCollectionSelects() {
  for (const s of selects()) {
    const opts = state.collections.length
      ? state.collections.map((c) => el('option', { value: c.name, text: `${c.name} (${fmtInt(c.count)})` }))
      : [el('option', { value: '', text: 'No collection yet: create one on the Index tab' })];
    s.replaceChildren(...opts);
    s.value = state.current || '';
    s.disabled = state.collections.length === 0;
  }
}

function renderCollectionList() {
  emit('collections'); // the Maintenance tab lists the same collections
  const list = $('coll-list');
  if (!state.collections.length) {
    list.replaceChildren(el('p', { class: 'muted', text: 'No collections yet. Create one above.' }));
    return;
  }
  list.replaceChildren(...state.collections.map((c) => el('button', {
    type: 'button',
    class: `coll-card${c.name === state.current ? ' selected' : ''}`,
    'data-testid': 'collection-card',
    'data-name': c.name,
    onclick: () => chooseCollection(c.name),
  },
  el('span', { class: 'coll-name', text: c.name }),
  el('span', { class: 'coll-count', text: `${fmtInt(c.count)} images` }),
  el('span', { class: 'muted small', text: `${c.dims}-d · ${c.model ? `${c.model.name} ${c.model.version}` : '?'}` }),
  c.description ? el('span', { class: 'small coll-desc', text: c.description }) : null)));
}

// silent: the caller redraws itself (the search restored from a link must not search twice).
export function chooseCollection(name, { silent = false } = {}) {
  if (!name) return;
  const changed = name !== state.current;
  state.current = name;
  localStorage.setItem(LS_COLLECTION, name);
  for (const s of selects()) s.value = name;
  renderCollectionList();
  if (changed) state.stats = null;
  refreshDetail().catch(() => {});
  if (changed && !silent) emit('collection');
}

export function currentCollection() {
  return state.collections.find((c) => c.name === state.current) || null;
}

let detailInFlight = null;
let detailFor = null;
export async function refreshDetail() {
  const name = state.current;
  renderDetailButtons();
  if (!name) {
    $('detail-title').textContent = 'No collection selected';
    $('detail-description').textContent = 'Create a collection to start indexing images.';
    for (const id of ['collection-count', 'detail-dims', 'detail-model', 'detail-bytes']) $(id).textContent = '–';
    $('partitions-body').replaceChildren();
    $('labels-body').replaceChildren();
    $('labels-note').textContent = '';
    $('partitions-note').textContent = '';
    return;
  }
  // A read for another collection (just switched away from) does not answer for this one.
  if (detailInFlight && detailFor === name) return detailInFlight;
  detailFor = name;
  const run = (async () => {
    try {
      const d = await api(`/api/collections/${enc(name)}`);
      banner.clear('detail');
      if (name !== state.current) return;
      state.stats = d;
      state.statsStale = false;
      renderDetail(d);
      emit('stats');
    } catch (err) {
      if (err.code === 'not_found') {
        loadCollections().catch(() => {});
        return;
      }
      reportError(err, 'detail', `Could not read collection "${name}"`);
    } finally {
      if (detailInFlight === run) detailInFlight = null;
    }
  })();
  detailInFlight = run;
  return run;
}

function renderDetail(d) {
  const c = d.collection || {};
  const count = Number.isFinite(d.count) ? d.count : c.count;
  const cached = currentCollection();
  if (cached && cached.count !== count) {
    cached.count = count;
    renderCollectionSelects();
    renderCollectionList();
  }
  $('detail-title').textContent = c.name || state.current;
  $('detail-description').textContent = c.description || '';
  $('collection-count').textContent = String(count);
  $('detail-dims').textContent = String(d.dims ?? c.dims ?? '–');
  $('detail-model').textContent = c.model ? `${c.model.name} ${c.model.version}` : '–';
  $('detail-bytes').textContent = fmtBytes(d.bytes_in_memory);
  $('detail-refined').textContent = refinementText(d.refinement);
  const parts = [...(d.partitions || [])].sort((a, b) => b.count - a.count);
  const top = parts.slice(0, 20);
  const total = count || 1;
  $('partitions-note').textContent = parts.length > 20
    ? `(top 20 of ${parts.length} by size)` : parts.length ? `(${parts.length})` : '(none yet)';
  $('partitions-body').replaceChildren(...top.map((p) => el('tr', {},
    el('td', { class: 'muted', 'data-label': '#', text: String(p.class_index) }),
    el('td', { 'data-label': 'Class', text: p.class_name }),
    el('td', { class: 'num', 'data-label': 'Images', text: fmtInt(p.count) }),
    el('td', { class: 'num', 'data-label': 'In memory', text: fmtBytes(p.bytes_in_memory) }),
    el('td', { class: 'share', 'data-label': 'Share' }, el('span', { class: 'share-bar', style: `--w:${(100 * p.count / total).toFixed(1)}%` })))));
  renderLabels(d.labels, total);
}

// The user's own labels (the folder names of the uploads), most first; "" is unlabelled.
function renderLabels(labels, total) {
  const list = [...(labels || [])].sort((a, b) => b.count - a.count);
  if (!labels) {
    $('labels-note').textContent = '(this gateway does not count labels yet)';
    $('labels-body').replaceChildren();
    return;
  }
  $('labels-note').textContent = list.length ? `(${list.length})` : '(none yet)';
  const browse = (label) => `#browse?${new URLSearchParams({ c: state.current, label }).toString()}`;
  $('labels-body').replaceChildren(...list.map((l) => el('tr', { 'data-testid': 'label-row', 'data-label-name': l.label },
    el('td', { 'data-label': 'Label', class: l.label ? null : 'muted', text: l.label || '(no label)' }),
    el('td', { class: 'num', 'data-label': 'Images', text: fmtInt(l.count) }),
    el('td', { class: 'share', 'data-label': 'Share' }, el('span', { class: 'share-bar', style: `--w:${(100 * l.count / total).toFixed(1)}%` })),
    el('td', { class: 'row-actions' }, el('a', { class: 'btn btn-small', href: browse(l.label), text: 'Browse' })))));
}

export function renderDetailButtons() {
  const none = !state.current;
  $('clear-collection').disabled = none || state.busy;
  $('delete-collection').disabled = none || state.busy;
  $('folder-input').disabled = none || state.busy;
  $('folder-label').classList.toggle('disabled', none || state.busy);
  $('index-server-path').disabled = none || state.busy;
}

async function createCollection(ev) {
  ev.preventDefault();
  const name = $('new-collection-name').value.trim();
  const description = $('new-collection-description').value.trim();
  if (!name) {
    banner.show('Type a name for the new collection.', 'create');
    return;
  }
  const btn = $('create-collection');
  btn.disabled = true;
  try {
    const body = { name };
    if (description) body.description = description;
    const c = await api('/api/collections', { method: 'POST', json: body });
    banner.clear('create');
    $('new-collection-name').value = '';
    $('new-collection-description').value = '';
    state.current = (c && c.name) || name;
    localStorage.setItem(LS_COLLECTION, state.current);
    await loadCollections().catch(() => {});
    chooseCollection(state.current);
  } catch (err) {
    reportError(err, 'create', `Could not create collection "${name}"`);
  } finally {
    btn.disabled = false;
  }
}

// Clear and delete ask first; both tabs use them. They return whether the change happened.
export async function clearCollectionNamed(c, key) {
  if (!window.confirm(`Remove all ${fmtInt(c.count)} images from "${c.name}"? The collection itself is kept.`)) return null;
  try {
    const r = await api(`/api/collections/${enc(c.name)}/clear`, { method: 'POST' });
    banner.clear(key);
    return `Cleared "${c.name}": ${fmtInt(r && r.removed)} images removed.`;
  } catch (err) {
    reportError(err, key, `Could not clear "${c.name}"`);
    return null;
  } finally {
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }
}

export async function deleteCollectionNamed(c, key) {
  if (!window.confirm(`Delete the collection "${c.name}" and its ${fmtInt(c.count)} images? This cannot be undone.`)) return null;
  try {
    await api(`/api/collections/${enc(c.name)}`, { method: 'DELETE' });
    banner.clear(key);
    if (localStorage.getItem(LS_COLLECTION) === c.name) localStorage.removeItem(LS_COLLECTION);
    if (state.current === c.name) state.current = null;
    return `Deleted "${c.name}".`;
  } catch (err) {
    reportError(err, key, `Could not delete "${c.name}"`);
    return null;
  } finally {
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }
}

async function clearCollection() {
  const c = currentCollection();
  if (!c) return;
  const done = await clearCollectionNamed(c, 'manage');
  if (done) $('progress-summary').textContent = done;
}

async function deleteCollection() {
  const c = currentCollection();
  if (c) await deleteCollectionNamed(c, 'manage');
}

export function wireCollections() {
  for (const s of selects()) s.addEventListener('change', () => chooseCollection(s.value));
  $('create-form').addEventListener('submit', createCollection);
  $('clear-collection').addEventListener('click', clearCollection);
  $('delete-collection').addEventListener('click', deleteCollection);
  $('refresh-stats').addEventListener('click', () => {
    loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  });
}
