// End-to-end check of the gateway web UI with Playwright and the system chromium.
//
// Environment:
//   CBIR_URL           gateway base URL (default http://127.0.0.1:8080)
//   CBIR_PHASE         flow | viewer | filters | gallery | dupes | error | recover | maintenance (default flow)
//   CBIR_COLLECTION    collection name (default e2e); maintenance: the collection the flow phase created
//   CBIR_FOLDER        flow: local folder with one subfolder per class of images
//   CBIR_QUERY         an image file to search with
//   CBIR_TOP_K         number of results to ask for (default 10)
//   CBIR_EXPECT_ERROR  error: substring expected in the error banner (case-insensitive)
//   CBIR_MODEL         maintenance: the name of the active model (default efficientnet-lite0)
//   CBIR_SCREENSHOT    optional png path; written at the end (also on failure)
//   CBIR_ARTIFACTS     folder for the screenshots of each page at 1400 and 400 px
//   CBIR_BROKEN_FOLDER dupes: a folder with a file that is not an image (uploads fail, retry)
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
    score: Number(e.getAttribute('data-score')),
    rankedBy: e.closest('[data-testid="results"]').dataset.rankedBy,
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
  // Refined (the default) keeps the most similar image first, then orders by refined score;
  // the other modes order by similarity.
  results.forEach((r, i) => {
    check(r.similarity > 0 && r.similarity <= 1, `result ${i} has similarity ${r.similarity}, not in (0, 1]`);
    if (r.rankedBy === 'refined_score') {
      check(r.similarity <= results[0].similarity, `result ${i} (${r.similarity}) is more similar than the first (${results[0].similarity})`);
      if (i > 1) check(r.score <= results[i - 1].score, `result ${i} (score ${r.score}) ranks above result ${i - 1} (score ${results[i - 1].score})`);
    } else if (i > 0) {
      check(r.similarity <= results[i - 1].similarity, `result ${i} (${r.similarity}) ranks above result ${i - 1} (${results[i - 1].similarity})`);
    }
  });
  check(results.length < 2 || results[0].rankedBy === 'refined_score', `the default search is ranked by "${results[0] && results[0].rankedBy}", not refined_score`);
  const qclass = (await byId(page, 'query-class').innerText()).trim();
  check(qclass.length > 0, 'query-class is empty');
  Object.assign(summary, { results: results.length, top_similarity: results[0].similarity, query_class: qclass,
    took: (await byId(page, 'took').innerText()).trim() });

  // The best result is the query's own copy: marked "your image".
  check(await byId(page, 'result').first().locator('[data-testid="your-image"]').count() === 1,
    'the query\'s own copy (the best result) is not marked "your image"');
  // Open the best result in the viewer, search with it: it must come back first (it is the
  // query itself), and the focus lands on that result.
  const firstId = results[0].id;
  const seq = await resultsSeq(page);
  await byId(page, 'result').first().click();
  await page.waitForFunction(() => document.getElementById('viewer').open, null, { timeout: 10000 });
  await byId(page, 'viewer-search').click();
  const again = await waitForResults(page, seq, firstId);
  check(again.length > 0, 'searching with a stored image returned no results');
  check(again[0].id === firstId, `searching with image ${firstId} ranked image ${again[0].id} first`);
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.dataset.id);
  check(focused === firstId, `after searching with a result the focus is on ${JSON.stringify(focused)}, not the best result`);
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

  // Delete is disabled on the active model and says why; the server refuses it anyway (409).
  const del = row.first().locator('[data-testid="model-delete"]');
  check(await del.isDisabled(), `Delete is enabled on the active model "${model}"`);
  const why = (await del.getAttribute('title')) || '';
  check(/active/i.test(why), `the disabled Delete does not say why: title ${JSON.stringify(why)}`);
  const version = await row.first().getAttribute('data-version');
  const refused = await fetch(`${base}/api/models/${encodeURIComponent(model)}/${encodeURIComponent(version)}`, { method: 'DELETE' });
  check(refused.status === 409, `deleting the active model answered HTTP ${refused.status}, expected 409`);

  // The training dataset is checked before any upload: classes, images per class against the
  // minimum (with the setting that changes it), and the name.
  const folder = env.CBIR_FOLDER;
  if (folder) {
    await byId(page, 'train-name').fill('e2e-check');
    await byId(page, 'train-folder-input').setInputFiles(folder);
    const summaryBox = byId(page, 'train-folder-summary');
    await page.waitForFunction(() => document.querySelector('[data-testid="train-folder-summary"]').dataset.ok !== undefined);
    const classes = await page.$$eval('[data-testid="train-class"]', (els) => els.map((e) => [e.dataset.class, Number(e.dataset.count)]));
    check(classes.length >= 2, `the dataset check lists ${classes.length} classes`);
    const small = Math.min(...classes.map(([, n]) => n));
    if (small < 100) {
      check(await summaryBox.getAttribute('data-ok') === 'false', 'a folder with classes under the default minimum passed the check');
      const problem = await page.locator('[data-testid="train-problem"]').first().innerText();
      check(/Min images per class/.test(problem), `the check does not point to the setting: "${problem}"`);
    }
    await page.locator('#train-advanced summary').click();
    await byId(page, 'train-form').locator('#train-min-images').fill(String(small));
    await page.waitForFunction(() => document.querySelector('[data-testid="train-folder-summary"]').dataset.ok === 'true');
    await byId(page, 'train-name').fill('bad name!');
    await page.waitForFunction(() => document.querySelector('[data-testid="train-folder-summary"]').dataset.ok === 'false');
    await byId(page, 'train-name').fill('e2e-check');
    summary.dataset_classes = classes.length;
  }
  await shoot(page, 'maintenance');

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

