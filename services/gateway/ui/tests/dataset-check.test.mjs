// The training dataset check in the browser: the same verdicts as the training service.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkDataset, nameProblem, DEFAULT_MIN_PER_CLASS } from '../dataset-check.js';

test('model names as the training service accepts them', () => {
  assert.equal(nameProblem('flowers-v2.1_b'), '');
  assert.match(nameProblem(''), /Type a name/);
  assert.match(nameProblem('my model'), /only letters, digits/);
  assert.match(nameProblem('efficientnet-lite0'), /pretrained model's name/);
  assert.match(nameProblem('x'.repeat(101)), /at most 100/);
});

test('classes and images per class against the minimum', () => {
  const ok = checkDataset(new Map([['rose', 120], ['daisy', 150]]), 0, 'flowers');
  assert.ok(ok.ok);
  assert.equal(ok.minPerClass, DEFAULT_MIN_PER_CLASS);
  assert.deepEqual(ok.classes.map((c) => c.name), ['daisy', 'rose']);

  const low = checkDataset(new Map([['rose', 8], ['daisy', 150]]), 0, 'flowers');
  assert.ok(!low.ok);
  assert.equal(low.classes.find((c) => c.name === 'rose').low, true);
  assert.match(low.problems[0], /at least 100 images/);
  assert.match(low.problems[0], /rose \(8\)/);
  assert.match(low.problems[0], /Min images per class/);
  assert.match(low.problems[0], /defaults\.min_images_per_class/);

  assert.ok(checkDataset([['rose', 8], ['daisy', 9]], 5).ok);
  const one = checkDataset([['rose', 500]], 0);
  assert.match(one.problems[0], /at least 2 class folders/);
  const both = checkDataset([['rose', 1]], 0, 'bad name');
  assert.equal(both.problems.length, 3);
});
