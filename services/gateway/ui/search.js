// The Search tab: the query (file, drop, paste or a stored image), the filters, the search and
// its results page by page. The whole search lives in the address bar (url-state.js).
import { $, el } from './dom.js';
import { api, enc, withKey } from './api.js';
import { banner, reportError } from './status.js';
import { fmtBytes, fmtInt, fmtPct, num, plural } from './format.js';
import { on, state } from './state.js';
import { chooseCollection, currentCollection } from './collections.js';
import { bandChip, openViewer } from './viewer.js';
import { isQueryCopy, rawSimilarityText } from './similarity.js';
import { keepUpload, looksLikeImage, restoreUpload, sha256Hex } from './query-file.js';
import { dateToMs, nextPage, parseRoute, searchFromParams, searchToHash } from './url-state.js';

const MODE_HINTS = {
  refined: 'Refined: the closest image first, then images ranked by what the query and its closest matches have in common. The best ranking of whole categories; the similarity shown is still the query\'s own.',
  probe: 'Probe: the query\'s own class first, then the nearest other parts of the collection until the best matches stop changing. Fast, and almost always the true best matches.',
  partition: 'Partition: only the images of the class the network predicts for the query. Fastest, but it never finds images put in another class.',
  exact: 'Exact: compares the query with every image of the collection. Slowest on large collections; always the true best matches.',
};
const RAW_KEY = 'cbir.showDistances';

// The label filter: label -> 'in' | 'out'.
const filter = { labels: new Map() };
// The results on screen and how to ask for more.
const shown = { items: [], k: 0, hasMore: false, seq: 0, coll: null, query: null, data: null };

function topK() {
  const input = $('top-k');
  const max = Number(input.max) || 1000;
  let k = Math.round(Number(input.value));
  if (!Number.isFinite(k) || k < 1) k = Number(state.config.default_top_k) || 20;
  k = Math.max(1, Math.min(k, max));
  input.value = String(k);
  return k;
}

function minSimilarity() {
  const raw = $('min-sim').value.trim();
  if (raw === '') return null;
  const v = Number(raw);
  if (!Number.isFinite(v)) return null;
  return Math.max(0, Math.min(v, 1));
}

// The search as the controls describe it (the URL's shape).
function currentSearch() {
  const labels = [];
  const notLabels = [];
  for (const [l, how] of filter.labels) (how === 'in' ? labels : notLabels).push(l);
  const q = state.query;
  return {
    collection: state.current,
    mode: $('mode-select').value || 'refined',
    k: topK(),
    minSim: minSimilarity(),
    labels,
    notLabels,
    pathPrefix: $('filter-prefix').value.trim(),
    from: $('filter-from').value,
    to: $('filter-to').value,
    query: !q ? null : q.kind === 'id' ? { kind: 'id', id: q.id, collection: q.collection } : { kind: 'upload' },
  };
}

const filtered = (s) => s.labels.length + s.notLabels.length > 0 || !!s.pathPrefix || !!s.from || !!s.to;

function setQueryFile(file, { push = true } = {}) {
  if (!file) return;
  if (!looksLikeImage(file)) {
    banner.show(`"${file.name}" is not an image: choose a JPEG, PNG, GIF, BMP, WebP or TIFF file.`, 'search');
    return;
  }
  const maxBytes = Number(state.config.max_image_bytes) || 0;
  if (maxBytes && file.size > maxBytes) {
    banner.show(`"${file.name}" is ${fmtBytes(file.size)}; the gateway accepts images up to ${fmtBytes(maxBytes)}.`, 'search');
    return;
  }
  if (state.query && state.query.url) URL.revokeObjectURL(state.query.url);
  const url = URL.createObjectURL(file);
  const q = { kind: 'file', file, url, hash: null };
  state.query = q;
  sha256Hex(file).then((h) => { q.hash = h; });
  keepUpload(file);
  showPreview(url, `${file.name || 'pasted image'} (from this computer: a shared link cannot carry it)`);
  runSearch({ push });
}

