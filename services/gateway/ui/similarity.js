// How alike a result is, in words and a color, from its distance to the query. Pure: tested in
// tests/similarity.test.mjs.
//
// The features are L2-normalised, so a distance d lies in [0, 2]. The server's similarity,
// 1 / (1 + d), squeezes that into [0.33, 1]: a very similar image and an unrelated one differ
// by a few percent (55% against 43%), which reads as "about the same". The bands below are cut
// at distances measured with the pretrained model (efficientnet-lite0, ImageNet) on 60 images
// of flowers5 and caltech101 and 3 copies of each (resized to 60%, JPEG quality 30, cropped
// 10%); docs/USAGE.md, "Reading the similarity", has the table:
// - copies of one image:          median 0.34, 90% below 0.47, all below 0.61;
// - two images of one class:      median 1.00, 90% above 0.82, none below 0.53;
// - images of different classes:  median 1.23, 90% above 1.07.
// So: copies are 97% "near-identical"; one class is 83% "very similar" or "similar"; different
// classes are 87% "weak" and 1% above "similar". A trained model moves these numbers; the bands
// still order the results the same way.
export const BANDS = [
  { key: 'identical', text: 'near-identical', max: 0.5 },
  { key: 'very', text: 'very similar', max: 0.85 },
  { key: 'similar', text: 'similar', max: 1.1 },
  { key: 'weak', text: 'weak', max: Infinity },
];

// The band of a distance; a missing or negative distance reads as the weakest band.
export function similarityBand(distance) {
  const d = Number(distance);
  if (!Number.isFinite(d) || d < 0) return BANDS[BANDS.length - 1];
  return BANDS.find((b) => d <= b.max);
}

// The distance from the server's similarity, for answers that carry only that.
export function distanceFromSimilarity(similarity) {
  const s = Number(similarity);
  return s > 0 ? 1 / s - 1 : NaN;
}

// A result's distance: its own field, else derived from its similarity.
export function resultDistance(r) {
  const d = Number(r && r.distance);
  return Number.isFinite(d) ? d : distanceFromSimilarity(r && r.similarity);
}

// The raw numbers, shown on demand next to the band.
export function rawSimilarityText(r) {
  const d = resultDistance(r);
  const s = Number(r && r.similarity);
  const parts = [];
  if (Number.isFinite(d)) parts.push(`distance ${d.toFixed(3)}`);
  if (Number.isFinite(s)) parts.push(`similarity ${(s * 100).toFixed(1)}%`);
  return parts.join(' · ');
}

// The query's own copy: the very image searched with, or the same content (distance ~0).
export const SAME_IMAGE_DISTANCE = 1e-3;
export function isQueryCopy(r, query) {
  if (!r) return false;
  if (query && query.kind === 'id' && query.collection === r.collection && String(query.id) === String(r.id)) return true;
  if (query && query.hash && r.content_hash && query.hash === r.content_hash) return true;
  return resultDistance(r) <= SAME_IMAGE_DISTANCE;
}
