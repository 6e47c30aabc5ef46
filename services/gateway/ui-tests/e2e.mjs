// End-to-end check of the gateway web UI with Playwright and the system chromium.
//
// Environment:
//   CBIR_URL           gateway base URL (default http://127.0.0.1:8080)
//   CBIR_PHASE         flow | error | recover | maintenance (default flow)
//   CBIR_COLLECTION    collection name (default e2e); maintenance: the collection the flow phase created
//   CBIR_FOLDER        flow: local folder with one subfolder per class of images
//   CBIR_QUERY         an image file to search with
//   CBIR_TOP_K         number of results to ask for (default 10)
//   CBIR_EXPECT_ERROR  error: substring expected in the error banner (case-insensitive)
//   CBIR_MODEL         maintenance: the name of the active model (default efficientnet-lite0)
//   CBIR_SCREENSHOT    optional png path; written at the end (also on failure)
//   CHROMIUM           chromium binary (default /usr/bin/chromium)
// Prints one JSON line on stdout; exit 0 on success, 1 on failure.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const IMAGE_EXT = /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i;
const env = process.env;
const base = (env.CBIR_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const phase = env.CBIR_PHASE || 'flow';
const collection = env.CBIR_COLLECTION || 'e2e';
const topK = Number(env.CBIR_TOP_K || 10);
const t0 = Date.now();
const summary = { ok: false, phase, url: base, collection };
const pageErrors = [];

class CheckError extends Error {}
const check = (cond, msg) => { if (!cond) throw new CheckError(msg); };
const need = (name) => {
  const v = env[name];
  check(v && v.trim(), `${name} must be set for phase "${phase}"`);
  return v;
};

function countImages(dir) {
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    let st = e;
    if (e.isSymbolicLink()) st = fs.statSync(p);
    if (st.isDirectory()) n += countImages(p);
    else if (st.isFile() && IMAGE_EXT.test(e.name)) n += 1;
  }
  return n;
}

async function apiCount() {
  const r = await fetch(`${base}/api/collections/${encodeURIComponent(collection)}`);
  check(r.ok, `GET /api/collections/${collection} answered HTTP ${r.status}`);
  const d = await r.json();
  return Number.isFinite(d.count) ? d.count : d.collection.count;
}

const byId = (page, id) => page.locator(`[data-testid="${id}"]`);

async function bannerText(page) {
  const b = byId(page, 'error-banner');
  if (!(await b.isVisible())) return '';
  const items = await b.locator('li').allInnerTexts();
  return (items.length ? items.join(' | ') : await b.innerText()).trim();
}

// Wait until the select offers `name`; false if it does not within the timeout.
async function waitForOption(page, testid, name, timeout) {
  try {
    await page.waitForFunction(([tid, n]) => {
      const s = document.querySelector(`[data-testid="${tid}"]`);
      return !!s && [...s.options].some((o) => o.value === n);
    }, [testid, name], { timeout, polling: 100 });
    return true;
  } catch (_) {
    return false;
  }
}

async function selectCollection(page, testid) {
  const ok = await waitForOption(page, testid, collection, 15000);
  check(ok, `collection "${collection}" never appeared in ${testid}; banner: "${await bannerText(page)}"`);
  await byId(page, testid).selectOption(collection);
}

// Wait for a search newer than prevSeq to finish; fail with the banner text if it errored.
// With queryId set, only a search with that stored image counts.
async function waitForResults(page, prevSeq, queryId = null, timeout = 60000) {
  const handle = await page.waitForFunction(([prev, qid]) => {
    const r = document.querySelector('[data-testid="results"]');
    if (!r) return false;
    if (r.dataset.state === 'error') return 'error';
    return r.dataset.state === 'done' && Number(r.dataset.seq) > prev
      && (qid === null || r.dataset.queryId === qid) ? 'done' : false;
  }, [prevSeq, queryId], { timeout, polling: 100 });
  const st = await handle.jsonValue();
  check(st === 'done', `the search failed; banner: "${await bannerText(page)}"`);
  return page.$$eval('[data-testid="result"]', (els) => els.map((e) => ({
    id: e.getAttribute('data-id'), similarity: Number(e.getAttribute('data-similarity')),
  })));
}