function setQueryStored(r, { push = true, focus = false } = {}) {
  if (state.query && state.query.url) URL.revokeObjectURL(state.query.url);
  const collection = r.collection || state.current;
  state.query = {
    kind: 'id', id: Number(r.id), collection, thumb: r.thumbnail_url ? withKey(r.thumbnail_url) : null,
    name: r.file_name, label: r.label,
  };
  const thumb = r.thumbnail_url || `/api/collections/${enc(collection)}/images/${enc(r.id)}/thumbnail`;
  showPreview(withKey(thumb), `${r.file_name || `image ${r.id}`} (stored in "${collection}")`);
  runSearch({ push, focus });
  // From a link only the id is known: the name and label come from the stored record.
  if (!r.file_name) {
    const q = state.query;
    api(`/api/collections/${enc(collection)}/images/${enc(r.id)}`).then((img) => {
      if (state.query !== q || !img) return;
      q.name = img.file_name;
      q.label = img.label;
      $('query-caption').textContent = `${img.file_name} (stored in "${collection}")`;
      if ($('query-class').textContent === 'not classified' && img.label) $('query-class').textContent = `${img.label} (stored label)`;
    }).catch(() => {});
  }
}

function showPreview(src, caption) {
  const img = $('query-preview');
  img.src = src;
  img.hidden = false;
  $('dropzone').classList.add('has-image');
  $('query-caption').textContent = caption;
  $('search-again').disabled = false;
}

// A stored image searched in another collection: its bytes are sent as an upload (the
// original when the collection keeps it, else the thumbnail).
async function storedAsFile(q) {
  if (q.file) return q.file;
  const img = await api(`/api/collections/${enc(q.collection)}/images/${enc(q.id)}`);
  const url = withKey(img.original_url || img.thumbnail_url);
  let res;
  try { res = await fetch(url); } catch (_) { res = null; }
  if (!res || !res.ok) throw new Error(`could not read image ${q.id} of "${q.collection}" to search with it in another collection`);
  const blob = await res.blob();
  q.file = new File([blob], img.file_name || `image-${q.id}.jpg`, { type: blob.type || 'image/jpeg' });
  q.name = img.file_name;
  return q.file;
}

function updateUrl(s, push) {
  const hash = searchToHash(s);
  if (location.hash === hash) return;
  if (push) history.pushState(null, '', hash);
  else history.replaceState(null, '', hash);
  state.routeHash = hash;
}

// The request of one page: multipart for an uploaded image, JSON for a stored one.
async function request(q, s, page) {
  const coll = s.collection;
  const opts = {
    collection: coll, top_k: page.top_k, mode: s.mode, min_similarity: s.minSim,
    labels: s.labels, not_labels: s.notLabels, path_prefix: s.pathPrefix || null,
    from_ms: dateToMs(s.from), to_ms: dateToMs(s.to, true), offset: page.offset || null,
  };
  const stored = q.kind === 'id' && q.collection === coll;
  if (!stored) {
    const file = q.kind === 'file' ? q.file : await storedAsFile(q);
    const fd = new FormData();
    fd.append('image', file, file.name || 'pasted.png');
    for (const [k, v] of Object.entries(opts)) {
      if (v === null || v === undefined || v === '') continue;
      if (k === 'labels') for (const l of v) fd.append('label', l);
      else if (k === 'not_labels') for (const l of v) fd.append('not_label', l);
      else fd.append(k, String(v));
    }
    return api('/api/search', { method: 'POST', body: fd });
  }
  const body = { image_id: q.id };
  for (const [k, v] of Object.entries(opts)) {
    if (v === null || v === undefined || v === '' || (Array.isArray(v) && !v.length)) continue;
    body[k] = v;
  }
  return api('/api/search', { method: 'POST', json: body });
}

