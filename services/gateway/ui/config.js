// The gateway's settings and the model it serves (the footer), and the health poll.
import { $ } from './dom.js';
import { api, ApiError, UNREACHABLE } from './api.js';
import { banner, reportError, setHealth } from './status.js';
import { state } from './state.js';
import { loadCollections } from './collections.js';

export async function loadConfig() {
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

export async function loadModel() {
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

export async function pollHealth() {
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
