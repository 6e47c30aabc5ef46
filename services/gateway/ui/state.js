// The state the tabs share, in one place. Each object is owned by the module named in its
// comment; others read it. Changes that another tab must redraw for go through emit()/on().

export const LS_COLLECTION = 'cbir.collection';
export const LS_OPERATIONS = 'cbir.operations';
export const TERMINAL_JOB_STATES = new Set(['succeeded', 'failed', 'cancelled']);
export const BATCH_FILES = 16;
export const MAX_IN_FLIGHT = 2;

// Gateway settings, collections and the search (config.js, collections.js, search.js, indexing.js).
export const state = {
  config: {
    max_image_bytes: 0, max_files_per_request: BATCH_FILES, max_request_bytes: 0,
    max_top_k: 1000, default_top_k: 20, default_collection: null, allowed_roots: [],
  },
  collections: [],
  current: null,            // selected collection name
  query: null,              // {kind:'file', file, url} | {kind:'id', id, thumb, name, label}
  searchSeq: 0,
  routeHash: null,          // the address the tabs were last drawn for (app.js)
  stats: null,              // GET /api/collections/{current}: counts per partition and label
  statsStale: false,        // an image was relabelled or deleted since the stats were read
  busy: false,              // an upload or a server job is running
  gatewayUp: true,
  modelMissing: false,
};

// The Maintenance tab (maintenance.js, jobs.js, models.js, operations.js, training.js).
export const maint = {
  visible: false,
  pollTimer: null,
  pollTicks: 0,
  jobs: [],
  jobsLoaded: false,
  models: [],
  modelsLoaded: false,
  openJobs: new Set(), // job ids with their details row open
  openModels: new Set(), // "name:version" with their details row open
  openSkipped: new Set(), // job ids whose skipped-files list is open
  jobsSig: '',
  modelsSig: '',
  folder: null, // describeFolder() of the chosen folder
  archive: null, // the chosen archive File
  upload: null, // the XMLHttpRequest of a dataset upload in flight
  submitting: false,
  curveJobId: null,
  curvePoints: [],
  operations: new Map(), // operation id -> tracker
  rebuilding: new Map(), // collection name -> tracker of its rebuild
};

// The job shown in the progress panel, fed by its event stream (jobs.js).
export const live = {
  job: null,
  points: [], // curve points: /curve first, then one per event
  lastValidation: NaN,
  source: null, // EventSource
  seq: 0, // bumps when another job is watched, so callbacks for the previous one stop
  retries: 0,
  renderQueued: false,
  detailsSig: '',
};

export const activeModel = () => maint.models.find((m) => m.active) || null;

// Lets a module redraw what another one changed without importing it (no import cycles).
// 'collections': the collection list, the models or a rebuild changed.
// 'collection': another collection was chosen. 'stats': its stats were read again.
const listeners = new Map();
export function on(event, fn) {
  if (!listeners.has(event)) listeners.set(event, []);
  listeners.get(event).push(fn);
}
export function emit(event) {
  for (const fn of listeners.get(event) || []) fn();
}
