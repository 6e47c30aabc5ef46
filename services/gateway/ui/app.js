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
      // Through the CSSOM: the CSP refuses style attributes (no 'unsafe-inline').
      else if (k === 'style') node.style.cssText = v;
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

  // The error object of a failed response. The gateway wraps it ({"error": {code, message}});
  // a bare {code, message} is accepted too, so a handler that answers either way reads well.
  function errorBody(data) {
    if (!data || typeof data !== 'object') return null;
    if (data.error && typeof data.error === 'object') return data.error;
    return typeof data.message === 'string' ? data : null;
  }

  function parseJson(text) {
    if (!text) return null;
    try { return JSON.parse(text); } catch (_) { return null; }
  }

  // A key would help: 401, or 403 for a key without the role. A 403 "forbidden" is about the
  // request itself (a server path outside the allowed roots): no key changes that.
  function needsKey(status, data) {
    const e = errorBody(data);
    return status === 401 || (status === 403 && !(e && e.code === 'forbidden'));
  }

  // Asks for a key once; true when the caller should retry with it.
  function askForKey(data) {
    const e = errorBody(data);
    const key = window.prompt(`${(e && e.message) || 'This needs an API key.'}\n\nAPI key:`, '');
    if (!key) return false;
    localStorage.setItem(KEY_STORE, key.trim());
    return true;
  }

  function errorFromResponse(status, statusText, text, data) {
    const e = errorBody(data);
    let message = e && e.message;
    if (!message) {
      message = text && !data ? text.trim().slice(0, 300) : '';
      message = message || `The gateway answered HTTP ${status} ${statusText || ''}`.trim();
    }
    return new ApiError(message, {
      code: (e && e.code) || `http_${status}`,
      status,
      service: (e && e.service) || null,
    });
  }

  async function api(path, opts = {}, retried = false) {
    const { method = 'GET', json, body } = opts;
    const init = { method, headers: { Accept: 'application/json' } };
    const usedKey = apiKey();
    if (usedKey) init.headers['x-api-key'] = usedKey;
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
    const data = parseJson(text);
    // Requests sent in parallel all fail: after the first prompt the others retry with its key.
    if (needsKey(res.status, data) && !retried && (apiKey() !== usedKey || askForKey(data))) {
      return api(path, opts, true);
    }
    if (!res.ok) throw errorFromResponse(res.status, res.statusText, text, data);
    return data;
  }

  // A POST with upload progress (fetch cannot report it): same key prompt and errors as api().
  // `onStart` receives the XMLHttpRequest so the caller can abort it.
  function uploadWithProgress(path, body, contentType, { onProgress, onStart } = {}, retried = false) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', path);
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.setRequestHeader('Content-Type', contentType);
      const usedKey = apiKey();
      if (usedKey) xhr.setRequestHeader('x-api-key', usedKey);
      xhr.upload.addEventListener('progress', (e) => {
        if (onProgress) onProgress(e.loaded, e.lengthComputable ? e.total : body.size);
      });
      xhr.addEventListener('error', () => reject(new ApiError(UNREACHABLE, { code: 'unreachable' })));
      xhr.addEventListener('abort', () => reject(new ApiError('The upload was stopped.', { code: 'aborted' })));
      xhr.addEventListener('load', () => {
        const text = xhr.responseText;
        const data = parseJson(text);
        if (needsKey(xhr.status, data) && !retried && (apiKey() !== usedKey || askForKey(data))) {
          resolve(uploadWithProgress(path, body, contentType, { onProgress, onStart }, true));
        } else if (xhr.status < 200 || xhr.status >= 300) {
          reject(errorFromResponse(xhr.status, xhr.statusText, text, data));
        } else {
          resolve(data);
        }
      });
      if (onStart) onStart(xhr);
      xhr.send(body);
    });
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
  const TABS = ['search', 'index', 'maintenance'];

  function route() {
    const want = location.hash.slice(1);
    const tab = TABS.includes(want) ? want : 'search';
    for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== tab;
    for (const t of document.querySelectorAll('.tab')) {
      const on = t.dataset.tab === tab;
      t.classList.toggle('active', on);
      t.setAttribute('aria-selected', String(on));
    }
    if (tab === 'index' && state.current) refreshDetail().catch(() => {});
    setMaintenanceVisible(tab === 'maintenance');
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
    renderMaintCollections(); // the Maintenance tab lists the same collections
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

  // Clear and delete ask first; both tabs use them. They return whether the change happened.
  async function clearCollectionNamed(c, key) {
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

  async function deleteCollectionNamed(c, key) {
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

  // ================================================================== Maintenance tab
  // Training, the model registry, and collection rebuilds. REST: /api/training/*, /api/models,
  // /api/operations/{id}, /api/collections/{name}/rebuild.

  // ------------------------------------------------------------------ formatting
  const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
  const fmtAcc = (x) => (isNum(x) ? fmtPct(x) : '–');
  const fmtLoss = (x) => (isNum(x) ? x.toFixed(x < 10 ? 4 : 2) : '–');
  const fmtDuration = (s) => {
    if (!isNum(s) || s < 0) return '–';
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  };
  // Compact local time for table cells: 2025-06-01 14:05.
  const fmtTime = (ms) => {
    if (!isNum(ms) || ms <= 0) return '–';
    const d = new Date(ms);
    const p2 = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}`;
  };
  const plural = (n, one, many = `${one}s`) => `${fmtInt(n)} ${n === 1 ? one : many}`;
  const modelLabel = (m) => (m ? `${m.name}:${m.version}` : '–');
  const sameModel = (a, b) => !!a && !!b && a.name === b.name && String(a.version) === String(b.version);

  // ------------------------------------------------------------------ tar (POSIX ustar)
  // A folder chosen in the browser is sent as one uncompressed tar archive: the training service
  // reads .tar natively, and building it needs no compression library. The archive is a Blob of
  // headers and the File objects themselves, so the browser streams the files from disk when it
  // sends the body instead of holding them all in memory.
  const TAR_BLOCK = 512;
  const TAR_MAX_FILE = 8 ** 11 - 1; // the size field holds 11 octal digits
  const TAR_ZEROS = new Uint8Array(TAR_BLOCK);
  const utf8 = new TextEncoder();

  function tarPut(header, offset, width, bytes) {
    header.set(bytes.subarray(0, width), offset);
  }

  // Numeric fields are zero-padded octal followed by a NUL, filling the field.
  function tarPutOctal(header, offset, width, n) {
    tarPut(header, offset, width, utf8.encode(`${Math.floor(n).toString(8).padStart(width - 1, '0')}\0`));
  }

  function tarHeader({ name, prefix, size, mtime, type }) {
    const h = new Uint8Array(TAR_BLOCK);
    tarPut(h, 0, 100, name);
    tarPutOctal(h, 100, 8, 0o644); // mode
    tarPutOctal(h, 108, 8, 0); // uid
    tarPutOctal(h, 116, 8, 0); // gid
    tarPutOctal(h, 124, 12, size);
    tarPutOctal(h, 136, 12, mtime);
    h.fill(0x20, 148, 156); // the checksum is summed with its own field as spaces
    h[156] = type.charCodeAt(0);
    tarPut(h, 257, 6, utf8.encode('ustar\0'));
    tarPut(h, 263, 2, utf8.encode('00'));
    if (prefix) tarPut(h, 345, 155, prefix);
    let sum = 0;
    for (const b of h) sum += b;
    tarPut(h, 148, 8, utf8.encode(`${sum.toString(8).padStart(6, '0')}\0 `));
    return h;
  }

  // ustar keeps a path as name (100 bytes) + prefix (155 bytes) split at a '/'. null when no
  // split fits. Splitting the UTF-8 bytes at 0x2F is safe: that byte never occurs inside a
  // multi-byte character.
  function tarSplitPath(bytes) {
    if (bytes.length <= 100) return { name: bytes, prefix: null };
    for (let i = Math.min(bytes.length - 2, 155); i > 0; i -= 1) {
      if (bytes[i] === 0x2f && bytes.length - i - 1 <= 100) {
        return { name: bytes.subarray(i + 1), prefix: bytes.subarray(0, i) };
      }
    }
    return null;
  }

  // A pax extended header record "<len> path=<value>\n", where len counts the whole record.
  function paxRecord(key, value) {
    const body = utf8.encode(` ${key}=${value}\n`);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    return utf8.encode(`${len}${new TextDecoder().decode(body)}`);
  }

  const tarPadding = (size) => TAR_ZEROS.subarray(0, (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK);

  // entries: [{path, file}] -> Blob. Paths too long for ustar get a pax 'x' header (read by
  // the tar crate the service uses) ahead of a ustar header with a shortened name.
  function buildTar(entries) {
    const parts = [];
    for (const { path, file } of entries) {
      const mtime = Math.max(0, Math.floor((file.lastModified || Date.now()) / 1000));
      const pathBytes = utf8.encode(path);
      let split = tarSplitPath(pathBytes);
      if (!split) {
        const pax = paxRecord('path', path);
        parts.push(tarHeader({ name: utf8.encode('PaxHeader'), prefix: null, size: pax.length, mtime, type: 'x' }),
          pax, tarPadding(pax.length));
        // Readers without pax support still get a safe relative name: the file name alone.
        split = { name: utf8.encode(path.split('/').pop()).subarray(0, 100), prefix: null };
      }
      parts.push(tarHeader({ ...split, size: file.size, mtime, type: '0' }), file, tarPadding(file.size));
    }
    parts.push(TAR_ZEROS, TAR_ZEROS); // end of archive: two zero blocks
    return new Blob(parts, { type: 'application/x-tar' });
  }

  // What a chosen folder holds, as the training service will see it: the images, grouped by the
  // class folder (the first folder below any single top folders that wrap everything).
  function describeFolder(fileList) {
    const all = Array.from(fileList || []);
    const relPath = (f) => f.webkitRelativePath || f.name;
    // Hidden files (e.g. macOS "._x.jpg" resource forks) are not images even when named like one.
    const hidden = (f) => relPath(f).split('/').some((part) => part.startsWith('.'));
    const images = all.filter((f) => IMAGE_EXT.test(f.name) && !hidden(f) && f.size <= TAR_MAX_FILE);
    const root = (relPath(all[0] || { name: '' }).split('/')[0]) || 'dataset';
    let paths = images.map((f) => relPath(f).split('/').slice(0, -1));
    while (paths.length && paths.every((p) => p.length > 1 && p[0] === paths[0][0])) {
      paths = paths.map((p) => p.slice(1));
    }
    const classes = new Map();
    let loose = 0;
    for (const p of paths) {
      if (!p.length) { loose += 1; continue; }
      classes.set(p[0], (classes.get(p[0]) || 0) + 1);
    }
    const bytes = images.reduce((n, f) => n + f.size, 0);
    return { root, images, ignored: all.length - images.length, classes, loose, bytes };
  }

  // ------------------------------------------------------------------ charts (canvas, drawn by hand)
  const CHART_LOSS = '#f97316';
  const CHART_VALIDATION = '#12a150';
  const CHART_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  const cssVar = (name, fallback) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

  // The fewest decimals that print `step` exactly (2.5 -> 1, 0.05 -> 2).
  function decimalsOf(step) {
    for (let d = 0; d < 8; d += 1) {
      const v = step * 10 ** d;
      if (Math.abs(v - Math.round(v)) < 1e-6 * Math.max(1, v)) return d;
    }
    return 8;
  }

  // "Nice" ticks (1, 2, 2.5, 5 × 10^k) covering [min, max] with about `count` intervals.
  function niceTicks(min, max, count, integer) {
    if (!isNum(min) || !isNum(max)) { min = 0; max = 1; }
    if (max - min < (integer ? 1 : 1e-12)) max = min + (integer ? 1 : Math.abs(min) * 0.1 || 1);
    const raw = (max - min) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const factors = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    let step = factors.find((f) => f * mag >= raw * (1 - 1e-9)) * mag;
    if (integer) step = Math.max(1, Math.round(step));
    const lo = Math.floor(min / step + 1e-9) * step;
    let hi = Math.ceil(max / step - 1e-9) * step;
    if (hi <= lo) hi = lo + step;
    const ticks = [];
    for (let i = 0; lo + i * step <= hi + step * 1e-6; i += 1) ticks.push(Number((lo + i * step).toPrecision(12)));
    return { lo, hi, step, ticks, decimals: decimalsOf(step) };
  }

  function tickLabel(v, scale) {
    if (Math.abs(scale.hi) >= 1e4 && scale.step >= 1000) return `${Number((v / 1000).toPrecision(6))}k`;
    return v.toFixed(scale.decimals);
  }

  // [min, max] of finite numbers without spreading them as arguments (curves can be long).
  function extent(values) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (!isNum(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return [lo, hi];
  }

  // Enough points to draw a line `width` pixels wide; keeps the last one.
  function thin(points, width) {
    const max = Math.max(50, Math.floor(width * 2));
    if (points.length <= max) return points;
    const stride = Math.ceil(points.length / max);
    const out = points.filter((_, i) => i % stride === 0);
    if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
    return out;
  }

  // Sizes the backing store to the CSS box and device pixels, so lines stay sharp.
  function fitCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(220, canvas.clientWidth || 0);
    const h = Math.max(160, canvas.clientHeight || 0);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  // Lays the legend out in rows that fit `width`; returns the item positions and the row count.
  function layoutLegend(ctx, series, x0, width) {
    const items = [];
    let x = x0;
    let row = 0;
    for (const s of series) {
      const w = 24 + ctx.measureText(s.label).width;
      if (x > x0 && x + w > x0 + width) {
        row += 1;
        x = x0;
      }
      items.push({ s, x, row });
      x += w + 18;
    }
    return { items, rows: row + 1 };
  }

  function drawLegend(ctx, layout, y0, colors) {
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    for (const { s, x, row } of layout.items) {
      const y = y0 + row * 18;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x + 18, y);
      ctx.stroke();
      if (s.markers) {
        ctx.beginPath();
        ctx.arc(x + 9, y, 3.5, 0, Math.PI * 2);
        ctx.fill();
      }
      ctx.fillStyle = colors.text;
      ctx.fillText(s.label, x + 24, y);
    }
  }

  function drawRotated(ctx, text, x, y) {
    ctx.save();
    ctx.translate(x, y);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(text, 0, 0);
    ctx.restore();
  }

  // spec: {xLabel, yLabel, y2Label?, xInteger?, yInteger?, yZero?, empty, series: [{label, color,
  // axis: 'y' | 'y2', points: [[x, y]], markers?}]}. The y2 axis is accuracy: fixed 0..100 %.
  function drawChart(canvas, spec) {
    if (!canvas || canvas.offsetParent === null) return; // hidden: drawn again when shown
    const { ctx, w, h } = fitCanvas(canvas);
    const colors = { text: cssVar('--text', '#1b2230'), muted: cssVar('--muted', '#667085'), grid: cssVar('--border', '#e3e7ef') };
    const hasY2 = spec.series.some((s) => s.axis === 'y2');
    ctx.font = CHART_FONT;
    const pad = { l: 60, r: hasY2 ? 60 : 20, t: 34, b: 44 };
    const legend = layoutLegend(ctx, spec.series, pad.l, w - pad.l - pad.r);
    pad.t = 16 + legend.rows * 18;
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    drawLegend(ctx, legend, 12, colors);

    const ok = (p) => isNum(p[0]) && isNum(p[1]);
    const series = spec.series.map((s) => ({ ...s, points: s.points.filter(ok) }));
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      ctx.strokeStyle = colors.grid;
      ctx.strokeRect(pad.l + 0.5, pad.t + 0.5, pw, ph);
      ctx.fillStyle = colors.muted;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(spec.empty || 'No data yet', pad.l + pw / 2, pad.t + ph / 2);
      return;
    }

    const [x0, x1] = extent(all.map((p) => p[0]));
    const xScale = niceTicks(x0, x1, Math.max(2, Math.floor(pw / 80)), spec.xInteger);
    // A growing curve should fill the width: end the axis at the data when rounding up to the
    // next tick would leave much of the plot empty.
    if (x1 > xScale.lo && xScale.hi - x1 > 0.1 * (xScale.hi - xScale.lo)) {
      xScale.hi = x1;
      xScale.ticks = xScale.ticks.filter((t) => t <= x1 + 1e-9);
    }
    let [y0, y1] = extent(series.filter((s) => s.axis !== 'y2').flatMap((s) => s.points.map((p) => p[1])));
    if (!isNum(y0)) [y0, y1] = [0, 1]; // only accuracy series: the left axis is just a frame
    const yScale = niceTicks(spec.yZero ? Math.min(0, y0) : y0, y1, Math.max(2, Math.floor(ph / 45)), spec.yInteger);
    const y2Scale = { lo: 0, hi: 1, ticks: [0, 0.2, 0.4, 0.6, 0.8, 1] };
    const X = (v) => pad.l + ((v - xScale.lo) / (xScale.hi - xScale.lo)) * pw;
    const Y = (v) => pad.t + ph - ((v - yScale.lo) / (yScale.hi - yScale.lo)) * ph;
    const Y2 = (v) => pad.t + ph - v * ph;

    // Grid and tick labels.
    ctx.lineWidth = 1;
    ctx.strokeStyle = colors.grid;
    ctx.fillStyle = colors.muted;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const t of yScale.ticks) {
      const y = Math.round(Y(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(pad.l + pw, y);
      ctx.stroke();
      ctx.fillText(tickLabel(t, yScale), pad.l - 7, y);
    }
    if (hasY2) {
      ctx.textAlign = 'left';
      for (const t of y2Scale.ticks) ctx.fillText(`${Math.round(t * 100)}%`, pad.l + pw + 7, Y2(t));
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.strokeStyle = colors.muted;
    for (const t of xScale.ticks) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, pad.t + ph);
      ctx.lineTo(x, pad.t + ph + 5);
      ctx.stroke();
      ctx.fillText(tickLabel(t, xScale), x, pad.t + ph + 7);
    }

    // Axes.
    ctx.beginPath();
    ctx.moveTo(pad.l + 0.5, pad.t);
    ctx.lineTo(pad.l + 0.5, pad.t + ph + 0.5);
    ctx.lineTo(pad.l + pw, pad.t + ph + 0.5);
    if (hasY2) ctx.lineTo(pad.l + pw + 0.5, pad.t);
    ctx.stroke();

    // Axis titles.
    ctx.fillStyle = colors.text;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'bottom';
    ctx.fillText(spec.xLabel, pad.l + pw / 2, h - 4);
    drawRotated(ctx, spec.yLabel, 12, pad.t + ph / 2);
    if (hasY2) drawRotated(ctx, spec.y2Label || 'accuracy', w - 10, pad.t + ph / 2);

    // Series, clipped to the plot (a little slack for markers on the edges).
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l - 4, pad.t - 4, pw + 8, ph + 8);
    ctx.clip();
    for (const s of series) {
      const yOf = s.axis === 'y2' ? Y2 : Y;
      const pts = s.markers ? s.points : thin(s.points, pw);
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 1.75;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), yOf(p[1])) : ctx.moveTo(X(p[0]), yOf(p[1]))));
      ctx.stroke();
      if (s.markers || pts.length === 1) {
        for (const p of pts) {
          ctx.beginPath();
          ctx.arc(X(p[0]), yOf(p[1]), 3.5, 0, Math.PI * 2);
          ctx.fill();
        }
      }
    }
    ctx.restore();
  }

  // Curve points from /curve or from events, as numbers (null -> NaN).
  function curvePoint(p) {
    const n = (v) => (v === null || v === undefined || v === '' ? NaN : Number(v));
    return {
      iteration: n(p.iteration),
      epoch: n(p.epoch),
      elapsed_seconds: n(p.elapsed_seconds),
      loss: n(p.loss),
      train_accuracy: n(p.train_accuracy),
      validation_accuracy: n(p.validation_accuracy),
    };
  }

  // Loss (left axis) and training/validation accuracy (right axis) against iteration.
  function drawMetricsChart(canvas, points, empty) {
    const accent = cssVar('--accent', '#4f46e5');
    drawChart(canvas, {
      xLabel: 'iteration',
      yLabel: 'loss',
      y2Label: 'accuracy',
      xInteger: true,
      yZero: true,
      empty,
      series: [
        { label: 'Loss', color: CHART_LOSS, axis: 'y', points: points.map((p) => [p.iteration, p.loss]) },
        { label: 'Training accuracy', color: accent, axis: 'y2', points: points.map((p) => [p.iteration, p.train_accuracy]) },
        {
          label: 'Validation accuracy', color: CHART_VALIDATION, axis: 'y2', markers: true,
          points: points.filter((p) => isNum(p.validation_accuracy)).map((p) => [p.iteration, p.validation_accuracy]),
        },
      ],
    });
    const last = points[points.length - 1];
    if (canvas && last) {
      canvas.setAttribute('aria-label', `Loss and accuracy against iteration: ${points.length} points, ` +
        `iteration ${fmtInt(last.iteration)}, loss ${fmtLoss(last.loss)}, training accuracy ${fmtAcc(last.train_accuracy)}`);
    }
  }

  // Iterations against elapsed time, in the unit that keeps the tick labels short.
  function drawTimeChart(canvas, points) {
    const maxT = Math.max(0, extent(points.map((p) => p.elapsed_seconds))[1]);
    const [div, unit] = maxT >= 3 * 3600 ? [3600, 'h'] : maxT >= 180 ? [60, 'min'] : [1, 's'];
    drawChart(canvas, {
      xLabel: `elapsed time (${unit})`,
      yLabel: 'iteration',
      yInteger: true,
      yZero: true,
      empty: 'No iterations recorded',
      series: [{
        label: 'Iterations', color: cssVar('--accent', '#4f46e5'), axis: 'y',
        points: points.map((p) => [p.elapsed_seconds / div, p.iteration]),
      }],
    });
  }

  // ------------------------------------------------------------------ maintenance state
  const num = (v) => (v === null || v === undefined || v === '' ? NaN : Number(v)); // u64s may come as strings
  const LS_OPERATIONS = 'cbir.operations';
  const PARAM_LABELS = {
    epochs: 'epochs', batch_size: 'batch size', learning_rate: 'learning rate', fine_tune_backbone: 'fine-tune backbone',
    validation_fraction: 'validation fraction', seed: 'seed', min_images_per_class: 'min images per class',
    early_stopping_patience: 'early stopping patience', tune_blocks: 'tuned blocks', augment_views: 'augmented views',
    head_epochs: 'head epochs',
  };

  const maint = {
    visible: false,
    pollTimer: null,
    pollTicks: 0,
    jobs: [],
    jobsLoaded: false,
    models: [],
    modelsLoaded: false,
    openJobs: new Set(), // job ids with their details row open
    openModels: new Set(), // "name:version" with their details row open
    openSkipped: new Set(), // job ids whose skipped-files list is open
    jobsSig: '',
    modelsSig: '',
    folder: null, // describeFolder() of the chosen folder
    archive: null, // the chosen archive File
    upload: null, // the XMLHttpRequest of a dataset upload in flight
    submitting: false,
    curveJobId: null,
    curvePoints: [],
    operations: new Map(), // operation id -> tracker
    rebuilding: new Map(), // collection name -> tracker of its rebuild
  };

  // The job shown in the progress panel, fed by its event stream.
  const live = {
    job: null,
    points: [], // curve points: /curve first, then one per event
    lastValidation: NaN,
    source: null, // EventSource
    seq: 0, // bumps when another job is watched, so callbacks for the previous one stop
    retries: 0,
    renderQueued: false,
    detailsSig: '',
  };

  const debounce = (fn, ms) => {
    let t = null;
    return (...args) => {
      clearTimeout(t);
      t = setTimeout(() => fn(...args), ms);
    };
  };

  // Re-rendering a table replaces its buttons; put the focus back on the same action of the same row.
  function preserveFocus(container, update) {
    const a = document.activeElement;
    const row = a && container.contains(a) && a.dataset.action ? a.closest('tr') : null;
    const want = row ? { key: row.dataset.key, action: a.dataset.action } : null;
    update();
    if (want && !container.contains(document.activeElement)) {
      const again = container.querySelector(`tr[data-key="${CSS.escape(want.key)}"] [data-action="${want.action}"]`);
      if (again) again.focus();
    }
  }

  const button = (text, action, onclick, extra = {}) => el('button', {
    type: 'button', class: `btn btn-small${extra.cls ? ` ${extra.cls}` : ''}`, 'data-action': action, onclick, ...extra.attrs,
  }, text);

  const stateBadge = (s) => el('span', { class: `badge state-${s}`, 'data-testid': 'state-badge', text: s });

  // ------------------------------------------------------------------ maintenance: visibility and polling
  function setMaintenanceVisible(on) {
    const was = maint.visible;
    maint.visible = on;
    if (on && !was) {
      refreshMaintenance();
      maint.pollTimer = setInterval(pollMaintenance, 4000);
      requestAnimationFrame(redrawCharts); // the canvases had no size while the tab was hidden
    } else if (!on && was) {
      clearInterval(maint.pollTimer);
      maint.pollTimer = null;
    }
  }

  function refreshMaintenance() {
    loadJobs().then(autoWatch);
    loadModels();
    loadCollections().catch(() => {});
  }

  // Queued and running jobs change: follow them every 4 s; otherwise look for jobs submitted
  // elsewhere (CLI, another browser) every 20 s.
  function pollMaintenance() {
    maint.pollTicks += 1;
    const active = maint.jobs.some((j) => !TERMINAL_JOB_STATES.has(j.state));
    if (active || !maint.jobsLoaded || maint.pollTicks % 5 === 0) loadJobs().then(autoWatch);
  }

  function redrawCharts() {
    if (!maint.visible) return;
    renderLive();
    if (!$('curve-panel').hidden) renderCurve();
  }

  // ------------------------------------------------------------------ maintenance: jobs
  let jobsInFlight = null;
  function loadJobs() {
    if (jobsInFlight) return jobsInFlight;
    jobsInFlight = (async () => {
      try {
        const d = await api('/api/training/jobs');
        banner.clear('jobs');
        setJobs((d && d.jobs) || []);
      } catch (err) {
        reportError(err, 'jobs', 'Could not list the training jobs');
        if (!maint.jobsLoaded) $('jobs-empty').textContent = 'Could not load the training jobs: see the message above.';
      } finally {
        jobsInFlight = null;
      }
    })();
    return jobsInFlight;
  }

  function setJobs(jobs) {
    maint.jobs = jobs;
    maint.jobsLoaded = true;
    // The watched job's stream is fresher than a list fetched meanwhile.
    if (live.job && live.source) upsertJob(live.job, false);
    renderJobs();
  }

  function upsertJob(job, render = true) {
    const i = maint.jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) maint.jobs[i] = job;
    else maint.jobs.unshift(job);
    if (render) scheduleJobsRender();
  }

  // Events can arrive several times a second: redraw the table at most once a second.
  let jobsRenderTimer = null;
  function scheduleJobsRender() {
    if (jobsRenderTimer) return;
    jobsRenderTimer = setTimeout(() => {
      jobsRenderTimer = null;
      renderJobs();
    }, 1000);
  }

  // Show the running (else the next queued) job; with none, the latest one, so a reload shows
  // how it ended. A job being watched stays until it ends.
  function autoWatch() {
    const cur = live.job;
    if (cur && !TERMINAL_JOB_STATES.has(cur.state)) return;
    const active = maint.jobs.find((j) => j.state === 'running')
      || [...maint.jobs].reverse().find((j) => j.state === 'queued');
    if (active && (!cur || cur.id !== active.id)) watchJob(active);
    else if (!cur && maint.jobs.length) watchJob(maint.jobs[0]);
  }

  function jobDuration(j) {
    const start = num(j.started_at_ms);
    if (!(start > 0)) return NaN;
    const end = num(j.finished_at_ms) > 0 ? num(j.finished_at_ms) : TERMINAL_JOB_STATES.has(j.state) ? NaN : Date.now();
    return (end - start) / 1000;
  }

  // How far the job is, 0..1: feature extraction reports "(done/total images)" in its phase,
  // training reports iterations.
  function jobFraction(j) {
    if (j.state === 'succeeded') return 1;
    const p = j.progress || {};
    const m = /\((\d+)\/(\d+) images\)/.exec(p.phase || '');
    if (m && Number(m[2]) > 0) return Math.min(1, Number(m[1]) / Number(m[2]));
    if (num(p.iterations) > 0) return Math.min(1, num(p.iteration) / num(p.iterations));
    return 0;
  }

  function jobMessage(j) {
    const p = j.progress || {};
    if (j.state === 'running') {
      const pct = jobFraction(j);
      return `${p.phase || 'running'}${pct > 0 ? ` · ${fmtPct(pct)}` : ''}`;
    }
    if (j.state === 'succeeded' && !j.message && j.model) return `Registered ${modelLabel(j.model)}`;
    return j.message || '';
  }

  function paramsText(params) {
    const parts = Object.entries(params || {})
      .filter(([, v]) => v !== 0 && v !== false && v !== null && v !== '' && v !== '0' && v !== undefined)
      .map(([k, v]) => `${PARAM_LABELS[k] || k} ${v === true ? 'yes' : v}`);
    return parts.length ? parts.join(' · ') : 'server defaults';
  }

  // What the service found in the dataset: classes, the split, and the files it skipped.
  function jobDetails(j) {
    const classes = j.class_names || [];
    const skipped = j.skipped || [];
    const shown = classes.slice(0, 60).join(', ') + (classes.length > 60 ? `, … (${fmtInt(classes.length - 60)} more)` : '');
    const count = (v) => (num(v) > 0 ? fmtInt(num(v)) : '–');
    const kv = (k, v) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }));
    const skippedBox = skipped.length
      ? el('details', {
        class: 'failures',
        'data-testid': 'job-skipped',
        open: maint.openSkipped.has(j.id),
        ontoggle: (e) => (e.currentTarget.open ? maint.openSkipped.add(j.id) : maint.openSkipped.delete(j.id)),
      },
      el('summary', { text: `${plural(skipped.length, 'file')} skipped` }),
      el('ul', {}, ...skipped.slice(0, 500).map((s) => el('li', { text: s })),
        skipped.length > 500 ? el('li', { class: 'muted', text: `… and ${fmtInt(skipped.length - 500)} more` }) : null))
      : el('p', { class: 'muted small', text: 'No file skipped.' });
    return el('div', { class: 'job-details', 'data-testid': 'job-validation' },
      el('dl', { class: 'kv' },
        kv('Classes', classes.length ? `${fmtInt(classes.length)}: ${shown}` : 'not read yet'),
        kv('Training images', count(j.train_images)),
        kv('Validation images', count(j.validation_images)),
        kv('Dataset', j.dataset || '–'),
        kv('Parameters', paramsText(j.params)),
        kv('Submitted by', j.submitted_by || '–'),
        kv('Submitted', fmtTime(num(j.created_at_ms))),
        kv('Model', j.model ? modelLabel(j.model) : '–')),
      skippedBox);
  }

  // The texts of a job's row: built once for the row and for the table's change signature.
  function jobCells(j) {
    const classes = j.class_names || [];
    const train = num(j.train_images) || 0;
    const val = num(j.validation_images) || 0;
    return {
      state: j.state,
      name: j.name || '–',
      dataset: j.dataset || '–',
      classes: classes.length ? fmtInt(classes.length) : '–',
      classesTitle: classes.slice(0, 100).join(', '),
      images: train + val > 0 ? fmtInt(train + val) : '–',
      imagesTitle: `${fmtInt(train)} training + ${fmtInt(val)} validation`,
      started: fmtTime(num(j.started_at_ms)),
      duration: fmtDuration(jobDuration(j)),
      message: jobMessage(j),
    };
  }

  function jobRows(j) {
    const c = jobCells(j);
    const open = maint.openJobs.has(j.id);
    const active = !TERMINAL_JOB_STATES.has(j.state);
    const watched = !!live.job && live.job.id === j.id;
    const tr = el('tr', {
      'data-testid': 'job-row', 'data-key': j.id, 'data-id': j.id, 'data-state': j.state, class: watched ? 'watched' : null,
    },
    el('td', {}, stateBadge(j.state)),
    el('td', { class: 'strong', text: c.name }),
    el('td', { class: 'clip', title: c.dataset, text: c.dataset }),
    el('td', { class: 'num', title: c.classesTitle || null, text: c.classes }),
    el('td', { class: 'num', title: c.imagesTitle, text: c.images }),
    el('td', { class: 'nowrap', text: c.started }),
    el('td', { class: 'num nowrap', text: c.duration }),
    el('td', { class: `msg${j.state === 'failed' ? ' bad' : ''}`, text: c.message }),
    el('td', { class: 'row-actions' },
      button(open ? 'Hide details' : 'Details', 'details', () => toggleOpen(maint.openJobs, j.id, renderJobs),
        { attrs: { 'aria-expanded': String(open), 'data-testid': 'job-details' } }),
      button('Curve', 'curve', () => showCurve(j), { attrs: { 'data-testid': 'job-curve', disabled: j.state === 'queued' } }),
      active && !watched ? button('Progress', 'watch', () => {
        watchJob(j);
        $('live-job').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
      }, { attrs: { 'data-testid': 'job-watch' } }) : null,
      active ? button('Cancel', 'cancel', () => cancelJob(j), { cls: 'btn-danger', attrs: { 'data-testid': 'job-cancel' } }) : null));
    if (!open) return [tr];
    return [tr, el('tr', { class: 'details-row', 'data-key': `${j.id}/details` }, el('td', { colspan: 9 }, jobDetails(j)))];
  }

  function toggleOpen(set, key, render) {
    if (set.has(key)) set.delete(key);
    else set.add(key);
    render();
  }

  function renderJobs() {
    const jobs = maint.jobs;
    const empty = $('jobs-empty');
    empty.hidden = jobs.length > 0;
    if (maint.jobsLoaded) empty.textContent = 'No training jobs yet.';
    // Rebuild only on a visible change, so an open row keeps its state and the focus stays put.
    const sig = JSON.stringify([jobs.map((j) => [j.id, jobCells(j), (j.skipped || []).length, j.class_names, j.model]),
      [...maint.openJobs], live.job && live.job.id]);
    if (sig === maint.jobsSig) return;
    maint.jobsSig = sig;
    const body = $('jobs-body');
    preserveFocus(body, () => body.replaceChildren(...jobs.flatMap(jobRows)));
  }

  async function cancelJob(job) {
    if (!window.confirm(`Cancel the training job "${job.name}"? What it has trained so far is discarded.`)) return;
    try {
      const j = await api(`/api/training/jobs/${enc(job.id)}/cancel`, { method: 'POST' });
      banner.clear('cancel');
      if (j && j.id) {
        upsertJob(j);
        if (live.job && live.job.id === j.id) {
          live.job = j;
          scheduleLiveRender();
        }
      }
    } catch (err) {
      reportError(err, 'cancel', `Could not cancel "${job.name}"`);
    }
    loadJobs();
  }

  // ------------------------------------------------------------------ maintenance: live progress
  async function watchJob(job) {
    stopStream();
    const seq = ++live.seq;
    Object.assign(live, { job, points: [], lastValidation: NaN, retries: 0, detailsSig: '' });
    renderLive();
    renderJobs();
    // The curve holds what happened before this page looked; the events continue from there.
    await syncCurve(seq);
    if (seq === live.seq && !TERMINAL_JOB_STATES.has(live.job.state)) openStream(seq);
  }

  function stopStream() {
    if (live.source) live.source.close();
    live.source = null;
  }

  // EventSource cannot send headers: the key goes in the query (withKey). The gateway names its
  // events "job" (one job JSON each) and "error" ({code, message} when the watch fails).
  function openStream(seq) {
    const es = new EventSource(withKey(`/api/training/jobs/${enc(live.job.id)}/events`));
    live.source = es;
    const onJob = (ev) => {
      if (seq !== live.seq) {
        es.close();
        return;
      }
      const job = parseJson(ev.data);
      if (!job || !job.id) return;
      live.retries = 0;
      banner.clear('live');
      onJobEvent(job, seq);
    };
    es.addEventListener('job', onJob);
    es.addEventListener('message', onJob); // unnamed events, should the gateway send those
    es.addEventListener('error', (ev) => {
      // Either the server's "error" event (with data) or a dropped connection. The server also
      // ends the stream when the job ends, and EventSource would reconnect by itself: close it
      // and decide here (normally the last job event has closed it already).
      es.close();
      if (live.source === es) live.source = null;
      if (seq !== live.seq) return;
      const e = errorBody(parseJson(ev.data || ''));
      if (e && e.message) banner.show(`Training progress: ${e.message}`, 'live');
      resumeStream(seq);
    });
  }

  function onJobEvent(job, seq) {
    const before = live.job ? live.job.state : null;
    live.job = job;
    addEventPoint(job);
    upsertJob(job);
    scheduleLiveRender();
    if (before !== job.state) loadJobs();
    if (TERMINAL_JOB_STATES.has(job.state)) jobEnded(seq);
  }

  // An event carries the latest step. Validation runs at the end of an epoch: it shows up as a
  // new validation accuracy, plotted at the iteration it was measured.
  function addEventPoint(job) {
    const p = job.progress || {};
    const pt = curvePoint({ ...p, validation_accuracy: null });
    if (!(pt.iteration > 0)) return;
    const last = live.points[live.points.length - 1];
    if (!last || pt.iteration > last.iteration) live.points.push(pt);
    const va = num(p.validation_accuracy);
    if (isNum(va) && va > 0 && va !== live.lastValidation) {
      live.lastValidation = va;
      live.points.push({ ...pt, validation_accuracy: va });
    }
  }

  async function jobEnded(seq) {
    stopStream();
    await syncCurve(seq); // the stored curve is exact where events may have been skipped
    if (seq !== live.seq) return;
    const j = live.job;
    if (j.state === 'failed') banner.show(`Training job "${j.name}" failed: ${j.message || 'no reason given'}`, 'live');
    await loadJobs();
    if (j.state === 'succeeded') loadModels();
  }

  // The stream broke before the job ended: read the job (this asks for an API key on 401,
  // which EventSource cannot tell us), then reopen the stream with a growing pause.
  async function resumeStream(seq) {
    try {
      const job = await api(`/api/training/jobs/${enc(live.job.id)}`);
      if (seq !== live.seq) return;
      banner.clear('live');
      live.job = job;
      upsertJob(job);
      scheduleLiveRender();
      if (TERMINAL_JOB_STATES.has(job.state)) {
        jobEnded(seq);
        return;
      }
    } catch (err) {
      if (seq !== live.seq) return;
      if (err.code === 'not_found') {
        live.job = null;
        renderLive();
        loadJobs();
        return;
      }
      reportError(err, 'live', 'Lost the progress stream of the training job');
    }
    live.retries += 1;
    await sleep(Math.min(15000, 500 * 2 ** Math.min(live.retries, 5)));
    if (seq !== live.seq) return;
    await syncCurve(seq); // the points sent while the stream was down
    if (seq === live.seq && !TERMINAL_JOB_STATES.has(live.job.state)) openStream(seq);
  }

  async function syncCurve(seq) {
    if (!live.job || live.job.state === 'queued') return;
    try {
      const d = await api(`/api/training/jobs/${enc(live.job.id)}/curve`);
      if (seq !== live.seq) return;
      banner.clear('live-curve');
      const pts = ((d && d.points) || []).map(curvePoint).filter((p) => isNum(p.iteration));
      const lastIt = pts.length ? pts[pts.length - 1].iteration : -Infinity;
      // Events that arrived while the curve loaded are newer than it: keep them.
      live.points = pts.concat(live.points.filter((p) => p.iteration > lastIt));
      const vals = live.points.filter((p) => isNum(p.validation_accuracy));
      live.lastValidation = vals.length ? vals[vals.length - 1].validation_accuracy : NaN;
      scheduleLiveRender();
    } catch (err) {
      if (seq !== live.seq || err.code === 'not_found') return; // no curve yet
      reportError(err, 'live-curve', 'Could not load the training curve');
    }
  }

  function scheduleLiveRender() {
    if (live.renderQueued) return;
    live.renderQueued = true;
    requestAnimationFrame(() => {
      live.renderQueued = false;
      renderLive();
    });
  }

  function livePhaseText(j) {
    const p = j.progress || {};
    switch (j.state) {
      case 'queued': return 'Queued: waiting for the trainer.';
      case 'running': return p.phase ? `${p.phase[0].toUpperCase()}${p.phase.slice(1)}…` : 'Running…';
      case 'succeeded': return `Finished: registered the model ${modelLabel(j.model)}.`;
      case 'failed': return `Failed: ${j.message || 'no reason given'}`;
      case 'cancelled': return 'Cancelled.';
      default: return j.state || '';
    }
  }

  function renderLive() {
    const j = live.job;
    const panel = $('live-job');
    panel.dataset.state = j ? j.state : 'none';
    panel.dataset.jobId = j ? j.id : '';
    $('live-empty').hidden = !!j;
    $('live-body').hidden = !j;
    $('live-cancel').hidden = !j || TERMINAL_JOB_STATES.has(j.state);
    $('live-state').replaceChildren(...(j ? [stateBadge(j.state)] : []));
    if (!j) {
      $('live-title').textContent = 'Training progress';
      return;
    }
    const p = j.progress || {};
    const ended = TERMINAL_JOB_STATES.has(j.state);
    $('live-title').textContent = `Training "${j.name}"`;
    $('live-phase').textContent = livePhaseText(j);
    $('live-phase').classList.toggle('bad', j.state === 'failed');
    const bar = $('live-progress');
    bar.classList.toggle('running', j.state === 'running');
    bar.classList.toggle('finished', ended);
    bar.classList.toggle('has-failures', j.state === 'failed' || j.state === 'cancelled');
    $('live-fill').style.width = `${(jobFraction(j) * 100).toFixed(1)}%`;
    const of = (a, b) => (num(b) > 0 ? `${fmtInt(num(a) || 0)} / ${fmtInt(num(b))}` : '–');
    $('live-epoch').textContent = of(p.epoch, p.epochs);
    $('live-iteration').textContent = of(p.iteration, p.iterations);
    $('live-loss').textContent = num(p.iteration) > 0 ? fmtLoss(num(p.loss)) : '–';
    $('live-train-acc').textContent = num(p.iteration) > 0 ? fmtAcc(num(p.train_accuracy)) : '–';
    const va = isNum(live.lastValidation) ? live.lastValidation : num(p.validation_accuracy);
    $('live-val-acc').textContent = va > 0 ? fmtAcc(va) : '–';
    $('live-ips').textContent = num(p.images_per_second) > 0 ? num(p.images_per_second).toFixed(1) : '–';
    $('live-elapsed').textContent = num(p.elapsed_seconds) > 0 ? fmtDuration(num(p.elapsed_seconds)) : fmtDuration(jobDuration(j));
    $('live-eta').textContent = !ended && num(p.eta_seconds) > 0 ? fmtDuration(num(p.eta_seconds)) : '–';
    const repeats = j.state === 'failed' || (j.state === 'succeeded' && j.model && (j.message || '').includes(modelLabel(j.model)));
    $('live-message').textContent = !repeats && j.message ? j.message : '';
    // The details change rarely; rebuilding them on every event would close an open list.
    const sig = JSON.stringify([j.id, j.class_names, j.train_images, j.validation_images, j.skipped, j.dataset, j.params, j.model]);
    if (sig !== live.detailsSig) {
      live.detailsSig = sig;
      $('live-details').replaceChildren(jobDetails(j));
    }
    drawMetricsChart($('live-chart'), live.points,
      j.state === 'queued' ? 'Waiting for the job to start' : ended ? 'No iterations recorded' : 'Waiting for the first iteration…');
  }

  // ------------------------------------------------------------------ maintenance: curve of a job
  async function showCurve(job) {
    maint.curveJobId = job.id;
    maint.curvePoints = [];
    const panel = $('curve-panel');
    panel.hidden = false;
    panel.dataset.jobId = job.id;
    panel.dataset.state = 'loading';
    $('curve-title').textContent = `Performance curve: ${job.name}`;
    $('curve-summary').textContent = 'Loading…';
    renderCurve();
    try {
      const d = await api(`/api/training/jobs/${enc(job.id)}/curve`);
      if (maint.curveJobId !== job.id) return;
      banner.clear('curve');
      maint.curvePoints = ((d && d.points) || []).map(curvePoint).filter((p) => isNum(p.iteration));
    } catch (err) {
      if (maint.curveJobId !== job.id) return;
      reportError(err, 'curve', `Could not load the curve of "${job.name}"`);
    }
    panel.dataset.state = 'ready';
    $('curve-summary').textContent = curveSummary(maint.curvePoints);
    renderCurve();
    panel.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }

  function curveSummary(points) {
    if (!points.length) return 'No iterations recorded for this job.';
    const last = points[points.length - 1];
    const epochs = extent(points.map((p) => p.epoch))[1];
    const best = points.filter((p) => isNum(p.validation_accuracy))
      .reduce((b, p) => (!b || p.validation_accuracy > b.validation_accuracy ? p : b), null);
    return [
      `${plural(last.iteration, 'iteration')}`,
      isNum(epochs) ? plural(epochs, 'epoch') : null,
      isNum(last.elapsed_seconds) ? `in ${fmtDuration(last.elapsed_seconds)}` : null,
      `last loss ${fmtLoss(last.loss)}`,
      best ? `best validation accuracy ${fmtAcc(best.validation_accuracy)} (epoch ${fmtInt(best.epoch)})` : 'no validation recorded',
    ].filter(Boolean).join(' · ');
  }

  function renderCurve() {
    drawTimeChart($('curve-time'), maint.curvePoints);
    drawMetricsChart($('curve-metrics'), maint.curvePoints, 'No iterations recorded');
  }

  function closeCurve() {
    maint.curveJobId = null;
    maint.curvePoints = [];
    $('curve-panel').hidden = true;
  }

  // ------------------------------------------------------------------ maintenance: models
  let modelsInFlight = null;
  function loadModels() {
    if (modelsInFlight) return modelsInFlight;
    modelsInFlight = (async () => {
      try {
        const d = await api('/api/models');
        banner.clear('models-list');
        maint.models = (d && d.models) || [];
        maint.modelsLoaded = true;
        renderModels();
        renderMaintCollections(); // which collections use the active model
      } catch (err) {
        reportError(err, 'models-list', 'Could not list the models');
        if (!maint.modelsLoaded) $('models-empty').textContent = 'Could not load the models: see the message above.';
      } finally {
        modelsInFlight = null;
      }
    })();
    return modelsInFlight;
  }

  const activeModel = () => maint.models.find((m) => m.active) || null;
  // The contract sends the base model as "name:version"; accept a {name, version} too.
  const baseModelText = (b) => (b && typeof b === 'object' ? modelLabel(b) : b || '–');
  const positive = (v, fmt) => (num(v) > 0 ? fmt(num(v)) : '–');
  // "name:version" that may wrap after the colon only (not at the hyphens of "efficientnet-lite0").
  const wrapAtColon = (text) => {
    const i = text.indexOf(':');
    if (i < 0) return el('span', { class: 'nowrap', text });
    return el('span', {}, el('span', { class: 'nowrap', text: text.slice(0, i + 1) }), el('wbr'),
      el('span', { class: 'nowrap', text: text.slice(i + 1) }));
  };

  function modelDetails(m) {
    const per = m.per_class || [];
    const classes = m.class_names || [];
    const facts = [
      `${plural(classes.length, 'class', 'classes')}`,
      m.base_model ? `fine-tuned from ${baseModelText(m.base_model)}` : 'not fine-tuned from another model',
      m.job_id ? `training job ${m.job_id}` : null,
    ].filter(Boolean).join(' · ');
    const table = per.length
      ? el('table', { class: 'data-table per-class', 'data-testid': 'per-class' },
        el('thead', {}, el('tr', {}, el('th', { text: 'Class' }), el('th', { class: 'num', text: 'Validation images' }),
          el('th', { class: 'num', text: 'Accuracy' }), el('th', { class: 'share' }, el('span', { class: 'visually-hidden', text: 'Accuracy bar' })))),
        el('tbody', {}, ...per.map((c) => el('tr', {},
          el('td', { text: c.class_name }),
          el('td', { class: 'num', text: fmtInt(num(c.images)) }),
          el('td', { class: 'num', text: fmtAcc(num(c.accuracy)) }),
          el('td', { class: 'share' }, el('span', {
            class: `share-bar${num(c.accuracy) < 0.5 ? ' low' : ''}`,
            style: `--w:${Math.max(0, Math.min(1, num(c.accuracy) || 0)) * 100}%`,
          }))))))
      : el('p', { class: 'muted small', text: 'No per-class accuracy recorded for this model.' });
    return el('div', { class: 'model-details' }, el('p', { class: 'muted small', text: facts }), table);
  }

  function modelRows(m) {
    const key = modelLabel(m);
    const open = maint.openModels.has(key);
    const classes = (m.class_names || []).length;
    const tr = el('tr', {
      'data-testid': 'model-row', 'data-key': key, 'data-name': m.name, 'data-version': String(m.version),
      'data-active': String(!!m.active), class: m.active ? 'active-row' : null,
    },
    el('td', { class: 'strong' },
      el('span', { class: 'model-name' }, wrapAtColon(key)),
      m.active ? el('span', { class: 'badge badge-active', 'data-testid': 'active-badge', text: 'active' }) : null),
    el('td', { text: m.trained_by || '–' }),
    el('td', { class: 'nowrap', text: fmtTime(num(m.created_at_ms)) }),
    el('td', { class: 'num nowrap', text: positive(m.duration_seconds, fmtDuration) }),
    el('td', { class: 'num', text: positive(m.iterations, fmtInt) }),
    el('td', { class: 'num', text: positive(m.epochs, fmtInt) }),
    el('td', { class: 'num', text: positive(m.validation_accuracy, fmtAcc) }),
    el('td', { class: 'num', text: classes ? fmtInt(classes) : '–' }),
    el('td', { class: 'num nowrap', text: positive(m.weights_bytes, fmtBytes) }),
    el('td', {}, wrapAtColon(baseModelText(m.base_model))),
    el('td', { class: 'row-actions' },
      button(open ? 'Hide details' : 'Details', 'details', () => toggleOpen(maint.openModels, key, renderModels),
        { attrs: { 'aria-expanded': String(open), 'data-testid': 'model-details' } }),
      button('Activate', 'activate', () => activateModel(m), {
        attrs: { 'data-testid': 'model-activate', disabled: !!m.active, title: m.active ? 'This model is active already' : null },
      }),
      button('Delete', 'delete', () => deleteModel(m), {
        cls: 'btn-danger',
        // Left enabled for the active model: the server explains why it refuses.
        attrs: { 'data-testid': 'model-delete', title: m.active ? 'The active model cannot be deleted: activate another first' : null },
      })));
    if (!open) return [tr];
    return [tr, el('tr', { class: 'details-row', 'data-key': `${key}/details` }, el('td', { colspan: 11 }, modelDetails(m)))];
  }

  function renderModels() {
    const models = maint.models;
    const empty = $('models-empty');
    empty.hidden = models.length > 0;
    if (maint.modelsLoaded) empty.textContent = 'No models registered.';
    const sig = JSON.stringify([models, [...maint.openModels]]);
    if (sig === maint.modelsSig) return;
    maint.modelsSig = sig;
    const body = $('models-body');
    preserveFocus(body, () => body.replaceChildren(...models.flatMap(modelRows)));
  }

  const setModelsNote = (text) => { $('models-note').textContent = text; };

  async function activateModel(m) {
    const label = modelLabel(m);
    const ok = window.confirm(`Activate the model ${label}?\n\nSearching and indexing use it from now on, and every ` +
      'collection built with the current model is re-embedded with it, which takes a while for large collections.');
    if (!ok) return;
    let r;
    try {
      r = await api(`/api/models/${enc(m.name)}/${enc(m.version)}/activate`, { method: 'POST' });
      banner.clear('models');
    } catch (err) {
      reportError(err, 'models', `Could not activate ${label}`);
      return;
    }
    const ids = (r && r.rebuild_operation_ids) || [];
    setModelsNote(ids.length
      ? `${label} is active. Re-embedding ${plural(ids.length, 'collection')}: progress below.`
      : `${label} is active. No collection needed re-embedding.`);
    loadModels();
    loadModel(); // the footer names the model inference serves
    const trackers = ids.map((id, i) => trackOperation(id, `Re-embedding for ${label}` +
      `${ids.length > 1 ? ` (${i + 1} of ${ids.length})` : ''}`));
    await Promise.all(trackers.map((t) => t.finished));
    if (ids.length) {
      const failed = trackers.filter((t) => t.data && t.data.state !== 'succeeded').length;
      setModelsNote(failed
        ? `${label} is active; ${plural(failed, 'rebuild')} did not finish: see below.`
        : `${label} is active and every collection has been re-embedded with it.`);
      await Promise.all([loadModels(), loadCollections().catch(() => {})]);
      refreshDetail().catch(() => {});
    }
  }

  async function deleteModel(m) {
    const label = modelLabel(m);
    const size = num(m.weights_bytes) > 0 ? ` (${fmtBytes(num(m.weights_bytes))} of weights)` : '';
    if (!window.confirm(`Delete the model ${label}${size}? This cannot be undone.`)) return;
    try {
      await api(`/api/models/${enc(m.name)}/${enc(m.version)}`, { method: 'DELETE' });
      banner.clear('models');
      setModelsNote(`Deleted ${label}.`);
    } catch (err) {
      // E.g. 409 for the active model: the server's message says what to do.
      reportError(err, 'models', `Could not delete ${label}`);
    }
    loadModels();
  }

  // ------------------------------------------------------------------ maintenance: rebuild operations
  // Trackers survive a reload of the page: their ids are kept for the browser session.
  function saveOperations() {
    const list = [...maint.operations.values()].filter((t) => !t.ended)
      .map((t) => ({ id: t.id, title: t.title, collection: t.collection }));
    sessionStorage.setItem(LS_OPERATIONS, JSON.stringify(list));
  }

  function resumeOperations() {
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
  function trackOperation(id, title, collection = null) {
    const existing = maint.operations.get(id);
    if (existing) return existing;
    const t = { id, title, collection, data: null, ended: false, node: null, show: null, rowView: null };
    opView(t);
    maint.operations.set(id, t);
    if (collection) maint.rebuilding.set(collection, t);
    $('operations').prepend(t.node);
    $('operations-panel').hidden = false;
    saveOperations();
    renderMaintCollections();
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
    renderMaintCollections();
    return t.data;
  }

  // ------------------------------------------------------------------ maintenance: collections
  const setCollectionsNote = (text) => { $('maint-collections-note').textContent = text; };

  function collectionStatus(c, active) {
    const t = maint.rebuilding.get(c.name);
    if (t) {
      const fill = el('div', { class: 'bar-fill' });
      const text = el('span', { class: 'small', text: 'rebuilding…' });
      t.rowView = (d) => {
        const total = num(d.total) || 0;
        const frac = total > 0 ? Math.min(1, ((num(d.done) || 0) + (num(d.failed) || 0)) / total) : 0;
        fill.style.width = `${(frac * 100).toFixed(1)}%`;
        text.textContent = `rebuilding · ${fmtPct(frac)}`;
      };
      if (t.data) t.rowView(t.data);
      return el('div', { class: 'mini-progress', 'data-testid': 'collection-rebuild-progress' }, el('div', { class: 'bar' }, fill), text);
    }
    if (!active || !c.model) return el('span', { class: 'muted', text: '–' });
    return sameModel(c.model, active)
      ? el('span', { class: 'chip chip-ok', text: 'active model' })
      : el('span', { class: 'chip chip-warn', title: `Built with ${modelLabel(c.model)}; the active model is ${modelLabel(active)}`,
        text: 'older model' });
  }

  function collectionRow(c, active) {
    const busy = maint.rebuilding.has(c.name);
    return el('tr', { 'data-testid': 'maint-collection-row', 'data-key': c.name, 'data-name': c.name, 'data-count': String(c.count) },
      el('td', { class: 'strong' }, el('span', { text: c.name }),
        c.description ? el('span', { class: 'muted small block', text: c.description }) : null),
      el('td', { class: 'num', 'data-testid': 'maint-collection-count', text: fmtInt(c.count) }),
      el('td', { class: 'nowrap', text: c.model ? modelLabel(c.model) : '–' }),
      el('td', { class: 'num', text: fmtInt(c.dims) }),
      el('td', { class: 'nowrap', text: fmtTime(num(c.created_at_ms)) }),
      el('td', {}, collectionStatus(c, active)),
      el('td', { class: 'row-actions' },
        button('Clear', 'clear', async () => {
          const note = await clearCollectionNamed(c, 'maint-collections');
          if (note) setCollectionsNote(note);
        }, { cls: 'btn-warn', attrs: { 'data-testid': 'collection-clear', disabled: busy } }),
        button('Rebuild', 'rebuild', () => rebuildCollection(c), { attrs: { 'data-testid': 'collection-rebuild', disabled: busy } }),
        button('Delete', 'delete', async () => {
          const note = await deleteCollectionNamed(c, 'maint-collections');
          if (note) setCollectionsNote(note);
        }, { cls: 'btn-danger', attrs: { 'data-testid': 'collection-delete', disabled: busy } })));
  }

  function renderMaintCollections() {
    const body = $('maint-collections-body');
    const active = activeModel();
    $('maint-collections-empty').hidden = state.collections.length > 0;
    preserveFocus(body, () => body.replaceChildren(...state.collections.map((c) => collectionRow(c, active))));
  }

  async function rebuildCollection(c) {
    const active = activeModel();
    const ok = window.confirm(`Re-embed the ${fmtInt(c.count)} images of "${c.name}" with ` +
      `${active ? `the active model ${modelLabel(active)}` : 'the model inference serves now'}? This takes a while for large collections.`);
    if (!ok) return;
    let r;
    try {
      r = await api(`/api/collections/${enc(c.name)}/rebuild`, { method: 'POST' });
      banner.clear('maint-collections');
    } catch (err) {
      reportError(err, 'maint-collections', `Could not rebuild "${c.name}"`);
      return;
    }
    if (!r || !r.operation_id) return;
    setCollectionsNote(`Rebuilding "${c.name}": progress below.`);
    const t = trackOperation(r.operation_id, `Rebuilding "${c.name}"`, c.name);
    const d = await t.finished;
    setCollectionsNote(d.state === 'succeeded' ? `Rebuilt "${c.name}".` : `The rebuild of "${c.name}" ended: ${d.state}.`);
    await loadCollections().catch(() => {});
    refreshDetail().catch(() => {});
  }

  // ------------------------------------------------------------------ maintenance: the training form
  const ARCHIVE_TYPES = [[/\.zip$/i, 'application/zip'], [/\.(tgz|tar\.gz)$/i, 'application/gzip'], [/\.tar$/i, 'application/x-tar']];
  const archiveType = (name) => (ARCHIVE_TYPES.find(([re]) => re.test(name)) || [])[1] || null;
  const setTrainStatus = (text) => { $('train-status').textContent = text; };

  function selectedSource() {
    const r = document.querySelector('input[name="train-source"]:checked');
    return r ? r.value : 'folder';
  }

  function showSource() {
    const s = selectedSource();
    for (const pane of document.querySelectorAll('#train-form .source-pane')) pane.hidden = pane.dataset.source !== s;
  }

  // A model name from a folder or archive name, when the user has not typed one.
  function suggestName(raw) {
    const input = $('train-name');
    if (input.value.trim()) return;
    const name = raw.toLowerCase().replace(/\.(zip|tar|tgz|tar\.gz)$/, '').replace(/[^a-z0-9_-]+/g, '-').replace(/^-+|-+$/g, '');
    if (name) input.value = name;
  }

  function onTrainFolder() {
    const input = $('train-folder-input');
    const files = Array.from(input.files || []);
    input.value = ''; // choosing the same folder again must fire "change" again
    maint.folder = files.length ? describeFolder(files) : null;
    if (maint.folder) suggestName(maint.folder.root);
    renderFolderSummary();
  }

  function renderFolderSummary() {
    const f = maint.folder;
    const out = $('train-folder-summary');
    if (!f) {
      out.textContent = 'The folder is empty.';
      return;
    }
    const classes = [...f.classes.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    const lines = [el('strong', { text: `"${f.root}": ${plural(f.images.length, 'image')} (${fmtBytes(f.bytes)}) in ` +
      `${plural(classes.length, 'class folder')}` })];
    if (classes.length) {
      const shown = classes.slice(0, 40).map(([n, k]) => `${n} (${fmtInt(k)})`).join(', ');
      lines.push(el('span', { class: 'block', text: shown + (classes.length > 40 ? `, … ${fmtInt(classes.length - 40)} more` : '') }));
    }
    if (f.ignored) lines.push(el('span', { class: 'block', text: `${plural(f.ignored, 'other file')} (not images, or hidden) left out.` }));
    if (f.loose) lines.push(el('span', { class: 'block warn-text', text: `${plural(f.loose, 'image')} outside the class folders.` }));
    if (classes.length < 2) {
      lines.push(el('span', { class: 'block warn-text', text: 'Training needs at least two class folders, each holding images of one class.' }));
    }
    out.replaceChildren(...lines);
  }

  function onTrainArchive() {
    const input = $('train-archive-input');
    const file = input.files && input.files[0];
    input.value = '';
    if (!file) return;
    if (!archiveType(file.name)) {
      maint.archive = null;
      $('train-archive-summary').textContent = 'A .zip, .tar, .tar.gz or .tgz file, uploaded as it is.';
      banner.show(`"${file.name}" is not a .zip, .tar, .tar.gz or .tgz archive.`, 'train');
      return;
    }
    banner.clear('train');
    maint.archive = file;
    suggestName(file.name);
    $('train-archive-summary').replaceChildren(el('strong', { text: `${file.name} (${fmtBytes(file.size)})` }),
      el('span', { class: 'block', text: 'Uploaded as it is; the server unpacks it.' }));
  }

  // Number inputs with data-param -> the "params" object. Empty and 0 leave the server's default.
  function readParams() {
    const params = {};
    for (const input of document.querySelectorAll('#train-form [data-param]')) {
      const key = input.dataset.param;
      const label = PARAM_LABELS[key] || key;
      const Label = label[0].toUpperCase() + label.slice(1);
      if (input.dataset.kind === 'bool') {
        if (input.checked) params[key] = true;
        continue;
      }
      if (input.validity && input.validity.badInput) throw new Error(`${Label} is not a number.`);
      const raw = input.value.trim();
      if (raw === '') continue;
      const v = Number(raw);
      if (!Number.isFinite(v) || v < 0) throw new Error(`${Label} must be a number of at least 0 (0 or empty: the server's default).`);
      if (input.dataset.kind === 'int' && !Number.isInteger(v)) throw new Error(`${Label} must be a whole number.`);
      if (input.dataset.kind === 'fraction' && v >= 1) throw new Error(`${Label} must be below 1, e.g. 0.2 to keep a fifth of the images for validation.`);
      if (v > 0) params[key] = v;
    }
    return params;
  }

  function setSubmitting(on) {
    maint.submitting = on;
    const submit = $('train-submit');
    submit.disabled = on;
    submit.textContent = on ? 'Starting…' : 'Start training';
    for (const id of ['train-folder-input', 'train-archive-input']) $(id).disabled = on;
    for (const id of ['train-folder-label', 'train-archive-label']) $(id).classList.toggle('disabled', on);
  }

  function showUpload(sent, total, t0) {
    const frac = total > 0 ? Math.min(1, sent / total) : 0;
    const secs = (performance.now() - t0) / 1000;
    const rate = secs > 0.2 ? sent / secs : 0;
    $('train-upload-fill').style.width = `${(frac * 100).toFixed(1)}%`;
    $('train-upload-bytes').textContent = `${fmtBytes(sent)} / ${fmtBytes(total)}`;
    $('train-upload-rate').textContent = rate > 0 ? `${fmtBytes(rate)}/s` : '–';
    $('train-upload-eta').textContent = sent >= total ? 'waiting for the server to store it…'
      : rate > 0 ? `${fmtDuration((total - sent) / rate)} left` : '';
    $('train-upload').dataset.sent = String(sent);
  }

  function setUploadState(stateName, title) {
    const box = $('train-upload');
    box.hidden = false;
    box.dataset.state = stateName;
    box.classList.toggle('running', stateName === 'running');
    box.classList.toggle('finished', stateName !== 'running');
    box.classList.toggle('has-failures', stateName === 'failed' || stateName === 'stopped');
    $('train-upload-title').textContent = title;
    $('train-upload-stop').hidden = stateName !== 'running';
  }

  // One POST with the whole archive, showing how much has been sent.
  async function sendDataset(blob, fileName, type) {
    const t0 = performance.now();
    setUploadState('running', `Uploading ${fileName} (${fmtBytes(blob.size)})`);
    showUpload(0, blob.size, t0);
    try {
      const data = await uploadWithProgress(`/api/training/datasets?file_name=${enc(fileName)}`, blob, type, {
        onProgress: (sent, total) => showUpload(sent, total, t0),
        onStart: (xhr) => { maint.upload = xhr; },
      });
      showUpload(blob.size, blob.size, t0);
      $('train-upload-eta').textContent = `in ${fmtDuration((performance.now() - t0) / 1000)}`;
      setUploadState('finished', `Uploaded ${fileName}: the server stored ${fmtBytes(num(data && data.bytes) || blob.size)}.`);
      return data;
    } catch (err) {
      setUploadState(err.code === 'aborted' ? 'stopped' : 'failed',
        err.code === 'aborted' ? 'Upload stopped.' : `Upload failed: ${err.message}`);
      throw err;
    } finally {
      maint.upload = null;
    }
  }

  async function uploadDataset(source) {
    let blob;
    let fileName;
    let type;
    if (source === 'folder') {
      const f = maint.folder;
      setTrainStatus(`Packing ${plural(f.images.length, 'image')} into a tar archive…`);
      blob = buildTar(f.images.map((file) => ({ path: file.webkitRelativePath || file.name, file })));
      fileName = `${f.root}.tar`;
      type = 'application/x-tar';
    } else {
      blob = maint.archive;
      fileName = blob.name;
      type = archiveType(blob.name);
    }
    const limit = num(state.config.max_dataset_bytes); // if the gateway ever publishes it
    if (limit > 0 && blob.size > limit) {
      throw new ApiError(`The archive is ${fmtBytes(blob.size)}; the gateway accepts datasets up to ${fmtBytes(limit)}.`,
        { code: 'payload_too_large' });
    }
    // A cheap request first, so a missing API key is asked for before the archive is sent, not after.
    const d = await api('/api/training/jobs');
    setJobs((d && d.jobs) || []);
    setTrainStatus('Uploading the images…');
    const data = await sendDataset(blob, fileName, type);
    if (!data || !data.dataset_id) throw new ApiError('The gateway returned no dataset id for the upload.', { code: 'internal' });
    return data.dataset_id;
  }

  async function submitTraining(ev) {
    ev.preventDefault();
    if (maint.submitting) return;
    const name = $('train-name').value.trim();
    if (!name) {
      banner.show('Type a name for the model to train.', 'train');
      $('train-name').focus();
      return;
    }
    let params;
    try {
      params = readParams();
    } catch (err) {
      banner.show(err.message, 'train');
      $('train-advanced').open = true;
      return;
    }
    const source = selectedSource();
    const body = { name };
    if (Object.keys(params).length) body.params = params;
    if (source === 'server') {
      const path = $('train-server-path').value.trim();
      if (!path) {
        banner.show('Type the path of a folder on the server (one subfolder of images per class).', 'train');
        $('train-server-path').focus();
        return;
      }
      body.server_path = path;
    } else if (source === 'folder' && !(maint.folder && maint.folder.images.length)) {
      banner.show('Choose a folder that holds one subfolder of images per class.', 'train');
      return;
    } else if (source === 'archive' && !maint.archive) {
      banner.show('Choose an archive file (.zip, .tar, .tar.gz or .tgz).', 'train');
      return;
    }
    setSubmitting(true);
    try {
      if (source !== 'server') body.dataset_id = await uploadDataset(source);
      setTrainStatus('Submitting the job…');
      const job = await api('/api/training/jobs', { method: 'POST', json: body });
      banner.clear('train');
      setTrainStatus(`Submitted job ${job.id}: its progress is shown here.`);
      upsertJob(job);
      watchJob(job);
      loadJobs();
    } catch (err) {
      setTrainStatus(err.code === 'aborted' ? 'Upload stopped: nothing was submitted.' : '');
      // Validation errors (one class, too few images, bad archive paths) come back as 400 with a clear message.
      if (err.code !== 'aborted') reportError(err, 'train', 'Could not start training');
    } finally {
      setSubmitting(false);
    }
  }

  function wireMaintenance() {
    $('train-form').addEventListener('submit', submitTraining);
    for (const r of document.querySelectorAll('input[name="train-source"]')) r.addEventListener('change', showSource);
    showSource();
    $('train-folder-input').addEventListener('change', onTrainFolder);
    $('train-archive-input').addEventListener('change', onTrainArchive);
    $('train-upload-stop').addEventListener('click', () => { if (maint.upload) maint.upload.abort(); });
    $('live-cancel').addEventListener('click', () => { if (live.job) cancelJob(live.job); });
    $('jobs-refresh').addEventListener('click', () => loadJobs().then(autoWatch));
    $('models-refresh').addEventListener('click', () => loadModels());
    $('maint-collections-refresh').addEventListener('click', () => loadCollections().catch(() => {}));
    $('curve-close').addEventListener('click', closeCurve);
    window.addEventListener('resize', debounce(redrawCharts, 150));
    resumeOperations();
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
    wireMaintenance();
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
