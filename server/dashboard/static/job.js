"use strict";
/* One job's page: LR and loss against step, the tuner's own views (AutoLRS stages, range test,
   loss differentials, hypergradients), the decision log and the config; refreshed every 2 s. */
(() => {
  const jobId = decodeURIComponent(location.pathname.replace(/^\/jobs\//, "").replace(/\/+$/, ""));
  const $ = id => document.getElementById(id);
  const fmt = Charts.fmt;
  const FAILED = ["nonfinite", "empty", "overflow"];
  let chosenStage = "latest";

  document.title = `${jobId} \u00b7 autolrs`;
  $("title").textContent = jobId;
  if (Dash.token) $("home").href = `/?token=${encodeURIComponent(Dash.token)}`;
  $("stage-select").addEventListener("change", e => { chosenStage = e.target.value; if (last) render(last, true); });
  let last = null;

  function fact(label, value) {
    const div = document.createElement("div");
    div.className = "fact";
    const k = document.createElement("span");
    k.className = "k";
    k.textContent = label;
    const v = document.createElement("span");
    v.className = "v";
    if (value instanceof Node) v.appendChild(value); else v.textContent = value;
    div.append(k, v);
    return div;
  }

  function renderFacts(data) {
    const j = data.job, s = j.summary || {}, h = data.history;
    const facts = [
      fact("status", Dash.badge(j.status)), fact("tuner", j.tuner || "-"), fact("step", String(j.step ?? "-")),
      fact("LR", Dash.num(j.lr)), fact("last loss", Dash.lossText(j)),
      fact("lease left", j.lease_left_s === null ? "-" : Dash.duration(j.lease_left_s)),
      fact("search / train steps", j.search_steps === null ? "-" : `${j.search_steps} / ${j.train_steps}`),
      fact("phase", j.phase ? (j.stage ? `${j.phase}, stage ${j.stage}` : j.phase) : "-"),
      fact("requests", String(j.requests ?? "-")), fact("updated", Dash.ago(j.updated, data.time)),
    ];
    if (typeof s.overhead === "number") facts.push(fact("search overhead", `${(100 * s.overhead).toFixed(1)}%`));
    if (s.min_lr !== undefined && s.max_lr !== undefined) facts.push(fact("search interval", `${Dash.num(s.min_lr)} \u2013 ${Dash.num(s.max_lr)}`));
    if (s.bounds_source) facts.push(fact("interval from", s.bounds_source));
    if (s.beta !== undefined) facts.push(fact("hyper-LR \u03b2", Dash.num(s.beta)));
    if (s.mu !== undefined) facts.push(fact("\u03bc", Dash.num(s.mu)));
    if (s.applied !== undefined) facts.push(fact("hyper steps applied / skipped", `${s.applied} / ${s.skipped}`));
    facts.push(fact("history", `${h.reports} reports, 1 point per ${h.width} step(s)`));
    $("facts").replaceChildren(...facts);
  }

  function renderSeries(data) {
    const h = data.history, series = h.series;
    Charts.draw($("chart-lr"), {
      title: "Learning rate", xLabel: "step", yLabel: "LR (log)", yLog: true,
      series: [{ name: "LR", x: series.step, y: series.lr, color: "#1f77b4", width: 2 }],
    });
    const bad = series.nonfinite.reduce((a, b) => a + b, 0);
    Charts.draw($("chart-loss"), {
      title: "Loss", xLabel: "step", yLabel: "loss",
      series: [
        { name: "training loss", x: series.step, y: series.loss, color: "#d62728" },
        { name: "validation loss", x: h.evals.step, y: h.evals.value, color: "#2ca02c", mode: "both", radius: 2.5 },
      ],
      empty: "no losses reported yet",
    });
    $("series-note").textContent = `Each point is the mean over ${h.width} step(s). ` +
      (bad ? `${bad} non-finite loss(es) reported (shown as gaps). ` : "") +
      (data.job.tuner === "autolrs" ? "AutoLRS collects losses during its trials and range test only, so its training runs show no loss." : "");
  }

  function stagesOf(data) {
    const s = data.job.summary || {};
    const stages = data.history.stages.slice();
    if (Array.isArray(s.trials) && s.trials.length && !stages.some(x => x.stage === s.stage)) {
      stages.push({ stage: s.stage, start_step: null, mode: s.mode, tau: s.tau, trial_steps: s.trial_steps,
                    exploit_steps: s.exploit_steps, trials: s.trials.map(([lr, forecast]) => ({ lr, forecast, status: null })),
                    winner: s.winner ?? null, winner_forecast: null, current: true });
    }
    return stages;
  }

  function renderAutoLRS(data) {
    const stages = stagesOf(data);
    const sweep = data.history.sweep;
    const show = data.job.tuner === "autolrs" && (stages.length > 0 || sweep.lr.length > 0);
    $("autolrs").hidden = !show;
    if (!show) return;
    const penalty = ((data.config || {}).config || {}).loss_penalty ?? 1e6;
    const failed = t => FAILED.includes(t.status) || typeof t.forecast !== "number" || t.forecast >= penalty;

    const select = $("stage-select");
    const options = [["latest", "latest"]].concat(stages.slice().reverse().map(s => [String(s.stage), `stage ${s.stage}${s.current ? " (searching)" : ""}`]));
    if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== options[i][0])) {
      select.replaceChildren(...options.map(([value, text]) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; }));
      select.value = options.some(o => o[0] === chosenStage) ? chosenStage : "latest";
    }
    const stage = chosenStage === "latest" ? stages[stages.length - 1] : stages.find(s => String(s.stage) === chosenStage);
    const windows = new Map(data.history.windows.map(w => [`${w.stage}:${w.trial}`, w]));
    const series = [];
    const lrs = [], forecasts = [], tips = [];
    if (stage) {
      stage.trials.forEach((t, i) => {
        const color = Charts.PALETTE[i % Charts.PALETTE.length];
        const winner = stage.winner !== null && t.lr === stage.winner;
        const w = windows.get(`${stage.stage}:${i}`);
        const name = `#${i + 1} LR ${fmt(t.lr)}${winner ? " (winner)" : ""}${failed(t) ? " (diverged)" : ""}`;
        if (w) {
          series.push({ name, x: w.points.map(p => p[0]), y: w.points.map(p => p[1]), color, width: winner ? 3 : 1.2 });
        }
        if (!failed(t) && stage.exploit_steps) {
          const lastPoint = w && w.points.length ? w.points[w.points.length - 1] : null;
          if (lastPoint && lastPoint[1] !== null) {
            series.push({ x: [lastPoint[0], stage.exploit_steps], y: [lastPoint[1], t.forecast], color, dash: "3 3",
                          width: winner ? 2 : 1, hideLegend: true });
          }
          series.push({ name: w ? undefined : name, x: [stage.exploit_steps], y: [t.forecast], color, mode: "points",
                        radius: winner ? 6 : 4, stroke: winner ? "#000" : "none",
                        tips: [`trial ${i + 1}: LR ${fmt(t.lr)}, forecast ${fmt(t.forecast)} at step ${stage.exploit_steps} of the stage`] });
        }
        if (!failed(t)) { lrs.push(t.lr); forecasts.push(t.forecast); tips.push(`trial ${i + 1}: LR ${fmt(t.lr)} \u2192 forecast ${fmt(t.forecast)}`); }
      });
      const diverged = stage.trials.filter(failed).length;
      $("stage-note").textContent = `stage ${stage.stage}: ${stage.trials.length} trial(s) of ${stage.trial_steps} steps, ` +
        `forecast ${stage.exploit_steps} steps ahead` + (diverged ? `; ${diverged} diverged` : "") +
        (stage.winner !== null ? `; winner LR ${fmt(stage.winner)}` : "; searching");
    }
    Charts.draw($("chart-windows"), {
      title: "Trial loss windows and their forecasts", xLabel: "steps since the stage checkpoint", yLabel: "loss",
      series, height: 300, empty: "no trial yet",
    });
    const winnerAt = stage && stage.winner !== null ? lrs.indexOf(stage.winner) : -1;
    Charts.draw($("chart-forecasts"), {
      title: "Forecast against LR", xLabel: "LR (log)", yLabel: "forecast loss", xLog: true, height: 300,
      series: [{ name: "trials", x: lrs, y: forecasts, mode: "points", radius: 4, color: "#1f77b4", tips },
               winnerAt >= 0 ? { name: `winner ${fmt(lrs[winnerAt])}`, x: [lrs[winnerAt]], y: [forecasts[winnerAt]],
                                 mode: "points", radius: 7, color: "#d62728", stroke: "#000", tips: [tips[winnerAt]] } : null]
        .filter(Boolean),
      empty: "no forecast yet",
    });
    const rows = stages.slice().reverse().map(s => {
      const tr = document.createElement("tr");
      Dash.cell(tr, String(s.stage) + (s.current ? " (searching)" : ""), "num");
      Dash.cell(tr, s.start_step === null ? "-" : String(s.start_step), "num");
      Dash.cell(tr, s.mode || "-");
      Dash.cell(tr, String(s.tau ?? "-"), "num");
      Dash.cell(tr, String(s.trial_steps ?? "-"), "num");
      Dash.cell(tr, String(s.trials.length), "num");
      Dash.cell(tr, Dash.num(s.winner), "num");
      Dash.cell(tr, Dash.num(s.winner_forecast), "num");
      Dash.cell(tr, s.trials.map(t => `${fmt(t.lr)} (${failed(t) ? "diverged" : fmt(t.forecast)})`).join(", "), "wrap");
      return tr;
    });
    $("stages-table").tBodies[0].replaceChildren(...rows);
    $("sweep-block").hidden = sweep.lr.length === 0;
    if (sweep.lr.length) {
      const s = data.job.summary || {};
      Charts.draw($("chart-sweep"), {
        title: "Loss against LR during the sweep", xLabel: "LR (log)", yLabel: "loss", xLog: true,
        series: [{ name: "loss", x: sweep.lr, y: sweep.loss, color: "#9467bd", mode: "both", radius: 1.8 }],
        rules: [{ x: s.min_lr, label: `min_lr ${fmt(s.min_lr)}`, color: "#2ca02c" },
                { x: s.max_lr, label: `max_lr ${fmt(s.max_lr)}`, color: "#d62728" }],
      });
    }
  }

  // The auto tuner: its range test, its annealed trials and the rollbacks of its training run.
  function renderAuto(data) {
    const s = data.job.summary || {};
    const show = data.job.tuner === "auto";
    $("auto").hidden = !show;
    if (!show) return;
    const sweep = data.history.sweep, result = s.sweep || {};
    const candidates = s.candidates || [];
    Charts.draw($("chart-auto-sweep"), {
      title: "Range test", xLabel: "LR (log)", yLabel: "loss", xLog: true, height: 300,
      series: [{ name: "loss", x: sweep.lr, y: sweep.loss, color: "#9467bd", mode: "both", radius: 1.8 }],
      rules: (result.centre ? [{ x: result.centre, label: `centre ${fmt(result.centre)}`, color: "#d62728" }] : [])
        .concat(candidates.filter(c => c !== result.centre).map(c => ({ x: c, color: "#888888", dash: "2 3" }))),
      empty: "no sweep yet",
    });
    const trials = s.trials || [];
    const scores = trials.map(t => t[1]);
    const best = scores.reduce((b, v, i) => (typeof v === "number" && (b < 0 || v < scores[b]) ? i : b), -1);
    const windows = data.history.windows.filter(w => w.stage === 0);
    Charts.draw($("chart-auto-trials"), {
      title: "Trials (LR annealed to 0 over each)", xLabel: "steps since the trials' checkpoint", yLabel: "loss",
      height: 300, empty: "no trial yet",
      series: windows.map(w => {
        const score = trials[w.trial] ? trials[w.trial][1] : null;
        return { name: `LR ${fmt(w.lr)} (score ${fmt(score)})${w.trial === best ? " winner" : ""}`,
                 x: w.points.map(p => p[0]), y: w.points.map(p => p[1]),
                 color: Charts.PALETTE[w.trial % Charts.PALETTE.length], width: w.trial === best ? 3 : 1.3 };
      }),
    });
    $("auto-note").textContent = [
      result.source ? `centre from ${result.source}` : "",
      candidates.length ? `candidates ${candidates.map(fmt).join(", ")}` : "",
      s.peak !== undefined ? `peak LR ${fmt(s.peak)}, ${s.cuts} cut(s)` : "",
      s.stop_reason ? `stopped: ${s.stop_reason}` : "",
    ].filter(Boolean).join(" · ");
    const rows = (s.events || []).map(e => {
      const tr = document.createElement("tr");
      Dash.cell(tr, String(e.step ?? "-"), "num");
      Dash.cell(tr, e.action || "-");
      Dash.cell(tr, e.reason || "", "wrap");
      Dash.cell(tr, String(e.to_step ?? "-"), "num");
      Dash.cell(tr, Dash.num(e.lr_before), "num");
      Dash.cell(tr, Dash.num(e.lr_after), "num");
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      Dash.cell(tr, "none so far", "muted").colSpan = 6;
      rows.push(tr);
    }
    $("events-table").tBodies[0].replaceChildren(...rows);
  }

  function renderRange(data) {
    const s = data.job.summary || {};
    const h = s.history;
    const show = data.job.tuner === "range_test" && h && Array.isArray(h.lr);
    $("range").hidden = !show;
    if (!show) return;
    const suggestions = s.suggestions || {};
    const colors = { steepest: "#d62728", valley: "#2ca02c", minimum: "#ff7f0e" };
    Charts.draw($("chart-range"), {
      title: `Range test (${s.points} of ${s.num_iter} points, ${s.done ? `ended: ${s.done}` : "sweeping"})`,
      xLabel: "LR (log)", yLabel: "loss", xLog: true, height: 320,
      series: [{ name: "loss", x: h.lr, y: h.loss, color: "#bbbbbb", mode: "points", radius: 1.8 },
               { name: "smoothed", x: h.lr, y: h.smoothed, color: "#1f77b4", width: 2 }],
      rules: Object.keys(colors).filter(m => suggestions[m] && suggestions[m].lr)
        .map(m => ({ x: suggestions[m].lr, label: `${m} ${fmt(suggestions[m].lr)}`, color: colors[m] })),
    });
    const rows = Object.keys(colors).map(m => {
      const r = suggestions[m] || {};
      const tr = document.createElement("tr");
      Dash.cell(tr, m + (m === s.method ? " (reported)" : ""));
      Dash.cell(tr, Dash.num(r.lr), "num");
      Dash.cell(tr, Dash.num(r.loss), "num");
      Dash.cell(tr, r.reason || (s.suggestions ? "" : "when the sweep ends"), "wrap");
      return tr;
    });
    $("suggestions-table").tBodies[0].replaceChildren(...rows);
  }

  function renderLossDiff(data) {
    const s = data.job.summary || {};
    const show = data.job.tuner === "loss_diff" && Array.isArray(s.lrs);
    $("lossdiff").hidden = !show;
    if (!show) return;
    let mean, lo = null, hi = null, median = null;
    if (s.stats) {
      ({ mean, median } = s.stats);
      lo = s.stats.ci_low; hi = s.stats.ci_high;
    } else {  // still probing: the mean of the subsamples so far, no interval yet
      const rows = (s.deltas || []).filter(r => Array.isArray(r));
      mean = s.lrs.map((_, i) => {
        const v = rows.map(r => r[i]).filter(x => typeof x === "number");
        return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
      });
    }
    const best = s.best || {};
    const level = typeof s.alpha === "number" ? `${Math.round(100 * (1 - s.alpha))}%` : "";
    Charts.draw($("chart-lossdiff"), {
      title: `Loss change after one step (${s.subsamples} of ${s.num_subsamples} subsamples)`,
      xLabel: "LR (log)", yLabel: "loss after \u2212 loss before", xLog: true, height: 320,
      bands: lo ? [{ name: `${level} interval of the mean`, x: s.lrs, lo, hi, color: "#1f77b4" }] : [],
      series: [{ name: "mean", x: s.lrs, y: mean, color: "#1f77b4", mode: "both", radius: 2.5, width: 2 },
               median ? { name: "median", x: s.lrs, y: median, color: "#ff7f0e", dash: "5 3" } : null,
               { x: [s.lrs[0], s.lrs[s.lrs.length - 1]], y: [0, 0], color: "#888888", dash: "2 3", width: 1 }].filter(Boolean),
      rules: best[s.method] && best[s.method].lr ? [{ x: best[s.method].lr, label: `${s.method} ${fmt(best[s.method].lr)}`, color: "#d62728" }] : [],
    });
    const rows = Object.entries(best).map(([rule, r]) => {
      const tr = document.createElement("tr");
      Dash.cell(tr, rule + (rule === s.method ? " (reported)" : ""));
      Dash.cell(tr, Dash.num(r.lr), "num");
      Dash.cell(tr, Dash.num(r.value), "num");
      Dash.cell(tr, r.reason || "", "wrap");
      return tr;
    });
    $("best-table").tBodies[0].replaceChildren(...rows);
  }

  function renderHypergrad(data) {
    const hg = data.history.hypergrad;
    const show = hg.step.length > 0;
    $("hypergrad").hidden = !show;
    if (!show) return;
    Charts.draw($("chart-hypergrad"), {
      title: "Hypergradient dE/dLR (the LR path is the learning-rate chart above)", xLabel: "step", yLabel: "h",
      series: [{ name: "h", x: hg.step, y: hg.value, color: "#8c564b", mode: "both", radius: 1.5 },
               { x: [hg.step[0], hg.step[hg.step.length - 1]], y: [0, 0], color: "#888888", dash: "2 3", width: 1 }],
    });
  }

  const decisionRows = new Map();  // "time|seq|kind" -> its row, built once

  function renderDecisions(data) {
    const rows = data.decisions.map(d => {
      const key = `${d.time}|${d.seq}|${d.kind}`;
      if (decisionRows.has(key)) return decisionRows.get(key);
      const tr = document.createElement("tr");
      Dash.cell(tr, Dash.clock(d.time));
      Dash.cell(tr, String(d.seq ?? "-"), "num");
      Dash.cell(tr, d.kind || "-");
      Dash.cell(tr, String(d.step ?? "-"), "num");
      Dash.cell(tr, d.plan || "-", "wrap");
      Dash.cell(tr, d.losses === null || d.losses === undefined ? "-" : String(d.losses) + (d.nonfinite ? ` (${d.nonfinite} non-finite)` : ""), "num");
      Dash.cell(tr, Dash.num(d.mean_loss), "num");
      Dash.cell(tr, d.phase ? (d.stage ? `${d.phase} ${d.stage}` : d.phase) : "-");
      Dash.cell(tr, Dash.num(d.lr), "num");
      Dash.cell(tr, d.note || "", "wrap");
      decisionRows.set(key, tr);
      return tr;
    });
    const shown = new Set(rows);
    for (const [key, tr] of decisionRows) if (!shown.has(tr)) decisionRows.delete(key);
    const body = $("decisions-table").tBodies[0];
    if (rows.length !== body.rows.length || rows.some((tr, i) => body.rows[i] !== tr)) body.replaceChildren(...rows);
    $("decisions-note").textContent = `(newest first, last ${rows.length})`;
  }

  // The charts and tables change only when the job does: redraw them then (or when the
  // stage picked changes); the facts (lease, "updated ... ago") on every poll.
  let drawnFor = null;

  function render(data, force) {
    last = data;
    Dash.serverInfo(data.server);
    renderFacts(data);
    const signature = `${data.job.requests}|${data.job.status}|${data.history.reports}|${data.decisions.length}`;
    if (force || signature !== drawnFor) {
      drawnFor = signature;
      renderSeries(data);
      renderAutoLRS(data);
      renderAuto(data);
      renderRange(data);
      renderLossDiff(data);
      renderHypergrad(data);
      renderDecisions(data);
      $("config").textContent = JSON.stringify(data.config, null, 2);
    }
    document.body.dataset.renderedAt = String(performance.now());
  }

  Dash.poll(async () => render(await Dash.api(`/api/jobs/${encodeURIComponent(jobId)}`), false));
})();
