// A folder chosen in the browser is sent as one uncompressed tar archive (POSIX ustar): the
// training service reads .tar natively, and building it needs no compression library. The
// archive is a Blob of headers and the File objects themselves, so the browser streams the files
// from disk when it sends the body instead of holding them all in memory.
import { IMAGE_EXT } from './format.js';

export const TAR_BLOCK = 512;
export const TAR_MAX_FILE = 8 ** 11 - 1; // the size field holds 11 octal digits
const TAR_ZEROS = new Uint8Array(TAR_BLOCK);
const utf8 = new TextEncoder();

function put(header, offset, width, bytes) {
  header.set(bytes.subarray(0, width), offset);
}

// Numeric fields are zero-padded octal followed by a NUL, filling the field.
function putOctal(header, offset, width, n) {
  put(header, offset, width, utf8.encode(`${Math.floor(n).toString(8).padStart(width - 1, '0')}\0`));
}

export function tarHeader({ name, prefix, size, mtime, type }) {
  const h = new Uint8Array(TAR_BLOCK);
  put(h, 0, 100, name);
  putOctal(h, 100, 8, 0o644); // mode
  putOctal(h, 108, 8, 0); // uid
  putOctal(h, 116, 8, 0); // gid
  putOctal(h, 124, 12, size);
  putOctal(h, 136, 12, mtime);
  h.fill(0x20, 148, 156); // the checksum is summed with its own field as spaces
  h[156] = type.charCodeAt(0);
  put(h, 257, 6, utf8.encode('ustar\0'));
  put(h, 263, 2, utf8.encode('00'));
  if (prefix) put(h, 345, 155, prefix);
  let sum = 0;
  for (const b of h) sum += b;
  put(h, 148, 8, utf8.encode(`${sum.toString(8).padStart(6, '0')}\0 `));
  return h;
}

// ustar keeps a path as name (100 bytes) + prefix (155 bytes) split at a '/'. null when no
// split fits. Splitting the UTF-8 bytes at 0x2F is safe: that byte never occurs inside a
// multi-byte character.
export function tarSplitPath(bytes) {
  if (bytes.length <= 100) return { name: bytes, prefix: null };
  for (let i = Math.min(bytes.length - 2, 155); i > 0; i -= 1) {
    if (bytes[i] === 0x2f && bytes.length - i - 1 <= 100) {
      return { name: bytes.subarray(i + 1), prefix: bytes.subarray(0, i) };
    }
  }
  return null;
}

// A pax extended header record "<len> path=<value>\n", where len counts the whole record.
export function paxRecord(key, value) {
  const body = utf8.encode(` ${key}=${value}\n`);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return utf8.encode(`${len}${new TextDecoder().decode(body)}`);
}

export const tarPadding = (size) => TAR_ZEROS.subarray(0, (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK);

// entries: [{path, file}] -> Blob. Paths too long for ustar get a pax 'x' header (read by
// the tar crate the service uses) ahead of a ustar header with a shortened name.
export function buildTar(entries) {
  const parts = [];
  for (const { path, file } of entries) {
    const mtime = Math.max(0, Math.floor((file.lastModified || Date.now()) / 1000));
    let split = tarSplitPath(utf8.encode(path));
    if (!split) {
      const pax = paxRecord('path', path);
      parts.push(tarHeader({ name: utf8.encode('PaxHeader'), prefix: null, size: pax.length, mtime, type: 'x' }),
        pax, tarPadding(pax.length));
      // Readers without pax support still get a safe relative name: the file name alone.
      split = { name: utf8.encode(path.split('/').pop()).subarray(0, 100), prefix: null };
    }
    parts.push(tarHeader({ ...split, size: file.size, mtime, type: '0' }), file, tarPadding(file.size));
  }
  parts.push(TAR_ZEROS, TAR_ZEROS); // end of archive: two zero blocks
  return new Blob(parts, { type: 'application/x-tar' });
}

// What a chosen folder holds, as the training service will see it: the images, grouped by the
// class folder (the first folder below any single top folders that wrap everything).
export function describeFolder(fileList) {
  const all = Array.from(fileList || []);
  const relPath = (f) => f.webkitRelativePath || f.name;
  // Hidden files (e.g. macOS "._x.jpg" resource forks) are not images even when named like one.
  const hidden = (f) => relPath(f).split('/').some((part) => part.startsWith('.'));
  const images = all.filter((f) => IMAGE_EXT.test(f.name) && !hidden(f) && f.size <= TAR_MAX_FILE);
  const root = (relPath(all[0] || { name: '' }).split('/')[0]) || 'dataset';
  let paths = images.map((f) => relPath(f).split('/').slice(0, -1));
  while (paths.length && paths.every((p) => p.length > 1 && p[0] === paths[0][0])) {
    paths = paths.map((p) => p.slice(1));
  }
  const classes = new Map();
  let loose = 0;
  for (const p of paths) {
    if (!p.length) { loose += 1; continue; }
    classes.set(p[0], (classes.get(p[0]) || 0) + 1);
  }
  const bytes = images.reduce((n, f) => n + f.size, 0);
  return { root, images, ignored: all.length - images.length, classes, loose, bytes };
}
