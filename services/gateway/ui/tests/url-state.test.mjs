// The search in the address bar: what goes in comes back out, and bad values are dropped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as u from '../url-state.js';

test('routes: the tab and its parameters', () => {
  assert.equal(u.parseRoute('').tab, 'search');
  assert.equal(u.parseRoute('#index').tab, 'index');
  assert.equal(u.parseRoute('#nope?c=x').tab, 'search');
  const r = u.parseRoute('#browse?c=a%20b&sort=name');
  assert.equal(r.tab, 'browse');
  assert.equal(r.params.get('c'), 'a b');
});

test('a search survives the round trip through the hash', () => {
  const s = {
    collection: 'my flowers', mode: 'exact', k: 50, minSim: 0.5, labels: ['rose', 'a&b'], notLabels: [''],
    pathPrefix: '2024/x', from: '2024-01-01', to: '2024-12-31', query: { kind: 'id', id: 42, collection: 'other' },
  };
  const hash = u.searchToHash(s);
  assert.ok(hash.startsWith('#search?'));
  const r = u.parseRoute(hash);
  assert.equal(r.tab, 'search');
  assert.deepEqual(u.searchFromParams(r.params), s);
});

test('the query collection is left out when it is the searched one; uploads are marked', () => {
  const hash = u.searchToHash({ collection: 'c', query: { kind: 'id', id: 3, collection: 'c' } });
  assert.equal(hash, '#search?c=c&q=3');
  assert.deepEqual(u.searchFromParams(u.parseRoute(hash).params).query, { kind: 'id', id: 3, collection: 'c' });
  assert.equal(u.searchToHash({ collection: 'c', query: { kind: 'upload' } }), '#search?c=c&q=upload');
  assert.equal(u.searchToHash({}), '#search');
});

test('bad values are dropped, not guessed', () => {
  const s = u.searchFromParams('mode=fast&k=0&min=x&from=2024-1-1&q=-3', 1000);
  assert.equal(s.mode, null);
  assert.equal(s.k, null);
  assert.equal(s.minSim, null);
  assert.equal(s.from, '');
  assert.equal(s.query, null);
  assert.equal(u.searchFromParams('k=5000', 1000).k, null);
  assert.equal(u.searchFromParams('min=7').minSim, 1);
});

test('browse state', () => {
  const b = { collection: 'c', sort: 'label', order: 'asc', label: '' };
  assert.deepEqual(u.browseFromParams(u.parseRoute(u.browseToHash(b)).params), b);
  assert.equal(u.browseToHash({ collection: 'c', sort: 'time', order: 'desc', label: null }), '#browse?c=c');
  assert.deepEqual(u.browseFromParams('sort=size'), { collection: null, sort: 'time', order: 'desc', label: null });
});

test('dates as local-time bounds of whole days', () => {
  const from = u.dateToMs('2024-03-10');
  const to = u.dateToMs('2024-03-10', true);
  assert.equal(from, new Date(2024, 2, 10).getTime());
  assert.equal(to - from, new Date(2024, 2, 11).getTime() - from - 1);
  assert.equal(u.dateToMs('10/03/2024'), null);
});

test('pages of results', () => {
  assert.deepEqual(u.nextPage(0, 100), { offset: 0, top_k: 24 });
  assert.deepEqual(u.nextPage(96, 100), { offset: 96, top_k: 4 });
  assert.equal(u.nextPage(100, 100), null);
  assert.deepEqual(u.nextPage(0, 12), { offset: 0, top_k: 12 });
});
