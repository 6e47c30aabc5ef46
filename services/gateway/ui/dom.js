// Small DOM helpers shared by every tab.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs, ...children) {
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
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

// Re-rendering a table replaces its buttons; put the focus back on the same action of the same row.
export function preserveFocus(container, update) {
  const a = document.activeElement;
  const row = a && container.contains(a) && a.dataset.action ? a.closest('tr') : null;
  const want = row ? { key: row.dataset.key, action: a.dataset.action } : null;
  update();
  if (want && !container.contains(document.activeElement)) {
    const again = container.querySelector(`tr[data-key="${CSS.escape(want.key)}"] [data-action="${want.action}"]`);
    if (again) again.focus();
  }
}

export const button = (text, action, onclick, extra = {}) => el('button', {
  type: 'button', class: `btn btn-small${extra.cls ? ` ${extra.cls}` : ''}`, 'data-action': action, onclick, ...extra.attrs,
}, text);

export const stateBadge = (s) => el('span', { class: `badge state-${s}`, 'data-testid': 'state-badge', text: s });

export function toggleOpen(set, key, render) {
  if (set.has(key)) set.delete(key);
  else set.add(key);
  render();
}

// "name:version" that may wrap after the colon only (not at the hyphens of "efficientnet-lite0").
export function wrapAtColon(text) {
  const i = text.indexOf(':');
  if (i < 0) return el('span', { class: 'nowrap', text });
  return el('span', {}, el('span', { class: 'nowrap', text: text.slice(0, i + 1) }), el('wbr'),
    el('span', { class: 'nowrap', text: text.slice(i + 1) }));
}