const resultsSeq = (page) => byId(page, 'results').getAttribute('data-seq').then(Number);

async function searchWithFile(page, file) {
  await byId(page, 'tab-search').click();
  await selectCollection(page, 'collection-select');
  await byId(page, 'top-k').fill(String(topK));
  await byId(page, 'top-k').blur();
  const prev = await resultsSeq(page);
  await byId(page, 'query-input').setInputFiles(file);
  return prev;
}

async function flow(page) {
  const folder = need('CBIR_FOLDER');
  const query = need('CBIR_QUERY');
  check(Number.isInteger(topK) && topK >= 1 && topK <= 1000, `CBIR_TOP_K must be an integer in 1..1000, got "${env.CBIR_TOP_K}"`);
  const expected = countImages(folder);
  check(expected > 0, `no image files under ${folder}`);
  summary.images_in_folder = expected;

  // Index tab: create the collection, upload the folder.
  await page.goto(`${base}/#index`);
  await byId(page, 'new-collection-name').fill(collection);
  await byId(page, 'create-collection').click();
  const created = await waitForOption(page, 'index-collection-select', collection, 15000);
  const banner = await bannerText(page);
  check(created, `could not create collection "${collection}"; banner: "${banner}"`);
  if (banner) {
    check(/already exists/i.test(banner), `unexpected error after creating the collection: "${banner}"`);
    summary.note = 'collection already existed';
    await byId(page, 'error-dismiss').click();
  }
  await byId(page, 'index-collection-select').selectOption(collection);
  await byId(page, 'folder-input').setInputFiles(folder);
  const progress = byId(page, 'progress');
  await page.waitForFunction(() => document.querySelector('[data-testid="progress"]').dataset.state === 'finished',
    null, { timeout: 240000, polling: 200 });
  const done = Number(await progress.getAttribute('data-done'));
  const failed = Number(await progress.getAttribute('data-failed'));
  const total = Number(await progress.getAttribute('data-total'));
  Object.assign(summary, { uploaded: done, upload_failed: failed, upload_total: total });
  if (failed) {
    const reasons = await page.$$eval('#progress-failures-list li', (els) => els.slice(0, 5).map((e) => e.textContent));
    throw new CheckError(`${failed} of ${total} uploads failed, e.g. ${JSON.stringify(reasons)}`);
  }
  check(total === expected, `progress data-total is ${total}, the folder holds ${expected} images`);
  check(done === expected - failed, `progress data-done is ${done}, expected ${expected - failed}`);

  // The stats shown must match the server, and dedup can only lower the count.
  const count = await apiCount();
  check(count > 0 && count <= done, `the collection holds ${count} images after uploading ${done}`);
  await page.waitForFunction((n) => {
    const e = document.querySelector('[data-testid="collection-count"]');
    return !!e && Number(e.textContent.replace(/[^0-9]/g, '')) === n;
  }, count, { timeout: 15000, polling: 200 }).catch(async () => {
    const shown = await byId(page, 'collection-count').innerText();
    throw new CheckError(`collection-count shows "${shown}", the server says ${count}`);
  });
  summary.collection_count = count;

  // Search tab: query by file.
  const prev = await searchWithFile(page, query);
  const results = await waitForResults(page, prev);
  const want = Math.min(topK, count);
  check(results.length === want, `got ${results.length} results, expected min(top_k=${topK}, count=${count}) = ${want}`);
  results.forEach((r, i) => {
    check(r.similarity > 0 && r.similarity <= 1, `result ${i} has similarity ${r.similarity}, not in (0, 1]`);
    if (i > 0) check(r.similarity <= results[i - 1].similarity, `result ${i} (${r.similarity}) ranks above result ${i - 1} (${results[i - 1].similarity})`);
  });
  const qclass = (await byId(page, 'query-class').innerText()).trim();
  check(qclass.length > 0, 'query-class is empty');
  Object.assign(summary, { results: results.length, top_similarity: results[0].similarity, query_class: qclass,
    took: (await byId(page, 'took').innerText()).trim() });

  // Click the best result: it must come back first (it is the query itself).
  const firstId = results[0].id;
  const seq = await resultsSeq(page);
  await byId(page, 'result').first().click();
  const again = await waitForResults(page, seq, firstId);
  check(again.length > 0, 'searching with a stored image returned no results');
  check(again[0].id === firstId, `searching with image ${firstId} ranked image ${again[0].id} first`);
  summary.self_similarity = again[0].similarity;
}

