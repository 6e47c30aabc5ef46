// The tar writer: byte-exact ustar headers, checksums, padding and long names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildTar, describeFolder, paxRecord, tarHeader, tarPadding, tarSplitPath, TAR_BLOCK } from '../tar.js';

const utf8 = new TextEncoder();
const text = (bytes) => new TextDecoder().decode(bytes);
const field = (h, off, len) => text(h.subarray(off, off + len)).replace(/\0.*$/s, '');
const fakeFile = (body, lastModified = 1_700_000_000_000) => {
  const blob = new Blob([body]);
  blob.lastModified = lastModified;
  return blob;
};
const archiveBytes = async (entries) => new Uint8Array(await buildTar(entries).arrayBuffer());

test('a header has the ustar fields and a checksum over itself with the field as spaces', () => {
  const h = tarHeader({ name: utf8.encode('cats/a.jpg'), prefix: null, size: 1234, mtime: 1_700_000_000, type: '0' });
  assert.equal(h.length, TAR_BLOCK);
  assert.equal(field(h, 0, 100), 'cats/a.jpg');
  assert.equal(text(h.subarray(100, 108)), '0000644\0');
  assert.equal(text(h.subarray(108, 116)), '0000000\0');
  assert.equal(text(h.subarray(124, 136)), `${(1234).toString(8).padStart(11, '0')}\0`);
  assert.equal(text(h.subarray(136, 148)), `${(1_700_000_000).toString(8).padStart(11, '0')}\0`);
  assert.equal(String.fromCharCode(h[156]), '0');
  assert.equal(text(h.subarray(257, 263)), 'ustar\0');
  assert.equal(text(h.subarray(263, 265)), '00');
  const stored = h.subarray(148, 156);
  assert.equal(stored[6], 0);
  assert.equal(stored[7], 0x20);
  const copy = Uint8Array.from(h);
  copy.fill(0x20, 148, 156);
  const sum = copy.reduce((n, b) => n + b, 0);
  assert.equal(parseInt(text(stored.subarray(0, 6)), 8), sum);
});

test('padding fills the last block of a file, and nothing for a whole block', () => {
  assert.equal(tarPadding(0).length, 0);
  assert.equal(tarPadding(1).length, 511);
  assert.equal(tarPadding(512).length, 0);
  assert.equal(tarPadding(513).length, 511);
  assert.ok(tarPadding(100).every((b) => b === 0));
});

test('an archive is header, body, padding per file, then two zero blocks', async () => {
  const bytes = await archiveBytes([{ path: 'd/x/a.png', file: fakeFile('hello') }, { path: 'd/y/b.png', file: fakeFile('') }]);
  assert.equal(bytes.length, 512 + 512 + 512 + 1024);
  assert.equal(field(bytes, 0, 100), 'd/x/a.png');
  assert.equal(text(bytes.subarray(512, 517)), 'hello');
  assert.ok(bytes.subarray(517, 1024).every((b) => b === 0));
  assert.equal(field(bytes, 1024, 100), 'd/y/b.png');
  assert.equal(text(bytes.subarray(1024 + 124, 1024 + 136)), '00000000000\0');
  assert.ok(bytes.subarray(1536).every((b) => b === 0));
});

test('a path over 100 bytes is split into prefix and name at a slash', () => {
  const dir = 'd'.repeat(80);
  const path = `${dir}/${'n'.repeat(60)}.jpg`;
  const split = tarSplitPath(utf8.encode(path));
  assert.equal(text(split.prefix), dir);
  assert.equal(text(split.name), `${'n'.repeat(60)}.jpg`);
  const h = tarHeader({ ...split, size: 0, mtime: 0, type: '0' });
  assert.equal(field(h, 345, 155), dir);
  assert.equal(tarSplitPath(utf8.encode('x'.repeat(101))), null, 'no slash, no split');
});

test('a path no split fits gets a pax record ahead of a header with the file name', async () => {
  const path = `${'a'.repeat(200)}/${'b'.repeat(50)}.jpg`;
  const bytes = await archiveBytes([{ path, file: fakeFile('x') }]);
  assert.equal(field(bytes, 0, 100), 'PaxHeader');
  assert.equal(String.fromCharCode(bytes[156]), 'x');
  const record = paxRecord('path', path);
  assert.equal(text(bytes.subarray(512, 512 + record.length)), text(record));
  const next = 512 + 512 * Math.ceil(record.length / 512);
  assert.equal(field(bytes, next, 100), `${'b'.repeat(50)}.jpg`);
  assert.equal(String.fromCharCode(bytes[next + 156]), '0');
});

test('a pax record counts its own length, digits included', () => {
  for (const value of ['a', 'x'.repeat(90), 'x'.repeat(95), 'é'.repeat(400)]) {
    const r = paxRecord('path', value);
    const len = Number(text(r).split(' ')[0]);
    assert.equal(len, r.length, value.slice(0, 10));
    assert.ok(text(r).endsWith(`path=${value}\n`));
  }
});

test('a folder is read as class folders below the wrapping folders', () => {
  const f = (p, size = 10) => ({ name: p.split('/').pop(), webkitRelativePath: p, size });
  const d = describeFolder([f('top/data/cats/a.jpg'), f('top/data/cats/b.png'), f('top/data/dogs/c.jpg'),
    f('top/data/dogs/._c.jpg'), f('top/data/notes.txt')]);
  assert.equal(d.root, 'top');
  assert.deepEqual([...d.classes], [['cats', 2], ['dogs', 1]]);
  assert.equal(d.loose, 0);
  assert.equal(d.ignored, 2);
  assert.equal(d.bytes, 30);
  const flat = describeFolder([{ name: 'x.jpg', webkitRelativePath: '', size: 1 }]);
  assert.equal(flat.loose, 1);
  assert.equal(flat.root, 'x.jpg');
});
