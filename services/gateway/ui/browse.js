// The Browse tab: a collection's images page by page (a stable cursor from the server), sorted
// by time, name or label, filtered by one label; select one or many to relabel or delete them;
// a click opens the full-size viewer. REST: GET /api/collections/{name}/images.
import { $, el } from './dom.js';
import { api, enc, withKey } from './api.js';
import { banner, reportError } from './status.js';
import { fmtInt, fmtTime, num, plural } from './format.js';
import { on, state } from './state.js';
import { chooseCollection, refreshDetail } from './collections.js';
import { confirmDelete, deleteImages, openViewer, relabelImages } from './viewer.js';
import { browseFromParams, browseToHash, PAGE_SIZE, parseRoute } from './url-state.js';

const PAGE = PAGE_SIZE;
const ALL = '*';
const gallery = {
  visible: false,
  items: [],
  cursor: null,
  total: 0,
  seq: 0,
  key: '', // collection + sort + label of what is shown
  selected: new Set(),
};

function current() {
  const label = $('browse-label').value;
  return {
    collection: state.current,
    sort: $('browse-sort').value || 'time',
    order: $('browse-order').value || 'desc',
    label: label === ALL ? null : label,
  };
}

function updateUrl(replace = true) {
  const hash = browseToHash(current());
  if (location.hash === hash) return;
  if (replace) history.replaceState(null, '', hash);
  else history.pushState(null, '', hash);
  state.routeHash = hash;
}

function listUrl(b, cursor) {
  const p = new URLSearchParams({ sort: b.sort, order: b.order, limit: String(PAGE) });
  if (b.label !== null) p.set('label', b.label);
  if (cursor) p.set('cursor', cursor);
  return `/api/collections/${enc(b.collection)}/images?${p.toString()}`;
}

async function load({ more = false } = {}) {
  const b = current();
  const box = $('gallery');
  if (!b.collection) {
    box.replaceChildren();
    $('gallery-summary').textContent = '';
    showEmpty('No collection yet: create one and add images on the Index tab.');
    return;
  }
  const seq = more ? gallery.seq : ++gallery.seq;
  if (!more) {
    gallery.items = [];
    gallery.cursor = null;
    gallery.selected.clear();
    gallery.key = JSON.stringify(b);
    box.dataset.state = 'loading';
    box.classList.add('loading');
  }
  const btn = $('gallery-more');
  btn.disabled = true;
  try {
    const d = (await api(listUrl(b, more ? gallery.cursor : null))) || {};
    if (seq !== gallery.seq) return;
    banner.clear('browse');
    const fresh = d.images || [];
    gallery.items = gallery.items.concat(fresh);
    gallery.cursor = d.next_cursor || null;
    gallery.total = num(d.total);
    const cards = fresh.map(card);
    if (more) box.append(...cards);
    else box.replaceChildren(...cards);
    if (more && cards[0]) cards[0].querySelector('.thumb-btn').focus();
    box.dataset.state = 'done';
    box.dataset.count = String(gallery.items.length);
    if (!gallery.items.length) {
      showEmpty(b.label !== null ? `No image labelled "${b.label || '(no label)'}" in "${b.collection}".`
        : `"${b.collection}" holds no images yet: add some on the Index tab.`);
    } else {
      $('gallery-empty').hidden = true;
    }
    renderBar();
  } catch (err) {
    if (seq !== gallery.seq) return;
    box.dataset.state = 'error';
    reportError(err, 'browse', `Could not list the images of "${b.collection}"`);
  } finally {
    box.classList.remove('loading');
    btn.disabled = false;
  }
}

function showEmpty(text) {
  $('gallery-empty').textContent = text;
  $('gallery-empty').hidden = false;
  $('gallery-more-wrap').hidden = true;
  renderBar();
}

function card(img) {
  const id = String(img.id);
  const check = el('input', {
    type: 'checkbox', class: 'pick', 'data-testid': 'gallery-check', 'aria-label': `Select ${img.file_name}`,
    onchange: (e) => {
      if (e.target.checked) gallery.selected.add(id);
      else gallery.selected.delete(id);
      e.target.closest('.card').classList.toggle('selected', e.target.checked);
      renderBar();
    },
  });
  const open = el('button', {
    type: 'button', class: 'thumb-btn', 'data-focus-key': `gallery:${id}`, 'aria-label': `Open ${img.file_name}`,
  }, el('span', { class: 'thumb' }, el('img', { src: withKey(img.thumbnail_url), alt: '', loading: 'lazy', decoding: 'async' })));
  open.addEventListener('click', () => openViewer(img, {
    collection: img.collection || state.current,
    opener: open,
    onSearch: (item) => searchWith(item),
    onChanged: (kind, item) => changed(kind, [String(item.id)], item.label),
  }));
  return el('div', {
    class: 'card gallery-card', 'data-testid': 'gallery-item', 'data-id': id, 'data-label': img.label || '',
    'data-name': img.file_name, 'data-created': String(img.created_at_ms),
  },
  check, open,
  el('span', { class: 'card-body' },
    el('span', { class: 'sim-row' },
      el('span', { class: 'label-chip', 'data-testid': 'gallery-label-chip', text: img.label || '—' }),
      el('span', { class: 'muted small', text: fmtTime(num(img.created_at_ms)) })),
    el('span', { class: 'fname', title: img.path || img.file_name, text: img.file_name })));
}

// The search tab with this image as the query (a link: the search lives in the URL).
function searchWith(item) {
  const p = new URLSearchParams({ c: item.collection || state.current, q: String(item.id) });
  location.hash = `#search?${p.toString()}`;
}

