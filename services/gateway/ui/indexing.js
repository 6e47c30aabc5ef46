// The Index tab's uploads: a folder from this computer in batches, or a folder on the server
// as an indexing job, both shown in the progress panel.
import { $, el, sleep } from './dom.js';
import { api, enc } from './api.js';
import { banner, reportError } from './status.js';
import { fmtBytes, fmtInt, fmtSecs, IMAGE_EXT, plural, userMessage } from './format.js';
import { BATCH_FILES, MAX_IN_FLIGHT, state, TERMINAL_JOB_STATES } from './state.js';
import { loadCollections, refreshDetail, renderDetailButtons } from './collections.js';

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
  for (const e of files) {
    const size = e.file.size;
    if ((maxImg && size > maxImg) || size > budget) {
      onTooLarge(e, maxImg && size > maxImg ? maxImg : budget);
      continue;
    }
    if (cur.length && (cur.length >= maxFiles || bytes + size > budget)) {
      batches.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(e);
    bytes += size;
  }
  if (cur.length) batches.push(cur);
  return batches;
}

let stopRequested = false;

// Per-file progress: one row per file (the first MAX_FILE_ROWS drawn), updated as its batch is
// sent and answered. The failed files are kept for "Retry failed files".
const MAX_FILE_ROWS = 1000;
const STATE_TEXT = { queued: 'waiting', sending: 'sending…', done: 'added', duplicate: 'already there', failed: 'failed' };
let lastFailed = [];

function fileRows(entries) {
  const shown = entries.slice(0, MAX_FILE_ROWS);
  for (const e of shown) {
    e.row = el('li', { 'data-testid': 'progress-file', 'data-state': e.state, 'data-path': e.path },
      el('span', { class: 'pf-name', title: e.path, text: e.path }), el('span', { class: 'pf-state', text: STATE_TEXT[e.state] }));
  }
  $('progress-files-list').replaceChildren(...shown.map((e) => e.row));
  $('progress-files-more').textContent = entries.length > MAX_FILE_ROWS
    ? `The first ${fmtInt(MAX_FILE_ROWS)} of ${fmtInt(entries.length)} files are listed; the counts above cover all.` : '';
  $('progress-files').hidden = entries.length === 0;
}

function setFileState(e, st, reason) {
  e.state = st;
  e.reason = reason || '';
  if (!e.row) return;
  e.row.dataset.state = st;
  const cell = e.row.querySelector('.pf-state');
  cell.textContent = STATE_TEXT[st];
  cell.title = e.reason;
}

// Sends one batch, retrying when the gateway asks to slow down; counts into `run`.
async function sendBatch(run, batch) {
  const fd = new FormData();
  for (const e of batch) {
    fd.append('files', e.file, e.path);
    setFileState(e, 'sending');
  }
  for (let attempt = 0; ; attempt += 1) {
    try {
      const data = await api(`/api/collections/${enc(run.coll)}/images`, { method: 'POST', body: fd });
      banner.clear('upload');
      countResults(run, batch, (data && data.results) || []);
      return;
    } catch (err) {
      // Back off and retry when the gateway asks us to slow down.
      if (err.status === 429 && attempt < 5) {
        await sleep(500 * 2 ** attempt);
        continue;
      }
      run.failed += batch.length;
      for (const e of batch) {
        progress.addFailure(e.path, err.message);
        setFileState(e, 'failed', err.message);
      }
      reportError(err, 'upload', 'Upload failed');
      return;
    }
  }
}

function countResults(run, batch, results) {
  const byPath = new Map(batch.map((e) => [e.path, e]));
  const answered = new Set();
  results.forEach((r, i) => {
    // Results come in the order sent; the path names the file when the order cannot.
    const e = byPath.get(r.path) || batch[i];
    if (e) answered.add(e);
    if (r.error) {
      run.failed += 1;
      const reason = userMessage(r.error);
      progress.addFailure(r.path || r.file_name, reason);
      if (e) setFileState(e, 'failed', reason);
    } else {
      run.done += 1;
      if (r.created === false) run.duplicates += 1;
      if (e) setFileState(e, r.created === false ? 'duplicate' : 'done');
    }
  });
  // Files the gateway did not report on count as failures, so done + failed reaches total.
  for (const e of batch) {
    if (answered.has(e)) continue;
    run.failed += 1;
    progress.addFailure(e.path, 'the gateway returned no result for this file');
    setFileState(e, 'failed', 'no result');
  }
}