// ------------------------------------------------------------------ features of issue 15
const shotsDir = env.CBIR_ARTIFACTS || '';
const enc = encodeURIComponent;

async function getJson(p, init) {
  const r = await fetch(`${base}${p}`, init);
  return { status: r.status, body: await r.json().catch(() => null) };
}

// Screenshots at both widths; at each, nothing may be wider than the window (tables reflow,
// nothing scrolls sideways).
async function shoot(page, name) {
  for (const width of [1400, 400]) {
    await page.setViewportSize({ width, height: 900 });
    await page.waitForTimeout(200);
    const over = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    check(over <= 1, `the ${name} page at ${width} px is ${over} px wider than the window (it scrolls sideways)`);
    if (shotsDir) {
      fs.mkdirSync(shotsDir, { recursive: true });
      await page.screenshot({ path: path.join(shotsDir, `${name}-${width}.png`), fullPage: true });
    }
  }
  await page.setViewportSize({ width: 1400, height: 900 });
}

const shownResults = (page) => page.$$eval('[data-testid="result"]', (els) => els.map((e) => ({
  id: e.dataset.id, rank: Number(e.dataset.rank), label: e.dataset.label,
})));

// Waits for the results to hold `n` cards (after a "load more").
async function waitForCount(page, testid, n, timeout = 30000) {
  await page.waitForFunction(([t, want]) => document.querySelectorAll(`[data-testid="${t}"]`).length === want,
    [testid, n], { timeout, polling: 100 }).catch(async () => {
    const got = await page.locator(`[data-testid="${testid}"]`).count();
    throw new CheckError(`expected ${n} ${testid} elements, the page shows ${got}; banner: "${await bannerText(page)}"`);
  });
}

async function setup(page) {
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.accept().catch(() => {}); });
  const stats = (await getJson(`/api/collections/${enc(collection)}`)).body;
  const labels = [...(stats.labels || [])].sort((a, b) => b.count - a.count);
  return { dialogs, count: stats.count, labels };
}

