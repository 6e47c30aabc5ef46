// The training dataset checked in the browser before anything is uploaded: the model name and
// the classes with their image counts, against the rules the training service applies
// (services/training/src/training.rs check_name, services/dataset read_dataset). Pure: tested
// in tests/dataset-check.test.mjs.

// The training service's default for min_images_per_class (its setting
// defaults.min_images_per_class, TRAINING_DEFAULTS__MIN_IMAGES_PER_CLASS).
export const DEFAULT_MIN_PER_CLASS = 100;
export const BASE_MODEL_NAME = 'efficientnet-lite0';
const MAX_NAME = 100;

// Why a model name would be refused, or '' when it is fine.
export function nameProblem(name) {
  const n = String(name || '').trim();
  if (!n) return 'Type a name for the model to train.';
  if (n.length > MAX_NAME) return `The model name has ${n.length} characters; at most ${MAX_NAME}.`;
  if (!/^[A-Za-z0-9._-]+$/.test(n)) return `The model name "${n}" may hold only letters, digits, "-", "_" and ".".`;
  if (n === BASE_MODEL_NAME) return `"${BASE_MODEL_NAME}" is the pretrained model's name: pick another.`;
  return '';
}

// classes: Map or [[name, count]]; minPerClass: the form's value, or 0 for the default.
// Returns {ok, minPerClass, classes: [{name, count, low}], problems: [text]}.
export function checkDataset(classes, minPerClass = 0, name = null) {
  const min = minPerClass > 0 ? minPerClass : DEFAULT_MIN_PER_CLASS;
  const list = [...(classes instanceof Map ? classes.entries() : classes || [])]
    .map(([n, count]) => ({ name: n, count, low: count < min }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const problems = [];
  if (name !== null) {
    const p = nameProblem(name);
    if (p) problems.push(p);
  }
  if (list.length < 2) {
    problems.push(`Training needs at least 2 class folders, each holding images of one class; this folder has ${list.length}.`);
  }
  const low = list.filter((c) => c.low);
  if (low.length) {
    const shown = low.slice(0, 8).map((c) => `${c.name} (${c.count})`).join(', ') + (low.length > 8 ? `, … ${low.length - 8} more` : '');
    problems.push(`Every class needs at least ${min} images${minPerClass > 0 ? ' (as set in "Min images per class")' : ''}; too few in: ${shown}. `
      + 'Add images, or lower "Min images per class" under Advanced parameters'
      + `${minPerClass > 0 ? '' : ` (the server's default is ${min}, its setting defaults.min_images_per_class)`}.`);
  }
  return { ok: problems.length === 0, minPerClass: min, classes: list, problems };
}