async function runSearch({ push = true, focus = false } = {}) {
  const q = state.query;
  if (!q) return;
  const coll = state.current;
  if (!coll) {
    banner.show('Choose a collection first (create one and add images on the Index tab).', 'search');
    return;
  }
  const s = currentSearch();
  updateUrl(s, push);
  renderFilterSummary(s);
  const seq = ++state.searchSeq;
  const results = $('results');
  results.dataset.state = 'loading';
  results.classList.add('loading');
  $('results-summary').textContent = 'Searching…';
  $('results-more-wrap').hidden = true;
  let data;
  const page = nextPage(0, s.k);
  try {
    data = await request(q, s, page);
  } catch (err) {
    if (seq !== state.searchSeq) return;
    results.replaceChildren();
    results.dataset.state = 'error';
    results.classList.remove('loading');
    $('results-summary').textContent = 'Search failed.';
    $('results-note').hidden = true;
    $('results-empty').textContent = 'The search failed: see the message above.';
    $('results-empty').hidden = false;
    reportError(err, 'search', 'Search failed');
    return;
  }
  if (seq !== state.searchSeq) return; // a newer search superseded this one
  banner.clear('search');
  data = data || {};
  const items = (data.results || []).map((r) => ({ ...r, collection: data.collection || coll }));
  Object.assign(shown, {
    items, k: s.k, seq, coll, query: q, data, search: s,
    hasMore: moreAfter(data, items.length, page),
  });
  renderSearch(data, seq, q);
  if (focus) focusResults();
}

// Whether the server has results after these. Answers without has_more (an older gateway)
// may have more when they filled the page.
function moreAfter(data, got, page) {
  return typeof data.has_more === 'boolean' ? data.has_more : got >= page.top_k;
}

async function loadMore() {
  const q = shown.query;
  const s = shown.search;
  if (!q || !s) return;
  const page = nextPage(shown.items.length, shown.k);
  if (!page) return;
  const seq = shown.seq;
  const btn = $('results-more');
  btn.disabled = true;
  btn.textContent = 'Loading…';
  try {
    const data = (await request(q, s, page)) || {};
    if (seq !== shown.seq || seq !== state.searchSeq) return;
    const known = new Set(shown.items.map((r) => r.id));
    const fresh = (data.results || []).filter((r) => !known.has(r.id)).map((r) => ({ ...r, collection: data.collection || s.collection }));
    const first = shown.items.length;
    shown.items = shown.items.concat(fresh);
    shown.hasMore = fresh.length > 0 && moreAfter(data, (data.results || []).length, page);
    const cards = fresh.map((r, i) => resultCard(r, first + i));
    $('results').append(...cards);
    renderCounts();
    // The first new result takes the focus: the keyboard user goes on where the list grew.
    if (cards[0]) cards[0].focus();
  } catch (err) {
    reportError(err, 'search', 'Could not load more results');
  } finally {
    btn.disabled = false;
    btn.textContent = 'Load more';
  }
}

// What the model made of the query, and how much of the index the search read.
function renderQuerySummary(data, sq) {
  const q = data.query;
  $('query-info').hidden = false;
  if (q) {
    $('query-class').textContent = q.predicted_name || `class ${q.predicted_class}`;
    $('query-confidence').textContent = Number.isFinite(q.confidence) ? `${fmtPct(q.confidence)} confidence` : '';
    $('query-top5').replaceChildren(...(q.top5 || []).map((t) => el('li', {},
      el('span', { text: t.name }),
      el('span', { class: 'muted', text: fmtPct(t.probability) }),
      el('span', { class: 'p-bar', style: `--w:${(t.probability * 100).toFixed(1)}%` }))));
  } else {
    $('query-class').textContent = sq && sq.kind === 'id' && sq.label ? `${sq.label} (stored label)` : 'not classified';
    $('query-confidence').textContent = '';
    $('query-top5').replaceChildren();
  }
  $('took').textContent = Number.isFinite(data.took_ms) ? `${data.took_ms.toFixed(data.took_ms < 10 ? 1 : 0)} ms` : '–';
  const s = data.stats || {};
  $('stat-vectors').textContent = `${fmtInt(s.vectors_scanned)} / ${fmtInt(s.vectors_total)}`;
  $('stat-partitions').textContent = `${fmtInt(s.partitions_searched)} / ${fmtInt(s.partitions_total)}`;
}

