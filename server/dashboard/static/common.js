"use strict";
/* What the job list and the job pages share: API calls, number and time formats, polling. */
const Dash = (() => {
  const POLL_MS = 2000;
  // A token given in the address (?token=...) goes with every API call; the server also keeps
  // it in a cookie, so links between pages need not carry it.
  const token = new URLSearchParams(location.search).get("token");

  async function api(path) {
    const url = token ? `${path}?token=${encodeURIComponent(token)}` : path;
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function num(v, digits) {
    if (typeof v !== "number" || !isFinite(v)) return v === null || v === undefined ? "-" : String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(digits || 2).replace("e+", "e");
    return Number(v.toPrecision(digits || 4)).toString();
  }

  // A job's last reported loss; null with a step means it was NaN or infinite.
  function lossText(job) {
    if (job.last_loss === null && job.last_loss_step !== null) return "non-finite";
    return num(job.last_loss);
  }

  // coarse: whole minutes from 2 minutes on (a column that then changes once a minute).
  function duration(seconds, coarse) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "-";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    if (coarse && s >= 120 && s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  }

  function ago(epoch, now) {
    if (typeof epoch !== "number") return "-";
    return `${duration((now || Date.now() / 1000) - epoch)} ago`;
  }

  function clock(epoch) {
    if (typeof epoch !== "number") return "-";
    const when = new Date(epoch * 1000);
    return when.toDateString() === new Date().toDateString() ? when.toLocaleTimeString() : when.toLocaleString();
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = `badge ${status || ""}`;
    span.textContent = status || "-";
    return span;
  }

  function banner(message) {
    const node = document.getElementById("banner");
    if (!node) return;
    node.hidden = !message;
    node.textContent = message || "";
  }

  function serverInfo(server) {
    const node = document.getElementById("server-info");
    if (!node || !server) return;
    node.textContent = server.mode === "browse"
      ? `browsing ${server.state_dir} (no server running) \u00b7 autolrs ${server.version}`
      : `server up ${duration(server.uptime_s)} \u00b7 ${server.state_dir} \u00b7 autolrs ${server.version}`;
  }

  // Call fn now and again POLL_MS after each call ends (never two at once); a hidden tab
  // does not poll, and catches up as soon as it is shown again.
  function poll(fn) {
    let timer = null;
    const tick = async () => {
      timer = null;
      if (!document.hidden) {
        try { await fn(); banner(""); }
        catch (e) { banner(e.status === 401 ? e.message : `cannot reach the dashboard API: ${e.message}`); }
      }
      timer = setTimeout(tick, POLL_MS);
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer !== null) { clearTimeout(timer); tick(); }
    });
    tick();
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  return { api, num, lossText, duration, ago, clock, badge, banner, serverInfo, poll, cell, token };
})();
