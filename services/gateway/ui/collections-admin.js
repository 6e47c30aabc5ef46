// The Maintenance tab's collections: which model built each, rebuild, clear and delete.
import { $, button, el, preserveFocus } from './dom.js';
import { api, enc } from './api.js';
import { banner, reportError } from './status.js';
import { fmtInt, fmtPct, fmtTime, modelLabel, num, sameModel } from './format.js';
import { activeModel, maint, on, state } from './state.js';
import { clearCollectionNamed, deleteCollectionNamed, loadCollections, refreshDetail } from './collections.js';
import { trackOperation } from './operations.js';

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
    el('td', { class: 'strong', 'data-label': 'Name' }, el('span', { text: c.name }),
      c.description ? el('span', { class: 'muted small block', text: c.description }) : null),
    el('td', { class: 'num', 'data-label': 'Images', 'data-testid': 'maint-collection-count', text: fmtInt(c.count) }),
    el('td', { class: 'nowrap', 'data-label': 'Model', text: c.model ? modelLabel(c.model) : '–' }),
    el('td', { class: 'num', 'data-label': 'Dimensions', text: fmtInt(c.dims) }),
    el('td', { class: 'nowrap', 'data-label': 'Created', text: fmtTime(num(c.created_at_ms)) }),
    el('td', { 'data-label': 'Status' }, collectionStatus(c, active)),
    el('td', { class: 'row-actions' },
      button('Clear', 'clear', async () => {
        const note = await clearCollectionNamed(c, 'maint-collections');
        if (note) setCollectionsNote(note);
      }, { cls: 'btn-warn', attrs: { 'data-testid': 'collection-clear', disabled: busy } }),
      button('Rebuild', 'rebuild', () => rebuildCollection(c), { attrs: { 'data-testid': 'collection-rebuild', disabled: busy } }),
      button('Refine', 'refine', () => refineCollection(c), {
        attrs: { 'data-testid': 'collection-refine', disabled: busy,
          title: 'Recompute the vectors refined search ranks by (they keep up by themselves; this is for after changing the refined settings)' },
      }),
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

// Recomputes the augmented vectors of refined ranking now, with progress.
async function refineCollection(c) {
  let r;
  try {
    r = await api(`/api/collections/${enc(c.name)}/refine`, { method: 'POST' });
    banner.clear('maint-collections');
  } catch (err) {
    reportError(err, 'maint-collections', `Could not refresh the refined ranking of "${c.name}"`);
    return;
  }
  if (!r || !r.operation_id) return;
  setCollectionsNote(`Refreshing the refined ranking of "${c.name}": progress below.`);
  // Not tied to the row: its status column tells about rebuilds.
  const t = trackOperation(r.operation_id, `Refreshing the refined ranking of "${c.name}"`);
  const d = await t.finished;
  setCollectionsNote(d.state === 'succeeded'
    ? `The refined ranking of "${c.name}" is up to date.`
    : `Refreshing the refined ranking of "${c.name}" ended: ${d.state}.`);
  refreshDetail();
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

export function wireCollectionsAdmin() {
  on('collections', renderMaintCollections);
  $('maint-collections-refresh').addEventListener('click', () => loadCollections().catch(() => {}));
}
