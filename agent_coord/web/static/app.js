// The agent-coord dashboard: renders the server's state document, live over server-sent events.
// No build step and no dependencies; every URL is relative, so it works under a reverse proxy's prefix.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const actionsOn = document.querySelector('meta[name="actions"]').content === "on";
  const HELD = new Set(["ALLOCATING", "BUSY", "RELEASING"]);
  const STATE_TONE = { FREE: "ok", BUSY: "info", ALLOCATING: "warn", RELEASING: "warn", QUARANTINED: "bad" };
  const LIVE_TONE = { alive: "ok", dead: "bad", stale: "warn", left: "none" };
  const METRIC_TONE = { ok: "ok", warning: "warn", failing: "bad", "not enough data": "none" };
  // What tests and the bench read: when each document was drawn.
  const probe = { renders: [], version: 0 };
  window.agentCoord = probe;
  let doc = null;
  let skewMs = 0; // server clock minus ours, so ages match the server's view

  document.body.classList.toggle("read-only", !actionsOn);
  $("mode").textContent = actionsOn ? "actions on" : "read-only";
  $("global-actions").hidden = !actionsOn;

  // ---- small helpers --------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const badge = (text, tone) => el("span", { class: `badge tone-${tone || "none"}`, text });
  const nowS = () => (Date.now() + skewMs) / 1000;
  function duration(s) {
    s = Math.max(0, s);
    if (s < 100) return `${Math.round(s)}s`;
    if (s < 6000) return `${Math.round(s / 60)}m`;
    if (s < 172800) return `${Math.round(s / 3600)}h`;
    return `${Math.round(s / 86400)}d`;
  }
  const ago = (ts) => (ts ? `${duration(nowS() - ts)} ago` : "–");
  function leaseLeft(ts) {
    if (!ts) return "–";
    const left = ts - nowS();
    return left < 0 ? "expired" : duration(left);
  }
  const clock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  function replaceRows(tbody, rows) {
    // Keep keyboard focus on the same control across a redraw.
    const focused = document.activeElement && tbody.contains(document.activeElement) ? document.activeElement.id : null;
    tbody.replaceChildren(...rows);
    if (focused && $(focused)) $(focused).focus();
  }

  // ---- sections -------------------------------------------------------------------------------
  function renderHeader(d) {
    $("repo").textContent = d.repo || "all repositories";
    const p = d.pool;
    $("pool").textContent = `pool ${p.size}/${p.max}: ${p.busy} busy, ${p.free} free` +
      (p.quarantined ? `, ${p.quarantined} quarantined` : "") + ` · ${Math.round(p.utilization * 100)} % in use`;
  }

  function renderAlerts(d) {
    const alerts = d.alerts || [];
    $("alerts").hidden = alerts.length === 0;
    $("alert-list").replaceChildren(...alerts.map((a) => el("li", {},
      badge(a.severity, a.severity === "failing" ? "bad" : "warn"), " ", el("strong", { text: a.kind }), " ",
      el("span", { text: a.message }), " ", el("span", { class: "muted", "data-ago": a.since, text: ago(a.since) }))));
  }

  function renderSlots(d) {
    const order = { BUSY: 0, ALLOCATING: 0, RELEASING: 0, QUARANTINED: 1, FREE: 2 };
    const slots = [...d.slots].sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3) || a.id.localeCompare(b.id));
    const rows = slots.map((s) => {
      const held = HELD.has(s.state);
      const acts = el("td", { class: "acts" });
      if (s.state === "BUSY") {
        acts.append(
          el("button", { type: "button", id: `release-${s.id}`, "aria-label": `Release ${s.id}`, text: "Release",
            onclick: () => release(s, false) }),
          el("button", { type: "button", id: `force-${s.id}`, class: "danger", "aria-label": `Force release ${s.id}`,
            text: "Force release…", onclick: () => forceRelease(s) }));
      }
      const dirty = !held ? "–" : s.dirty === null || s.dirty === undefined ? "?" : s.dirty ? "yes" : "no";
      return el("tr", { "data-slot": s.id, "data-state": s.state },
        el("td", { class: "mono nowrap", text: s.id, title: s.path }),
        el("td", {}, badge(s.state, STATE_TONE[s.state])),
        el("td", { class: "mono wrap", text: s.branch || (s.rescue_ref ? "(rescued)" : "–") }),
        el("td", { class: "mono", text: s.agent || "–" }),
        el("td", { class: "wrap muted", text: s.task || (s.rescue_ref ? `work saved to ${s.rescue_ref}` : "–") }),
        el("td", { class: "num", "data-ago": held ? s.since : "", text: held ? ago(s.since) : "–" }),
        el("td", { class: "num", "data-left": held ? s.lease_expires_at : "", text: held ? leaseLeft(s.lease_expires_at) : "–" }),
        el("td", {}, dirty === "yes" ? badge("dirty", "warn") : el("span", { class: "muted", text: dirty })),
        acts);
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "No slots yet: the pool fills on the first allocation." })));
    replaceRows($("slot-rows"), rows);
  }

  // ---- the conflict radar -----------------------------------------------------------------------
  const KIND_TONE = { conflict: "bad", overlap: "warn" };
  const span = (a, b) => (a === b ? String(a) : `${a}–${b}`);
  const lineList = (lines) => lines.map(([a, b]) => span(a, b)).join(", ");
  function sideCell(side, withBase) {
    if (withBase) return el("td", {}, el("span", { class: "mono", text: side.branch || "?" }), el("div", { class: "muted", text: "base branch" }));
    return el("td", {},
      el("div", { class: "mono", text: side.branch || side.worktree }),
      el("div", { class: "muted" }, `agent ${side.agent || "?"} · `, el("span", { class: "mono", text: side.worktree })),
      side.task ? el("div", { class: "muted wrap", text: side.task }) : null);
  }
  function fileItem(f, p) {
    const li = el("li", {}, el("span", { class: "mono", text: f.path }));
    if (f.other_path) li.append(el("span", { class: "muted" }, " (", el("span", { class: "mono", text: f.other_path }), " on the other side)"));
    const who = (s) => s.branch || s.worktree;
    const parts = [];
    if (f.a_lines.length) parts.push(`lines ${lineList(f.a_lines)} in ${who(p.a)}`);
    if (f.b_lines.length) parts.push(`${lineList(f.b_lines)} in ${who(p.b)}`);
    if (parts.length) li.append(el("span", { class: "lines", text: ` — ${parts.join("; ")}` }));
    else if (p.kind === "conflict") li.append(el("span", { class: "muted", text: " — whole file (binary or deleted)" }));
    return li;
  }
  function renderConflicts(d) {
    const pairs = d.conflicts || [];
    const conflicts = pairs.filter((p) => p.kind === "conflict").length;
    const count = $("conflict-count");
    count.textContent = pairs.length ? `${conflicts} conflict${conflicts === 1 ? "" : "s"}, ${pairs.length - conflicts} overlap${pairs.length - conflicts === 1 ? "" : "s"}` : "none";
    count.className = `badge tone-${conflicts ? "bad" : pairs.length ? "warn" : "ok"}`;
    const rows = pairs.map((p) => {
      const files = el("ul", { class: "files" }, ...p.files.map((f) => fileItem(f, p)));
      if (p.also.length) files.append(el("li", { class: "muted" }, "also both changed, in different lines: ", el("span", { class: "mono", text: p.also.join(", ") })));
      return el("tr", { "data-pair": `${p.a.worktree}|${p.with_base ? `base:${p.b.branch}` : p.b.worktree}`, "data-kind": p.kind },
        el("td", {}, badge(p.kind, KIND_TONE[p.kind])),
        sideCell(p.a, false),
        sideCell(p.b, p.with_base),
        el("td", { class: "wrap" }, files),
        el("td", { class: "num", "data-ago": p.since, text: ago(p.since) }),
        el("td", { class: "wrap advice", text: p.advice }));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No predicted merge conflicts: no two live worktrees have changed the same files." })));
    replaceRows($("conflict-rows"), rows);
  }

  function renderAgents(d) {
    const f = d.focus || {};
    const used = (f.sources || []).map((s) => `${s.name} ${s.used ? "✓" : "✗"}`).join(", ");
    $("focus").textContent = `Focus (ManicTime): ${f.window || "no focused window known"} · user ${f.user || "unknown"}` +
      (used ? ` · sources: ${used}` : "");
    const rank = { dead: 0, stale: 0, alive: 2, left: 5 };
    const agents = [...d.agents].sort((a, b) => (rank[a.liveness] - (a.holds ? 1 : 0)) - (rank[b.liveness] - (b.holds ? 1 : 0)) || a.id.localeCompare(b.id));
    const rows = agents.map((a) => el("tr", { "data-agent": a.id },
      el("td", { class: "mono", text: a.id }),
      el("td", {}, badge(a.liveness, LIVE_TONE[a.liveness])),
      el("td", { class: "wrap muted", text: a.how }),
      el("td", { class: "mono", text: a.host }),
      el("td", { class: "num", text: String(a.pid) }),
      el("td", { class: "num", "data-ago": a.last_heartbeat, text: ago(a.last_heartbeat) }),
      el("td", {}, a.focused ? badge("focused", "info") : el("span", { class: "muted", text: "–" })),
      el("td", { class: "wrap muted", text: a.note || "" })));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No agents registered." })));
    replaceRows($("agent-rows"), rows);
  }

  function renderMetrics(d) {
    const m = d.metrics;
    const overall = $("overall");
    if (!m) {
      overall.replaceWith(Object.assign(badge("unavailable", "none"), { id: "overall" }));
      $("metric-cards").replaceChildren(el("li", { class: "muted", text: "Metrics unavailable." }));
      return;
    }
    overall.replaceWith(Object.assign(badge(`overall: ${m.overall}`, METRIC_TONE[m.overall]), { id: "overall" }));
    $("metric-cards").replaceChildren(...m.rows.map((r) => el("li", { "data-metric": r.name },
      el("div", { class: "name", text: r.name.replaceAll("_", " ") }),
      el("div", { class: "value", text: r.text }),
      el("div", { class: "target", text: `target ${r.target}` }),
      badge(r.state, METRIC_TONE[r.state]),
      el("div", { class: "detail", text: `${r.detail} (n=${r.samples})` }))));
  }

  // ---- charts (inline SVG) --------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const W = 420, H = 170, L = 34, R = 8, T = 8, B = 28;
  function frame(label) {
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
    root.append(svg("title", {}, label));
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    return root;
  }
  function yAxis(root, max, fmt) {
    // Counts get whole-number ticks only: 0 and the maximum, and the middle when it is whole.
    const ticks = fmt === count && (max < 2 || max % 2) ? [0, 1] : [0, 0.5, 1];
    for (const f of ticks) {
      const y = H - B - f * (H - B - T);
      root.append(svg("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, fmt(max * f)));
    }
  }
  function hourLabels(root, hours, xOf) {
    const step = Math.max(1, Math.ceil(hours.length / 6));
    hours.forEach((h, i) => {
      if (i % step === 0) root.append(svg("text", { x: xOf(i), y: H - B + 14, "text-anchor": "middle" }, new Date(h.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })));
    });
  }
  const count = (v) => String(Math.round(v));
  function empty(text) { return el("p", { class: "empty", text }); }

  function latencyChart(c) {
    if (!c.latency_samples) return empty("No timed allocations in the window yet.");
    const buckets = c.latency;
    const max = Math.max(...buckets.map((b) => b.count));
    const label = `Allocation latency histogram, ${c.latency_samples} allocations`;
    const root = frame(label);
    yAxis(root, max, count);
    const bw = (W - L - R) / buckets.length;
    buckets.forEach((b, i) => {
      const h = max ? (b.count / max) * (H - B - T) : 0;
      const name = b.upper_ms === null ? "slower" : `≤${b.upper_ms >= 1000 ? `${b.upper_ms / 1000}s` : `${b.upper_ms}ms`}`;
      const bar = svg("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h, class: "bar" });
      bar.append(svg("title", {}, `${name}: ${b.count}`));
      root.append(bar);
      if (i % 2 === 0) root.append(svg("text", { x: L + i * bw + bw / 2, y: H - B + 14, "text-anchor": "middle" }, name));
    });
    return root;
  }

  function utilisationChart(c) {
    const pts = c.hours.map((h, i) => [i, h.utilisation]).filter(([, u]) => u !== null);
    if (!pts.length) return empty("No pool activity in the window yet.");
    const n = c.hours.length;
    const xOf = (i) => L + (n === 1 ? (W - L - R) / 2 : (i / (n - 1)) * (W - L - R));
    const yOf = (u) => H - B - u * (H - B - T);
    const root = frame(`Pool utilisation per hour over ${n} hours; band ${c.band[0] * 100}–${c.band[1] * 100} %`);
    root.append(svg("rect", { x: L, y: yOf(c.band[1]), width: W - L - R, height: yOf(c.band[0]) - yOf(c.band[1]), class: "band" }));
    yAxis(root, 1, (v) => `${Math.round(v * 100)}%`);
    root.append(svg("polyline", { points: pts.map(([i, u]) => `${xOf(i)},${yOf(u)}`).join(" "), class: "line" }));
    for (const [i, u] of pts) {
      const dot = svg("circle", { cx: xOf(i), cy: yOf(u), r: 2.5, class: "bar" });
      dot.append(svg("title", {}, `${Math.round(u * 100)} %`));
      root.append(dot);
    }
    hourLabels(root, c.hours, xOf);
    const wrap = el("div", {}, root);
    wrap.append(el("div", { class: "legend" }, el("span", {}, el("span", { class: "sw a" }), "utilisation"), el("span", {}, el("span", { class: "sw band" }), "40–80 % band")));
    return wrap;
  }

  function allocationChart(c) {
    const total = c.hours.reduce((s, h) => s + h.allocations + h.allocation_conflicts, 0);
    if (!total) return empty("No allocations in the window yet.");
    const n = c.hours.length;
    const max = Math.max(1, ...c.hours.map((h) => Math.max(h.allocations, h.allocation_conflicts)));
    const slot = (W - L - R) / n;
    const root = frame(`Allocations and allocation conflicts per hour over ${n} hours`);
    yAxis(root, max, count);
    c.hours.forEach((h, i) => {
      const bw = Math.min(16, Math.max(1, slot / 2 - 1));
      const a = (h.allocations / max) * (H - B - T), k = (h.allocation_conflicts / max) * (H - B - T);
      const ra = svg("rect", { x: L + i * slot, y: H - B - a, width: bw, height: a, class: "bar" });
      ra.append(svg("title", {}, `${h.allocations} allocations`));
      const rk = svg("rect", { x: L + i * slot + bw + 1, y: H - B - k, width: bw, height: k, class: "bar2" });
      rk.append(svg("title", {}, `${h.allocation_conflicts} allocation conflicts`));
      root.append(ra, rk);
    });
    hourLabels(root, c.hours, (i) => L + i * slot + slot / 2);
    const wrap = el("div", {}, root);
    wrap.append(el("div", { class: "legend" }, el("span", {}, el("span", { class: "sw a" }), "allocations"), el("span", {}, el("span", { class: "sw b" }), "allocation conflicts")));
    return wrap;
  }

  function mergeChart(c) {
    const total = c.hours.reduce((s, h) => s + h.merge_conflicts + h.merge_conflicts_resolved, 0);
    if (!total) return empty("No merge conflicts predicted in the window.");
    const n = c.hours.length;
    const max = Math.max(1, ...c.hours.map((h) => Math.max(h.merge_conflicts, h.merge_conflicts_resolved)));
    const slot = (W - L - R) / n;
    const predicted = c.hours.reduce((s, h) => s + h.merge_conflicts, 0);
    const resolved = c.hours.reduce((s, h) => s + h.merge_conflicts_resolved, 0);
    const root = frame(`Predicted merge conflicts per hour over ${n} hours: ${predicted} predicted, ${resolved} resolved before release`);
    yAxis(root, max, count);
    c.hours.forEach((h, i) => {
      const bw = Math.min(16, Math.max(1, slot / 2 - 1));
      const p = (h.merge_conflicts / max) * (H - B - T), r = (h.merge_conflicts_resolved / max) * (H - B - T);
      const rp = svg("rect", { x: L + i * slot, y: H - B - p, width: bw, height: p, class: "bar2" });
      rp.append(svg("title", {}, `${h.merge_conflicts} predicted merge conflicts`));
      const rr = svg("rect", { x: L + i * slot + bw + 1, y: H - B - r, width: bw, height: r, class: "bar3" });
      rr.append(svg("title", {}, `${h.merge_conflicts_resolved} resolved before release`));
      root.append(rp, rr);
    });
    hourLabels(root, c.hours, (i) => L + i * slot + slot / 2);
    const wrap = el("div", {}, root);
    wrap.append(el("div", { class: "legend" }, el("span", {}, el("span", { class: "sw b" }), "predicted merge conflicts"), el("span", {}, el("span", { class: "sw c" }), "resolved before release")));
    return wrap;
  }

  function renderCharts(d) {
    const c = d.charts;
    $("chart-latency").replaceChildren(latencyChart(c));
    $("chart-util").replaceChildren(utilisationChart(c));
    $("chart-alloc").replaceChildren(allocationChart(c));
    $("chart-merge").replaceChildren(mergeChart(c));
  }

  // ---- activity with filters ------------------------------------------------------------------
  function fillSelect(select, values) {
    const keep = select.value;
    const wanted = ["", ...values];
    if ([...select.options].map((o) => o.value).join("\n") === wanted.join("\n")) return;
    select.replaceChildren(...wanted.map((v) => el("option", { value: v, text: v || "all" })));
    select.value = wanted.includes(keep) ? keep : "";
  }
  function renderActivity() {
    if (!doc) return;
    const events = doc.events;
    fillSelect($("f-action"), [...new Set(events.map((e) => e.action))].sort());
    fillSelect($("f-agent"), [...new Set(events.map((e) => e.agent).filter(Boolean))].sort());
    const text = $("f-text").value.trim().toLowerCase();
    const action = $("f-action").value, agent = $("f-agent").value, problems = $("f-problems").checked;
    const shown = events.filter((e) => (!action || e.action === action) && (!agent || e.agent === agent) &&
      (!problems || e.tone !== "ok") &&
      (!text || [e.agent, e.branch, e.worktree, e.detail, e.outcome, e.action].some((v) => v && v.toLowerCase().includes(text))));
    $("f-count").textContent = `${shown.length} of ${events.length} events`;
    const rows = shown.map((e) => el("tr", { "data-event": e.id },
      el("td", { class: "mono nowrap", text: clock(e.ts), title: e.time }),
      el("td", { class: "mono", text: e.agent || "–" }),
      el("td", { text: e.action }),
      el("td", { class: "mono wrap", text: e.branch || "–" }),
      el("td", {}, badge(e.outcome, e.tone)),
      el("td", { class: "num", text: e.duration_ms === null ? "–" : String(e.duration_ms) }),
      el("td", { class: "mono", text: e.worktree || "–" }),
      el("td", { class: "wrap muted", text: e.detail })));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: events.length ? "No event matches the filters." : "No events yet." })));
    replaceRows($("event-rows"), rows);
  }
  for (const id of ["f-text", "f-action", "f-agent", "f-problems"]) $(id).addEventListener("input", renderActivity);
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());

  // ---- the live document ----------------------------------------------------------------------
  function render(d) {
    if (d.error && !d.pool) {
      $("error").hidden = false;
      $("error").textContent = `The store could not be read: ${d.error}`;
      return;
    }
    doc = d;
    skewMs = d.now * 1000 - Date.now();
    $("error").hidden = true;
    renderHeader(d); renderAlerts(d); renderSlots(d); renderConflicts(d); renderAgents(d); renderMetrics(d); renderCharts(d); renderActivity();
    probe.version = d.version;
    probe.renders.push({ version: d.version, newestEvent: d.events.length ? d.events[0].id : 0, at: Date.now() });
    if (probe.renders.length > 2000) probe.renders.splice(0, 1000);
  }
  function tick() {
    for (const node of document.querySelectorAll("[data-ago]")) if (node.dataset.ago) node.textContent = ago(Number(node.dataset.ago));
    for (const node of document.querySelectorAll("[data-left]")) if (node.dataset.left) node.textContent = leaseLeft(Number(node.dataset.left));
  }
  setInterval(tick, 1000);

  const stream = new EventSource("events");
  stream.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
  stream.addEventListener("open", () => { $("conn").textContent = "live"; });
  stream.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; });

  // ---- actions --------------------------------------------------------------------------------
  function notify(text, tone) {
    const box = el("div", { class: `tone-${tone}`, text });
    $("notice").replaceChildren(box);
  }
  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (_) { data = { code: `HTTP_${res.status}`, message: res.statusText }; }
    return { ok: res.ok, data };
  }
  function confirmDialog(title, body, okText) {
    const dialog = $("confirm");
    $("confirm-h").textContent = title;
    $("confirm-body").replaceChildren(...body);
    $("confirm-ok").textContent = okText;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }
  async function release(slot, force) {
    const { ok, data } = await post("api/release", { worktree_id: slot.id, force });
    if (ok) notify(`${data.worktree_id} released (${data.state})` + (data.rescue_ref ? `; its changes are in ${data.rescue_ref}` : ""), "ok");
    // The engine speaks to agents ("pass force=true"); here force is a button.
    else notify(`${data.code}: ${String(data.message).replace("pass force=true", "use Force release…")}`, "bad");
    return ok;
  }
  async function forceRelease(slot) {
    const { ok, data } = await post("api/release-preview", { worktree_id: slot.id });
    if (!ok) { notify(`${data.code}: ${data.message}`, "bad"); return; }
    const body = [el("p", { text: `Take ${data.worktree_id} back from agent ${data.agent || "nobody"}, even if it is still running` + (data.branch ? ` (branch ${data.branch}; the branch is kept)` : "") + "." })];
    if (data.dirty) {
      body.push(el("p", {}, "Its uncommitted work will first be saved to a new rescue ref under ", el("code", { text: data.rescue_ref }),
        " (named by the time of the release), then the slot is reset:"));
      const list = el("ul", {}, ...data.files.map((f) => el("li", { class: "mono", text: f })));
      if (data.more_files) list.append(el("li", { text: `and ${data.more_files} more` }));
      if (data.unsaved_commits) list.append(el("li", { text: `${data.unsaved_commits} commit(s) only on a detached HEAD` }));
      body.push(list);
    } else if (data.dirty === false) {
      body.push(el("p", { text: "It has no uncommitted work: nothing will be saved to a rescue ref." }));
    } else {
      body.push(el("p", { text: "Its directory could not be inspected; any work found will be saved to a rescue ref first." }));
    }
    if (await confirmDialog(`Force release ${data.worktree_id}?`, body, `Force release ${data.worktree_id}`)) await release(slot, true);
  }
  async function validate(repair) {
    if (repair && !(await confirmDialog("Validate and repair?", [el("p", { text: "Validation compares the records with git and the disk and fixes what is safe; any work in a slot it touches is saved to a rescue ref first." })], "Repair"))) return;
    notify(repair ? "Validating and repairing…" : "Validating…", "info");
    const { ok, data } = await post("api/validate", { repair });
    if (!ok) { notify(`${data.code}: ${data.message}`, "bad"); return; }
    const kinds = data.findings.map((f) => `${f.kind}${f.worktree_id ? ` (${f.worktree_id})` : ""}`);
    notify(data.findings.length ? `${data.findings.length} finding(s), ${data.repaired} repaired: ${kinds.join(", ")}` : `No findings (${Math.round(data.duration_ms)} ms).`, data.findings.length ? "warn" : "ok");
  }
  $("validate").addEventListener("click", () => validate(false));
  $("repair").addEventListener("click", () => validate(true));
})();
