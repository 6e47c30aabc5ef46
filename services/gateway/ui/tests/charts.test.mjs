// What the charts are given: aligned series and their scales.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { curvePoint, metricsData, percentTicks, timeData, timeUnit, zeroBasedRange } from '../charts.js';

const pt = (iteration, loss, train, val = null, elapsed = iteration) => curvePoint({
  iteration, epoch: 1, elapsed_seconds: elapsed, loss, train_accuracy: train, validation_accuracy: val,
});

test('curve points from the wire become numbers, missing ones NaN', () => {
  const p = curvePoint({ iteration: '7', loss: null, train_accuracy: '', validation_accuracy: 0.5 });
  assert.equal(p.iteration, 7);
  assert.ok(Number.isNaN(p.loss) && Number.isNaN(p.train_accuracy) && Number.isNaN(p.elapsed_seconds));
  assert.equal(p.validation_accuracy, 0.5);
});

test('the metrics series share one ascending x, a validation point merges into its iteration', () => {
  const data = metricsData([pt(2, 0.9, 0.4), pt(1, 1.2, 0.3), pt(2, NaN, NaN, 0.55), pt(NaN, 1, 1), pt(3, 0.7, 0.6)]);
  assert.deepEqual(data, [[1, 2, 3], [1.2, 0.9, 0.7], [0.3, 0.4, 0.6], [null, 0.55, null]]);
});

test('no points, empty series', () => {
  assert.deepEqual(metricsData([]), [[], [], [], []]);
  assert.deepEqual(timeData([]), { unit: 's', data: [[], []] });
});

test('elapsed time is shown in the unit that keeps labels short', () => {
  assert.deepEqual(timeUnit(0), { div: 1, unit: 's' });
  assert.deepEqual(timeUnit(179), { div: 1, unit: 's' });
  assert.deepEqual(timeUnit(180), { div: 60, unit: 'min' });
  assert.deepEqual(timeUnit(3 * 3600), { div: 3600, unit: 'h' });
  const { unit, data } = timeData([pt(10, 1, 0, null, 600), pt(5, 1, 0, null, 300), pt(1, 1, 0, null, NaN)]);
  assert.equal(unit, 'min');
  assert.deepEqual(data, [[5, 10], [5, 10]]);
});

test('loss and count axes start at zero and leave headroom', () => {
  assert.deepEqual(zeroBasedRange(0.2, 2), [0, 2.1]);
  assert.deepEqual(zeroBasedRange(-1, 1), [-1, 1.1]);
  assert.deepEqual(zeroBasedRange(null, null), [0, 1.05]);
  assert.deepEqual(zeroBasedRange(0, 0), [0, 1]);
  assert.deepEqual(percentTicks([0, 0.25, 1]), ['0%', '25%', '100%']);
});
