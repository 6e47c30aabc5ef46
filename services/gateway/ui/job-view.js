// How a training job reads: its progress, its message, its cells in the jobs table and its
// details. Shared by the jobs table and the live progress panel.
import { el } from './dom.js';
import { fmtAcc, fmtDuration, fmtInt, fmtParam, fmtPct, fmtTime, isNum, modelLabel, num, plural } from './format.js';
import { maint, TERMINAL_JOB_STATES } from './state.js';

export const PARAM_LABELS = {
  epochs: 'epochs', batch_size: 'batch size', learning_rate: 'learning rate', fine_tune_backbone: 'fine-tune backbone',
  validation_fraction: 'validation fraction', seed: 'seed', min_images_per_class: 'min images per class',
  early_stopping_patience: 'early stopping patience', tune_blocks: 'tuned blocks', augment_views: 'augmented views',
  head_epochs: 'head epochs',
};

export function jobDuration(j) {
  const start = num(j.started_at_ms);
  if (!(start > 0)) return NaN;
  const end = num(j.finished_at_ms) > 0 ? num(j.finished_at_ms) : TERMINAL_JOB_STATES.has(j.state) ? NaN : Date.now();
  return (end - start) / 1000;
}

// How far the job is, 0..1: feature extraction reports "(done/total images)" in its phase,
// training reports iterations.
export function jobFraction(j) {
  if (j.state === 'succeeded') return 1;
  const p = j.progress || {};
  const m = /\((\d+)\/(\d+) images\)/.exec(p.phase || '');
  if (m && Number(m[2]) > 0) return Math.min(1, Number(m[1]) / Number(m[2]));
  if (num(p.iterations) > 0) return Math.min(1, num(p.iteration) / num(p.iterations));
  return 0;
}

export function jobMessage(j) {
  const p = j.progress || {};
  if (j.state === 'running') {
    const pct = jobFraction(j);
    return `${p.phase || 'running'}${pct > 0 ? ` · ${fmtPct(pct)}` : ''}`;
  }
  if (j.state === 'succeeded' && !j.message && j.model) return `Registered ${modelLabel(j.model)}`;
  return j.message || '';
}

export function paramsText(params) {
  const parts = Object.entries(params || {})
    .filter(([, v]) => v !== 0 && v !== false && v !== null && v !== '' && v !== '0' && v !== undefined)
    .map(([k, v]) => `${PARAM_LABELS[k] || k} ${v === true ? 'yes' : fmtParam(v)}`);
  return parts.length ? parts.join(' · ') : 'server defaults';
}

// What the service found in the dataset: classes, the split, and the files it skipped.
export function jobDetails(j) {
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
export function jobCells(j) {
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

// The jobs the trainer runs before this queued one (it runs one job at a time, oldest first).
export function jobsAhead(j, jobs) {
  return jobs.filter((x) => x.id !== j.id && (x.state === 'running'
    || (x.state === 'queued' && num(x.created_at_ms) < num(j.created_at_ms)))).length;
}

// The epoch total is known once training starts (the feature extraction before it plans the
// epochs of each stage): until then none is shown, so the total never jumps.
export function epochTotal(j) {
  const p = j.progress || {};
  return num(p.iterations) > 0 ? num(p.epochs) : NaN;
}

// How a finished job's training went: all epochs, or stopped early (the validation accuracy
// stopped improving), with the best validation accuracy measured.
export function trainingOutcome(j, bestValidation) {
  const p = j.progress || {};
  const epoch = num(p.epoch);
  const total = epochTotal(j);
  const best = isNum(bestValidation) && bestValidation > 0 ? `, best validation accuracy ${fmtAcc(bestValidation)}` : '';
  if (!(epoch > 0) || !(total > 0)) return '';
  return epoch < total ? `stopped early at epoch ${fmtInt(epoch)} of ${fmtInt(total)}${best}`
    : `all ${fmtInt(total)} epochs${best}`;
}

export function livePhaseText(j, bestValidation = NaN) {
  const p = j.progress || {};
  switch (j.state) {
    case 'queued': {
      const ahead = jobsAhead(j, maint.jobs);
      return ahead ? `Queued: ${plural(ahead, 'job')} ahead of it; it starts when the trainer is free.`
        : 'Queued: it starts as soon as the trainer picks it up.';
    }
    case 'running': return `Running: ${p.phase || 'starting'}…`;
    case 'succeeded': {
      const how = trainingOutcome(j, bestValidation);
      return `Finished${how ? `: ${how}` : ''}. Registered the model ${modelLabel(j.model)}.`;
    }
    case 'failed': return `Failed: ${j.message || 'no reason given'}`;
    case 'cancelled': return 'Cancelled.';
    default: return j.state || '';
  }
}