function uploadSummary(run) {
  const { done, failed, total, skipped } = run;
  const secs = progress.elapsed();
  const notSent = total - done - failed;
  const parts = [
    `${stopRequested ? 'Stopped' : 'Finished'}: ${fmtInt(done)} of ${fmtInt(total)} images added to "${run.coll}"`,
    `${fmtInt(failed)} failed`,
  ];
  if (run.duplicates) parts.push(`${fmtInt(run.duplicates)} already present`);
  if (skipped) parts.push(`${fmtInt(skipped)} non-image files skipped`);
  if (notSent > 0) parts.push(`${fmtInt(notSent)} not sent`);
  parts.push(`${fmtSecs(secs)} (${((done + failed) / Math.max(secs, 1e-3)).toFixed(1)} images/s)`);
  return `${parts.join(', ')}.`;
}

async function uploadFolder(fileList) {
  const all = Array.from(fileList || []);
  if (!all.length) return;
  const images = all.filter((f) => IMAGE_EXT.test(f.name));
  const root = ((all[0].webkitRelativePath || '').split('/')[0]) || 'the folder';
  await uploadFiles(images, all.length - images.length, (n, coll) => `Uploading ${fmtInt(n)} images from "${root}" into "${coll}"`);
}

// Sends files in batches, two requests at a time, with a row per file.
async function uploadFiles(images, skipped, title) {
  const coll = state.current;
  if (!coll) {
    banner.show('Create or choose a collection before adding images.', 'upload');
    return;
  }
  if (state.busy || !images.length) return;
  const entries = images.map((file) => ({ file, path: file.webkitRelativePath || file.name, state: 'queued', row: null }));
  const run = { coll, total: entries.length, skipped, done: 0, failed: 0, duplicates: 0 };
  stopRequested = false;
  setBusy(true);
  $('progress-retry').hidden = true;
  progress.start(title(run.total, coll), run.total, run.skipped, true);
  fileRows(entries);
  const tick = () => progress.update({
    done: run.done, failed: run.failed, total: run.total, ips: (run.done + run.failed) / Math.max(progress.elapsed(), 1e-3),
  });

  const batches = makeBatches(entries, (e, limit) => {
    run.failed += 1;
    const reason = `the file is ${fmtBytes(e.file.size)}, the gateway accepts at most ${fmtBytes(limit)}`;
    progress.addFailure(e.path, reason);
    setFileState(e, 'failed', reason);
  });
  tick();

  let next = 0;
  const worker = async () => {
    while (!stopRequested && next < batches.length) {
      const batch = batches[next];
      next += 1;
      await sendBatch(run, batch);
      tick();
    }
  };
  const workers = [];
  for (let i = 0; i < Math.min(MAX_IN_FLIGHT, batches.length); i += 1) workers.push(worker());
  await Promise.all(workers);
  tick();

  // Failed files can be sent again, except those over the size limit: they would fail again.
  const maxImg = Number(state.config.max_image_bytes) || 0;
  lastFailed = entries.filter((e) => (e.state === 'failed' && !(maxImg && e.file.size > maxImg)) || e.state === 'queued').map((e) => e.file);
  const retry = $('progress-retry');
  retry.hidden = lastFailed.length === 0;
  retry.textContent = `Retry ${plural(lastFailed.length, 'failed file')}`;
  progress.finish(uploadSummary(run));
  setBusy(false);
  await loadCollections().catch(() => {});
  await refreshDetail().catch(() => {});
}

// Shows the server's indexing job until it ends; null when it cannot be read any more.
async function followJob(job) {
  let misses = 0;
  for (;;) {
    if (job) {
      progress.update({ done: job.done || 0, failed: job.failed || 0, total: job.total || 0, ips: job.images_per_second || 0 });
      progress.setFailures((job.failures || []).map((f) => ({ path: f.path, reason: f.reason })));
      if (job.message) $('progress-title').textContent = `Job ${job.id} (${job.state}): ${job.message}`;
      if (TERMINAL_JOB_STATES.has(job.state)) return job;
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
        return null;
      }
    }
  }
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
  fileRows([]); // the server reads the folder: its failures are listed below
  $('progress-retry').hidden = true;
  job = await followJob(job);
  if (!job) {
    setBusy(false);
    return;
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

export function wireIndexing() {
  const folder = $('folder-input');
  folder.addEventListener('change', async () => {
    const files = Array.from(folder.files || []);
    folder.value = '';
    await uploadFolder(files);
  });
  $('index-server-path').addEventListener('click', indexServerFolder);
  $('progress-retry').addEventListener('click', () => {
    const files = lastFailed;
    if (files.length) uploadFiles(files, 0, (n, coll) => `Retrying ${plural(n, 'failed file')} into "${coll}"`);
  });
  $('server-path').addEventListener('keydown', (e) => { if (e.key === 'Enter') indexServerFolder(); });
  $('progress-stop').addEventListener('click', () => {
    stopRequested = true;
    $('progress-stop').disabled = true;
    $('progress-title').textContent += ' — stopping after the requests in flight…';
  });
}
