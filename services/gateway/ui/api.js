// The REST client: fetch wrappers, the API key header and the error shape. REST contract:
// services/gateway/API.md.
import { userMessage } from './format.js';

export const UNREACHABLE = 'The gateway is unreachable: is cbir running?';
export const enc = encodeURIComponent;

export class ApiError extends Error {
  constructor(message, { code = 'error', status = 0, service = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.service = service;
  }
}

// API key: asked for when the gateway answers 401, kept in this browser.
const KEY_STORE = 'cbir.apiKey';
export const apiKey = () => localStorage.getItem(KEY_STORE) || '';
// <img> tags cannot send headers: thumbnails carry the key in the query.
export const withKey = (url) => (apiKey() && url ? `${url}${url.includes('?') ? '&' : '?'}api_key=${encodeURIComponent(apiKey())}` : url);

// The error object of a failed response. The gateway wraps it ({"error": {code, message}});
// a bare {code, message} is accepted too, so a handler that answers either way reads well.
export function errorBody(data) {
  if (!data || typeof data !== 'object') return null;
  if (data.error && typeof data.error === 'object') return data.error;
  return typeof data.message === 'string' ? data : null;
}

export function parseJson(text) {
  if (!text) return null;
  try { return JSON.parse(text); } catch (_) { return null; }
}

// A key would help: 401, or 403 for a key without the role. A 403 "forbidden" is about the
// request itself (a server path outside the allowed roots): no key changes that.
function needsKey(status, data) {
  const e = errorBody(data);
  return status === 401 || (status === 403 && !(e && e.code === 'forbidden'));
}

// Asks for a key once; true when the caller should retry with it.
function askForKey(data) {
  const e = errorBody(data);
  const key = window.prompt(`${(e && e.message) || 'This needs an API key.'}\n\nAPI key:`, '');
  if (!key) return false;
  localStorage.setItem(KEY_STORE, key.trim());
  return true;
}

function errorFromResponse(status, statusText, text, data) {
  const e = errorBody(data);
  let message = e && e.message;
  if (!message) {
    message = text && !data ? text.trim().slice(0, 300) : '';
    message = message || `The gateway answered HTTP ${status} ${statusText || ''}`.trim();
  }
  const code = (e && e.code) || `http_${status}`;
  return new ApiError(userMessage(message, code), {
    code,
    status,
    service: (e && e.service) || null,
  });
}

export async function api(path, opts = {}, retried = false) {
  const { method = 'GET', json, body } = opts;
  const init = { method, headers: { Accept: 'application/json' } };
  const usedKey = apiKey();
  if (usedKey) init.headers['x-api-key'] = usedKey;
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body; // FormData: the browser sets the multipart boundary
  }
  let res;
  let text;
  try {
    res = await fetch(path, init);
    text = await res.text();
  } catch (_) {
    throw new ApiError(UNREACHABLE, { code: 'unreachable' });
  }
  const data = parseJson(text);
  // Requests sent in parallel all fail: after the first prompt the others retry with its key.
  if (needsKey(res.status, data) && !retried && (apiKey() !== usedKey || askForKey(data))) {
    return api(path, opts, true);
  }
  if (!res.ok) throw errorFromResponse(res.status, res.statusText, text, data);
  return data;
}

// A POST with upload progress (fetch cannot report it): same key prompt and errors as api().
// `onStart` receives the XMLHttpRequest so the caller can abort it.
export function uploadWithProgress(path, body, contentType, { onProgress, onStart } = {}, retried = false) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Content-Type', contentType);
    const usedKey = apiKey();
    if (usedKey) xhr.setRequestHeader('x-api-key', usedKey);
    xhr.upload.addEventListener('progress', (e) => {
      if (onProgress) onProgress(e.loaded, e.lengthComputable ? e.total : body.size);
    });
    xhr.addEventListener('error', () => reject(new ApiError(UNREACHABLE, { code: 'unreachable' })));
    xhr.addEventListener('abort', () => reject(new ApiError('The upload was stopped.', { code: 'aborted' })));
    xhr.addEventListener('load', () => {
      const text = xhr.responseText;
      const data = parseJson(text);
      if (needsKey(xhr.status, data) && !retried && (apiKey() !== usedKey || askForKey(data))) {
        resolve(uploadWithProgress(path, body, contentType, { onProgress, onStart }, true));
      } else if (xhr.status < 200 || xhr.status >= 300) {
        reject(errorFromResponse(xhr.status, xhr.statusText, text, data));
      } else {
        resolve(data);
      }
    });
    if (onStart) onStart(xhr);
    xhr.send(body);
  });
}
