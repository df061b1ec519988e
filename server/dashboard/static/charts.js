"use strict";
/* Small SVG charts for the autolrs dashboard: lines and points on linear or log axes, shaded
   bands and labelled vertical rules. No library: the dashboard fetches nothing from elsewhere.

   Charts.draw(container, spec) replaces the container's content with one <svg>.
   spec: { title, xLabel, yLabel, xLog, yLog, height,
           series: [{ name, x: [], y: [], color, mode: "line" | "points" | "both", width, dash,
                      radius, tips: [] }],
           bands:  [{ name, x: [], lo: [], hi: [], color }],
           rules:  [{ x, label, color, dash }] }
   null, NaN and (on a log axis) values <= 0 are gaps. */
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#7f7f7f", "#bcbd22", "#17becf"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function usable(v, log) {
    return typeof v === "number" && isFinite(v) && (!log || v > 0);
  }

  function fmt(v) {
    if (!usable(v)) return "-";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1).replace("e+", "e");
    return Number(v.toPrecision(3)).toString();
  }

  function extent(values, log) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) {
      if (!usable(v, log)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) return null;
    if (lo === hi) {
      if (log) { lo /= 2; hi *= 2; } else { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    } else if (log) {  // a margin so points at the ends do not sit on the axes
      const pad = Math.pow(hi / lo, 0.03); lo /= pad; hi *= pad;
    } else {
      const pad = (hi - lo) * 0.04; lo -= pad; hi += pad;
    }
    return [lo, hi];
  }

  function linearTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => raw <= s) || 10 * mag;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return ticks;
  }

  function logTicks(lo, hi) {
    if (hi / lo < 10) return linearTicks(lo, hi, 4).filter(t => t > 0);  // under a decade: plain steps
    const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const stride = Math.max(1, Math.ceil((b - a) / 8));
    const ticks = [];
    for (let e = a; e <= b; e += stride) {
      for (const m of (b - a <= 2 ? [1, 2, 5] : [1])) {
        const t = m * Math.pow(10, e);
        if (t >= lo * 0.999 && t <= hi * 1.001) ticks.push(t);
      }
    }
    return ticks.length ? ticks : [lo, hi];
  }

  function scaler(lo, hi, a, b, log) {
    if (log) {
      const l0 = Math.log10(lo), l1 = Math.log10(hi);
      return v => a + (Math.log10(v) - l0) / (l1 - l0) * (b - a);
    }
    return v => a + (v - lo) / (hi - lo) * (b - a);
  }

  function draw(container, spec) {
    const width = Math.max(320, container.clientWidth || 640);
    const series = (spec.series || []).filter(s => s && s.x && s.x.length);
    const bands = (spec.bands || []).filter(b => b && b.x && b.x.length);
    const named = bands.filter(b => b.name).map((b, i) => [b.name, b.color || PALETTE[i % PALETTE.length]])
      .concat(series.map((s, i) => [s.name, s.color || PALETTE[i % PALETTE.length], s.hideLegend])
      .filter(([name, , hide]) => name && !hide));
    // The legend sits in rows under the title, out of the plot's way (items flow, ~6.5 px a character).
    const places = [];
    let lx = 62, row = 0;
    for (const [name] of named) {
      const w = 22 + 6.5 * String(name).length;
      if (lx > 62 && lx + w > width - 14) { row++; lx = 62; }
      places.push([lx, row]);
      lx += w;
    }
    const legendRows = named.length ? row + 1 : 0;
    const height = (spec.height || 260) + 14 * legendRows;
    const m = { left: 62, right: 14, top: (spec.title ? 24 : 8) + 14 * legendRows + 6, bottom: 38 };
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    if (spec.title) {
      el("text", { x: m.left, y: 16, class: "title" }, svg).textContent = spec.title;
      svg.setAttribute("aria-label", spec.title);
    }
    named.forEach(([name, color], i) => {
      const x = places[i][0], y = (spec.title ? 24 : 8) + 14 * places[i][1];
      el("rect", { x, y, width: 10, height: 10, fill: color }, svg);
      el("text", { x: x + 14, y: y + 9, class: "legend" }, svg).textContent = name;
    });
    const rules = (spec.rules || []).filter(r => r && usable(r.x, spec.xLog));
    const xs = [], ys = [];
    for (const s of series) { xs.push(...s.x); ys.push(...s.y); }
    for (const b of bands) { xs.push(...b.x); ys.push(...b.lo, ...b.hi); }
    for (const r of rules) xs.push(r.x);
    const xd = extent(xs, spec.xLog), yd = extent(ys, spec.yLog);
    container.replaceChildren(svg);
    if (!xd || !yd) {
      el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, svg).textContent =
        spec.empty || "no data yet";
      svg.dataset.drawn = "0";
      return svg;
    }
    const X = scaler(xd[0], xd[1], m.left, width - m.right, spec.xLog);
    const Y = scaler(yd[0], yd[1], height - m.bottom, m.top, spec.yLog);
    const grid = el("g", {}, svg);
    for (const t of spec.xLog ? logTicks(...xd) : linearTicks(...xd, 6)) {
      const x = X(t);
      el("line", { x1: x, x2: x, y1: m.top, y2: height - m.bottom, class: "grid" }, grid);
      el("text", { x, y: height - m.bottom + 13, "text-anchor": "middle", class: "tick" }, grid).textContent = fmt(t);
    }
    for (const t of spec.yLog ? logTicks(...yd) : linearTicks(...yd, 5)) {
      const y = Y(t);
      el("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: "grid" }, grid);
      el("text", { x: m.left - 5, y: y + 3, "text-anchor": "end", class: "tick" }, grid).textContent = fmt(t);
    }
    el("line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: "axis" }, svg);
    el("line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom, class: "axis" }, svg);
    if (spec.xLabel) el("text", { x: (m.left + width - m.right) / 2, y: height - 6, "text-anchor": "middle", class: "label" }, svg).textContent = spec.xLabel;
    if (spec.yLabel) el("text", { x: 12, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle", class: "label",
                                  transform: `rotate(-90 12 ${(m.top + height - m.bottom) / 2})` }, svg).textContent = spec.yLabel;

    const plot = el("g", {}, svg);
    let drawn = 0;
    const ok = (x, y) => usable(x, spec.xLog) && usable(y, spec.yLog);
    bands.forEach((b, i) => {
      const top = [], bottom = [];
      b.x.forEach((x, j) => { if (ok(x, b.lo[j]) && ok(x, b.hi[j])) { top.push([X(x), Y(b.hi[j])]); bottom.push([X(x), Y(b.lo[j])]); } });
      if (top.length < 2) return;
      const pts = top.concat(bottom.reverse()).map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      el("polygon", { points: pts, fill: b.color || PALETTE[i % PALETTE.length], "fill-opacity": 0.18, stroke: "none" }, plot);
      drawn += top.length;
    });
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      const mode = s.mode || "line";
      if (mode === "line" || mode === "both") {
        let d = "", pen = false;
        s.x.forEach((x, j) => {
          if (ok(x, s.y[j])) { d += `${pen ? "L" : "M"}${X(x).toFixed(1)} ${Y(s.y[j]).toFixed(1)}`; pen = true; drawn++; }
          else pen = false;
        });
        if (d) el("path", { d, fill: "none", stroke: color, "stroke-width": s.width || 1.5,
                            "stroke-dasharray": s.dash || "none", "stroke-linejoin": "round" }, plot);
      }
      if (mode === "points" || mode === "both") {
        s.x.forEach((x, j) => {
          if (!ok(x, s.y[j])) return;
          const c = el("circle", { cx: X(x).toFixed(1), cy: Y(s.y[j]).toFixed(1), r: s.radius || 3, fill: color,
                                   stroke: s.stroke || "none", "stroke-width": 1.5 }, plot);
          el("title", {}, c).textContent = (s.tips && s.tips[j]) || `${s.name || ""} ${fmt(x)}, ${fmt(s.y[j])}`;
          drawn++;
        });
      }
    });
    rules.forEach((r, i) => {
      const x = X(r.x);
      const color = r.color || PALETTE[(i + 3) % PALETTE.length];
      el("line", { x1: x, x2: x, y1: m.top, y2: height - m.bottom, stroke: color, "stroke-width": 1.5,
                   "stroke-dasharray": r.dash || "4 3" }, plot);
      if (r.label) {
        const right = x > width * 0.75;  // keep the label inside the chart
        el("text", { x: right ? x - 3 : x + 3, y: m.top + 11 + 12 * i, class: "legend", fill: color,
                     "text-anchor": right ? "end" : "start" }, plot).textContent = r.label;
      }
    });
    svg.dataset.drawn = String(drawn);
    return svg;
  }

  return { draw, fmt, PALETTE };
})();
