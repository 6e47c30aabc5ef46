// The query image a user uploads: checked, hashed, and kept for the tab so
// that a reload or the back button find it again.

import { IMAGE_EXT } from './format.js';

const UPLOAD_KEY = 'cbir.uploadQuery';

export function looksLikeImage(file) {
  return (file.type && file.type.startsWith('image/')) || IMAGE_EXT.test(file.name || '');
}

// The content hash of an uploaded query, to mark its stored copy. Needs a secure context
// (https or localhost); elsewhere the distance alone marks it.
export async function sha256Hex(file) {
  if (!(window.crypto && crypto.subtle)) return null;
  try {
    const d = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
    return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
  } catch (_) {
    return null;
  }
}

// An uploaded image cannot go in a link; it is kept for this browser tab so that a reload or
// the back button find it again (up to ~3 MB: the storage holds 5 MB of text).
export function keepUpload(file) {
  try {
    sessionStorage.removeItem(UPLOAD_KEY);
    if (file.size > 3 * 1024 * 1024) return;
    const reader = new FileReader();
    reader.onload = () => {
      try {
        sessionStorage.setItem(UPLOAD_KEY, JSON.stringify({ name: file.name, type: file.type, data: reader.result }));
      } catch (_) { /* full: a reload will ask for the image again */ }
    };
    reader.readAsDataURL(file);
  } catch (_) { /* storage refused */ }
}

export async function restoreUpload() {
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(UPLOAD_KEY) || 'null'); } catch (_) { saved = null; }
  if (!saved || !saved.data) return null;
  // Decoded here: the page's CSP (connect-src 'self') refuses fetch() of a data: URL.
  const comma = saved.data.indexOf(',');
  const bin = atob(saved.data.slice(comma + 1));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) bytes[i] = bin.charCodeAt(i);
  return new File([bytes], saved.name || 'query', { type: saved.type || 'application/octet-stream' });
}