function needLabels(labels) {
  check(labels.length >= 2, `the stats of "${collection}" list ${labels.length} labels, expected the class folders`);
  summary.labels = labels.length;
}

// The viewer (details, Escape, focus), the search in the address (reload, back), partition
// mode's note, the similarity bands, and a change of collection re-running the search.
async function viewerPhase(page) {
  const query = need('CBIR_QUERY');
  await setup(page);
  // A second collection of one image: switching to it must re-run the search there.
  const other = `${collection}-other`;
  const made = await getJson('/api/collections', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: other }) });
  check(made.status < 300 || made.status === 409, `creating "${other}" answered HTTP ${made.status}`);
  const fd = new FormData();
  fd.append('files', new Blob([fs.readFileSync(query)], { type: 'image/jpeg' }), `other/${path.basename(query)}`);
  const put = await getJson(`/api/collections/${enc(other)}/images`, { method: 'POST', body: fd });
  check(put.status === 200, `adding an image to "${other}" answered HTTP ${put.status}`);

  const k = 12;
  await page.goto(`${base}/#search`);
  await selectCollection(page, 'collection-select');
  await byId(page, 'top-k').fill(String(k));
  await byId(page, 'top-k').blur();
  let prev = await resultsSeq(page);
  await byId(page, 'query-input').setInputFiles(query);
  let res = await waitForResults(page, prev);
  check(res.length > 1, `the search shows ${res.length} results`);
  // The default mode is refined, explained, and the summary says what ordered the list.
  check(await byId(page, 'mode-select').inputValue() === 'refined', 'the default mode is not refined');
  check((await byId(page, 'mode-hint').innerText()).toLowerCase().includes('refined'), 'refined mode has no explanation');
  const summaryText = await byId(page, 'results-summary').innerText();
  check(/refined mode.*refined score/.test(summaryText), `the summary does not say the list is ordered by refined score: "${summaryText}"`);
  // The band reads at a glance; the raw distance shows on demand.
  const band = await page.locator('[data-testid="result"] [data-testid="similarity-band"]').first().getAttribute('data-band');
  check(['identical', 'very', 'similar', 'weak'].includes(band), `the first result has no similarity band (${band})`);
  await byId(page, 'show-raw').check();
  const raw = await page.locator('[data-testid="result-similarity"]').first().innerText();
  check(/distance \d\.\d{3}/.test(raw), `"Show distances" shows "${raw}"`);
  await shoot(page, 'search');

  // The viewer: the second result opens, Escape closes it, the focus returns to that result.
  const second = page.locator('[data-testid="result"]').nth(1);
  const secondId = await second.getAttribute('data-id');
  await second.click();
  await page.waitForFunction(() => document.getElementById('viewer').open);
  await page.waitForFunction(() => document.querySelector('#viewer-details').textContent.includes('Added'));
  const details = await byId(page, 'viewer-details').innerText();
  for (const want of ['File', 'Path', 'Label', 'Partition', 'Similarity', 'Added']) {
    check(details.toLowerCase().includes(want.toLowerCase()), `the viewer does not show "${want}": ${details}`);
  }
  await shoot(page, 'viewer');
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => !document.getElementById('viewer').open);
  const back = await page.evaluate(() => document.activeElement && document.activeElement.dataset.id);
  check(back === secondId, `after Escape the focus is on ${JSON.stringify(back)}, not the result that opened the viewer (${secondId})`);

  // Search with it from the viewer: the address names it; a reload gives the same search; the
  // back button returns to the uploaded image's search.
  prev = await resultsSeq(page);
  await second.click();
  await byId(page, 'viewer-search').click();
  await waitForResults(page, prev, secondId);
  check(new URL(page.url()).hash.includes(`q=${secondId}`), `the address does not name the query image: ${page.url()}`);
  await page.reload();
  res = await waitForResults(page, -1, secondId);
  check(res.length > 0 && res.every((r) => r.id), 'the reloaded search shows no results');
  await page.goBack();
  await page.waitForFunction(() => {
    const r = document.querySelector('[data-testid="results"]');
    return r.dataset.state === 'done' && r.dataset.queryId === '' && location.hash.includes('q=upload');
  }, null, { timeout: 60000 });

  // Partition mode names the partition when it finds fewer than asked.
  prev = await resultsSeq(page);
  await byId(page, 'mode-select').selectOption('partition');
  res = await waitForResults(page, prev);
  if (res.length < k) {
    const note = await byId(page, 'results-note').innerText();
    check(/partition/i.test(note) && note.includes(String(res.length)), `partition mode found ${res.length} of ${k} without saying why: "${note}"`);
  }
  check((await byId(page, 'mode-hint').innerText()).toLowerCase().includes('partition'), 'the mode has no explanation');

  // Changing the collection re-runs the search there.
  prev = await resultsSeq(page);
  await byId(page, 'collection-select').selectOption(other);
  res = await waitForResults(page, prev);
  check(res.length === 1 && new URL(page.url()).hash.includes(`c=${enc(other)}`), `the search did not follow the collection to "${other}" (${res.length} results)`);
  prev = await resultsSeq(page);
  await byId(page, 'collection-select').selectOption(collection);
  await byId(page, 'mode-select').selectOption('probe');
  await waitForResults(page, prev);
}

