// What the address bar holds: the tab, and for the Search tab the whole search (collection,
// mode, k, filters, the stored image searched with), so that reload, a shared link and the
// back button give the same search. Pure: tested in tests/url-state.test.mjs.
//
//   #search?c=flowers&mode=exact&k=50&min=0.5&label=rose&not=tulip&prefix=2024/&from=2024-01-01&to=2024-12-31&q=42&qc=flowers
//   #browse?c=flowers&sort=name&order=asc&label=rose
//   #dupes?c=flowers
//
// An uploaded query image cannot go in a link: q=upload marks it, and the page keeps the
// image for this browser tab only (sessionStorage).

export const TABS = ['search', 'browse', 'dupes', 'index', 'maintenance'];
export const MODES = ['refined', 'probe', 'exact', 'partition'];
export const SORTS = ['time', 'name', 'label'];
// Results shown per page; "load more" asks the server for the next page (offset).
export const PAGE_SIZE = 24;

export function parseRoute(hash) {
  const raw = String(hash || '').replace(/^#/, '');
  const q = raw.indexOf('?');
  const name = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  return { tab: TABS.includes(name) ? name : 'search', params };
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const intIn = (v, lo, hi) => {
  const n = Number(v);
  return Number.isInteger(n) && n >= lo && n <= hi ? n : null;
};

// The search a link describes. Values that do not parse are left out, never guessed.
export function searchFromParams(params, maxK = 1000) {
  const p = params instanceof URLSearchParams ? params : new URLSearchParams(params || '');
  const mode = p.get('mode');
  const min = p.get('min');
  const minSim = min !== null && min !== '' && Number.isFinite(Number(min)) ? Math.max(0, Math.min(1, Number(min))) : null;
  const date = (k) => (DATE.test(p.get(k) || '') ? p.get(k) : '');
  let query = null;
  if (p.get('q') === 'upload') query = { kind: 'upload' };
  else if (intIn(p.get('q'), 0, Number.MAX_SAFE_INTEGER) !== null) {
    query = { kind: 'id', id: Number(p.get('q')), collection: p.get('qc') || p.get('c') || null };
  }
  return {
    collection: p.get('c') || null,
    mode: MODES.includes(mode) ? mode : null,
    k: intIn(p.get('k'), 1, maxK),
    minSim,
    labels: p.getAll('label'),
    notLabels: p.getAll('not'),
    pathPrefix: p.get('prefix') || '',
    from: date('from'),
    to: date('to'),
    query,
  };
}

export function searchToHash(s) {
  const p = new URLSearchParams();
  if (s.collection) p.set('c', s.collection);
  if (s.mode) p.set('mode', s.mode);
  if (s.k) p.set('k', String(s.k));
  if (s.minSim !== null && s.minSim !== undefined) p.set('min', String(s.minSim));
  for (const l of s.labels || []) p.append('label', l);
  for (const l of s.notLabels || []) p.append('not', l);
  if (s.pathPrefix) p.set('prefix', s.pathPrefix);
  if (s.from) p.set('from', s.from);
  if (s.to) p.set('to', s.to);
  if (s.query && s.query.kind === 'id') {
    p.set('q', String(s.query.id));
    if (s.query.collection && s.query.collection !== s.collection) p.set('qc', s.query.collection);
  } else if (s.query && s.query.kind === 'upload') {
    p.set('q', 'upload');
  }
  const qs = p.toString();
  return `#search${qs ? `?${qs}` : ''}`;
}

export function browseFromParams(params) {
  const p = params instanceof URLSearchParams ? params : new URLSearchParams(params || '');
  const sort = p.get('sort');
  return {
    collection: p.get('c') || null,
    sort: SORTS.includes(sort) ? sort : 'time',
    order: p.get('order') === 'asc' ? 'asc' : 'desc',
    label: p.has('label') ? p.get('label') : null,
  };
}

export function browseToHash(b) {
  const p = new URLSearchParams();
  if (b.collection) p.set('c', b.collection);
  if (b.sort && b.sort !== 'time') p.set('sort', b.sort);
  if (b.order === 'asc') p.set('order', 'asc');
  if (b.label !== null && b.label !== undefined) p.set('label', b.label);
  const qs = p.toString();
  return `#browse${qs ? `?${qs}` : ''}`;
}

// A yyyy-mm-dd date of the date inputs as epoch ms, local time: the start of the day, or with
// endOfDay the last millisecond of it (so "to 2024-05-01" includes that day).
export function dateToMs(date, endOfDay = false) {
  if (!DATE.test(date || '')) return null;
  const [y, m, d] = date.split('-').map(Number);
  const start = new Date(y, m - 1, d).getTime();
  return endOfDay ? new Date(y, m - 1, d + 1).getTime() - 1 : start;
}

// The next page of results to ask for: `shown` are on screen, `k` were asked for in all.
// null when there is nothing more to ask.
export function nextPage(shown, k, pageSize = PAGE_SIZE) {
  if (shown >= k) return null;
  return { offset: shown, top_k: Math.min(pageSize, k - shown) };
}