function resultCard(r, i) {
  const rank = num(r.rank) > 0 ? num(r.rank) : i + 1;
  const mine = isQueryCopy(r, shown.query);
  const card = el('button', {
    type: 'button',
    class: `card${mine ? ' mine' : ''}`,
    'data-testid': 'result',
    'data-id': String(r.id),
    'data-rank': String(rank),
    'data-similarity': String(r.similarity),
    'data-score': String(r.score ?? r.similarity),
    'data-label': r.label || '',
    'data-focus-key': `result:${r.id}`,
    'aria-label': `#${rank} ${r.file_name}: open it in the viewer`,
  },
  el('span', { class: 'thumb' },
    el('img', { src: withKey(r.thumbnail_url), alt: '', loading: 'lazy', decoding: 'async' }),
    el('span', { class: 'rank', text: `#${rank}` }),
    mine ? el('span', { class: 'mine-badge', 'data-testid': 'your-image', text: 'your image' }) : null),
  el('span', { class: 'card-body' },
    el('span', { class: 'sim-row' }, bandChip(r)),
    el('span', { class: 'raw small muted', 'data-testid': 'result-similarity', text: rawSimilarityText(r) }),
    el('span', { class: 'meta-row' },
      el('span', { class: 'label-chip', text: r.label || '—' }),
      el('span', { class: 'fname', text: r.file_name }))));
  card.addEventListener('click', () => openViewer(r, {
    collection: r.collection,
    opener: card,
    query: shown.query,
    onSearch: (item) => setQueryStored(item, { focus: true }),
    onChanged: (kind, item) => onImageChanged(kind, item),
  }));
  return card;
}

// A relabel or delete from the viewer shows in the results at once.
function onImageChanged(kind, item) {
  const card = $('results').querySelector(`[data-focus-key="result:${CSS.escape(String(item.id))}"]`);
  if (kind === 'delete') {
    shown.items = shown.items.filter((r) => r.id !== item.id);
    if (card) {
      const next = card.nextElementSibling || card.previousElementSibling;
      card.remove();
      if (next) next.focus();
      else $('results-title').focus();
    }
    renderCounts();
  } else if (kind === 'relabel') {
    const r = shown.items.find((x) => x.id === item.id);
    if (r) r.label = item.label;
    if (card) {
      card.dataset.label = item.label || '';
      card.querySelector('.label-chip').textContent = item.label || '—';
    }
  }
  state.statsStale = true;
}

function renderCounts() {
  const n = shown.items.length;
  const more = shown.hasMore && n < shown.k;
  $('results-more-wrap').hidden = !more;
  $('results-more-note').textContent = more ? `${plural(n, 'result')} shown of up to ${fmtInt(shown.k)}` : '';
  const data = shown.data || {};
  const modeText = data.mode || shown.search.mode;
  const order = data.ranked_by === 'refined_score' ? ' · the closest image first, then by refined score' : '';
  $('results-summary').textContent = n ? `${plural(n, 'result')} in "${data.collection || shown.coll}" · ${modeText} mode${order}` : '';
  renderPartitionNote();
}

// Partition mode searches the predicted class only: say so when it found fewer than asked.
function renderPartitionNote() {
  const note = $('results-note');
  const data = shown.data || {};
  const s = shown.search;
  const n = shown.items.length;
  const partition = (data.mode || s.mode) === 'partition';
  if (!partition || shown.hasMore || n >= shown.k) {
    note.hidden = true;
    return;
  }
  const pname = (shown.items[0] && shown.items[0].partition_name) || (data.query && data.query.predicted_name) || 'predicted';
  const why = filtered(s) || s.minSim ? ' that match the filters' : '';
  note.textContent = `Only ${plural(n, 'image')}${why} in the "${pname}" partition, fewer than the ${fmtInt(shown.k)} asked for: `
    + 'partition mode searches the query\'s predicted class only. Refined, probe or exact mode search the whole collection.';
  note.hidden = false;
}

