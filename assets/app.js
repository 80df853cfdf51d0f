// wallscope console: the fleet page and the device page, over /api/v1 with a bearer token.
// No build step and no framework: uPlot draws the plots, the rest is DOM.
"use strict";
(function () {
  const TOKEN_KEY = "wallscope.token";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const main = $("#main");
  const state = { device: null, from: null, to: null, last: null, plots: [], findings: [], timeline: null };

  // ---- token -------------------------------------------------------------------------
  // `#token=…` in the address (what `demo --serve` prints) is moved into session storage
  // and out of the address bar at once, so it is not left in history or screenshots.
  (function takeTokenFromHash() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + "#/");
    }
  })();
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, opts) {
    const o = Object.assign({ headers: {} }, opts || {});
    o.headers["Authorization"] = "Bearer " + (token() || "");
    const r = await fetch(path, o);
    if (r.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin("The token was not accepted."); throw new HttpError(401, "unauthorized"); }
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { const j = await r.json(); if (j.error) msg = j.error; } catch (e) { /* not JSON */ }
      throw new HttpError(r.status, msg);
    }
    return r;
  }
  const getJSON = async (path) => (await api(path)).json();

  function showLogin(message) {
    main.innerHTML = "";
    main.appendChild($("#login").content.cloneNode(true));
    $("#login-error").textContent = message || "";
    $("#login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
      route();
    });
  }
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });

  // ---- helpers -----------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  const pill = (text, cls) => el("span", { class: "pill " + (cls || text) }, text);
  const fmtTime = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";
  const PALETTE = ["#2156c9", "#c62828", "#2e8540", "#c98a00", "#7b3fb3", "#00838f", "#ad1457", "#5d4037", "#455a64", "#9e9d24"];
  const colour = (i) => PALETTE[i % PALETTE.length];

  function error(e) {
    if (e.status === 401) return;
    main.innerHTML = "";
    main.appendChild(el("div", { class: "card bad" }, "Error: " + e.message));
  }

  // ---- fleet page --------------------------------------------------------------------
  const fleetView = { status: "", sort: "status", order: "desc", afterEval: false };

  async function fleetPage() {
    state.device = null;
    const [sum, list] = await Promise.all([
      getJSON("/api/v1/fleet"),
      getJSON("/api/v1/devices?" + new URLSearchParams({ status: fleetView.status, sort: fleetView.sort, order: fleetView.order, limit: "500" })),
    ]);
    $("#asof").textContent = sum.as_of ? "as of " + sum.as_of : "no telemetry yet";
    main.innerHTML = "";
    // While the server evaluates the rules over a freshly imported store, look again every
    // 2 s, and once more after it is done (a list cached just before may still be served).
    const evaluating = sum.findings_source === "evaluating";
    if (evaluating) main.appendChild(el("div", { class: "card muted", id: "evaluating" }, "Evaluating the rules over the store… statuses follow in a moment."));
    if (evaluating || fleetView.afterEval) {
      fleetView.afterEval = evaluating;
      setTimeout(() => { if (!location.hash.startsWith("#/device/")) fleetPage().catch(error); }, 2000);
    }
    const tiles = el("div", { class: "tiles", id: "status-tiles" });
    tiles.appendChild(el("div", { class: "tile", onclick: () => { fleetView.status = ""; fleetPage().catch(error); } }, el("b", {}, sum.devices), "chargers"));
    for (const s of ["ok", "degraded", "faulted", "offline"]) {
      tiles.appendChild(el("div", { class: "tile " + s, "data-status": s, onclick: () => { fleetView.status = s; fleetPage().catch(error); } }, el("b", {}, sum.status[s] || 0), s));
    }
    tiles.appendChild(el("div", { class: "tile faulted" }, el("b", {}, sum.active_alerts), "alerts firing"));
    main.appendChild(tiles);

    const trendCard = el("div", { class: "card" }, el("h3", {}, "New fault episodes per day"));
    const trendBox = el("div", { id: "fault-trend" });
    trendCard.appendChild(trendBox);
    main.appendChild(trendCard);
    const faults = Object.keys(sum.fault_trend.series);
    if (faults.length === 0) {
      trendBox.appendChild(el("p", { class: "muted" }, "No findings yet: `wallscope run` records them live, `serve` evaluates a store that has none."));
    } else {
      const xs = sum.fault_trend.days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
      const data = [xs, ...faults.map((f) => sum.fault_trend.series[f])];
      new uPlot({
        width: Math.max(400, trendCard.clientWidth - 32), height: 200,
        series: [{}, ...faults.map((f, i) => ({ label: f, stroke: colour(i), width: 2, points: { show: true } }))],
        scales: { x: { time: true } },
      }, data, trendBox);
    }

    const alertsCard = el("div", { class: "card", id: "active-alerts" }, el("h3", {}, "Alerts firing"));
    alertsCard.appendChild(alertTable(sum.alerts));
    main.appendChild(alertsCard);
    if (sum.cohort_alerts.length) {
      const c = el("div", { class: "card", id: "cohort-alerts" }, el("h3", {}, "Cohort and site alerts"));
      c.appendChild(alertTable(sum.cohort_alerts));
      main.appendChild(c);
    }

    const devCard = el("div", { class: "card" }, el("h3", {}, "Chargers" + (fleetView.status ? " · " + fleetView.status : "") + " (" + list.total + ")"));
    const cols = [["device_id", "Device"], ["status", "Status"], ["last_seen", "Last seen"], ["firmware", "Firmware"], ["site", "Site"], ["alerts", "Alerts"]];
    const head = el("tr", {}, cols.map(([k, label]) => el("th", { onclick: () => {
      fleetView.order = fleetView.sort === k && fleetView.order === "asc" ? "desc" : "asc"; fleetView.sort = k; fleetPage().catch(error);
    } }, label + (fleetView.sort === k ? (fleetView.order === "asc" ? " ▲" : " ▼") : ""))), el("th", {}, "Faults"));
    const body = el("tbody", {}, list.devices.map((d) => el("tr", { "data-device": d.device_id },
      el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.device_id) }, d.device_id)),
      el("td", {}, pill(d.status)), el("td", {}, d.last_seen), el("td", {}, d.firmware || ""),
      el("td", {}, d.site || ""), el("td", {}, d.active_alerts || ""), el("td", {}, d.faults.join(" ")))));
    devCard.appendChild(el("table", { id: "devices" }, el("thead", {}, head), body));
    main.appendChild(devCard);
  }

  function alertTable(alerts) {
    if (!alerts.length) return el("p", { class: "muted" }, "None.");
    return el("table", {}, el("thead", {}, el("tr", {}, ["State", "Since", "Alert", "Device / key", "Owner", "Ack", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, alerts.map((a) => el("tr", {},
        el("td", {}, pill(a.state)), el("td", {}, a.started_at), el("td", {}, a.title, el("div", { class: "evidence" }, a.summary)),
        el("td", {}, a.device_id ? el("a", { href: "#/device/" + encodeURIComponent(a.device_id) }, a.device_id) : a.key),
        el("td", {}, a.owner), el("td", {}, (a.acks || []).map((k) => k.by).join(", ")),
        el("td", {}, el("button", { onclick: (e) => ack(a.alert_id, e.target) }, "ack"))))));
  }

  async function ack(id, button) {
    try {
      await api("/api/v1/alerts/" + encodeURIComponent(id) + "/ack", { method: "POST", body: JSON.stringify({ note: "from the console" }) });
      button.textContent = "acked"; button.disabled = true;
    } catch (e) { button.textContent = e.status === 403 ? "needs operator token" : "failed"; }
  }

  // ---- device page -------------------------------------------------------------------
  const PANELS = [
    ["Voltage (V)", ["grid_v", "voltageA_v", "voltageB_v", "voltageC_v"]],
    ["Current (A)", ["vehicle_current_a", "currentA_a", "currentB_a", "currentC_a", "currentN_a"]],
    ["Grid frequency (Hz)", ["grid_hz"]],
    ["Temperature (°C)", ["handle_temp_c", "pcba_temp_c", "mcu_temp_c"]],
    ["Pilot and proximity (V)", ["pilot_high_v", "pilot_low_v", "prox_v"]],
  ];
  const STATE_COLOURS = { 1: "#b0bec5", 2: "#90caf9", 4: "#fff59d", 5: "#ffe082", 6: "#ffcc80", 8: "#fff59d", 9: "#ef9a9a", 11: "#66bb6a", 12: "#81c784", 13: "#9ccc65" };

  async function devicePage(id) {
    const first = state.device !== id;
    state.device = id;
    main.innerHTML = "";
    main.appendChild(el("p", { class: "muted" }, "Loading " + id + "…"));
    const h = await getJSON("/api/v1/devices/" + encodeURIComponent(id));
    state.last = Date.parse(h.last_seen);
    if (first || state.to === null) { state.to = state.last + 1; state.from = state.to - 86400000; }
    $("#asof").textContent = "as of " + h.as_of;
    main.innerHTML = "";
    const ident = Object.entries(h.identity).map(([k, v]) => k + " " + v).join(" · ");
    main.appendChild(el("div", { class: "card", id: "device-head" },
      el("h2", {}, id, " ", pill(h.status)),
      el("div", { class: "muted" }, "last seen " + h.last_seen + (ident ? " · " + ident : ""))));

    const left = el("div", { class: "grow" });
    const right = el("div", { class: "side" });
    main.appendChild(el("div", { class: "row" }, left, right));

    const controls = el("div", { class: "controls" });
    for (const [label, ms] of [["6 h", 6 * 3600e3], ["24 h", 86400e3], ["7 d", 7 * 86400e3], ["30 d", 30 * 86400e3]]) {
      controls.appendChild(el("button", { onclick: () => zoomTo(state.last + 1 - ms, state.last + 1) }, label));
    }
    controls.appendChild(el("button", { onclick: () => { const span = state.to - state.from; zoomTo(state.from - span / 2, Math.min(state.last + 1, state.to + span / 2)); } }, "zoom out"));
    // Pan by half the view; never past the newest data.
    controls.appendChild(el("button", { title: "earlier", onclick: () => { const h = (state.to - state.from) / 2; zoomTo(state.from - h, state.to - h); } }, "◀"));
    controls.appendChild(el("button", { title: "later", onclick: () => { const span = state.to - state.from; const to = Math.min(state.last + 1, state.to + span / 2); zoomTo(to - span, to); } }, "▶"));
    controls.appendChild(el("span", { id: "range", class: "muted" }));
    controls.appendChild(el("button", { id: "export", onclick: exportRange }, "export range as case"));
    controls.appendChild(el("span", { class: "legend-note" }, "drag across a plot to zoom"));
    left.appendChild(el("div", { class: "card" }, controls, el("div", { id: "plots" })));
    const vit = el("div", { class: "card" }, el("h3", {}, "Latest vitals"),
      el("table", {}, el("tbody", {}, h.vitals.map((c) => el("tr", { class: c.ok ? "" : "bad" },
        el("td", {}, c.name), el("td", {}, c.value), el("td", { class: "muted" }, c.normal), el("td", {}, c.ok ? "ok" : "OUT OF RANGE"))))));
    left.appendChild(vit);
    const sess = el("div", { class: "card" }, el("h3", {}, "Sessions"),
      el("p", {}, "24 h: " + h.sessions_24h.count + " session(s), " + h.sessions_24h.energy_kwh.toFixed(1) + " kWh · 7 d: " + h.sessions_7d.count + ", " + h.sessions_7d.energy_kwh.toFixed(1) + " kWh"),
      el("table", {}, el("tbody", {}, h.recent_sessions.slice(0, 10).map((s) => el("tr", {},
        el("td", {}, s.start), el("td", {}, s.minutes.toFixed(0) + " min"), el("td", {}, (s.energy_wh / 1000).toFixed(2) + " kWh"),
        el("td", {}, s.max_current_a.toFixed(1) + " A"), el("td", {}, s.ended))))));
    left.appendChild(sess);

    const fcard = el("div", { class: "card", id: "findings" }, el("h3", {}, "Active findings"));
    if (!h.active_findings.length) fcard.appendChild(el("p", { class: "muted", id: "no-findings" }, "No active findings."));
    for (const f of h.active_findings) fcard.appendChild(findingCard(f));
    if (h.earlier_findings.length) {
      fcard.appendChild(el("h3", {}, "Earlier (7 days)"));
      for (const f of h.earlier_findings) fcard.appendChild(findingCard(f));
    }
    right.appendChild(fcard);
    const alerts = await getJSON("/api/v1/devices/" + encodeURIComponent(id) + "/alerts");
    right.appendChild(el("div", { class: "card" }, el("h3", {}, "Alerts"), alertTable(alerts.alerts)));
    if (Object.keys(h.lifetime).length) {
      right.appendChild(el("div", { class: "card" }, el("h3", {}, "Lifetime"), el("div", { class: "kv" }, Object.entries(h.lifetime).flatMap(([k, v]) => [el("span", { class: "muted" }, k), el("span", {}, v)]))));
    }
    await loadRange();
  }

  function findingCard(f) {
    return el("div", { class: "finding " + f.severity, "data-fault": f.fault },
      el("h4", {}, f.fault + " · " + f.title + " ", pill(f.severity)),
      el("div", {}, f.summary),
      el("div", { class: "evidence" }, f.first_ts + " → " + f.last_ts + " · owner " + f.owner),
      el("div", { class: "evidence" }, Object.entries(f.evidence).map(([k, v]) => k + "=" + (typeof v === "number" ? +v.toFixed(3) : v)).join(" · ")),
      el("ol", { class: "steps" }, f.steps.map((s) => el("li", {}, el("span", { class: "who" }, s.who), s.text))));
  }

  async function zoomTo(from, to) {
    from = Math.round(from); to = Math.round(to);
    if (to - from < 10000) { const mid = (from + to) / 2; from = mid - 5000; to = mid + 5000; }
    state.from = from; state.to = to;
    await loadRange();
  }

  async function loadRange() {
    const id = state.device;
    const q = new URLSearchParams({ from: String(state.from), to: String(state.to) });
    const box = $("#plots");
    const width = Math.max(400, box.clientWidth);
    const points = String(Math.min(4000, Math.max(200, Math.round(width))));
    const [v, tl, fs] = await Promise.all([
      getJSON("/api/v1/devices/" + encodeURIComponent(id) + "/vitals?" + q + "&points=" + points),
      getJSON("/api/v1/devices/" + encodeURIComponent(id) + "/timeline?" + q),
      getJSON("/api/v1/devices/" + encodeURIComponent(id) + "/findings?" + q),
    ]);
    if (state.device !== id) return;
    const r = $("#range");
    r.textContent = fmtTime(state.from) + " → " + fmtTime(state.to) + " · " + v.samples + " samples in " + v.t.length + " buckets of " + (v.bucket_ms / 1000).toFixed(v.bucket_ms < 1000 ? 3 : 0) + " s";
    r.dataset.from = state.from; r.dataset.to = state.to;
    for (const p of state.plots) p.destroy();
    state.plots = [];
    box.innerHTML = "";
    state.findings = fs.findings;
    state.timeline = tl;
    const tlCanvas = el("canvas", { class: "timeline", id: "timeline" });
    box.appendChild(el("div", { class: "plot-title" }, "EVSE state · contactor · findings (" + fs.findings.length + ")"));
    box.appendChild(tlCanvas);
    drawTimeline(tlCanvas, width);
    const xs = v.t.map((t) => t / 1000);
    PANELS.forEach(([title, fields], pi) => {
      const holder = el("div", { class: "plot", "data-panel": title });
      box.appendChild(el("div", { class: "plot-title" }, title));
      box.appendChild(holder);
      const series = [{}];
      const data = [xs];
      const bands = [];
      let points = 0;
      fields.forEach((f, i) => {
        const s = v.series[f];
        if (!s) return;
        const c = colour(i);
        const hi = data.length;
        data.push(s.max); series.push({ label: f + " max", stroke: c, width: 1.5, spanGaps: false });
        data.push(s.min); series.push({ label: f + " min", stroke: c, width: 1, dash: [4, 3], spanGaps: false });
        bands.push({ series: [hi, hi + 1], fill: c + "22" });
        points += s.max.filter((x) => x !== null).length;
      });
      holder.dataset.points = points;
      const u = new uPlot({
        width, height: 170, series, bands,
        scales: { x: { time: true, min: state.from / 1000, max: state.to / 1000 } },
        cursor: { sync: { key: "device" }, drag: { x: true, y: false, setScale: false } },
        legend: { live: true },
        hooks: { setSelect: [(u) => {
          if (u.select.width < 4) return;
          const a = u.posToVal(u.select.left, "x") * 1000;
          const b = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          zoomTo(a, b).catch(error);
        }] },
      }, data, holder);
      state.plots.push(u);
    });
  }

  function drawTimeline(canvas, width) {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = width * dpr; canvas.height = 64 * dpr; canvas.style.width = width + "px";
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    const x = (ms) => ((ms - state.from) / (state.to - state.from)) * width;
    g.font = "11px system-ui";
    for (const s of state.timeline.segments) {
      const a = Math.max(0, x(s.from_ms)), b = Math.min(width, x(s.to_ms));
      if (b <= a - 0.5) continue;
      g.fillStyle = STATE_COLOURS[s.evse_state] || "#e0e0e0";
      g.fillRect(a, 0, Math.max(1, b - a), 18);
      if (b - a > 60 && s.state) { g.fillStyle = "#333"; g.fillText(s.state, a + 3, 13); }
      if (s.contactor_closed) { g.fillStyle = "#2e8540"; g.fillRect(a, 22, Math.max(1, b - a), 10); }
    }
    g.fillStyle = "#666"; g.fillText("contactor", 3, 31);
    for (const f of state.findings) {
      const a = Math.max(0, x(f.first_ms)), b = Math.min(width, x(f.last_ms));
      g.fillStyle = f.severity === "major" || f.severity === "critical" ? "rgba(198,40,40,.55)" : "rgba(201,138,0,.55)";
      g.fillRect(a, 38, Math.max(2, b - a), 24);
      g.fillStyle = "#fff"; g.fillText(f.fault, a + 3, 54);
    }
  }

  async function exportRange() {
    const id = state.device;
    const q = new URLSearchParams({ from: String(state.from), to: String(state.to) });
    const b = $("#export");
    b.textContent = "exporting…";
    try {
      const r = await api("/api/v1/devices/" + encodeURIComponent(id) + "/export?" + q);
      const blob = await r.blob();
      const name = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
      const a = el("a", { href: URL.createObjectURL(blob), download: name ? name[1] : id + ".jsonl" });
      document.body.appendChild(a); a.click(); a.remove();
      b.textContent = "export range as case";
    } catch (e) { b.textContent = "export failed: " + e.message; }
  }

  // ---- routing -----------------------------------------------------------------------
  function route() {
    if (!token()) { showLogin(); return; }
    $("#logout").hidden = false;
    const m = location.hash.match(/^#\/device\/(.+)$/);
    const p = m ? devicePage(decodeURIComponent(m[1])) : fleetPage();
    p.catch(error);
  }
  window.addEventListener("hashchange", route);
  // For tests and for people at the console: zoom the device page to a range (epoch ms).
  window.wallscope = { zoomTo: (a, b) => zoomTo(a, b), state };
  route();
})();
