// CBIR gateway web UI: native ES modules, no framework, no build step. This entry module routes
// between the tabs and starts everything; each tab lives in its own module. The address bar
// holds the tab and its state (url-state.js): reload, links and the back button work.
import { $ } from './dom.js';
import { banner } from './status.js';
import { state } from './state.js';
import { loadConfig, loadModel, pollHealth } from './config.js';
import { loadCollections, refreshDetail, wireCollections } from './collections.js';
import { applySearchUrl, wireSearch } from './search.js';
import { applyBrowseUrl, setBrowseVisible, wireBrowse } from './browse.js';
import { setDupesVisible, wireDupes } from './dupes.js';
import { wireIndexing } from './indexing.js';
import { setMaintenanceVisible, wireMaintenance } from './maintenance.js';
import { wireViewer } from './viewer.js';
import { parseRoute } from './url-state.js';

let ready = false; // the collections are known: a search link can run

function route() {
  // Back/forward fire popstate and then hashchange: one route per address. Modules that
  // change the address themselves (pushState) record it in state.routeHash.
  if (location.hash === state.routeHash) return;
  state.routeHash = location.hash;
  const { tab } = parseRoute(location.hash);
  for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== tab;
  for (const t of document.querySelectorAll('.tab')) {
    const on = t.dataset.tab === tab;
    t.classList.toggle('active', on);
    t.setAttribute('aria-selected', String(on));
  }
  if (tab === 'index' && state.current) refreshDetail().catch(() => {});
  setMaintenanceVisible(tab === 'maintenance');
  setBrowseVisible(tab === 'browse');
  setDupesVisible(tab === 'dupes');
  if (!ready) return;
  if (tab === 'search') applySearchUrl();
  if (tab === 'browse') applyBrowseUrl();
}

function wire() {
  // Back and forward between searches (pushState) fire popstate; typed or linked hashes fire
  // hashchange; route() runs once per address either way.
  window.addEventListener('hashchange', route);
  window.addEventListener('popstate', route);
  $('banner-close').addEventListener('click', () => banner.clearAll());
  wireViewer();
  wireCollections();
  wireIndexing();
  wireSearch();
  wireBrowse();
  wireDupes();
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
  ready = true;
  state.routeHash = null;
  route();
}

// Module scripts run after the document is parsed.
main();