// Labels with counts, a filtered search with "load more", ranks, the filter in the address.
async function filtersPhase(page) {
  const query = need('CBIR_QUERY');
  const { count, labels } = await setup(page);
  needLabels(labels);
  // Index tab: the user's labels with their counts, most first.
  await page.goto(`${base}/#index`);
  await selectCollection(page, 'index-collection-select');
  await waitForCount(page, 'label-row', labels.length);
  const rows = await page.$$eval('[data-testid="label-row"]', (els) => els.map((e) => e.dataset.labelName));
  check(rows[0] === labels[0].label, `the labels table starts with "${rows[0]}", the stats with "${labels[0].label}"`);
  await shoot(page, 'index');

  // Search with a filter that leaves one label out, k=30: a page of 24, then "load more".
  const out = labels[0];
  const k = 30;
  await page.goto(`${base}/#search`);
  await selectCollection(page, 'collection-select');
  await byId(page, 'top-k').fill(String(k));
  await byId(page, 'top-k').blur();
  let prev = await resultsSeq(page);
  await byId(page, 'query-input').setInputFiles(query);
  let res = await waitForResults(page, prev);
  check(res.length === Math.min(24, count, k), `the first page shows ${res.length} results, expected ${Math.min(24, count, k)}`);
  await page.locator('#filters summary').click();
  const chip = page.locator(`[data-testid="filter-label"][data-label="${out.label}"]`);
  prev = await resultsSeq(page);
  await chip.click(); // only this label
  await chip.click(); // leave it out
  await page.waitForFunction((l) => document.querySelector(`[data-testid="filter-label"][data-label="${CSS.escape(l)}"]`).dataset.state === 'out', out.label);
  await page.waitForFunction((p) => Number(document.querySelector('[data-testid="results"]').dataset.seq) >= p + 2, prev);
  res = await waitForResults(page, prev + 1);
  const matching = count - out.count;
  check(res.length === Math.min(24, matching), `with "${out.label}" left out the first page shows ${res.length}, expected ${Math.min(24, matching)}`);
  if (matching > 24) {
    check(await byId(page, 'load-more').isVisible(), '"Load more" is not shown although more results match');
    await byId(page, 'load-more').click();
    await waitForCount(page, 'result', Math.min(k, matching));
  }
  const all = await shownResults(page);
  check(all.every((r) => r.label !== out.label), `a result labelled "${out.label}" is shown although the filter leaves it out`);
  check(all.every((r, i) => r.rank === i + 1), `the ranks are not 1..${all.length}: ${all.map((r) => r.rank).join(',')}`);
  check(new Set(all.map((r) => r.id)).size === all.length, 'a result is shown twice after "load more"');
  const hash = new URL(page.url()).hash;
  check(hash.includes(`not=${enc(out.label)}`) && hash.includes(`k=${k}`) && hash.includes('q=upload'), `the address does not hold the search: ${hash}`);
  summary.filtered_results = all.length;
  await shoot(page, 'search-filtered');
  const best = page.locator('[data-testid="result"]').first();
  await best.click();
  await page.waitForFunction(() => document.getElementById('viewer').open);
  await page.waitForFunction(() => /rank/i.test(document.querySelector('#viewer-details').textContent));
  await page.keyboard.press('Escape');
  await page.reload();
  await page.waitForFunction(() => document.querySelector('[data-testid="results"]').dataset.state === 'done', null, { timeout: 60000 });
  check(await page.locator(`[data-testid="filter-label"][data-label="${out.label}"][data-state="out"]`).count() === 1,
    'the reloaded search lost its label filter');
}

