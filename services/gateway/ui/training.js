// The Maintenance tab's training form: the dataset (a folder packed as tar, an archive, or a
// folder on the server), the parameters, the upload and the job submission.
import { $, el } from './dom.js';
import { api, ApiError, enc, uploadWithProgress } from './api.js';
import { banner, reportError } from './status.js';
import { fmtBytes, fmtDuration, fmtInt, num, plural } from './format.js';
import { maint, state } from './state.js';
import { buildTar, describeFolder } from './tar.js';
import { checkDataset, nameProblem } from './dataset-check.js';
import { PARAM_LABELS } from './job-view.js';
import { loadJobs, setJobs, upsertJob, watchJob } from './jobs.js';

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

// The chosen folder checked here, before anything is sent: the classes with their image counts
// against the minimum per class (the form's value or the server's default), and the name.
function folderCheck() {
  const f = maint.folder;
  if (!f) return null;
  const min = Number($('train-min-images').value) || 0;
  return checkDataset(f.classes, min > 0 ? Math.floor(min) : 0, $('train-name').value);
}

function renderFolderSummary() {
  const f = maint.folder;
  const out = $('train-folder-summary');
  if (!f) {
    out.textContent = 'The folder is empty.';
    return;
  }
  const check = folderCheck();
  const lines = [el('strong', { text: `"${f.root}": ${plural(f.images.length, 'image')} (${fmtBytes(f.bytes)}) in ` +
    `${plural(check.classes.length, 'class folder')}` })];
  if (check.classes.length) {
    const shown = check.classes.slice(0, 60).map((c) => el('span', {
      class: `class-count${c.low ? ' low' : ''}`, 'data-testid': 'train-class', 'data-class': c.name, 'data-count': String(c.count),
      title: c.low ? `fewer than ${check.minPerClass} images` : null, text: `${c.name} · ${fmtInt(c.count)}`,
    }));
    if (check.classes.length > 60) shown.push(el('span', { class: 'muted', text: `… ${fmtInt(check.classes.length - 60)} more` }));
    lines.push(el('span', { class: 'class-counts' }, ...shown));
  }
  if (f.ignored) lines.push(el('span', { class: 'block', text: `${plural(f.ignored, 'other file')} (not images, or hidden) left out.` }));
  if (f.loose) lines.push(el('span', { class: 'block warn-text', text: `${plural(f.loose, 'image')} outside the class folders (left out).` }));
  for (const p of check.problems) lines.push(el('span', { class: 'block warn-text', 'data-testid': 'train-problem', text: p }));
  if (check.ok) {
    lines.push(el('span', { class: 'block ok-text', 'data-testid': 'train-check-ok',
      text: `Ready: every class has at least ${check.minPerClass} images.` }));
  }
  out.classList.add('dataset-check');
  out.dataset.ok = String(check.ok);
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

// The job request from the form, or null after saying in the banner what is missing.
function readTrainingForm(source) {
  const name = $('train-name').value.trim();
  const bad = nameProblem(name);
  if (bad) {
    banner.show(bad, 'train');
    $('train-name').focus();
    return null;
  }
  let params;
  try {
    params = readParams();
  } catch (err) {
    banner.show(err.message, 'train');
    $('train-advanced').open = true;
    return null;
  }
  const body = { name };
  if (Object.keys(params).length) body.params = params;
  if (source === 'server') {
    const path = $('train-server-path').value.trim();
    if (!path) {
      banner.show('Type the path of a folder on the server (one subfolder of images per class).', 'train');
      $('train-server-path').focus();
      return null;
    }
    body.server_path = path;
  } else if (source === 'folder' && !(maint.folder && maint.folder.images.length)) {
    banner.show('Choose a folder that holds one subfolder of images per class.', 'train');
    return null;
  } else if (source === 'folder' && !folderCheck().ok) {
    // Nothing is uploaded that the training service would refuse: the summary says why.
    banner.show(`The folder cannot be trained on yet: ${folderCheck().problems.join(' ')}`, 'train');
    return null;
  } else if (source === 'archive' && !maint.archive) {
    banner.show('Choose an archive file (.zip, .tar, .tar.gz or .tgz).', 'train');
    return null;
  }
  return body;
}

async function submitTraining(ev) {
  ev.preventDefault();
  if (maint.submitting) return;
  const source = selectedSource();
  const body = readTrainingForm(source);
  if (!body) return;
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

export function wireTraining() {
  $('train-form').addEventListener('submit', submitTraining);
  for (const r of document.querySelectorAll('input[name="train-source"]')) r.addEventListener('change', showSource);
  showSource();
  $('train-folder-input').addEventListener('change', onTrainFolder);
  $('train-archive-input').addEventListener('change', onTrainArchive);
  $('train-upload-stop').addEventListener('click', () => { if (maint.upload) maint.upload.abort(); });
  for (const id of ['train-min-images', 'train-name']) {
    $(id).addEventListener('input', () => { if (maint.folder) renderFolderSummary(); });
  }
}
