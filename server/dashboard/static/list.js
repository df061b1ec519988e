"use strict";
/* The job list: every job of the server (or the state folder), refreshed every 2 s. */
(() => {
  const tbody = document.querySelector("#jobs tbody");
  const filter = document.getElementById("filter");
  let jobs = [], now = Date.now() / 1000;
  let sortKey = "job_id", sortDir = 1;

  function compare(a, b) {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return a.job_id < b.job_id ? -1 : 1;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  }

  function render() {
    const needle = filter.value.trim().toLowerCase();
    const shown = jobs.filter(j => !needle || `${j.job_id} ${j.tuner} ${j.status}`.toLowerCase().includes(needle));
    shown.sort(compare);
    const frag = document.createDocumentFragment();
    for (const j of shown) {
      const tr = document.createElement("tr");
      tr.dataset.job = j.job_id;
      const link = document.createElement("a");
      link.href = `/jobs/${encodeURIComponent(j.job_id)}${Dash.token ? `?token=${encodeURIComponent(Dash.token)}` : ""}`;
      link.textContent = j.job_id;
      Dash.cell(tr, link);
      Dash.cell(tr, j.tuner || "-");
      Dash.cell(tr, Dash.badge(j.status), "status");
      Dash.cell(tr, j.phase ? (j.stage ? `${j.phase} (stage ${j.stage})` : j.phase) : "-");
      Dash.cell(tr, j.step === null ? "-" : String(j.step), "num");
      Dash.cell(tr, Dash.num(j.lr), "num");
      Dash.cell(tr, Dash.lossText(j), "num");
      Dash.cell(tr, j.lease_left_s === null ? "-" : Dash.duration(j.lease_left_s), "num");
      Dash.cell(tr, j.search_steps === null ? "-" : `${j.search_steps} / ${j.train_steps}`, "num");
      Dash.cell(tr, Dash.ago(j.updated, now), "num");
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
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
    now = data.time;
    Dash.serverInfo(data.server);
    render();
  });
})();
