// The full-size viewer: one image of a collection in a modal dialog with its details and
// actions (search with it, relabel, delete, open the original). Used by the search results,
// the gallery and the duplicates page. Escape closes it (the dialog's own "cancel"), and the
// focus goes back to the element that opened it.
import { $, el } from './dom.js';
import { api, enc, withKey } from './api.js';
import { reportError } from './status.js';
import { fmtInt, fmtPct, fmtTime, num, plural } from './format.js';
import { isQueryCopy, rawSimilarityText, resultDistance, similarityBand } from './similarity.js';

// Relabels images by id; returns how many changed. Each PATCH answers at once in search.
export async function relabelImages(collection, ids, label) {
  let done = 0;
  for (const id of ids) {
    await api(`/api/collections/${enc(collection)}/images/${enc(id)}`, { method: 'PATCH', json: { label } });
    done += 1;
  }
  return done;
}

// Deletes images by id in one request; returns how many were deleted.
export async function deleteImages(collection, ids) {
  const r = await api(`/api/collections/${enc(collection)}/images/delete`, { method: 'POST', json: { ids: ids.map(Number) } });
  return num(r && r.deleted) || 0;
}

export const confirmDelete = (n, collection) => window.confirm(
  `Delete ${n === 1 ? 'this image' : plural(n, 'image')} from "${collection}"? Searches stop finding ${n === 1 ? 'it' : 'them'} at once; this cannot be undone.`);

// A band chip: the words and color of a distance, the raw numbers on hover and in the viewer.
export function bandChip(r) {
  const band = similarityBand(resultDistance(r));
  return el('span', {
    class: `band band-${band.key}`, 'data-testid': 'similarity-band', 'data-band': band.key,
    title: rawSimilarityText(r), text: band.text,
  });
}

const view = {
  item: null, // the image shown: image JSON, plus the hit's distance/similarity/rank in search
  opener: null,
  collection: null,
  query: null,
  hooks: {},
};

// item: an image or search hit ({id, file_name, thumbnail_url, ...}); opts: {collection, opener,
// query (the search's query, to mark its copy), onSearch(item), onChanged(kind, item)}.
export function openViewer(item, opts = {}) {
  view.item = { ...item };
  view.opener = opts.opener || document.activeElement;
  view.collection = opts.collection || item.collection;
  view.query = opts.query || null;
  view.hooks = { onSearch: opts.onSearch, onChanged: opts.onChanged };
  $('viewer-status').textContent = '';
  $('viewer-search').hidden = !opts.onSearch;
  render();
  const dlg = $('viewer');
  if (!dlg.open) dlg.showModal();
  $('viewer-close').focus();
  // The stored record has what a search hit lacks (created time, hash, the original's URL).
  const want = view.item;
  api(`/api/collections/${enc(view.collection)}/images/${enc(item.id)}`).then((full) => {
    if (view.item !== want || !full) return;
    view.item = { ...full, ...pick(want, ['distance', 'similarity', 'rank', 'partition', 'partition_name']) };
    render();
  }).catch((err) => {
    if (view.item === want) $('viewer-status').textContent = `Could not read the stored details: ${err.message}`;
  });
}

function pick(o, keys) {
  const out = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

function render() {
  const r = view.item;
  const original = r.original_url ? withKey(r.original_url) : null;
  const img = $('viewer-img');
  const src = original || withKey(r.thumbnail_url);
  if (img.getAttribute('src') !== src) img.src = src;
  img.alt = r.file_name || `image ${r.id}`;
  $('viewer-img-note').textContent = original ? '' : 'Thumbnail: this collection keeps no original of the image.';
  $('viewer-title').textContent = r.file_name || `Image ${r.id}`;
  const link = $('viewer-original');
  link.hidden = !original;
  if (original) link.href = original;
  const hasHit = r.distance !== undefined || r.similarity !== undefined;
  const badges = [];
  if (hasHit) {
    badges.push(bandChip(r));
    badges.push(el('span', { class: 'muted small', text: rawSimilarityText(r) }));
  }
  if (view.query && hasHit && isQueryCopy({ ...r, collection: view.collection }, view.query)) {
    badges.push(el('span', { class: 'chip chip-ok', 'data-testid': 'viewer-your-image', text: 'your image' }));
  }
  $('viewer-badges').replaceChildren(...badges);
  const kv = (k, v) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }));
  const rows = [
    kv('File', r.file_name || '–'),
    kv('Path', r.path || '–'),
    kv('Label', r.label || '(none)'),
    kv('Partition', r.partition_name || r.predicted_name || (r.partition !== undefined ? `class ${r.partition}` : '–')),
  ];
  if (hasHit) {
    rows.push(kv('Similarity', `${similarityBand(resultDistance(r)).text} · ${fmtPct(num(r.similarity))}`));
    if (num(r.rank) > 0) rows.push(kv('Rank', `#${fmtInt(num(r.rank))}`));
  }
  rows.push(kv('Added', fmtTime(num(r.created_at_ms))));
  rows.push(kv('Id', String(r.id)));
  $('viewer-details').replaceChildren(...rows);
  const label = $('viewer-label');
  if (document.activeElement !== label) label.value = r.label || '';
  const dlg = $('viewer');
  dlg.dataset.id = String(r.id);
  dlg.dataset.label = r.label || '';
}

function close() {
  const dlg = $('viewer');
  if (dlg.open) dlg.close();
}

function onClosed() {
  const opener = view.opener;
  view.item = null;
  // The opener may have been redrawn (a relabel re-renders its card): find it again by id.
  if (opener && opener.isConnected) opener.focus();
  else if (opener && opener.dataset && opener.dataset.focusKey) {
    const again = document.querySelector(`[data-focus-key="${CSS.escape(opener.dataset.focusKey)}"]`);
    if (again) again.focus();
  }
}

async function relabel(ev) {
  ev.preventDefault();
  const r = view.item;
  if (!r) return;
  const label = $('viewer-label').value.trim();
  try {
    const updated = await api(`/api/collections/${enc(view.collection)}/images/${enc(r.id)}`, { method: 'PATCH', json: { label } });
    view.item = { ...r, ...(updated || {}), label };
    $('viewer-status').textContent = label ? `Label set to "${label}".` : 'Label removed.';
    render();
    if (view.hooks.onChanged) view.hooks.onChanged('relabel', view.item);
  } catch (err) {
    $('viewer-status').textContent = `Could not relabel: ${err.message}`;
    reportError(err, 'viewer', 'Could not relabel the image');
  }
}

async function remove() {
  const r = view.item;
  if (!r || !confirmDelete(1, view.collection)) return;
  try {
    await deleteImages(view.collection, [r.id]);
    const gone = r;
    close();
    if (view.hooks.onChanged) view.hooks.onChanged('delete', gone);
  } catch (err) {
    $('viewer-status').textContent = `Could not delete: ${err.message}`;
    reportError(err, 'viewer', 'Could not delete the image');
  }
}

export function wireViewer() {
  const dlg = $('viewer');
  dlg.addEventListener('close', onClosed);
  // A click on the backdrop (outside the dialog's box) closes it too.
  dlg.addEventListener('click', (e) => { if (e.target === dlg) close(); });
  $('viewer-close').addEventListener('click', close);
  $('viewer-relabel-form').addEventListener('submit', relabel);
  $('viewer-delete').addEventListener('click', remove);
  $('viewer-search').addEventListener('click', () => {
    const r = view.item;
    const fn = view.hooks.onSearch;
    if (!r || !fn) return;
    view.opener = null; // the search moves the focus to its results
    close();
    fn({ ...r, collection: view.collection });
  });
}
