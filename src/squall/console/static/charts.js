// Charts of a function's invocations over time, drawn with the vendored uPlot (a canvas per
// chart, global `uPlot` from vendor/uPlot.iife.min.js). Data: GET .../functions/{name}/stats.

import { h } from "./dom.js";

const COLORS = { blue: "#2f5bea", red: "#d93f3f", violet: "#8a4fd8", amber: "#d98a00",
                 teal: "#0f9488" };

function bars() {
  return window.uPlot.paths.bars({ size: [0.7, 24], align: 0 });
}

const DEFS = [
  { id: "invocations", title: "Invocations & errors", series: [
    { key: "invocations", label: "Invocations", color: COLORS.blue, bars: true },
    { key: "errors", label: "Errors", color: COLORS.red, bars: true }] },
  { id: "duration", title: "Run time (ms)", unit: "ms", series: [
    { key: "p50_ms", label: "p50", color: COLORS.blue },
    { key: "p99_ms", label: "p99", color: COLORS.violet }] },
  { id: "cold", title: "Cold starts", series: [
    { key: "cold_starts", label: "Cold starts", color: COLORS.amber, bars: true }] },
  { id: "concurrency", title: "Concurrency (peak)", series: [
    { key: "concurrency", label: "Running at once", color: COLORS.teal, stepped: true }] },
];

function sparse(u, i) {
  let n = 0;
  for (const v of u.data[i]) if (v !== null && v !== undefined) n++;
  return n < 40;
}

function options(def, width) {
  const series = [{}];
  for (const s of def.series) {
    series.push({
      label: s.label, stroke: s.color, width: s.bars ? 0 : 2,
      fill: s.bars ? s.color + "cc" : s.color + "1a",
      paths: s.bars ? bars() : s.stepped ? window.uPlot.paths.stepped({ align: 1 }) : undefined,
      // Run times are absent from empty buckets: a lone value would be an invisible line,
      // so sparse series show their points.
      points: { show: s.bars || s.stepped ? false : sparse, size: 6, fill: s.color },
      value: (u, v) => (v === null || v === undefined ? "–" : def.unit ? `${v} ${def.unit}` : v),
    });
  }
  const grid = { stroke: "#e7eaf0", width: 1 };
  return {
    width, height: 190, series, legend: { live: true },
    cursor: { points: { size: 6 } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [
      { stroke: "#6b7385", grid, ticks: grid },
      { stroke: "#6b7385", grid, ticks: grid, size: 48,
        values: (u, vals) => vals.map((v) => (Number.isInteger(v) || def.unit ? String(v) : "")) },
    ],
  };
}

function columns(def, data) {
  return [data.t, ...def.series.map((s) => data[s.key])];
}

// The charts in a grid under `root`; returns { update(data), destroy() }.
export function chartGrid(root) {
  const charts = [];
  for (const def of DEFS) {
    const box = h("div.chart", { dataset: { chart: def.id } });
    root.append(h("div.card.chart-card", {}, h("h3", {}, def.title), box));
    charts.push({ def, box, plot: null });
  }
  const resize = new ResizeObserver(() => {
    for (const c of charts) {
      if (c.plot && c.box.clientWidth) c.plot.setSize({ width: c.box.clientWidth, height: 190 });
    }
  });
  for (const c of charts) resize.observe(c.box);
  return {
    update(data) {
      for (const c of charts) {
        const cols = columns(c.def, data);
        if (c.plot) c.plot.setData(cols);
        else c.plot = new window.uPlot(options(c.def, c.box.clientWidth || 480), cols, c.box);
      }
    },
    destroy() {
      resize.disconnect();
      for (const c of charts) if (c.plot) c.plot.destroy();
    },
  };
}