// The gallery: paging, sort, the label filter, relabel and delete from the grid.
async function galleryPhase(page) {
  const { dialogs, count, labels } = await setup(page);
  needLabels(labels);
  // The gallery: sorted by name, a page of 24 then "load more", a label filter with counts,
  // relabel two images and delete one from the grid.
  await page.goto(`${base}/#browse?c=${enc(collection)}&sort=name&order=asc`);
  await waitForCount(page, 'gallery-item', Math.min(24, count));
  if (count > 24) {
    await byId(page, 'gallery-more').click();
    await waitForCount(page, 'gallery-item', Math.min(48, count));
  }
  const names = await page.$$eval('[data-testid="gallery-item"]', (els) => els.map((e) => e.dataset.name));
  check(names.every((n, i) => i === 0 || names[i - 1] <= n), `the gallery is not sorted by name: ${names.slice(0, 6).join(', ')}…`);
  await shoot(page, 'browse');
  const pick = labels[1];
  await byId(page, 'browse-label').selectOption(pick.label);
  await waitForCount(page, 'gallery-item', Math.min(24, pick.count));
  const opt = await page.$eval('[data-testid="browse-label"]', (s) => s.selectedOptions[0].textContent);
  check(opt.includes(String(pick.count)), `the label filter shows "${opt}" without the count ${pick.count}`);
  const items = page.locator('[data-testid="gallery-item"]');
  const ids = [await items.nth(0).getAttribute('data-id'), await items.nth(1).getAttribute('data-id')];
  await items.nth(0).locator('[data-testid="gallery-check"]').check();
  await items.nth(1).locator('[data-testid="gallery-check"]').check();
  await byId(page, 'gallery-label').fill('e2e-relabelled');
  await byId(page, 'gallery-relabel').click();
  await page.waitForFunction((want) => want.every((id) => document.querySelector(`[data-testid="gallery-item"][data-id="${id}"]`).dataset.label === 'e2e-relabelled'), ids);
  for (const id of ids) {
    const img = (await getJson(`/api/collections/${enc(collection)}/images/${id}`)).body;
    check(img && img.label === 'e2e-relabelled', `image ${id} has label ${JSON.stringify(img && img.label)} after the relabel`);
  }
  await byId(page, 'gallery-unselect').click();
  const doomed = await items.nth(2).getAttribute('data-id');
  await items.nth(2).locator('[data-testid="gallery-check"]').check();
  const before = dialogs.length;
  await byId(page, 'gallery-delete').click();
  await page.waitForFunction((id) => !document.querySelector(`[data-testid="gallery-item"][data-id="${id}"]`), doomed);
  check(dialogs.length === before + 1, 'deleting from the grid did not ask for confirmation');
  check((await getJson(`/api/collections/${enc(collection)}/images/${doomed}`)).status === 404, `image ${doomed} is still stored after its delete`);
  summary.gallery = { relabelled: ids, deleted: doomed };

}

