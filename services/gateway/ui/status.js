// The error banner and the health indicator in the header: what every tab reports to.
import { $, el } from './dom.js';
import { ApiError, UNREACHABLE } from './api.js';

export const banner = {
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

export function reportError(err, key, context) {
  const msg = err instanceof ApiError || (err && err.message) ? err.message : String(err);
  const text = context && msg !== UNREACHABLE ? `${context}: ${msg}` : msg;
  banner.show(text, key);
  if (err && err.code === 'unreachable') setHealth('down', 'gateway unreachable', UNREACHABLE);
  console.warn(`[cbir] ${key}:`, err);
}

export function setHealth(status, text, title) {
  const h = $('health');
  h.dataset.status = status;
  h.querySelector('.health-text').textContent = text;
  h.title = title || text;
}
