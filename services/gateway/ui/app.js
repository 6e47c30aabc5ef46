// CBIR gateway web UI. Plain ES2020, no framework, no build step.
// REST contract: services/gateway/API.md.
'use strict';

(() => {
  // ------------------------------------------------------------------ helpers
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const enc = encodeURIComponent;
  const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–');
  const fmtPct = (x) => `${(x * 100).toFixed(1)}%`;
  const fmtBytes = (n) => {
    if (!Number.isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  };
  const fmtSecs = (s) => (s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);

  const IMAGE_EXT = /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i;
  const UNREACHABLE = 'The gateway is unreachable: is cbir running?';
  const LS_COLLECTION = 'cbir.collection';
  const TERMINAL_JOB_STATES = new Set(['succeeded', 'failed', 'cancelled']);
  const BATCH_FILES = 16;
  const MAX_IN_FLIGHT = 2;

  const state = {
    config: {
      max_image_bytes: 0, max_files_per_request: BATCH_FILES, max_request_bytes: 0,
      max_top_k: 1000, default_top_k: 20, default_collection: null, allowed_roots: [],
    },
    collections: [],
    current: null,            // selected collection name
    query: null,              // {kind:'file', file, url} | {kind:'id', id, thumb, name, label}
    searchSeq: 0,
    busy: false,              // an upload or a server job is running
    gatewayUp: true,
    modelMissing: false,
  };

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(message, { code = 'error', status = 0, service = null } = {}) {
      super(message);
      this.name = 'ApiError';
      this.code = code;
      this.status = status;
      this.service = service;
    }
  }

  // API key: asked for when the gateway answers 401, kept in this browser.
  const KEY_STORE = 'cbir.apiKey';
  const apiKey = () => localStorage.getItem(KEY_STORE) || '';
  // <img> tags cannot send headers: thumbnails carry the key in the query.
  const withKey = (url) => (apiKey() && url ? `${url}${url.includes('?') ? '&' : '?'}api_key=${encodeURIComponent(apiKey())}` : url);

  async function api(path, opts = {}, retried = false) {
    const { method = 'GET', json, body } = opts;
    const init = { method, headers: { Accept: 'application/json' } };
    if (apiKey()) init.headers['x-api-key'] = apiKey();
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body; // FormData: the browser sets the multipart boundary
    }
    let res;
    let text;
    try {
      res = await fetch(path, init);
      text = await res.text();
    } catch (_) {
      throw new ApiError(UNREACHABLE, { code: 'unreachable' });
    }
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if ((res.status === 401 || res.status === 403) && !retried) {
      const e0 = data && data.error ? data.error.message : '';
      const key = window.prompt(`${e0 || 'This needs an API key.'}\n\nAPI key:`, '');
      if (key) {
        localStorage.setItem(KEY_STORE, key.trim());
        return api(path, opts, true);
      }
    }
    if (!res.ok) {
      const e = data && typeof data === 'object' ? data.error : null;
      let message = e && e.message;
      if (!message) {
        message = text && !data ? text.trim().slice(0, 300) : '';
        message = message || `The gateway answered HTTP ${res.status} ${res.statusText || ''}`.trim();
      }
      throw new ApiError(message, {
        code: (e && e.code) || `http_${res.status}`,
        status: res.status,
        service: (e && e.service) || null,
      });
    }
    return data;
  }

  // ------------------------------------------------------------------ error banner
  const banner = {
    items: new Map(), // key -> {text, count}
    show(text, key = 'general') {
      const prev = this.items.get(key);
      if (prev && prev.text === text) prev.count += 1;
      else {
        this.items.delete(key); // re-insert so the latest message is last
        this.items.set(key, { text, count: 1 });
      }
      this.render();
    },
    clear(key) {
      if (this.items.delete(key)) this.render();
    },
    clearAll() {
      this.items.clear();
      this.render();
    },
    render() {
      const list = $('banner-list');
      const seen = new Set();
      const lines = [];
      for (const it of this.items.values()) {
        if (seen.has(it.text)) continue; // e.g. "unreachable" reported by several requests
        seen.add(it.text);
        lines.push(el('li', { text: it.count > 1 ? `${it.text} (×${it.count})` : it.text }));
      }
      list.replaceChildren(...lines);
      $('error-banner').hidden = this.items.size === 0;
    },
  };

  function reportError(err, key, context) {
    const msg = err instanceof ApiError || (err && err.message) ? err.message : String(err);
    const text = context && msg !== UNREACHABLE ? `${context}: ${msg}` : msg;
    banner.show(text, key);
    if (err && err.code === 'unreachable') setHealth('down', 'gateway unreachable', UNREACHABLE);
    console.warn(`[cbir] ${key}:`, err);
  }

  // ------------------------------------------------------------------ health
  function setHealth(status, text, title) {
    const h = $('health');
    h.dataset.status = status;
    h.querySelector('.health-text').textContent = text;
    h.title = title || text;
  }

  async function pollHealth() {
    try {
      let res;
      let data = null;
      try {
        res = await fetch('/api/health', { headers: { Accept: 'application/json' } });
        data = await res.json().catch(() => null);
      } catch (_) {
        throw new ApiError(UNREACHABLE, { code: 'unreachable' });
      }
      if (!data || typeof data.services !== 'object' || data.services === null) {
        const msg = data && data.error && data.error.message;
        throw new ApiError(msg || `Health check failed: HTTP ${res.status}`, { status: res.status });
      }
      const down = Object.entries(data.services).filter(([, s]) => !s || !s.ok);
      const details = Object.entries(data.services)
        .map(([name, s]) => `${name}: ${s && s.ok ? 'up' : 'DOWN'}${s && s.detail ? ` (${s.detail})` : ''}`)
        .join('\n');
      if (down.length === 0 && data.status !== 'degraded') {
        setHealth('ok', 'all services up', details);
      } else if (down.length === 0) {
        setHealth('down', 'degraded', details);
      } else {
        const names = down.map(([n]) => n);
        setHealth('down', `${names.join(' and ')} ${names.length > 1 ? 'are' : 'is'} down`, details);
      }
      const inf = data.services.inference;
      if (inf && inf.ok && state.modelMissing) loadModel();
      if (!state.gatewayUp) {
        state.gatewayUp = true;
        banner.clear('health');
        if (!state.modelMissing) loadModel();
        if (!state.collections.length) loadCollections().catch(() => {});
      }
    } catch (err) {
      const wasUp = state.gatewayUp;
      state.gatewayUp = false;
      setHealth('down', err.code === 'unreachable' ? 'gateway unreachable' : 'health check failed', err.message);
      if (wasUp) reportError(err, 'health'); // once per outage, so a dismissed banner stays dismissed
    } finally {
      setTimeout(pollHealth, 5000);
    }
  }

  // ------------------------------------------------------------------ routing
  function route() {
    const tab = location.hash === '#index' ? 'index' : 'search';
    for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== tab;
    for (const t of document.querySelectorAll('.tab')) {
      const on = t.dataset.tab === tab;
      t.classList.toggle('active', on);
      t.setAttribute('aria-selected', String(on));
    }
    if (tab === 'index' && state.current) refreshDetail().catch(() => {});
  }

  // ------------------------------------------------------------------ config / model
  async function loadConfig() {
    try {
      const c = await api('/api/config');
      Object.assign(state.config, c || {});
    } catch (err) {
      reportError(err, 'config', 'Could not load the gateway configuration');
    }
    const maxK = Math.max(1, Math.min(Number(state.config.max_top_k) || 1000, 1000));
    const topK = $('top-k');
    topK.max = String(maxK);
    const def = Math.max(1, Math.min(Number(state.config.default_top_k) || 20, maxK));
    topK.value = String(def);
    const roots = state.config.allowed_roots || [];
    $('allowed-roots').textContent = roots.length
      ? `The folder must be under: ${roots.join(', ')}`
      : 'The gateway allows no server folders (no allowed roots configured).';
  }

  async function loadModel() {
    try {
      const m = await api('/api/model');
      banner.clear('model');
      state.modelMissing = false;
      $('model-info').textContent =
        `Model: ${m.name} ${m.version} · ${m.architecture || ''} · ${m.embedding_dim}-d embeddings · ` +
        `${m.num_classes} classes · ${m.device || ''}`.replace(/ · {2}/g, ' · ');
    } catch (err) {
      $('model-info').textContent = 'Model: unavailable';
      state.modelMissing = true;
      reportError(err, 'model', 'Could not read the model information');
    }
  }

  // ------------------------------------------------------------------ collections
  const selects = () => [$('collection-select'), $('index-collection-select')];

  async function loadCollections() {
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

  function chooseCollection(name) {
    if (!name) return;
    state.current = name;
    localStorage.setItem(LS_COLLECTION, name);
    for (const s of selects()) s.value = name;
    renderCollectionList();
    refreshDetail().catch(() => {});
  }

  function currentCollection() {
    return state.collections.find((c) => c.name === state.current) || null;
  }

  let detailInFlight = null;
  async function refreshDetail() {
    const name = state.current;
    renderDetailButtons();
    if (!name) {
      $('detail-title').textContent = 'No collection selected';
      $('detail-description').textContent = 'Create a collection to start indexing images.';
      for (const id of ['collection-count', 'detail-dims', 'detail-model', 'detail-bytes']) $(id).textContent = '–';
      $('partitions-body').replaceChildren();
      $('partitions-note').textContent = '';
      return;
    }
    if (detailInFlight) return detailInFlight;
    detailInFlight = (async () => {
      try {
        const d = await api(`/api/collections/${enc(name)}`);
        banner.clear('detail');
        if (name !== state.current) return;
        renderDetail(d);
      } catch (err) {
        if (err.code === 'not_found') {
          loadCollections().catch(() => {});
          return;
        }
        reportError(err, 'detail', `Could not read collection "${name}"`);
      } finally {
        detailInFlight = null;
      }
    })();
    return detailInFlight;
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
    const parts = [...(d.partitions || [])].sort((a, b) => b.count - a.count);
    const top = parts.slice(0, 20);
    const total = count || 1;
    $('partitions-note').textContent = parts.length > 20
      ? `(top 20 of ${parts.length} by size)` : parts.length ? `(${parts.length})` : '(none yet)';
    $('partitions-body').replaceChildren(...top.map((p) => el('tr', {},
      el('td', { class: 'muted', text: String(p.class_index) }),
      el('td', { text: p.class_name }),
      el('td', { class: 'num', text: fmtInt(p.count) }),
      el('td', { class: 'num', text: fmtBytes(p.bytes_in_memory) }),
      el('td', { class: 'share' }, el('span', { class: 'share-bar', style: `--w:${(100 * p.count / total).toFixed(1)}%` })))));
  }

  function renderDetailButtons() {
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

  async function clearCollection() {
    const c = currentCollection();
    if (!c) return;
    if (!window.confirm(`Remove all ${fmtInt(c.count)} images from "${c.name}"? The collection itself is kept.`)) return;
    try {
      const r = await api(`/api/collections/${enc(c.name)}/clear`, { method: 'POST' });
      banner.clear('manage');
      $('progress-summary').textContent = `Cleared "${c.name}": ${fmtInt(r && r.removed)} images removed.`;
    } catch (err) {
      reportError(err, 'manage', `Could not clear "${c.name}"`);
    }
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }

  async function deleteCollection() {
    const c = currentCollection();
    if (!c) return;
    if (!window.confirm(`Delete the collection "${c.name}" and its ${fmtInt(c.count)} images? This cannot be undone.`)) return;
    try {
      await api(`/api/collections/${enc(c.name)}`, { method: 'DELETE' });
      banner.clear('manage');
      if (localStorage.getItem(LS_COLLECTION) === c.name) localStorage.removeItem(LS_COLLECTION);
      state.current = null;
    } catch (err) {
      reportError(err, 'manage', `Could not delete "${c.name}"`);
    }
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }

  // ------------------------------------------------------------------ search
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

  function renderSearch(data, seq, coll, sq) {
    const results = $('results');
    const items = [...(data.results || [])].sort((a, b) => b.similarity - a.similarity);

    // query summary
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

    // results
    const cards = items.map((r, i) => el('button', {
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
      el('span', { class: 'fname', text: r.file_name }))));
    results.replaceChildren(...cards);

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

  function installQueryInputs() {
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
          if (location.hash === '#index') location.hash = '#search';
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

  // ------------------------------------------------------------------ indexing progress
  const progress = {
    t0: 0,
    failures: [],
    start(title, total, skipped, stoppable) {
      this.t0 = performance.now();
      this.failures = [];
      const p = $('progress');
      p.dataset.state = 'running';
      p.classList.add('running');
      p.classList.remove('finished', 'has-failures');
      $('progress-title').textContent = title;
      $('progress-summary').textContent = '';
      $('progress-stop').hidden = !stoppable;
      $('progress-stop').disabled = false;
      $('progress-skipped').textContent = fmtInt(skipped);
      $('progress-skipped-wrap').hidden = !skipped;
      $('progress-failures').hidden = true;
      $('progress-failures').open = false;
      this.update({ done: 0, failed: 0, total, ips: 0 });
    },
    update({ done, failed, total, ips }) {
      const p = $('progress');
      p.dataset.done = String(done);
      p.dataset.failed = String(failed);
      p.dataset.total = String(total);
      const frac = total > 0 ? Math.min(1, (done + failed) / total) : 0;
      $('progress-fill').style.width = `${(frac * 100).toFixed(1)}%`;
      $('progress-count').textContent = `${fmtInt(done)} / ${fmtInt(total)}`;
      $('progress-failed').textContent = fmtInt(failed);
      $('progress-ips').textContent = Number.isFinite(ips) ? ips.toFixed(1) : '0.0';
      p.classList.toggle('has-failures', failed > 0);
    },
    setFailures(list) {
      this.failures = list;
      const box = $('progress-failures');
      box.hidden = list.length === 0;
      $('progress-failures-summary').textContent = `${fmtInt(list.length)} failure${list.length === 1 ? '' : 's'}`;
      const shown = list.slice(0, 500).map((f) => el('li', {},
        el('code', { text: f.path || '(request)' }), el('span', { text: ` — ${f.reason}` })));
      if (list.length > 500) shown.push(el('li', { class: 'muted', text: `… and ${fmtInt(list.length - 500)} more` }));
      $('progress-failures-list').replaceChildren(...shown);
    },
    addFailure(path, reason) {
      this.failures.push({ path, reason });
      this.setFailures(this.failures);
    },
    elapsed() { return (performance.now() - this.t0) / 1000; },
    finish(summary) {
      const p = $('progress');
      $('progress-summary').textContent = summary;
      $('progress-stop').hidden = true;
      p.classList.remove('running');
      p.classList.add('finished');
      p.dataset.state = 'finished';
    },
  };

  let statsTimer = null;
  function setBusy(busy) {
    state.busy = busy;
    renderDetailButtons();
    if (busy && !statsTimer) {
      statsTimer = setInterval(() => {
        refreshDetail().catch(() => {});
      }, 2000);
    } else if (!busy && statsTimer) {
      clearInterval(statsTimer);
      statsTimer = null;
    }
  }

  function makeBatches(files, onTooLarge) {
    const maxFiles = Math.max(1, Math.min(BATCH_FILES, Number(state.config.max_files_per_request) || BATCH_FILES));
    const maxReq = Number(state.config.max_request_bytes) || 0;
    const budget = maxReq ? Math.max(maxReq - 64 * 1024, 1) : Infinity; // leave room for multipart headers
    const maxImg = Number(state.config.max_image_bytes) || 0;
    const batches = [];
    let cur = [];
    let bytes = 0;
    for (const f of files) {
      if ((maxImg && f.size > maxImg) || f.size > budget) {
        onTooLarge(f, maxImg && f.size > maxImg ? maxImg : budget);
        continue;
      }
      if (cur.length && (cur.length >= maxFiles || bytes + f.size > budget)) {
        batches.push(cur);
        cur = [];
        bytes = 0;
      }
      cur.push(f);
      bytes += f.size;
    }
    if (cur.length) batches.push(cur);
    return batches;
  }

  let stopRequested = false;

  async function uploadFolder(fileList) {
    const coll = state.current;
    if (!coll) {
      banner.show('Create or choose a collection before adding images.', 'upload');
      return;
    }
    if (state.busy) return;
    const all = Array.from(fileList || []);
    if (!all.length) return;
    const images = all.filter((f) => IMAGE_EXT.test(f.name));
    const skipped = all.length - images.length;
    const root = ((all[0].webkitRelativePath || '').split('/')[0]) || 'the folder';
    const total = images.length;
    let done = 0;
    let failed = 0;
    let duplicates = 0;
    stopRequested = false;
    setBusy(true);
    progress.start(`Uploading ${fmtInt(total)} images from "${root}" into "${coll}"`, total, skipped, true);
    const tick = () => progress.update({ done, failed, total, ips: (done + failed) / Math.max(progress.elapsed(), 1e-3) });

    const batches = makeBatches(images, (f, limit) => {
      failed += 1;
      progress.addFailure(f.webkitRelativePath || f.name, `the file is ${fmtBytes(f.size)}, the gateway accepts at most ${fmtBytes(limit)}`);
    });
    tick();

    const sendBatch = async (batch) => {
      const fd = new FormData();
      for (const f of batch) fd.append('files', f, f.webkitRelativePath || f.name);
      for (let attempt = 0; ; attempt += 1) {
        try {
          const data = await api(`/api/collections/${enc(coll)}/images`, { method: 'POST', body: fd });
          banner.clear('upload');
          const results = (data && data.results) || [];
          const seen = new Set();
          for (const r of results) {
            if (r.path) seen.add(r.path);
            if (r.error) {
              failed += 1;
              progress.addFailure(r.path || r.file_name, r.error);
            } else {
              done += 1;
              if (r.created === false) duplicates += 1;
            }
          }
          // Files the gateway did not report on count as failures, so done + failed reaches total.
          let missing = batch.length - results.length;
          for (const f of batch) {
            if (missing <= 0) break;
            const p = f.webkitRelativePath || f.name;
            if (seen.has(p)) continue;
            failed += 1;
            missing -= 1;
            progress.addFailure(p, 'the gateway returned no result for this file');
          }
          return;
        } catch (err) {
          // Back off and retry when the gateway asks us to slow down.
          if (err.status === 429 && attempt < 5) {
            await sleep(500 * 2 ** attempt);
            continue;
          }
          failed += batch.length;
          for (const f of batch) progress.addFailure(f.webkitRelativePath || f.name, err.message);
          reportError(err, 'upload', 'Upload failed');
          return;
        }
      }
    };

    let next = 0;
    const worker = async () => {
      while (!stopRequested && next < batches.length) {
        const batch = batches[next];
        next += 1;
        await sendBatch(batch);
        tick();
      }
    };
    const workers = [];
    for (let i = 0; i < Math.min(MAX_IN_FLIGHT, batches.length); i += 1) workers.push(worker());
    await Promise.all(workers);
    tick();

    const secs = progress.elapsed();
    const notSent = total - done - failed;
    const parts = [
      `${stopRequested ? 'Stopped' : 'Finished'}: ${fmtInt(done)} of ${fmtInt(total)} images added to "${coll}"`,
      `${fmtInt(failed)} failed`,
    ];
    if (duplicates) parts.push(`${fmtInt(duplicates)} already present`);
    if (skipped) parts.push(`${fmtInt(skipped)} non-image files skipped`);
    if (notSent > 0) parts.push(`${fmtInt(notSent)} not sent`);
    parts.push(`${fmtSecs(secs)} (${((done + failed) / Math.max(secs, 1e-3)).toFixed(1)} images/s)`);
    progress.finish(`${parts.join(', ')}.`);
    setBusy(false);
    await loadCollections().catch(() => {});
    await refreshDetail().catch(() => {});
  }

  async function indexServerFolder() {
    const coll = state.current;
    const path = $('server-path').value.trim();
    if (!coll) {
      banner.show('Create or choose a collection before indexing a folder.', 'job');
      return;
    }
    if (!path) {
      banner.show('Type the path of a folder on the server.', 'job');
      return;
    }
    if (state.busy) return;
    setBusy(true);
    let job;
    try {
      job = await api(`/api/collections/${enc(coll)}/index-jobs`, { method: 'POST', json: { path } });
      banner.clear('job');
    } catch (err) {
      reportError(err, 'job', `Could not index "${path}"`);
      setBusy(false);
      return;
    }
    progress.start(`Indexing "${path}" on the server into "${coll}" (job ${job.id})`, job.total || 0, 0, false);
    let misses = 0;
    for (;;) {
      if (job) {
        progress.update({ done: job.done || 0, failed: job.failed || 0, total: job.total || 0, ips: job.images_per_second || 0 });
        progress.setFailures((job.failures || []).map((f) => ({ path: f.path, reason: f.reason })));
        if (job.message) $('progress-title').textContent = `Job ${job.id} (${job.state}): ${job.message}`;
        if (TERMINAL_JOB_STATES.has(job.state)) break;
      }
      await sleep(500);
      try {
        job = await api(`/api/jobs/${enc(job ? job.id : '')}`);
        misses = 0;
        banner.clear('job');
      } catch (err) {
        misses += 1;
        reportError(err, 'job', 'Could not read the indexing job');
        if (misses >= 20 || err.code === 'not_found') {
          progress.finish(`Lost track of the job: ${err.message}`);
          setBusy(false);
          return;
        }
      }
    }
    const secs = job.started_at_ms && job.updated_at_ms
      ? Math.max(0, (job.updated_at_ms - job.started_at_ms) / 1000) : progress.elapsed();
    const verb = { succeeded: 'Finished', failed: 'Failed', cancelled: 'Cancelled' }[job.state] || job.state;
    progress.finish(`${verb}: ${fmtInt(job.done)} of ${fmtInt(job.total)} images added to "${coll}", ` +
      `${fmtInt(job.failed)} failed, ${fmtSecs(secs)} (${(job.images_per_second || 0).toFixed(1)} images/s)` +
      `${job.message ? ` — ${job.message}` : ''}.`);
    if (job.state === 'failed') banner.show(`Indexing job ${job.id} failed: ${job.message || 'no reason given'}`, 'job');
    setBusy(false);
    await loadCollections().catch(() => {});
    await refreshDetail().catch(() => {});
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    window.addEventListener('hashchange', route);
    $('banner-close').addEventListener('click', () => banner.clearAll());
    for (const s of selects()) s.addEventListener('change', () => chooseCollection(s.value));
    $('create-form').addEventListener('submit', createCollection);
    $('clear-collection').addEventListener('click', clearCollection);
    $('delete-collection').addEventListener('click', deleteCollection);
    $('refresh-stats').addEventListener('click', () => {
      loadCollections().catch(() => {});
      refreshDetail().catch(() => {});
    });
    const folder = $('folder-input');
    folder.addEventListener('change', async () => {
      const files = Array.from(folder.files || []);
      folder.value = '';
      await uploadFolder(files);
    });
    $('index-server-path').addEventListener('click', indexServerFolder);
    $('server-path').addEventListener('keydown', (e) => { if (e.key === 'Enter') indexServerFolder(); });
    $('progress-stop').addEventListener('click', () => {
      stopRequested = true;
      $('progress-stop').disabled = true;
      $('progress-title').textContent += ' — stopping after the requests in flight…';
    });
    installQueryInputs();
  }

  async function main() {
    wire();
    if (!location.hash) history.replaceState(null, '', '#search');
    route();
    pollHealth();
    await loadConfig();
    loadModel();
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main);
  else main();
})();