function renderSearch(data, seq, sq) {
  const results = $('results');
  renderQuerySummary(data, sq);
  results.replaceChildren(...shown.items.map(resultCard));
  const s = data.stats || {};
  const empty = $('results-empty');
  if (shown.items.length === 0) {
    const known = currentCollection();
    const total = Number.isFinite(s.vectors_total) ? s.vectors_total : known ? known.count : null;
    empty.textContent = total === 0
      ? 'No results: the collection is empty — add images on the Index tab'
      : filtered(shown.search) ? 'No image matches the filters: loosen or clear them.'
        : 'No image above the minimum similarity';
    empty.hidden = false;
  } else {
    empty.hidden = true;
  }
  renderCounts();
  results.classList.remove('loading');
  results.dataset.seq = String(seq);
  results.dataset.rankedBy = data.ranked_by || 'distance';
  results.dataset.queryId = sq.kind === 'id' ? String(sq.id) : '';
  results.dataset.state = 'done';
}

// After a search started from a result, the focus lands on the new best result (else the
// results heading), not on the page's body.
function focusResults() {
  const first = $('results').querySelector('[data-testid="result"]');
  (first || $('results-title')).focus();
}

// ------------------------------------------------------------------ filters
function renderModeHint() {
  $('mode-hint').textContent = MODE_HINTS[$('mode-select').value] || '';
}

function renderFilterSummary(s = currentSearch()) {
  const parts = [];
  if (s.labels.length) parts.push(`labels ${s.labels.map((l) => l || '(none)').join(', ')}`);
  if (s.notLabels.length) parts.push(`not ${s.notLabels.map((l) => l || '(none)').join(', ')}`);
  if (s.pathPrefix) parts.push(`path ${s.pathPrefix}…`);
  if (s.from || s.to) parts.push(`added ${s.from || '…'} to ${s.to || '…'}`);
  $('filters-summary').textContent = parts.length ? parts.join(' · ') : 'none: every image of the collection';
  $('filters').classList.toggle('active', parts.length > 0);
}

// The label chips: every label of the collection with its count, plus labels of the URL.
export function renderLabelChips() {
  const counts = new Map(((state.stats && state.stats.labels) || []).map((l) => [l.label, num(l.count)]));
  for (const l of filter.labels.keys()) if (!counts.has(l)) counts.set(l, NaN);
  const box = $('filter-labels');
  if (!counts.size) {
    box.replaceChildren(el('span', { class: 'muted small', text: 'This collection has no labels yet.' }));
    return;
  }
  box.replaceChildren(...[...counts.entries()].map(([label, count]) => {
    const how = filter.labels.get(label) || 'any';
    const name = label || '(no label)';
    const verb = { any: 'not filtered', in: 'only these', out: 'left out' }[how];
    return el('button', {
      type: 'button', class: `label-filter lf-${how}`, 'data-testid': 'filter-label', 'data-label': label, 'data-state': how,
      'aria-label': `${name}: ${verb}. Click to change.`,
      onclick: () => cycleLabel(label),
    }, el('span', { 'aria-hidden': 'true', class: 'lf-mark', text: how === 'in' ? '✓' : how === 'out' ? '✕' : '' }),
    el('span', { text: name }), Number.isFinite(count) ? el('span', { class: 'muted', text: fmtInt(count) }) : null);
  }));
}

function cycleLabel(label) {
  const how = filter.labels.get(label);
  if (!how) filter.labels.set(label, 'in');
  else if (how === 'in') filter.labels.set(label, 'out');
  else filter.labels.delete(label);
  renderLabelChips();
  const again = $('filter-labels').querySelector(`[data-label="${CSS.escape(label)}"]`);
  if (again) again.focus();
  filtersChanged();
}

function filtersChanged() {
  renderFilterSummary();
  if (state.query) runSearch();
  else updateUrl(currentSearch(), false);
}

function clearFilters() {
  filter.labels.clear();
  $('filter-prefix').value = '';
  $('filter-from').value = '';
  $('filter-to').value = '';
  renderLabelChips();
  filtersChanged();
}

