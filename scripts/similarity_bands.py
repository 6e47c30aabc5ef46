"""Measures the distances behind the UI's similarity bands (docs/USAGE.md,
"Reading the similarity"; services/gateway/ui/similarity.js).

Indexes 60 images of ../shared/data (6 per flowers5 class, 4 each of 10
caltech101 classes) and three copies of each (resized to 60%, JPEG quality
30, cropped by 10%) into a new collection through the REST API, searches
every original against all of them in exact mode, and prints the distance
distribution of copies, of two images of one class and of images of
different classes. Run against a running system: `cbir up`, then
`python scripts/similarity_bands.py` (CBIR_URL, CBIR_SHARED_DATA).
"""
import io, json, os, random, sys, urllib.request, statistics, uuid
from PIL import Image
BASE = os.environ.get('CBIR_URL', 'http://127.0.0.1:8080').rstrip('/')
SH = os.environ.get('CBIR_SHARED_DATA', os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
random.seed(7)
items = []  # (class, group, filename, bytes, kind)
def load(path):
    return Image.open(path).convert('RGB')
def jpeg(im, q=90):
    b = io.BytesIO(); im.save(b, 'JPEG', quality=q); return b.getvalue()
sources = []
for c in ['daisy', 'dandelion', 'rose', 'sunflower', 'tulip']:
    names = sorted(os.listdir(f'{SH}/flowers5/{c}'))[100:106]
    sources += [(f'f-{c}', f'{SH}/flowers5/{c}/{n}') for n in names]
cal = sorted(os.listdir(f'{SH}/caltech101'))
cal = [c for c in cal if os.path.isdir(f'{SH}/caltech101/{c}')]
for c in random.sample(cal, 10):
    names = sorted(os.listdir(f'{SH}/caltech101/{c}'))[:4]
    sources += [(f'c-{c}', f'{SH}/caltech101/{c}/{n}') for n in names]
for i, (c, p) in enumerate(sources):
    im = load(p); w, h = im.size
    g = f'g{i}'
    items.append((c, g, f'{g}-orig.jpg', jpeg(im, 92), 'orig'))
    items.append((c, g, f'{g}-small.jpg', jpeg(im.resize((max(1, w * 6 // 10), max(1, h * 6 // 10))), 90), 'copy'))
    items.append((c, g, f'{g}-q30.jpg', jpeg(im, 30), 'copy'))
    dx, dy = w // 20, h // 20
    items.append((c, g, f'{g}-crop.jpg', jpeg(im.crop((dx, dy, w - dx, h - dy))), 'copy'))
coll = os.environ.get('CBIR_COLLECTION', 'similarity-bands')
req = urllib.request.Request(f'{BASE}/api/collections', data=json.dumps({'name': coll}).encode(), headers={'Content-Type': 'application/json'}, method='POST')
try: urllib.request.urlopen(req).read()
except Exception as e: print('create', e)
def post_files(batch):
    bnd = uuid.uuid4().hex
    body = b''
    for c, g, fn, data, k in batch:
        body += f'--{bnd}\r\nContent-Disposition: form-data; name="files"; filename="{c}/{fn}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b'\r\n'
    body += f'--{bnd}--\r\n'.encode()
    r = urllib.request.Request(f'{BASE}/api/collections/{coll}/images', data=body, headers={'Content-Type': f'multipart/form-data; boundary={bnd}'}, method='POST')
    return json.loads(urllib.request.urlopen(r).read())
byname = {}
for i in range(0, len(items), 16):
    res = post_files(items[i:i + 16])
    for r in res['results']:
        if r.get('error'): print('ERR', r); continue
        byname[r['path'].split('/')[-1]] = r['id']
meta = {fn: (c, g, k) for c, g, fn, _, k in items}
idmeta = {byname[fn]: meta[fn] for fn in byname}
copy_d, same_d, diff_d = [], [], []
for fn, (c, g, k) in meta.items():
    if k != 'orig': continue
    q = json.dumps({'collection': coll, 'image_id': byname[fn], 'top_k': 1000, 'mode': 'exact'}).encode()
    r = json.loads(urllib.request.urlopen(urllib.request.Request(f'{BASE}/api/search', data=q, headers={'Content-Type': 'application/json'})).read())
    for h in r['results']:
        c2, g2, k2 = idmeta[h['id']]
        if h['id'] == byname[fn]: continue
        if g2 == g: copy_d.append(h['distance'])
        elif k2 == 'orig' and c2 == c: same_d.append(h['distance'])
        elif k2 == 'orig': diff_d.append(h['distance'])
def q(v, p): v = sorted(v); return v[min(len(v) - 1, int(p * len(v)))]
for name, v in [('copies', copy_d), ('same class', same_d), ('different class', diff_d)]:
    print(f'{name:16} n={len(v):5} min={min(v):.3f} p10={q(v,.1):.3f} median={statistics.median(v):.3f} p90={q(v,.9):.3f} p99={q(v,.99):.3f} max={max(v):.3f}')
cuts = [0.5, 0.85, 1.1]  # similarity.js BANDS
for name, v in [('copies', copy_d), ('same class', same_d), ('different class', diff_d)]:
    shares = [sum(1 for x in v if lo < x <= hi) / len(v) for lo, hi in zip([-1] + cuts, cuts + [9])]
    print(f'{name:16} bands near-identical/very similar/similar/weak: ' + ' / '.join(f'{100 * s:.0f}%' for s in shares))