// The duplicates review, and uploads that fail, are retried, and never point to a log.
async function dupesPhase(page) {
  await setup(page);
  // Duplicates: a run with progress, then keep one of a group and delete the others.
  await page.goto(`${base}/#dupes`);
  await selectCollection(page, 'dupes-collection');
  await byId(page, 'dupes-start').click();
  await page.waitForFunction(() => {
    const p = document.querySelector('[data-testid="dupes-progress"]');
    const g = document.querySelector('[data-testid="dupes-groups"]');
    return p.dataset.state === 'succeeded' && g.dataset.state === 'done';
  }, null, { timeout: 120000, polling: 200 }).catch(async () => {
    const st = await byId(page, 'dupes-progress').getAttribute('data-state');
    throw new CheckError(`the duplicate search did not finish (state ${st}); banner: "${await bannerText(page)}"`);
  });
  const groups = await page.$$eval('[data-testid="dupe-group"]', (els) => els.map((e) => e.dataset.ids.split(',')));
  check(groups.length >= 1, 'the duplicate search found no group, although the folder holds copies');
  summary.dupe_groups = groups.length;
  await shoot(page, 'dupes');
  const group = page.locator('[data-testid="dupe-group"]').first();
  const kept = await group.locator('[data-testid="dupe-keep"]:checked').getAttribute('value');
  await group.locator('[data-testid="dupe-resolve"]').click();
  await waitForCount(page, 'dupe-group', groups.length - 1);
  for (const id of groups[0]) {
    const st = (await getJson(`/api/collections/${enc(collection)}/images/${id}`)).status;
    check(id === kept ? st === 200 : st === 404, `after keeping ${kept}, image ${id} answers HTTP ${st}`);
  }

  // Uploads: a file that is not an image fails; the retry button offers it again; no message
  // sends the user to a server log.
  const broken = need('CBIR_BROKEN_FOLDER');
  {
    await page.goto(`${base}/#index`);
    await selectCollection(page, 'index-collection-select');
    await byId(page, 'folder-input').setInputFiles(broken);
    const finished = () => page.waitForFunction(() => document.querySelector('[data-testid="progress"]').dataset.state === 'finished',
      null, { timeout: 120000, polling: 200 });
    await finished();
    const failed = Number(await byId(page, 'progress').getAttribute('data-failed'));
    check(failed >= 1, 'the broken file did not fail');
    const rowsState = await page.$$eval('[data-testid="progress-file"]', (els) => els.map((e) => e.dataset.state));
    check(rowsState.length === Number(await byId(page, 'progress').getAttribute('data-total')), 'not every file has a progress row');
    check(rowsState.filter((st) => st === 'failed').length === failed, `the file rows show ${rowsState.join(',')}, ${failed} failed`);
    const retry = byId(page, 'progress-retry');
    check(await retry.isVisible(), '"Retry failed files" is not offered');
    await retry.click();
    await page.waitForFunction(() => document.querySelector('[data-testid="progress"]').dataset.state === 'running', null, { timeout: 10000 }).catch(() => {});
    await finished();
    check(Number(await byId(page, 'progress').getAttribute('data-total')) === failed, 'the retry did not send exactly the failed files');
    const text = `${await byId(page, 'progress').innerText()} ${await bannerText(page)}`;
    check(!/\blogs?\b/i.test(text), `a message points to a log: ${text}`);
    summary.upload_retry = failed;
  }
}

let browser;
let page;
let exitCode = 1;
try {
  const phases = {
    flow, viewer: viewerPhase, filters: filtersPhase, gallery: galleryPhase, dupes: dupesPhase,
    error: errorPhase, recover: recoverPhase, maintenance: maintenancePhase,
  };
  check(phases[phase], `CBIR_PHASE must be one of ${Object.keys(phases).join(', ')}, got "${phase}"`);
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
