// The similarity bands: distances of measured pairs fall in the band their kind names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as s from '../similarity.js';

test('bands follow the measured cut points, in order', () => {
  assert.equal(s.similarityBand(0).key, 'identical');
  assert.equal(s.similarityBand(0.34).key, 'identical'); // median of resized/recompressed/cropped copies
  assert.equal(s.similarityBand(0.47).key, 'identical'); // 90% of the copies are below
  assert.equal(s.similarityBand(0.5).key, 'identical');
  assert.equal(s.similarityBand(0.51).key, 'very');
  assert.equal(s.similarityBand(1.0).key, 'similar'); // median of two images of one class
  assert.equal(s.similarityBand(1.23).key, 'weak'); // median of images of different classes
  assert.equal(s.similarityBand(2).key, 'weak');
  for (let i = 1; i < s.BANDS.length; i += 1) assert.ok(s.BANDS[i].max > s.BANDS[i - 1].max);
});

test('missing or bad distances read as the weakest band', () => {
  assert.equal(s.similarityBand(undefined).key, 'weak');
  assert.equal(s.similarityBand(NaN).key, 'weak');
  assert.equal(s.similarityBand(-0.5).key, 'weak');
  assert.equal(s.similarityBand('0.2').key, 'identical');
});

test('the old percentages that looked alike land in different bands', () => {
  // 55% and 43% were "very similar" and "unrelated" under 1/(1+d).
  const near = s.distanceFromSimilarity(0.55);
  const far = s.distanceFromSimilarity(0.43);
  assert.ok(Math.abs(near - 0.818) < 1e-3 && Math.abs(far - 1.326) < 1e-3);
  assert.equal(s.similarityBand(near).key, 'very');
  assert.equal(s.similarityBand(far).key, 'weak');
  assert.ok(Number.isNaN(s.distanceFromSimilarity(0)));
});

test('raw numbers and the distance of a result', () => {
  assert.equal(s.resultDistance({ distance: 0.25, similarity: 0.8 }), 0.25);
  assert.ok(Math.abs(s.resultDistance({ similarity: 0.5 }) - 1) < 1e-12);
  assert.equal(s.rawSimilarityText({ distance: 0.25, similarity: 0.8 }), 'distance 0.250 · similarity 80.0%');
  assert.equal(s.rawSimilarityText({}), '');
});

test('the query copy: same stored image, same content, or distance 0', () => {
  const q = { kind: 'id', id: 7, collection: 'c' };
  assert.ok(s.isQueryCopy({ id: 7, collection: 'c', distance: 0.4 }, q));
  assert.ok(!s.isQueryCopy({ id: 7, collection: 'd', distance: 0.4 }, q));
  assert.ok(s.isQueryCopy({ id: 9, distance: 0.0004 }, { kind: 'file' }));
  assert.ok(!s.isQueryCopy({ id: 9, distance: 0.01 }, { kind: 'file' }));
  assert.ok(s.isQueryCopy({ id: 9, distance: 0.3, content_hash: 'ab' }, { kind: 'file', hash: 'ab' }));
  assert.ok(!s.isQueryCopy(null, q));
});
