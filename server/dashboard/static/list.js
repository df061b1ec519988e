"use strict";
/* The job list: every job of the server (or the state folder), refreshed every 2 s. */
(() => {
  const tbody = document.querySelector("#jobs tbody");
  const filter = document.getElementById("filter");
  let jobs = [];
  let sortKey = "job_id", sortDir = 1;

  function compare(a, b) {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return a.job_id < b.job_id ? -1 : 1;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  }

  // Rows are kept per job and only cells whose text changed are touched: a poll of many jobs
  // then costs the browser little.
  const rowsByJob = new Map();

  function cells(j) {
    return [
      j.tuner || "-", j.status || "-", j.phase ? (j.stage ? `${j.phase} (stage ${j.stage})` : j.phase) : "-",
      j.step === null ? "-" : String(j.step), Dash.num(j.lr), Dash.lossText(j),
      j.lease_left_s === null ? "-" : Dash.duration(j.lease_left_s, true),
      j.search_steps === null ? "-" : `${j.search_steps} / ${j.train_steps}`, Dash.clock(j.updated),
    ];
  }

  function makeRow(j) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.job_id;
    const link = document.createElement("a");
    link.href = `/jobs/${encodeURIComponent(j.job_id)}${Dash.token ? `?token=${encodeURIComponent(Dash.token)}` : ""}`;
    link.textContent = j.job_id;
    Dash.cell(tr, link);
    for (const [i, cls] of ["", "status", "", "num", "num", "num", "num", "num", "num"].entries()) {
      const td = Dash.cell(tr, i === 1 ? Dash.badge("") : "", cls);
      td.dataset.text = "";
    }
    return tr;
  }

  function update(tr, j) {
    const tds = tr.children;
    cells(j).forEach((text, i) => {
      const td = tds[i + 1];
      if (td.dataset.text === text) return;
      td.dataset.text = text;
      if (i === 1) { td.firstChild.textContent = text; td.firstChild.className = `badge ${j.status || ""}`; }
      else td.textContent = text;
    });
  }

  function render() {
    const needle = filter.value.trim().toLowerCase();
    const shown = jobs.filter(j => !needle || `${j.job_id} ${j.tuner} ${j.status}`.toLowerCase().includes(needle));
    shown.sort(compare);
    const seen = new Set();
    let previous = null;
    for (const j of shown) {
      let tr = rowsByJob.get(j.job_id);
      if (!tr) { tr = makeRow(j); rowsByJob.set(j.job_id, tr); }
      update(tr, j);
      seen.add(j.job_id);
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      previous = tr;
    }
    for (const [id, tr] of rowsByJob) {
      if (!seen.has(id)) { tr.remove(); if (!jobs.some(j => j.job_id === id)) rowsByJob.delete(id); }
    }
    document.getElementById("count").textContent =
      shown.length === jobs.length ? `${jobs.length} job(s)` : `${shown.length} of ${jobs.length} job(s)`;
    document.getElementById("empty").hidden = jobs.length > 0;
    for (const th of document.querySelectorAll("#jobs th")) {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
    }
    // For tests and the benchmark: when the table was last drawn, and how many rows.
    document.body.dataset.renderedAt = String(performance.now());
    document.body.dataset.rows = String(shown.length);
  }

  for (const th of document.querySelectorAll("#jobs th.sortable")) {
    th.addEventListener("click", () => {
      sortDir = th.dataset.key === sortKey ? -sortDir : 1;
      sortKey = th.dataset.key;
      render();
    });
  }
  filter.addEventListener("input", render);

  Dash.poll(async () => {
    const data = await Dash.api("/api/jobs");
    jobs = data.jobs;
    Dash.serverInfo(data.server);
    render();
  });
})();
