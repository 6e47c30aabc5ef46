// The Maintenance tab's model registry: list, details, activate (which re-embeds the
// collections) and delete.
import { $, button, el, preserveFocus, toggleOpen, wrapAtColon } from './dom.js';
import { api, enc } from './api.js';
import { banner, reportError } from './status.js';
import { baseModelText, fmtAcc, fmtBytes, fmtDuration, fmtInt, fmtTime, modelLabel, num, plural, positive } from './format.js';
import { emit, maint } from './state.js';
import { loadModel } from './config.js';
import { loadCollections, refreshDetail } from './collections.js';
import { trackOperation } from './operations.js';

let modelsInFlight = null;
export function loadModels() {
  if (modelsInFlight) return modelsInFlight;
  modelsInFlight = (async () => {
    try {
      const d = await api('/api/models');
      banner.clear('models-list');
      maint.models = (d && d.models) || [];
      maint.modelsLoaded = true;
      renderModels();
      emit('collections'); // which collections use the active model
    } catch (err) {
      reportError(err, 'models-list', 'Could not list the models');
      if (!maint.modelsLoaded) $('models-empty').textContent = 'Could not load the models: see the message above.';
    } finally {
      modelsInFlight = null;
    }
  })();
  return modelsInFlight;
}

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
        el('td', { 'data-label': 'Class', text: c.class_name }),
        el('td', { class: 'num', 'data-label': 'Validation images', text: fmtInt(num(c.images)) }),
        el('td', { class: 'num', 'data-label': 'Accuracy', text: fmtAcc(num(c.accuracy)) }),
        el('td', { class: 'share', 'data-label': 'Accuracy bar' }, el('span', {
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
  el('td', { class: 'strong', 'data-label': 'Model' },
    el('span', { class: 'model-name' }, wrapAtColon(key)),
    m.active ? el('span', { class: 'badge badge-active', 'data-testid': 'active-badge', text: 'active' }) : null),
  el('td', { 'data-label': 'Trained by', text: m.trained_by || '–' }),
  el('td', { class: 'nowrap', 'data-label': 'Created', text: fmtTime(num(m.created_at_ms)) }),
  el('td', { class: 'num nowrap', 'data-label': 'Duration', text: positive(m.duration_seconds, fmtDuration) }),
  el('td', { class: 'num', 'data-label': 'Iterations', text: positive(m.iterations, fmtInt) }),
  el('td', { class: 'num', 'data-label': 'Epochs', text: positive(m.epochs, fmtInt) }),
  el('td', { class: 'num', 'data-label': 'Val. acc.', text: positive(m.validation_accuracy, fmtAcc) }),
  el('td', { class: 'num', 'data-label': 'Classes', text: classes ? fmtInt(classes) : '–' }),
  el('td', { class: 'num nowrap', 'data-label': 'Weights', text: positive(m.weights_bytes, fmtBytes) }),
  el('td', { 'data-label': 'Base model' }, wrapAtColon(baseModelText(m.base_model))),
  el('td', { class: 'row-actions' },
    button(open ? 'Hide details' : 'Details', 'details', () => toggleOpen(maint.openModels, key, renderModels),
      { attrs: { 'aria-expanded': String(open), 'data-testid': 'model-details' } }),
    button('Activate', 'activate', () => activateModel(m), {
      attrs: { 'data-testid': 'model-activate', disabled: !!m.active, title: m.active ? 'This model is active already' : null },
    }),
    button('Delete', 'delete', () => deleteModel(m), {
      cls: 'btn-danger',
      // The server refuses to delete the active model (409): say why before anyone tries.
      attrs: {
        'data-testid': 'model-delete', disabled: !!m.active,
        title: m.active ? 'The active model cannot be deleted: activate another one first' : null,
      },
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

