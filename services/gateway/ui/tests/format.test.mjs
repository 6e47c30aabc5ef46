// The formatters shown in every table and summary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as f from '../format.js';

test('integers, percentages and missing values', () => {
  assert.equal(f.fmtInt(1234567.4), '1,234,567');
  assert.equal(f.fmtInt(NaN), '–');
  assert.equal(f.fmtPct(0.1234), '12.3%');
  assert.equal(f.fmtAcc(0.5), '50.0%');
  assert.equal(f.fmtAcc(NaN), '–');
  assert.equal(f.fmtLoss(0.123456), '0.1235');
  assert.equal(f.fmtLoss(12.345), '12.35');
  assert.equal(f.fmtLoss(undefined), '–');
});

test('sizes in binary units', () => {
  assert.equal(f.fmtBytes(0), '0 B');
  assert.equal(f.fmtBytes(1023), '1023 B');
  assert.equal(f.fmtBytes(1536), '1.5 KiB');
  assert.equal(f.fmtBytes(5 * 1024 ** 3), '5.0 GiB');
  assert.equal(f.fmtBytes(2 * 1024 ** 5), '2048.0 TiB');
  assert.equal(f.fmtBytes(Infinity), '–');
});

test('durations', () => {
  assert.equal(f.fmtSecs(12.34), '12.3 s');
  assert.equal(f.fmtSecs(125), '2 min 5 s');
  assert.equal(f.fmtDuration(5.55), '5.5 s');
  assert.equal(f.fmtDuration(42.4), '42 s');
  assert.equal(f.fmtDuration(185), '3 min 5 s');
  assert.equal(f.fmtDuration(7320), '2 h 2 min');
  assert.equal(f.fmtDuration(-1), '–');
  assert.equal(f.fmtDuration(NaN), '–');
});

test('local times, plurals and model labels', () => {
  const ms = new Date(2025, 5, 1, 14, 5).getTime();
  assert.equal(f.fmtTime(ms), '2025-06-01 14:05');
  assert.equal(f.fmtTime(0), '–');
  assert.equal(f.plural(1, 'image'), '1 image');
  assert.equal(f.plural(2000, 'class', 'classes'), '2,000 classes');
  assert.equal(f.modelLabel({ name: 'm', version: 3 }), 'm:3');
  assert.equal(f.modelLabel(null), '–');
  assert.ok(f.sameModel({ name: 'm', version: 3 }, { name: 'm', version: '3' }));
  assert.ok(!f.sameModel({ name: 'm', version: 3 }, null));
  assert.equal(f.baseModelText('a:1'), 'a:1');
  assert.equal(f.baseModelText({ name: 'a', version: 2 }), 'a:2');
  assert.equal(f.baseModelText(''), '–');
  assert.equal(f.positive('12', f.fmtInt), '12');
  assert.equal(f.positive(0, f.fmtInt), '–');
});

test('numbers from the wire and their extent', () => {
  assert.equal(f.num('42'), 42);
  assert.ok(Number.isNaN(f.num(null)));
  assert.ok(Number.isNaN(f.num('')));
  assert.deepEqual(f.extent([3, NaN, -1, 7, null]), [-1, 7]);
  assert.deepEqual(f.extent([]), [Infinity, -Infinity]);
  assert.ok(f.IMAGE_EXT.test('a.JPEG') && f.IMAGE_EXT.test('b.tif') && !f.IMAGE_EXT.test('c.txt'));
});

test('parameters read as they were entered', () => {
  assert.equal(f.fmtParam(0.0010000000474974513), '0.001');
  assert.equal(f.fmtParam(0.10000000149011612), '0.1');
  assert.equal(f.fmtParam(6), '6');
  assert.equal(f.fmtParam(true), 'true');
});

test('server messages never send the user to a log', () => {
  assert.equal(f.userMessage('internal error; see the gateway log', 'internal'),
    'The server failed on this request (internal error). Try again; if it fails again, tell whoever runs this server what you did.');
  assert.equal(f.userMessage('internal error; see the service log', 'error'), f.userMessage('x', 'internal'));
  assert.equal(f.userMessage('bad archive; check the training logs for details', 'invalid_argument'), 'bad archive');
  assert.equal(f.userMessage('not an image', 'invalid_argument'), 'not an image');
  assert.ok(!/\blog\b/i.test(f.userMessage('x; see the index service log', 'unavailable')));
});

test('the refined ranking state in a few words', () => {
  assert.equal(f.refinementText({ stale: 0, operation_id: null, bytes: 10 }), 'up to date');
  assert.equal(f.refinementText({ stale: 1, operation_id: null }), '1 image to refresh');
  assert.equal(f.refinementText({ stale: 1234, operation_id: null }), '1,234 images to refresh');
  assert.equal(f.refinementText({ stale: 5, operation_id: 'op' }), 'refreshing…');
  assert.equal(f.refinementText(undefined), '–');
});
