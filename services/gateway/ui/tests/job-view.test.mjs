// How a training job reads: queue position, a fixed epoch total, early stopping, parameters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { epochTotal, jobsAhead, paramsText, trainingOutcome } from '../job-view.js';

test('the epoch total shows once training has planned it', () => {
  assert.ok(Number.isNaN(epochTotal({ progress: { phase: 'extracting features', epochs: 6, iterations: 0 } })));
  assert.equal(epochTotal({ progress: { epochs: 14, iterations: 300 } }), 14);
});

test('stopped early or all epochs, with the best validation accuracy', () => {
  const early = { state: 'succeeded', progress: { epoch: 11, epochs: 14, iterations: 300 } };
  assert.equal(trainingOutcome(early, 0.9312), 'stopped early at epoch 11 of 14, best validation accuracy 93.1%');
  const full = { state: 'succeeded', progress: { epoch: 14, epochs: 14, iterations: 300 } };
  assert.equal(trainingOutcome(full, NaN), 'all 14 epochs');
  assert.equal(trainingOutcome({ progress: {} }, 0.5), '');
});

test('jobs ahead of a queued job', () => {
  const jobs = [
    { id: 'a', state: 'running', created_at_ms: 1 },
    { id: 'b', state: 'queued', created_at_ms: 2 },
    { id: 'c', state: 'queued', created_at_ms: 3 },
    { id: 'd', state: 'succeeded', created_at_ms: 0 },
  ];
  assert.equal(jobsAhead(jobs[2], jobs), 2);
  assert.equal(jobsAhead(jobs[1], jobs), 1);
});

test('parameters read as they were entered', () => {
  assert.equal(paramsText({ learning_rate: 0.0010000000474974513, epochs: 3, validation_fraction: 0.20000000298023224, seed: 0 }),
    'learning rate 0.001 · epochs 3 · validation fraction 0.2');
  assert.equal(paramsText({}), 'server defaults');
});