async function errorPhase(page) {
  const query = need('CBIR_QUERY');
  const expectText = need('CBIR_EXPECT_ERROR').toLowerCase();
  await page.goto(`${base}/#search`);
  // With a backing service down even listing collections may fail: select it if we can.
  if (await waitForOption(page, 'collection-select', collection, 10000)) {
    await byId(page, 'collection-select').selectOption(collection);
  } else {
    summary.note = 'collection not listed';
  }
  await byId(page, 'query-input').setInputFiles(query);
  try {
    await page.waitForFunction((want) => {
      const b = document.querySelector('[data-testid="error-banner"]');
      return !!b && !b.hidden && b.offsetParent !== null && b.innerText.toLowerCase().includes(want);
    }, expectText, { timeout: 20000, polling: 100 });
  } catch (_) {
    const shown = await bannerText(page);
    throw new CheckError(shown
      ? `the error banner says "${shown}", expected it to contain "${env.CBIR_EXPECT_ERROR}"`
      : `no error banner within 20 s (expected one containing "${env.CBIR_EXPECT_ERROR}")`);
  }
  // The search itself must not have succeeded: wait for it to settle, then look.
  const settled = await page.waitForFunction(() => {
    const r = document.querySelector('[data-testid="results"]');
    return r && r.dataset.state !== 'loading' ? r.dataset.state : false;
  }, null, { timeout: 20000, polling: 100 }).then((h) => h.jsonValue()).catch(() => 'loading');
  summary.search_state = settled;
  check(settled !== 'done', 'the search succeeded although an error was expected');
  summary.banner = await bannerText(page);
}

async function recoverPhase(page) {
  const query = need('CBIR_QUERY');
  await page.goto(`${base}/#search`);
  const prev = await searchWithFile(page, query);
  const results = await waitForResults(page, prev);
  check(results.length > 0, 'the search returned no results after recovery');
  const shown = await bannerText(page);
  check(!shown, `an error banner is still visible: "${shown}"`);
  summary.results = results.length;
}