function renderBar() {
  const n = gallery.items.length;
  const sel = gallery.selected.size;
  const b = current();
  $('gallery-summary').textContent = n
    ? `${fmtInt(n)} of ${fmtInt(gallery.total)} ${b.label !== null ? `labelled "${b.label || '(no label)'}"` : 'images'} shown` : '';
  $('selection-count').textContent = sel ? `${plural(sel, 'image')} selected` : 'none selected';
  $('gallery-relabel').disabled = !sel;
  $('gallery-delete').disabled = !sel;
  $('gallery-unselect').disabled = !sel;
  $('gallery-select-all').disabled = !n;
  $('gallery-more-wrap').hidden = !gallery.cursor;
}

// Relabelled or deleted images (from the bar or the viewer) change in place: no reload.
function changed(kind, ids, label) {
  const box = $('gallery');
  for (const id of ids) {
    const c = box.querySelector(`[data-testid="gallery-item"][data-id="${CSS.escape(id)}"]`);
    if (kind === 'delete') {
      if (c) c.remove();
      gallery.items = gallery.items.filter((i) => String(i.id) !== id);
      gallery.total = Math.max(0, gallery.total - 1);
      gallery.selected.delete(id);
    } else {
      const item = gallery.items.find((i) => String(i.id) === id);
      if (item) item.label = label;
      if (c) {
        c.dataset.label = label;
        c.querySelector('[data-testid="gallery-label-chip"]').textContent = label || '—';
      }
    }
  }
  renderBar();
  refreshDetail().catch(() => {}); // the label counts changed
}

async function relabelSelected(ev) {
  ev.preventDefault();
  const ids = [...gallery.selected];
  if (!ids.length) return;
  const label = $('gallery-label').value.trim();
  const coll = state.current;
  try {
    await relabelImages(coll, ids, label);
    banner.clear('browse-edit');
    $('gallery-note').textContent = `${plural(ids.length, 'image')} relabelled ${label ? `"${label}"` : '(label removed)'}.`;
    changed('relabel', ids, label);
  } catch (err) {
    reportError(err, 'browse-edit', 'Could not relabel');
    load();
  }
}

async function deleteSelected() {
  const ids = [...gallery.selected];
  if (!ids.length || !confirmDelete(ids.length, state.current)) return;
  try {
    const n = await deleteImages(state.current, ids);
    banner.clear('browse-edit');
    $('gallery-note').textContent = `${plural(n, 'image')} deleted.`;
    changed('delete', ids);
    $('gallery-select-all').focus();
  } catch (err) {
    reportError(err, 'browse-edit', 'Could not delete');
  }
}

function selectAll() {
  for (const c of $('gallery').querySelectorAll('[data-testid="gallery-item"]')) {
    gallery.selected.add(c.dataset.id);
    c.classList.add('selected');
    c.querySelector('.pick').checked = true;
  }
  renderBar();
}

function unselect() {
  gallery.selected.clear();
  for (const c of $('gallery').querySelectorAll('.card.selected')) {
    c.classList.remove('selected');
    c.querySelector('.pick').checked = false;
  }
  renderBar();
}

// The label select: "All" and each label with its count, from the collection's stats.
function renderLabelOptions(keep) {
  const sel = $('browse-label');
  const want = keep !== undefined ? keep : sel.value;
  const labels = [...((state.stats && state.stats.labels) || [])];
  const total = state.stats ? num(state.stats.count) : NaN;
  const opts = [el('option', { value: ALL, text: Number.isFinite(total) ? `All labels (${fmtInt(total)})` : 'All labels' })];
  const seen = new Set();
  for (const l of labels) {
    seen.add(l.label);
    opts.push(el('option', { value: l.label, text: `${l.label || '(no label)'} (${fmtInt(num(l.count))})` }));
  }
  if (want !== ALL && want !== null && !seen.has(want)) opts.push(el('option', { value: want, text: want || '(no label)' }));
  sel.replaceChildren(...opts);
  sel.value = want === null ? ALL : want;
}

// Sets the controls from the address (on load, back/forward, a link) and lists.
export function applyBrowseUrl() {
  const { params } = parseRoute(location.hash);
  // The tab's bare link keeps what is shown, and the address shows it again.
  if (![...params.keys()].length && gallery.key === JSON.stringify(current()) && gallery.items.length) {
    updateUrl(true);
    return;
  }
  const b = browseFromParams(params);
  if (b.collection && b.collection !== state.current && state.collections.some((c) => c.name === b.collection)) {
    chooseCollection(b.collection, { silent: true });
  }
  $('browse-sort').value = b.sort;
  $('browse-order').value = b.order;
  renderLabelOptions(b.label === null ? ALL : b.label);
  updateUrl(true);
  if (gallery.key !== JSON.stringify(current()) || !gallery.items.length) load();
}

export function setBrowseVisible(visible) {
  gallery.visible = visible;
}

export function wireBrowse() {
  const relist = () => {
    updateUrl(false);
    load();
  };
  for (const id of ['browse-sort', 'browse-order', 'browse-label']) $(id).addEventListener('change', relist);
  $('browse-refresh').addEventListener('click', () => {
    refreshDetail().catch(() => {});
    load();
  });
  $('gallery-more').addEventListener('click', () => load({ more: true }));
  $('gallery-relabel-form').addEventListener('submit', relabelSelected);
  $('gallery-delete').addEventListener('click', deleteSelected);
  $('gallery-select-all').addEventListener('click', selectAll);
  $('gallery-unselect').addEventListener('click', unselect);
  on('stats', () => renderLabelOptions());
  on('collection', () => {
    renderLabelOptions(ALL);
    if (gallery.visible) relist();
    else gallery.key = '';
  });
  renderBar();
}
