// The Search tab: the query (file, drop, paste or a stored image), the search and its results.
import { $, el } from './dom.js';
import { api, withKey } from './api.js';
import { banner, reportError } from './status.js';
import { fmtBytes, fmtInt, fmtPct, IMAGE_EXT } from './format.js';
import { state } from './state.js';
import { currentCollection } from './collections.js';

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

function looksLikeImage(file) {
  return (file.type && file.type.startsWith('image/')) || IMAGE_EXT.test(file.name || '');
}

function setQueryFile(file) {
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
  state.query = { kind: 'file', file, url };
  showPreview(url, file.name || 'pasted image');
  runSearch();
}

function setQueryStored(r) {
  if (state.query && state.query.url) URL.revokeObjectURL(state.query.url);
  state.query = { kind: "id", id: r.id, thumb: withKey(r.thumbnail_url), name: r.file_name, label: r.label };
  showPreview(withKey(r.thumbnail_url), `${r.file_name} (from the collection)`);
  runSearch();
}

function showPreview(src, caption) {
  const img = $('query-preview');
  img.src = src;
  img.hidden = false;
  $('dropzone').classList.add('has-image');
  $('query-caption').textContent = caption;
  $('search-again').disabled = false;
}

async function runSearch() {
  const q = state.query;
  if (!q) return;
  const coll = state.current;
  if (!coll) {
    banner.show('Choose a collection first (create one and add images on the Index tab).', 'search');
    return;
  }
  const k = topK();
  const mode = $('mode-select').value || 'probe';
  const minSim = minSimilarity();
  const seq = ++state.searchSeq;
  const results = $('results');
  results.dataset.state = 'loading';
  results.classList.add('loading');
  $('results-summary').textContent = 'Searching…';
  let data;
  try {
    if (q.kind === 'file') {
      const fd = new FormData();
      fd.append('image', q.file, q.file.name || 'pasted.png');
      fd.append('collection', coll);
      fd.append('top_k', String(k));
      fd.append('mode', mode);
      if (minSim !== null) fd.append('min_similarity', String(minSim));
      data = await api('/api/search', { method: 'POST', body: fd });
    } else {
      const body = { collection: coll, image_id: q.id, top_k: k, mode };
      if (minSim !== null) body.min_similarity = minSim;
      data = await api('/api/search', { method: 'POST', json: body });
    }
  } catch (err) {
    if (seq !== state.searchSeq) return;
    results.replaceChildren();
    results.dataset.state = 'error';
    results.classList.remove('loading');
    $('results-summary').textContent = 'Search failed.';
    $('results-empty').textContent = 'The search failed: see the message above.';
    $('results-empty').hidden = false;
    reportError(err, 'search', 'Search failed');
    return;
  }
  if (seq !== state.searchSeq) return; // a newer search superseded this one
  banner.clear('search');
  renderSearch(data || {}, seq, coll, q);
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
  return el('button', {
    type: 'button',
    class: 'card',
    'data-testid': 'result',
    'data-id': String(r.id),
    'data-similarity': String(r.similarity),
    title: `${r.path || r.file_name}\ndistance ${r.distance}\npartition ${r.partition_name ?? r.partition}\nClick to search with this image`,
    onclick: () => setQueryStored(r),
  },
  el('span', { class: 'thumb' },
    el('img', { src: withKey(r.thumbnail_url), alt: r.file_name, loading: 'lazy', decoding: 'async' }),
    el('span', { class: 'rank', text: `#${i + 1}` })),
  el('span', { class: 'card-body' },
    el('span', { class: 'sim-row' },
      el('span', { class: 'sim', 'data-testid': 'result-similarity', text: fmtPct(r.similarity) }),
      el('span', { class: 'label-chip', text: r.label || '—' })),
    el('span', { class: 'sim-bar', style: `--w:${Math.max(0, Math.min(1, r.similarity)) * 100}%` }),
    el('span', { class: 'fname', text: r.file_name })));
}

function renderSearch(data, seq, coll, sq) {
  const results = $('results');
  const items = [...(data.results || [])].sort((a, b) => b.similarity - a.similarity);
  renderQuerySummary(data, sq);
  results.replaceChildren(...items.map(resultCard));

  const s = data.stats || {};
  const empty = $('results-empty');
  if (items.length === 0) {
    const known = currentCollection();
    const total = Number.isFinite(s.vectors_total) ? s.vectors_total : known ? known.count : null;
    empty.textContent = total === 0
      ? 'No results: the collection is empty — add images on the Index tab'
      : 'No image above the minimum similarity';
    empty.hidden = false;
  } else {
    empty.hidden = true;
  }
  const modeText = data.mode || $('mode-select').value;
  $('results-summary').textContent = items.length
    ? `${items.length} in "${data.collection || coll}" · ${modeText} mode` : '';
  results.classList.remove('loading');
  results.dataset.seq = String(seq);
  results.dataset.queryId = sq.kind === 'id' ? String(sq.id) : '';
  results.dataset.state = 'done';
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
        if (location.hash !== '#search') location.hash = '#search';
        setQueryFile(named);
        return;
      }
    }
  });

  for (const id of ['mode-select', 'top-k', 'min-sim']) {
    $(id).addEventListener('change', () => { if (state.query) runSearch(); });
  }
  $('search-again').addEventListener('click', () => runSearch());
}
