// CBIR gateway web UI: native ES modules, no framework, no build step. This entry module routes
// between the tabs and starts everything; each tab lives in its own module.
import { $ } from './dom.js';
import { banner } from './status.js';
import { state } from './state.js';
import { loadConfig, loadModel, pollHealth } from './config.js';
import { loadCollections, refreshDetail, wireCollections } from './collections.js';
import { wireSearch } from './search.js';
import { wireIndexing } from './indexing.js';
import { setMaintenanceVisible, wireMaintenance } from './maintenance.js';

const TABS = ['search', 'index', 'maintenance'];

function route() {
  const want = location.hash.slice(1);
  const tab = TABS.includes(want) ? want : 'search';
  for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== tab;
  for (const t of document.querySelectorAll('.tab')) {
    const on = t.dataset.tab === tab;
    t.classList.toggle('active', on);
    t.setAttribute('aria-selected', String(on));
  }
  if (tab === 'index' && state.current) refreshDetail().catch(() => {});
  setMaintenanceVisible(tab === 'maintenance');
}

function wire() {
  window.addEventListener('hashchange', route);
  $('banner-close').addEventListener('click', () => banner.clearAll());
  wireCollections();
  wireIndexing();
  wireSearch();
  wireMaintenance();
}

async function main() {
  wire();
  if (!location.hash) history.replaceState(null, '', '#search');
  route();
  pollHealth();
  await loadConfig();
  loadModel();
  await loadCollections().catch(() => {});
  refreshDetail().catch(() => {});
}

// Module scripts run after the document is parsed.
main();
