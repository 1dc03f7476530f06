// fleetcmd dashboard: progressive enhancement only. Every page works without this file;
// with it, progress updates live (server-sent events), forms reveal only the fields that
// apply, JSON fields validate as you type, and dangerous posts ask for confirmation.
"use strict";

const ORDER = ["success", "failure", "timeout", "expired", "cancelled", "running", "delivered", "sent",
  "processing", "pending"];
const FINAL = new Set(["success", "failure", "expired", "timeout", "cancelled"]);

function fmt(n) { return Number(n || 0).toLocaleString("en-US"); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fillBar(bar, counts) {
  const total = Object.values(counts || {}).reduce((a, b) => a + b, 0) || 1;
  bar.replaceChildren(...ORDER.filter((s) => counts[s]).map((s) => {
    const seg = el("span", { class: "seg s-" + s, title: s + ": " + fmt(counts[s]) });
    seg.style.width = (100 * counts[s] / total).toFixed(3) + "%";
    return seg;
  }));
}

function badge(status) {
  return el("span", { class: "badge st-" + status }, status.replace(/[_-]/g, " "));
}

// The commands table is one server-rendered page; while counts move, re-read that same page
// (at most every 2 s) and swap the rows, so statuses and results stay current too.
let tableTimer = null;
async function refreshTable() {
  tableTimer = null;
  const table = document.querySelector("[data-live-table]");
  if (!table) return;
  try {
    const resp = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.querySelector("[data-live-table] tbody");
    if (fresh) table.querySelector("tbody").replaceWith(document.adoptNode(fresh));
  } catch (e) { /* the next change tries again */ }
}
function scheduleTable(now) {
  if (now) { if (tableTimer) clearTimeout(tableTimer); refreshTable(); return; }
  if (!tableTimer) tableTimer = setTimeout(refreshTable, 2000);
}

// -- one task: counts, bar, status, parents --------------------------------------------------
function watchTask(scope) {
  if (scope.dataset.final === "1" || !window.EventSource) return;
  const source = new EventSource(scope.dataset.sse);
  let seen = 0;
  source.addEventListener("progress", (ev) => {
    if (seen++) scheduleTable(false);
    const t = JSON.parse(ev.data);
    const bars = scope.querySelectorAll(".task-head [data-live-bar], .tree > li > ul > li:not([data-parent]) [data-live-bar]");
    bars.forEach((b) => fillBar(b, t.counts));
    scope.querySelectorAll("[data-live-pct]").forEach((e) => { e.textContent = Math.floor(t.progress * 100) + "%"; });
    scope.querySelectorAll("[data-live-done]").forEach((e) => { e.textContent = fmt(t.done); });
    scope.querySelectorAll("[data-live-total]").forEach((e) => { e.textContent = fmt(t.total); });
    scope.querySelectorAll("[data-count]").forEach((e) => { e.textContent = fmt(t.counts[e.dataset.count]); });
    scope.querySelectorAll("[data-live-status]").forEach((e) => e.replaceChildren(badge(t.status)));
    for (const [id, p] of Object.entries(t.parents || {})) {
      const li = scope.querySelector('[data-parent="' + id + '"]');
      if (!li) continue;
      const bar = li.querySelector("[data-live-bar]");
      if (bar) fillBar(bar, p.counts);
      const st = li.querySelector("[data-live-parent-status]");
      if (st) st.replaceChildren(badge(p.status));
      const tot = li.querySelector("[data-live-parent-total]");
      if (tot) tot.textContent = fmt(Object.values(p.counts).reduce((a, b) => a + b, 0));
    }
    if (t.completed_at) {
      scope.querySelectorAll("[data-live-completed]").forEach((e) => { e.textContent = "just now"; });
    }
  });
  source.addEventListener("done", () => {
    source.close();
    scheduleTable(true);
    scope.dataset.final = "1";
    scope.querySelectorAll("[data-live-hide-when-final]").forEach((e) => { e.hidden = true; });
    document.querySelectorAll(".task-head .live-dot").forEach((e) => e.remove());
  });
  source.addEventListener("error", (ev) => {
    if (ev.data) source.close(); // the task is gone; a network error just reconnects
  });
}

// -- one long command: progress and output, as its agent reports them ----------------------------
function watchCommand(scope) {
  if (scope.dataset.final === "1" || !window.EventSource) return;
  const source = new EventSource(scope.dataset.sseCommand);
  const out = scope.querySelector("[data-testid=command-output]");
  source.addEventListener("progress", (ev) => {
    const c = JSON.parse(ev.data);
    const pct = c.progress && c.progress.percent != null ? c.progress.percent : null;
    scope.querySelector("[data-testid=command-percent]").textContent = pct == null ? "–" : Math.floor(pct) + "%";
    scope.querySelector("[data-command-bar]").style.width = (pct || 0) + "%";
    scope.querySelector("[data-testid=command-message]").textContent = (c.progress && c.progress.message) || "";
    scope.querySelector("[data-command-status]").replaceChildren(badge(c.status));
    scope.querySelector("[data-testid=command-output-size]").textContent = fmt(c.output.bytes) + " bytes";
  });
  source.addEventListener("output", (ev) => {
    const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.append(document.createTextNode(JSON.parse(ev.data).chunks.map((c) => c.data).join("")));
    if (stick) out.scrollTop = out.scrollHeight;
  });
  source.addEventListener("done", () => {
    source.close();
    scope.dataset.final = "1";
    scope.querySelectorAll(".live-dot").forEach((e) => e.remove());
  });
  source.addEventListener("error", (ev) => {
    if (ev.data) source.close();
  });
}

// -- the overview's running tasks --------------------------------------------------------------
function watchTasks(tbody) {
  if (!window.EventSource) return;
  const source = new EventSource(tbody.dataset.sseTasks);
  source.addEventListener("tasks", (ev) => {
    const tasks = JSON.parse(ev.data);
    if (!tasks.length) {
      const row = el("tr", { class: "empty" });
      row.append(el("td", { colspan: "5" }, "Nothing running."));
      tbody.replaceChildren(row);
      return;
    }
    tbody.replaceChildren(...tasks.map((t) => {
      const row = el("tr");
      const link = el("a", { href: "/app/tasks/" + t.id }, "#" + t.id);
      const idCell = el("td"); idCell.append(link);
      const prog = el("div", { class: "progress" });
      const bar = el("div", { class: "bar", "data-live-bar": "" });
      fillBar(bar, t.counts);
      prog.append(bar, el("span", { class: "pct" }, Math.floor(t.progress * 100) + "%"));
      const progCell = el("td"); progCell.append(prog, el("span", { class: "muted small" }, fmt(t.done) + " / " + fmt(t.total)));
      const when = el("td", {}, new Date(t.created_at).toISOString().slice(11, 19) + " UTC");
      row.append(idCell, el("td", {}, t.type), el("td", {}, t.user), progCell, when);
      return row;
    }));
  });
}

// -- forms ---------------------------------------------------------------------------------------
function showWhen(form) {
  const fields = form.querySelectorAll("[data-show-when]");
  const update = () => fields.forEach((f) => {
    const ctl = form.elements[f.dataset.showWhen];
    if (!ctl) return;
    f.hidden = !f.dataset.showValues.split(",").includes(ctl.value);
  });
  form.addEventListener("change", update);
  update();
}

function jsonCheck(area) {
  const status = area.form.querySelector('[data-json-status-for="' + area.name + '"]');
  const raw = area.value.trim();
  let message = "";
  if (!raw) {
    message = area.dataset.required !== undefined ? "required" : "";
  } else {
    try {
      const value = JSON.parse(raw);
      const want = area.dataset.jsonType || "object";
      const isArray = Array.isArray(value);
      if (want === "object" && (isArray || value === null || typeof value !== "object")) message = "must be a JSON object";
      if (want === "array" && !isArray) message = "must be a JSON array";
    } catch (e) {
      message = "invalid JSON: " + e.message;
    }
  }
  const fieldHidden = area.closest(".field").hidden;
  if (status) {
    status.textContent = message ? message : (raw ? "valid JSON " + (area.dataset.jsonType || "object") : "");
    status.className = "json-status " + (message ? "bad" : "ok");
  }
  area.classList.toggle("json-bad", !!message);
  return fieldHidden || !message || (message === "required" && area.dataset.required === undefined);
}

function enhanceForm(form) {
  showWhen(form);
  const editors = form.querySelectorAll("textarea.json-editor");
  editors.forEach((area) => {
    area.addEventListener("input", () => jsonCheck(area));
    area.addEventListener("keydown", (ev) => {
      if (ev.key === "Tab" && !ev.shiftKey) {
        ev.preventDefault();
        area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
      }
    });
    if (area.value.trim()) jsonCheck(area);
  });
  form.querySelectorAll("[data-json-format]").forEach((btn) => btn.addEventListener("click", () => {
    const area = document.getElementById(btn.dataset.jsonFormat);
    try { area.value = JSON.stringify(JSON.parse(area.value), null, 2); } catch (e) { /* shown by jsonCheck */ }
    jsonCheck(area);
  }));
  form.addEventListener("submit", (ev) => {
    let ok = true;
    editors.forEach((area) => {
      const good = jsonCheck(area);
      const err = form.querySelector('[data-error-for="' + area.name + '"]');
      if (!good) {
        ok = false;
        if (err) { err.textContent = form.querySelector('[data-json-status-for="' + area.name + '"]').textContent; err.hidden = false; }
        area.closest(".field").classList.add("invalid");
      }
    });
    if (!ok) { ev.preventDefault(); form.querySelector(".invalid textarea, .invalid input")?.focus(); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-sse]").forEach(watchTask);
  document.querySelectorAll("[data-sse-tasks]").forEach(watchTasks);
  document.querySelectorAll("[data-sse-command]").forEach(watchCommand);
  document.querySelectorAll("form[data-task-form]").forEach(enhanceForm);
  document.querySelectorAll("form[data-confirm]").forEach((f) => f.addEventListener("submit", (ev) => {
    if (!window.confirm(f.dataset.confirm)) ev.preventDefault();
  }));
});
