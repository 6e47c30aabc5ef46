// The Maintenance tab's training jobs: the table, the live progress of one job (its event
// stream and chart) and the performance curve of any job.
import { $, button, el, preserveFocus, sleep, stateBadge, toggleOpen } from './dom.js';
import { api, enc, errorBody, parseJson, withKey } from './api.js';
import { banner, reportError } from './status.js';
import { extent, fmtAcc, fmtDuration, fmtInt, fmtLoss, isNum, modelLabel, num, plural } from './format.js';
import { live, maint, TERMINAL_JOB_STATES } from './state.js';
import { epochTotal, jobCells, jobDetails, jobDuration, jobFraction, livePhaseText } from './job-view.js';
import { curvePoint, drawMetricsChart, drawTimeChart } from './charts.js';
import { loadModels } from './models.js';

let jobsInFlight = null;
export function loadJobs() {
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

export function setJobs(jobs) {
  maint.jobs = jobs;
  maint.jobsLoaded = true;
  // The watched job's stream is fresher than a list fetched meanwhile.
  if (live.job && live.source) upsertJob(live.job, false);
  renderJobs();
}

export function upsertJob(job, render = true) {
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
export function autoWatch() {
  const cur = live.job;
  if (cur && !TERMINAL_JOB_STATES.has(cur.state)) return;
  const active = maint.jobs.find((j) => j.state === 'running')
    || [...maint.jobs].reverse().find((j) => j.state === 'queued');
  if (active && (!cur || cur.id !== active.id)) watchJob(active);
  else if (!cur && maint.jobs.length) watchJob(maint.jobs[0]);
}


function jobRows(j) {
  const c = jobCells(j);
  const open = maint.openJobs.has(j.id);
  const active = !TERMINAL_JOB_STATES.has(j.state);
  const watched = !!live.job && live.job.id === j.id;
  const tr = el('tr', {
    'data-testid': 'job-row', 'data-key': j.id, 'data-id': j.id, 'data-state': j.state, class: watched ? 'watched' : null,
  },
  el('td', { 'data-label': 'State' }, stateBadge(j.state)),
  el('td', { class: 'strong', 'data-label': 'Name', text: c.name }),
  el('td', { class: 'clip', 'data-label': 'Dataset', title: c.dataset, text: c.dataset }),
  el('td', { class: 'num', 'data-label': 'Classes', title: c.classesTitle || null, text: c.classes }),
  el('td', { class: 'num', 'data-label': 'Images', title: c.imagesTitle, text: c.images }),
  el('td', { class: 'nowrap', 'data-label': 'Started', text: c.started }),
  el('td', { class: 'num nowrap', 'data-label': 'Duration', text: c.duration }),
  el('td', { class: `msg${j.state === 'failed' ? ' bad' : ''}`, 'data-label': 'Message', text: c.message }),
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

export async function cancelJob(job) {
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
export async function watchJob(job) {
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

export function renderLive() {
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
  const best = live.points.reduce((b, pt) => {
    const v = pt.validation_accuracy;
    return isNum(v) && v > 0 && (!isNum(b) || v > b) ? v : b;
  }, NaN);
  const bestVal = isNum(best) ? best : num(p.validation_accuracy);
  $('live-phase').textContent = livePhaseText(j, bestVal);
  $('live-phase').classList.toggle('bad', j.state === 'failed');
  const bar = $('live-progress');
  bar.classList.toggle('running', j.state === 'running');
  bar.classList.toggle('finished', ended);
  bar.classList.toggle('has-failures', j.state === 'failed' || j.state === 'cancelled');
  $('live-fill').style.width = `${(jobFraction(j) * 100).toFixed(1)}%`;
  const of = (a, b) => (num(b) > 0 ? `${fmtInt(num(a) || 0)} / ${fmtInt(num(b))}` : '–');
  $('live-epoch').textContent = of(p.epoch, epochTotal(j));
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

export function renderCurve() {
  drawTimeChart($('curve-time'), maint.curvePoints);
  drawMetricsChart($('curve-metrics'), maint.curvePoints, 'No iterations recorded');
}

export function closeCurve() {
  maint.curveJobId = null;
  maint.curvePoints = [];
  $('curve-panel').hidden = true;
}

