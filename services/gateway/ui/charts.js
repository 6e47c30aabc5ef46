// The training curves, drawn by uPlot (vendor/, MIT): hover shows the values in the legend,
// dragging across a chart zooms into that range, a double click zooms back out.
// The data and scale builders are pure and unit-tested under tests/.
import uPlot from './vendor/uPlot.esm.js';
import { el } from './dom.js';
import { extent, fmtAcc, fmtInt, fmtLoss, isNum } from './format.js';

const LOSS = '#f97316';
const VALIDATION = '#12a150';
const HEIGHT = 260;
const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
// Tick steps for axes that count (iterations): never a fraction.
const INT_STEPS = [1, 2, 5].flatMap((f) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8].map((m) => f * m)).sort((a, b) => a - b);

// Curve points from /curve or from events, as numbers (null -> NaN).
export function curvePoint(p) {
  const n = (v) => (v === null || v === undefined || v === '' ? NaN : Number(v));
  return {
    iteration: n(p.iteration),
    epoch: n(p.epoch),
    elapsed_seconds: n(p.elapsed_seconds),
    loss: n(p.loss),
    train_accuracy: n(p.train_accuracy),
    validation_accuracy: n(p.validation_accuracy),
  };
}

const orNull = (v) => (isNum(v) ? v : null);

// uPlot takes one ascending x array shared by every series, with null for a gap. Points at the
// same iteration merge: a validation accuracy arrives as a second point at the iteration that
// ended its epoch. -> [iterations, loss, training accuracy, validation accuracy]
export function metricsData(points) {
  const sorted = points.filter((p) => isNum(p.iteration)).sort((a, b) => a.iteration - b.iteration);
  const cols = [[], [], [], []];
  for (const p of sorted) {
    const row = [p.iteration, orNull(p.loss), orNull(p.train_accuracy), orNull(p.validation_accuracy)];
    const last = cols[0].length - 1;
    if (last >= 0 && cols[0][last] === p.iteration) {
      for (let c = 1; c < 4; c += 1) if (row[c] !== null) cols[c][last] = row[c];
    } else {
      row.forEach((v, c) => cols[c].push(v));
    }
  }
  return cols;
}

// Elapsed time in the unit that keeps the tick labels short.
export function timeUnit(maxSeconds) {
  if (maxSeconds >= 3 * 3600) return { div: 3600, unit: 'h' };
  if (maxSeconds >= 180) return { div: 60, unit: 'min' };
  return { div: 1, unit: 's' };
}

// Iterations against elapsed time -> {unit, data: [elapsed, iterations]}.
export function timeData(points) {
  const ok = points.filter((p) => isNum(p.elapsed_seconds) && isNum(p.iteration))
    .sort((a, b) => a.elapsed_seconds - b.elapsed_seconds);
  const { div, unit } = timeUnit(Math.max(0, extent(ok.map((p) => p.elapsed_seconds))[1]));
  return { unit, data: [ok.map((p) => p.elapsed_seconds / div), ok.map((p) => p.iteration)] };
}

// A count or a loss axis starts at 0, so a falling curve is not read as a collapse.
export function zeroBasedRange(min, max) {
  const hi = isNum(max) ? max : 1;
  const lo = Math.min(0, isNum(min) ? min : 0);
  return hi > lo ? [lo, hi + (hi - lo) * 0.05] : [lo, lo + 1];
}

export const percentTicks = (ticks) => ticks.map((t) => `${Math.round(t * 100)}%`);

const cssVar = (name, fallback) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

function theme() {
  return {
    text: cssVar('--text', '#1b2230'),
    muted: cssVar('--muted', '#667085'),
    grid: cssVar('--border', '#e3e7ef'),
    accent: cssVar('--accent', '#4f46e5'),
  };
}

function axis(t, label, extra = {}) {
  return {
    label, stroke: t.muted, font: FONT, labelFont: FONT,
    grid: { stroke: t.grid, width: 1 }, ticks: { stroke: t.grid, width: 1 }, ...extra,
  };
}

const fmtCell = (fmt) => (u, v) => (v === null || v === undefined ? '–' : fmt(v));
const zeroBased = (u, min, max) => zeroBasedRange(min, max);

function metricsOptions(width, t) {
  return {
    width, height: HEIGHT,
    scales: { x: { time: false }, loss: { range: zeroBased }, acc: { range: () => [0, 1] } },
    axes: [
      axis(t, 'iteration', { incrs: INT_STEPS }),
      axis(t, 'loss', { scale: 'loss' }),
      axis(t, 'accuracy', { scale: 'acc', side: 1, grid: { show: false }, values: (u, ticks) => percentTicks(ticks) }),
    ],
    series: [
      { label: 'Iteration', value: fmtCell(fmtInt) },
      { label: 'Loss', scale: 'loss', stroke: LOSS, width: 1.75, value: fmtCell(fmtLoss) },
      { label: 'Training accuracy', scale: 'acc', stroke: t.accent, width: 1.75, value: fmtCell(fmtAcc) },
      {
        label: 'Validation accuracy', scale: 'acc', stroke: VALIDATION, width: 1.75, spanGaps: true,
        points: { show: true, size: 7, fill: VALIDATION }, value: fmtCell(fmtAcc),
      },
    ],
  };
}

function timeOptions(width, t, unit) {
  return {
    width, height: HEIGHT,
    scales: { x: { time: false }, y: { range: zeroBased } },
    axes: [axis(t, `elapsed time (${unit})`), axis(t, 'iteration', { incrs: INT_STEPS })],
    series: [
      { label: `Elapsed (${unit})`, value: fmtCell((v) => v.toFixed(unit === 's' ? 1 : 2)) },
      { label: 'Iterations', stroke: t.accent, width: 1.75, value: fmtCell(fmtInt) },
    ],
  };
}

const plots = new Map(); // chart box -> {plot, key, note}

// Creates the chart in `box`, or feeds the one there; `key` names the options it was made with.
function draw(box, key, options, data, empty) {
  if (!box || box.offsetParent === null) return; // hidden: drawn again when shown
  const width = Math.max(220, box.clientWidth || 0);
  let entry = plots.get(box);
  if (!entry || entry.key !== key) {
    if (entry) entry.plot.destroy();
    const note = el('p', { class: 'chart-empty muted' });
    box.replaceChildren(note);
    entry = { key, note, plot: new uPlot(options(width, theme()), data, box) };
    plots.set(box, entry);
  } else {
    if (entry.plot.width !== width) entry.plot.setSize({ width, height: HEIGHT });
    entry.plot.setData(data);
  }
  entry.note.textContent = data[0].length ? '' : empty;
  entry.note.hidden = data[0].length > 0;
}

// Loss (left axis) and training/validation accuracy (right axis) against iteration.
export function drawMetricsChart(box, points, empty) {
  draw(box, 'metrics', metricsOptions, metricsData(points), empty);
  const last = points[points.length - 1];
  if (box && last) {
    box.setAttribute('aria-label', `Loss and accuracy against iteration: ${points.length} points, ` +
      `iteration ${fmtInt(last.iteration)}, loss ${fmtLoss(last.loss)}, training accuracy ${fmtAcc(last.train_accuracy)}`);
  }
}

// Iterations against elapsed time.
export function drawTimeChart(box, points) {
  const { unit, data } = timeData(points);
  draw(box, `time:${unit}`, (w, t) => timeOptions(w, t, unit), data, 'No iterations recorded');
}