// ------------------------------------------------------------------ the URL
// Sets the controls from the address bar and searches when it names a query. Called on load
// and on back/forward.
export async function applySearchUrl() {
  const { tab, params } = parseRoute(location.hash);
  if (tab !== 'search') return;
  // The Search tab's bare link: the search on screen stays, and the address shows it again.
  if (![...params.keys()].length) {
    if (state.query) updateUrl(currentSearch(), false);
    return;
  }
  const s = searchFromParams(params, Number($('top-k').max) || 1000);
  if (s.collection && s.collection !== state.current && state.collections.some((c) => c.name === s.collection)) {
    chooseCollection(s.collection, { silent: true });
  }
  if (s.mode) $('mode-select').value = s.mode;
  if (s.k) $('top-k').value = String(s.k);
  $('min-sim').value = s.minSim === null ? '' : String(s.minSim);
  filter.labels.clear();
  for (const l of s.labels) filter.labels.set(l, 'in');
  for (const l of s.notLabels) filter.labels.set(l, 'out');
  $('filter-prefix').value = s.pathPrefix;
  $('filter-from').value = s.from;
  $('filter-to').value = s.to;
  if (filtered(s)) $('filters').open = true;
  renderModeHint();
  renderLabelChips();
  renderFilterSummary();
  const same = searchToHash(currentSearch()) === location.hash;
  if (s.query && s.query.kind === 'id') {
    const q = state.query;
    if (!q || q.kind !== 'id' || q.id !== s.query.id || q.collection !== s.query.collection || !same || !shown.data) {
      setQueryStored({ id: s.query.id, collection: s.query.collection || state.current }, { push: false });
    }
  } else if (s.query && s.query.kind === 'upload') {
    if (state.query && state.query.kind === 'file') {
      runSearch({ push: false });
      return;
    }
    const file = await restoreUpload().catch(() => null);
    if (file) setQueryFile(file, { push: false });
    else {
      $('results-empty').textContent = 'This link searched with an image uploaded from a computer, which a link cannot carry: choose the image again.';
      $('results-empty').hidden = false;
    }
  }
}

export function wireSearch() {
  const input = $('query-input');
  input.addEventListener('change', () => {
    const f = input.files && input.files[0];
    if (f) setQueryFile(f);
    input.value = '';
  });

  const dz = $('dropzone');
  let depth = 0;
  dz.addEventListener('dragenter', (e) => { e.preventDefault(); depth += 1; dz.classList.add('over'); });
  dz.addEventListener('dragleave', () => { depth = Math.max(0, depth - 1); if (!depth) dz.classList.remove('over'); });
  dz.addEventListener('dragover', (e) => { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; });
  dz.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    dz.classList.remove('over');
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) setQueryFile(f);
    else banner.show('Drop an image file (not a link or text).', 'search');
  });
  // A file dropped anywhere else must not navigate away from the app.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());

  document.addEventListener('paste', (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const it of items) {
      if (it.kind === 'file' && it.type.startsWith('image/')) {
        const f = it.getAsFile();
        if (!f) continue;
        e.preventDefault();
        const ext = (it.type.split('/')[1] || 'png').replace('jpeg', 'jpg');
        const named = f.name && f.name !== 'image.png' ? f : new File([f], `pasted.${ext}`, { type: f.type });
        if (!location.hash.startsWith('#search')) location.hash = '#search';
        setQueryFile(named);
        return;
      }
    }
  });

  $('mode-select').addEventListener('change', renderModeHint);
  for (const id of ['mode-select', 'top-k', 'min-sim']) {
    $(id).addEventListener('change', () => { if (state.query) runSearch(); else updateUrl(currentSearch(), false); });
  }
  for (const id of ['filter-prefix', 'filter-from', 'filter-to']) $(id).addEventListener('change', filtersChanged);
  $('filters-clear').addEventListener('click', clearFilters);
  $('search-again').addEventListener('click', () => runSearch());
  $('results-more').addEventListener('click', loadMore);
  // Another collection: the same query there (issue: the results must follow the select).
  on('collection', () => {
    filter.labels.clear();
    renderLabelChips();
    if (state.query) runSearch();
  });
  on('stats', renderLabelChips);
  const raw = $('show-raw');
  raw.checked = localStorage.getItem(RAW_KEY) === '1';
  $('results').classList.toggle('show-raw', raw.checked);
  raw.addEventListener('change', () => {
    localStorage.setItem(RAW_KEY, raw.checked ? '1' : '0');
    $('results').classList.toggle('show-raw', raw.checked);
  });
  renderModeHint();
  renderLabelChips();
}
