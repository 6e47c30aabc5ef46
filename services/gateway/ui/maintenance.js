// The Maintenance tab: training, the model registry and collection rebuilds (REST:
// /api/training/*, /api/models, /api/operations/{id}, /api/collections/{name}/rebuild).
// Polls only while the tab is shown.
import { $, debounce } from './dom.js';
import { live, maint, TERMINAL_JOB_STATES } from './state.js';
import { loadCollections } from './collections.js';
import { autoWatch, cancelJob, closeCurve, loadJobs, renderCurve, renderLive } from './jobs.js';
import { loadModels } from './models.js';
import { resumeOperations } from './operations.js';
import { wireCollectionsAdmin } from './collections-admin.js';
import { wireTraining } from './training.js';

export function setMaintenanceVisible(on) {
  const was = maint.visible;
  maint.visible = on;
  if (on && !was) {
    refreshMaintenance();
    maint.pollTimer = setInterval(pollMaintenance, 4000);
    requestAnimationFrame(redrawCharts); // the charts had no size while the tab was hidden
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

export function wireMaintenance() {
  wireTraining();
  wireCollectionsAdmin();
  $('live-cancel').addEventListener('click', () => { if (live.job) cancelJob(live.job); });
  $('jobs-refresh').addEventListener('click', () => loadJobs().then(autoWatch));
  $('models-refresh').addEventListener('click', () => loadModels());
  $('curve-close').addEventListener('click', closeCurve);
  window.addEventListener('resize', debounce(redrawCharts, 150));
  resumeOperations();
}
