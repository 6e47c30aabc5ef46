// Formatters for numbers, sizes, durations and times. Pure: unit-tested under tests/.

// Images the gateway and the training service accept, by file name.
export const IMAGE_EXT = /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i;

export const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
// u64s may come as strings; missing values become NaN.
export const num = (v) => (v === null || v === undefined || v === '' ? NaN : Number(v));

export const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–');
export const fmtPct = (x) => `${(x * 100).toFixed(1)}%`;
export const fmtAcc = (x) => (isNum(x) ? fmtPct(x) : '–');
export const fmtLoss = (x) => (isNum(x) ? x.toFixed(x < 10 ? 4 : 2) : '–');

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export const fmtSecs = (s) => (s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);

export function fmtDuration(s) {
  if (!isNum(s) || s < 0) return '–';
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// Compact local time for table cells: 2025-06-01 14:05.
export function fmtTime(ms) {
  if (!isNum(ms) || ms <= 0) return '–';
  const d = new Date(ms);
  const p2 = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}`;
}

export const plural = (n, one, many = `${one}s`) => `${fmtInt(n)} ${n === 1 ? one : many}`;
export const modelLabel = (m) => (m ? `${m.name}:${m.version}` : '–');
export const sameModel = (a, b) => !!a && !!b && a.name === b.name && String(a.version) === String(b.version);
// The contract sends the base model as "name:version"; accept a {name, version} too.
export const baseModelText = (b) => (b && typeof b === 'object' ? modelLabel(b) : b || '–');
export const positive = (v, fmt) => (num(v) > 0 ? fmt(num(v)) : '–');

// [min, max] of finite numbers without spreading them as arguments (curves can be long).
export function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (!isNum(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// A training parameter as it was typed: floats travel as f32, so 0.001 comes back as
// 0.0010000000474974513; six significant digits give the entered value back.
export function fmtParam(v) {
  if (typeof v !== 'number' || Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(6)));
}

// A server message fit for the page: people using the UI cannot read the server's logs, so
// advice to read them is dropped, and an internal error says what the user can do.
export function userMessage(message, code) {
  const text = String(message || '').replace(/[;,.]?\s*(see|check|read) the [\w -]*?\blogs?\b[^;]*/gi, '').trim();
  if (code === 'internal' || /^internal error$/i.test(text)) {
    return 'The server failed on this request (internal error). Try again; if it fails again, tell whoever runs this server what you did.';
  }
  return text || String(message || '');
}

// Where a collection's refined ranking stands (the stats' `refinement`), in a few words.
export function refinementText(r) {
  if (!r || typeof r !== 'object') return '–';
  if (r.operation_id) return 'refreshing…';
  const stale = num(r.stale) || 0;
  return stale > 0 ? `${plural(stale, 'image')} to refresh` : 'up to date';
}