// Maintenance tab: the active model is listed with its badge, deleting it is refused (409) and
// the banner says why; the collection of the flow phase is listed with its images.
async function maintenancePhase(page) {
  const model = env.CBIR_MODEL || 'efficientnet-lite0';
  await page.goto(`${base}/#search`);
  await byId(page, 'tab-maintenance').click();
  await page.waitForFunction(() => !document.querySelector('[data-view="maintenance"]').hidden, null, { timeout: 10000 });

  const row = page.locator(`[data-testid="model-row"][data-name="${model}"][data-active="true"]`);
  try {
    await row.first().waitFor({ state: 'visible', timeout: 30000 });
  } catch (_) {
    const listed = await page.$$eval('[data-testid="model-row"]', (els) => els.map((e) =>
      `${e.dataset.name}:${e.dataset.version}${e.dataset.active === 'true' ? ' (active)' : ''}`));
    throw new CheckError(`the models table never listed "${model}" as active; it lists ${JSON.stringify(listed)}; ` +
      `banner: "${await bannerText(page)}"`);
  }
  check(await row.first().locator('[data-testid="active-badge"]').isVisible(), `"${model}" has no visible active badge`);
  summary.model = `${model}:${await row.first().getAttribute('data-version')}`;

  // Delete it: accept the confirm dialog; the server must refuse, and the banner must say why.
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.accept().catch(() => {});
  });
  const refused = page.waitForResponse((r) => r.request().method() === 'DELETE'
    && new URL(r.url()).pathname.startsWith(`/api/models/${encodeURIComponent(model)}/`), { timeout: 20000 });
  await row.first().locator('[data-testid="model-delete"]').click();
  const res = await refused;
  check(dialogs.length === 1, `expected one confirm dialog before deleting, saw ${dialogs.length}`);
  check(res.status() === 409, `deleting the active model answered HTTP ${res.status()}, expected 409`);
  try {
    await page.waitForFunction(() => {
      const b = document.querySelector('[data-testid="error-banner"]');
      return !!b && !b.hidden && b.innerText.toLowerCase().includes('active');
    }, null, { timeout: 10000, polling: 100 });
  } catch (_) {
    const shown = await bannerText(page);
    throw new CheckError(shown
      ? `the error banner says "${shown}", expected it to mention "active"`
      : 'no error banner after deleting the active model');
  }
  summary.banner = await bannerText(page);
  // The refused delete must leave the model listed (the table reloads after the attempt).
  await page.waitForTimeout(500);
  check(await row.count() > 0, `"${model}" disappeared from the models table after a refused delete`);

  // The collection the flow phase created, with its images.
  const coll = page.locator(`[data-testid="maint-collection-row"][data-name="${collection}"]`);
  try {
    await coll.first().waitFor({ state: 'visible', timeout: 15000 });
  } catch (_) {
    const listed = await page.$$eval('[data-testid="maint-collection-row"]', (els) => els.map((e) => e.dataset.name));
    throw new CheckError(`the collections list does not show "${collection}"; it lists ${JSON.stringify(listed)}`);
  }
  const shown = Number(await coll.first().getAttribute('data-count'));
  summary.collection_count = shown;
  check(shown > 0, `the collections list shows "${collection}" with ${shown} images`);
}

let browser;
let page;
let exitCode = 1;
try {
  const phases = { flow, error: errorPhase, recover: recoverPhase, maintenance: maintenancePhase };
  check(phases[phase], `CBIR_PHASE must be flow, error, recover or maintenance, got "${phase}"`);
  browser = await chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
    headless: true,
  });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // The UI must work under the gateway's Content-Security-Policy: a refused
  // script, style or image is reported by the browser on the console.
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
  });
  let documentCsp = null;
  page.on('response', (r) => {
    if (r.request().resourceType() === 'document' && documentCsp === null) {
      documentCsp = r.headers()['content-security-policy'] || '';
    }
  });
  await phases[phase](page);
  check(pageErrors.length === 0, `JavaScript errors in the page: ${pageErrors.join(' | ')}`);
  check(documentCsp !== null && documentCsp.includes("frame-ancestors 'none'"),
    `the page came without its Content-Security-Policy (got ${JSON.stringify(documentCsp)})`);
  summary.ok = true;
  exitCode = 0;
} catch (err) {
  summary.error = err instanceof CheckError ? err.message : `${err.name}: ${err.message.split('\n')[0]}`;
  if (pageErrors.length) summary.page_errors = pageErrors;
} finally {
  if (page && env.CBIR_SCREENSHOT) {
    try {
      fs.mkdirSync(path.dirname(path.resolve(env.CBIR_SCREENSHOT)), { recursive: true });
      await page.screenshot({ path: env.CBIR_SCREENSHOT, fullPage: true });
      summary.screenshot = env.CBIR_SCREENSHOT;
    } catch (e) {
      summary.screenshot_error = e.message.split('\n')[0];
    }
  }
  if (browser) await browser.close().catch(() => {});
  summary.seconds = Number(((Date.now() - t0) / 1000).toFixed(1));
  console.log(JSON.stringify(summary));
  if (exitCode !== 0) console.error(`e2e ${phase} FAILED: ${summary.error}`);
  process.exit(exitCode);
}
