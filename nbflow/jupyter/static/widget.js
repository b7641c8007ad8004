// nbflow WorkflowWidget front end (anywidget ESM; no build step, no dependencies).
//
// The Python side sends the laid-out SVG once (`svg`) and then throttled snapshots
// (`states`, `progress`, `rows`, `detail`). This file only paints: it toggles
// `nbflow-state-<state>` classes on the existing SVG nodes, it never re-lays out.
// DOM contract used by the browser tests:
//   .nbflow-widget[data-run-state][data-done][data-total]
//   .nbflow-progress > .nbflow-progress-bar (style.width = "NN%") + .nbflow-progress-text
//   .nbflow-dag svg g.node.nbflow-node.nbflow-state-<state>[data-task]
//   table.nbflow-table tr.nbflow-row[data-task][data-state]
//   .nbflow-detail[data-task] pre.nbflow-detail-{why,preview,stdout,stderr}
//   a failed task: .nbflow-detail-error (one line) + pre.nbflow-detail-user-traceback (the
//   user's frames) + details.nbflow-detail-full-traceback > pre.nbflow-detail-traceback
//   .nbflow-detail .nbflow-detail-displays > .nbflow-detail-display (captured displays)
//   kernel gone: .nbflow-widget[data-kernel="lost"][data-run-state="interrupted"] +
//   .nbflow-kernel-lost (what to do); the tasks it was running: nbflow-state-interrupted
//   .nbflow-detail code.nbflow-detail-load (the line that loads a finished task's output)
//   .nbflow-controls button.nbflow-{cancel,rerun,approve}, .nbflow-message
//   live (running tasks, from the `live` trait; drawn without asking the kernel, which a
//   blocking cell keeps busy):
//   g.nbflow-node > g.nbflow-node-live[data-fraction] > rect.nbflow-node-progress-bar (+ <title>: last line)
//   td.nbflow-col-now (progress · last line), td.nbflow-col-expected (expected duration)
//   .nbflow-detail[data-live="true"] .nbflow-detail-progress[data-done][data-total] + pre.nbflow-detail-stdout
//   .nbflow-detail-meta span.nbflow-detail-left[data-remaining] (its own estimate; the bar's ETA is
//   at least that: "ETA at least ..." while the rest is unknown)

const STATE_CLASSES = [
  "pending", "stale", "running", "retrying", "waiting", "awaiting_signal",
  "done", "restored", "failed", "cancelled", "skipped", "interrupted",
].map((s) => `nbflow-state-${s}`);
// States of a task in flight: what a dead kernel leaves "interrupted".
const ACTIVE = new Set(["running", "retrying", "waiting", "awaiting_signal"]);
// The class ipywidgets puts on a view whose kernel connection is gone (its widget manager
// disconnects every model when the kernel restarts or dies and is auto-restarted).
const DISCONNECTED = "jupyter-widgets-disconnected";

// Preferred mime type of a captured display, best first (an image over its text repr).
const DISPLAY_ORDER = ["image/png", "image/jpeg", "image/svg+xml", "text/html", "text/plain"];
function displayNode(bundle) {
  for (const mime of DISPLAY_ORDER) {
    let value = bundle && bundle[mime];
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) value = value.join("");
    if (mime === "image/png" || mime === "image/jpeg") {
      const img = document.createElement("img");
      img.src = `data:${mime};base64,${String(value).trim()}`;
      img.alt = "figure";
      return img;
    }
    if (mime === "image/svg+xml") {
      const img = document.createElement("img");
      img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(value)}`;
      img.alt = "figure";
      return img;
    }
    if (mime === "text/html") {
      const div = document.createElement("div");
      // JupyterLab's class for rendered HTML outputs: a DataFrame's table looks as under a cell
      div.className = "nbflow-detail-display-html jp-RenderedHTMLCommon";
      div.innerHTML = value; // the task's own output, shown as the notebook would show it
      return div;
    }
    const pre = document.createElement("pre");
    pre.textContent = String(value);
    return pre;
  }
  return null;
}

function h(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 10) return `${seconds.toFixed(2)}s`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
}

// The kernel this view's model lives in is gone when its status says it restarted or
// died, or the notebook switched to another kernel: the model's comm belonged to the old
// process, so nothing will ever update this view again. JupyterLab 4 and Notebook 7 share
// the widget manager that exposes the kernel (`widget_manager.kernel`, a Lumino
// KernelConnection, and its document's session context); elsewhere (no such API) the
// `jupyter-widgets-disconnected` class ipywidgets sets on the view is the signal.
const GONE = new Set(["restarting", "autorestarting", "dead"]);
function watchKernel(manager, onLost) {
  const undo = [];
  const hook = (signal, fn) => {
    if (signal && typeof signal.connect === "function") {
      signal.connect(fn);
      undo.push(() => signal.disconnect(fn));
    }
  };
  let kernel = null;
  try {
    kernel = manager ? manager.kernel : null;
  } catch (err) {
    kernel = null;
  }
  if (kernel) {
    if (GONE.has(kernel.status)) onLost();
    hook(kernel.statusChanged, (_, status) => { if (GONE.has(status)) onLost(); });
    hook(kernel.connectionStatusChanged, (_, status) => { if (status === "disconnected") onLost(); });
  }
  const session = manager && manager.context ? manager.context.sessionContext : null;
  if (session) {
    hook(session.kernelChanged, (_, change) => {
      if (kernel && change && change.oldValue && change.oldValue.id === kernel.id) onLost();
    });
  }
  return () => { for (const fn of undo) fn(); };
}

// `rows` and `tasks` come as JSON text (the kernel sends them so: see _json_text in
// widget.py); parsed once per value, not once per reader.
function jsonTrait(model, name) {
  const cache = { raw: undefined, value: [] };
  return () => {
    const raw = model.get(name);
    if (raw !== cache.raw) {
      cache.raw = raw;
      cache.value = typeof raw === "string" ? (raw ? JSON.parse(raw) : []) : raw || [];
    }
    return cache.value;
  };
}

function render({ model, el }) {
  const getRows = jsonTrait(model, "rows");
  const getTasks = jsonTrait(model, "tasks");
  const root = h("div", "nbflow-widget");
  el.appendChild(root);

  // header: title + progress bar
  const header = h("div", "nbflow-header");
  const title = h("span", "nbflow-title");
  const progress = h("div", "nbflow-progress");
  const track = h("div", "nbflow-progress-track");
  const bar = h("div", "nbflow-progress-bar");
  const text = h("span", "nbflow-progress-text");
  track.appendChild(bar);
  progress.append(track, text);
  header.append(title, progress);

  // controls (background runs only)
  const controls = h("div", "nbflow-controls");
  const cancel = h("button", "nbflow-cancel", "Cancel run");
  const rerun = h("button", "nbflow-rerun", "Re-run from selected");
  const signalName = h("input", "nbflow-signal-name");
  signalName.placeholder = "signal name";
  const payload = h("textarea", "nbflow-signal-payload");
  payload.rows = 1;
  payload.value = "true";
  payload.title = "JSON payload";
  const approve = h("button", "nbflow-approve", "Send signal");
  const message = h("span", "nbflow-message");
  controls.append(cancel, rerun, signalName, payload, approve, message);

  // graph, table, detail
  const dag = h("div", "nbflow-dag");
  const lower = h("div", "nbflow-lower");
  const tableBox = h("div", "nbflow-table-box");
  const table = h("table", "nbflow-table");
  const thead = h("thead");
  const headRow = h("tr");
  for (const name of ["Task", "State", "Attempts", "Duration", "Items", "Expected", "Now"]) {
    headRow.appendChild(h("th", "", name));
  }
  thead.appendChild(headRow);
  const tbody = h("tbody");
  table.append(thead, tbody);
  const more = h("div", "nbflow-table-more");
  tableBox.append(table, more);
  const detail = h("div", "nbflow-detail");
  lower.append(tableBox, detail);
  const lost = h("div", "nbflow-kernel-lost");
  lost.style.display = "none";
  root.append(header, lost, controls, dag, lower);

  let nodes = new Map(); // task id -> <g> element
  let painted = new Map(); // task id -> state class currently applied

  function select(taskId) {
    model.set("selected", model.get("selected") === taskId ? "" : taskId);
    model.save_changes();
  }

  function drawSvg() {
    dag.innerHTML = "";
    nodes = new Map();
    painted = new Map();
    const svg = model.get("svg");
    if (!svg) {
      dag.appendChild(h("div", "nbflow-dag-note", model.get("svg_note") || "No graph."));
      return;
    }
    dag.innerHTML = svg; // inline SVG markup: nodes are real DOM elements
    for (const g of dag.querySelectorAll("g.nbflow-node")) {
      const taskId = g.getAttribute("data-task");
      nodes.set(taskId, g);
      g.addEventListener("click", () => select(taskId));
    }
  }

  // The kernel is gone (dead, restarted, connection lost): `states` can never change
  // again, so what was in flight is painted interrupted and the clock stops.
  let kernelLost = false;
  function shownState(state) {
    const s = state || "pending";
    return kernelLost && ACTIVE.has(s) ? "interrupted" : s;
  }

  function paint() {
    const states = model.get("states") || {};
    for (const [taskId, g] of nodes) {
      const cls = `nbflow-state-${shownState(states[taskId])}`;
      if (painted.get(taskId) === cls) continue;
      g.classList.remove(...STATE_CLASSES);
      g.classList.add(cls);
      painted.set(taskId, cls);
    }
    const sel = model.get("selected");
    for (const [taskId, g] of nodes) g.classList.toggle("nbflow-selected", taskId === sel);
  }

  // A running task's progress, drawn on its node: a thin bar along the bottom of its
  // shape (and its last line as the node's tooltip). Removed once it stops running.
  const SVG_NS = "http://www.w3.org/2000/svg";
  function paintLive() {
    const live = model.get("live") || {};
    for (const [taskId, g] of nodes) {
      const info = live[taskId];
      let overlay = g.querySelector(":scope > g.nbflow-node-live");
      const p = info && info.progress;
      const fraction = p && p[1] ? Math.max(0, Math.min(1, p[0] / p[1])) : null;
      if (!info || (fraction === null && !info.line)) {
        if (overlay) overlay.remove();
        continue;
      }
      if (!overlay) {
        const shape = g.querySelector(":scope > path, :scope > polygon, :scope > ellipse");
        if (!shape) continue;
        const box = shape.getBBox();
        overlay = document.createElementNS(SVG_NS, "g");
        overlay.setAttribute("class", "nbflow-node-live");
        const track = document.createElementNS(SVG_NS, "rect");
        const fill = document.createElementNS(SVG_NS, "rect");
        const height = Math.max(3, Math.min(5, box.height * 0.14));
        for (const [r, cls] of [[track, "nbflow-node-progress-track"], [fill, "nbflow-node-progress-bar"]]) {
          r.setAttribute("class", cls);
          r.setAttribute("x", String(box.x + 4));
          r.setAttribute("y", String(box.y + box.height - height - 3));
          r.setAttribute("height", String(height));
          r.setAttribute("rx", "1.5");
        }
        track.setAttribute("width", String(Math.max(0, box.width - 8)));
        overlay.dataset.width = String(Math.max(0, box.width - 8));
        const tip = document.createElementNS(SVG_NS, "title");
        overlay.append(track, fill, tip);
        g.appendChild(overlay);
      }
      const width = Number(overlay.dataset.width || 0);
      const fill = overlay.querySelector(".nbflow-node-progress-bar");
      fill.setAttribute("width", String(fraction === null ? 0 : width * fraction));
      overlay.querySelector(".nbflow-node-progress-track").style.display = fraction === null ? "none" : "";
      overlay.dataset.fraction = fraction === null ? "" : fraction.toFixed(3);
      overlay.querySelector("title").textContent = [info.text, info.line].filter(Boolean).join(" · ");
    }
  }

  let receivedAt = Date.now();
  function drawProgress() {
    const p = model.get("progress") || {};
    receivedAt = Date.now();
    title.textContent = `${model.get("workflow")}${model.get("instance_id") ? " / " + model.get("instance_id") : ""}`;
    bar.style.width = `${Math.round(100 * (p.fraction || 0))}%`;
    text.textContent = p.text || "";
    root.dataset.runState = kernelLost && p.run_state === "running" ? "interrupted" : p.run_state || "idle";
    root.dataset.done = String(p.done ?? 0);
    root.dataset.total = String(p.total ?? 0);
    progress.classList.toggle("nbflow-progress-failed", (p.counts || {}).failed > 0);
    if (p.signals && p.signals.length && !signalName.value) signalName.value = p.signals[0];
  }

  // a running task's own estimate, in its pane: counts down with the bar's ETA
  const leftText = (seconds) => `about ${fmt(Math.max(0, seconds))} left`;
  let liveAt = Date.now();
  // Between pushes (a long task sends no events) keep the elapsed time ticking locally.
  const ticker = setInterval(() => {
    const p = model.get("progress") || {};
    if (kernelLost || p.run_state !== "running" || p.elapsed === null || p.elapsed === undefined) return;
    const dt = (Date.now() - receivedAt) / 1000;
    let line = `${p.base} · elapsed ${fmt(p.elapsed + dt)}`;
    if (p.eta !== null && p.eta !== undefined) line += ` · ETA ${fmt(Math.max(0, p.eta - dt))}`;
    else if (p.eta_floor && p.eta_floor - dt > 0) line += ` · ETA at least ${fmt(p.eta_floor - dt)}`;
    else if (p.eta_unknown) line += " · ETA unknown";
    text.textContent = line;
    const left = detail.querySelector(".nbflow-detail-left");
    if (left) left.textContent = leftText(Number(left.dataset.remaining) - (Date.now() - liveAt) / 1000);
  }, 1000);

  function drawRows() {
    const rows = getRows();
    const sel = model.get("selected");
    tbody.innerHTML = "";
    for (const [taskId, rowState, attempts, duration, items, expected, now] of rows) {
      const state = shownState(rowState);
      const tr = h("tr", "nbflow-row");
      tr.dataset.task = taskId;
      tr.dataset.state = state;
      if (taskId === sel) tr.classList.add("nbflow-selected");
      tr.appendChild(h("td", "nbflow-col-task", taskId));
      const stateCell = h("td", "nbflow-col-state");
      stateCell.appendChild(h("span", `nbflow-badge nbflow-state-${state}`, state.replace("_", " ")));
      tr.appendChild(stateCell);
      tr.appendChild(h("td", "nbflow-col-attempts", attempts ? String(attempts) : ""));
      tr.appendChild(h("td", "nbflow-col-duration", duration));
      tr.appendChild(h("td", "nbflow-col-items", items));
      tr.appendChild(h("td", "nbflow-col-expected", expected || ""));
      const nowCell = h("td", "nbflow-col-now", now || "");
      if (now) nowCell.title = now;
      tr.appendChild(nowCell);
      tr.addEventListener("click", () => select(taskId));
      tbody.appendChild(tr);
    }
    const total = getTasks().length;
    more.textContent = rows.length < total ? `${total - rows.length} more tasks not listed` : "";
  }

  function section(name, body) {
    if (!body) return;
    detail.appendChild(h("div", "nbflow-detail-label", name));
    detail.appendChild(h("pre", `nbflow-detail-${name}`, body));
  }

  // What the detail pane shows: the kernel's `detail` of the selected task, or — before
  // the kernel answered the click (a blocking cell keeps it busy) — what the table row
  // and the `live` view know of it, so a running task's output shows at once.
  const lastLive = new Map(); // task id -> its last live view (shown until the kernel answers)
  function currentDetail() {
    const sel = model.get("selected");
    const d = model.get("detail") || {};
    if (!sel) return {};
    if (d.task === sel) return d;
    const row = getRows().find((r) => r[0] === sel);
    const live = (model.get("live") || {})[sel] || lastLive.get(sel);
    if (!row && !live) return {};
    const out = {
      task: sel,
      state: row ? row[1] : live.state,
      attempts: row ? row[2] : live.attempts,
      duration_text: row && row[3] ? row[3] : "-",
      expected_text: row ? row[5] : "",
      pending_kernel: true,
    };
    if (live) {
      Object.assign(out, {
        stdout: live.stdout, stderr: live.stderr, progress: live.progress, progress_text: live.text,
        last_line: live.line, map: live.map, live: out.state === "running" || out.state === "retrying",
      });
    }
    return out;
  }

  function drawDetail() {
    const d = currentDetail();
    detail.innerHTML = "";
    if (!d.task) {
      delete detail.dataset.task;
      delete detail.dataset.state;
      delete detail.dataset.live;
      detail.appendChild(h("div", "nbflow-detail-hint", "Click a task in the graph or the table for its output."));
      return;
    }
    const state = shownState(d.state);
    detail.dataset.task = d.task;
    detail.dataset.state = state === "pending" && !d.state ? "" : state;
    detail.dataset.live = d.live && !kernelLost ? "true" : "false";
    detail.appendChild(h("div", "nbflow-detail-title", d.task));
    const meta = [`state: ${state}`, `attempts: ${d.attempts}`, `duration: ${d.duration_text}`];
    if (d.expected_text) meta.push(`usually: ${d.expected_text}`);
    const live = (model.get("live") || {})[d.task];
    const remaining = !kernelLost && live && live.remaining !== null && live.remaining !== undefined ? live.remaining : null;
    const more = [];
    if (d.worker) more.push(`worker: ${d.worker}`);
    if (d.map) more.push(`items: ${d.map[0]}/${d.map[1]}${d.map[2] ? ` (${d.map[2]} failed)` : ""}`);
    if (d.signal) more.push(`waiting for signal: ${d.signal}`);
    if (d.reason) more.push(`reason: ${d.reason}`);
    const metaBox = h("div", "nbflow-detail-meta", meta.join(" · "));
    if (remaining !== null) {
      metaBox.append(" · ");
      const left = h("span", "nbflow-detail-left", leftText(remaining - (Date.now() - liveAt) / 1000));
      left.dataset.remaining = String(remaining);
      metaBox.append(left);
    }
    if (more.length) metaBox.append(` · ${more.join(" · ")}`);
    detail.appendChild(metaBox);
    if (d.progress || d.progress_text) {
      const p = d.progress || [0, null, ""];
      const box = h("div", "nbflow-detail-progress");
      box.dataset.done = String(p[0]);
      box.dataset.total = p[1] === null || p[1] === undefined ? "" : String(p[1]);
      if (p[1]) {
        const track = h("div", "nbflow-detail-progress-track");
        const fill = h("div", "nbflow-detail-progress-bar");
        fill.style.width = `${Math.round(100 * Math.max(0, Math.min(1, p[0] / p[1])))}%`;
        track.appendChild(fill);
        box.appendChild(track);
      }
      box.appendChild(h("span", "nbflow-detail-progress-text", d.progress_text || ""));
      detail.appendChild(box);
    }
    if (d.description) detail.appendChild(h("div", "nbflow-detail-description", d.description));
    if (d.load) {
      const load = h("div", "nbflow-detail-loadline", "load its output: ");
      load.appendChild(h("code", "nbflow-detail-load", d.load));
      detail.appendChild(load);
    }
    section("why", d.why);
    drawFailure(d);
    const previewNode = d.preview_bundle && Object.keys(d.preview_bundle).length ? displayNode(d.preview_bundle) : null;
    if (previewNode) {
      detail.appendChild(h("div", "nbflow-detail-label", "preview"));
      const box = h("div", "nbflow-detail-preview-rich");
      box.appendChild(previewNode);
      detail.appendChild(box);
    } else {
      section("preview", d.preview);
    }
    section("stdout", d.stdout);
    section("stderr", d.stderr);
    const displays = (d.displays || []).map(displayNode).filter(Boolean);
    if (displays.length) {
      detail.appendChild(h("div", "nbflow-detail-label", "displays"));
      const box = h("div", "nbflow-detail-displays");
      for (const node of displays) {
        const item = h("div", "nbflow-detail-display");
        item.appendChild(node);
        box.appendChild(item);
      }
      detail.appendChild(box);
    }
  }

  // A failed task: the one-line error first, then only the user's frames (nbflow's and
  // the event loop's are filtered out by the kernel), the full traceback behind a toggle.
  function drawFailure(d) {
    const line = d.error_line || d.error || "";
    if (!line && !d.traceback) return;
    if (line) detail.appendChild(h("div", "nbflow-detail-error", line));
    const mine = (d.user_traceback || "").trim();
    if (mine && mine !== line.trim()) {
      detail.appendChild(h("div", "nbflow-detail-label", "your code"));
      detail.appendChild(h("pre", "nbflow-detail-user-traceback", mine));
    }
    if (d.traceback) {
      const full = h("details", "nbflow-detail-full-traceback");
      full.appendChild(h("summary", "", "full traceback"));
      full.appendChild(h("pre", "nbflow-detail-traceback", d.traceback));
      detail.appendChild(full);
    }
  }

  function drawKernelLost() {
    const p = model.get("progress") || {};
    const states = model.get("states") || {};
    const running = Object.keys(states).filter((t) => ACTIVE.has(states[t]));
    root.dataset.kernel = "lost";
    lost.style.display = "";
    if (p.run_state === "running") {
      const during = running.length ? ` during ${running.slice(0, 3).map((t) => `\`${t}\``).join(", ")}` : "";
      lost.textContent = `The kernel stopped${during}; ${p.done ?? 0} of ${p.total ?? 0} tasks are saved — re-run this cell to resume.`;
      const elapsed = p.elapsed === null || p.elapsed === undefined ? "" : ` · stopped after ${fmt(p.elapsed + (Date.now() - receivedAt) / 1000)}`;
      text.textContent = `${p.base || ""} · interrupted${elapsed}`;
    } else {
      lost.textContent = "The kernel has stopped: this is where the run ended. Re-run the cell to follow a new run.";
    }
  }

  function onKernelLost() {
    if (kernelLost) return;
    kernelLost = true;
    clearInterval(ticker);
    const wasRunning = (model.get("progress") || {}).run_state === "running";
    drawKernelLost();
    root.dataset.runState = wasRunning ? "interrupted" : root.dataset.runState;
    paint();
    drawRows();
    drawDetail();
    for (const b of [cancel, rerun, approve]) b.disabled = true;
  }
  function checkKernel() {
    if (el.classList.contains(DISCONNECTED)) onKernelLost();
  }
  const kernelWatch = new MutationObserver(checkKernel);
  kernelWatch.observe(el, { attributes: true, attributeFilter: ["class"] });
  const unwatchKernel = watchKernel(model.widget_manager, onKernelLost);

  function drawControls() {
    const on = !!model.get("controls_enabled");
    controls.style.display = on ? "" : "none";
    rerun.disabled = !model.get("selected");
    message.textContent = model.get("message") || "";
  }

  cancel.addEventListener("click", () => model.send({ action: "cancel" }));
  rerun.addEventListener("click", () => model.send({ action: "rerun", task: model.get("selected") }));
  approve.addEventListener("click", () =>
    model.send({ action: "signal", name: signalName.value, payload: payload.value }));

  const onSvg = () => { drawSvg(); paint(); paintLive(); };
  const onStates = () => paint();
  const onSelected = () => { paint(); drawRows(); drawControls(); drawDetail(); };
  const onLive = () => {
    liveAt = Date.now();
    for (const [taskId, info] of Object.entries(model.get("live") || {})) lastLive.set(taskId, info);
    paintLive();
    if (currentDetail().pending_kernel || currentDetail().live) drawDetail();
  };
  // trait -> what repaints when it changes (registered here, removed on teardown)
  const listeners = [
    ["change:svg", onSvg],
    ["change:states", onStates],
    ["change:live", onLive],
    ["change:progress", drawProgress],
    ["change:rows", drawRows],
    ["change:detail", drawDetail],
    ["change:selected", onSelected],
    ["change:controls_enabled", drawControls],
    ["change:message", drawControls],
    ["comm_live_update", checkKernel],
  ];
  for (const [name, fn] of listeners) model.on(name, fn);

  onSvg();
  drawProgress();
  drawRows();
  drawDetail();
  drawControls();
  checkKernel();

  return () => {
    clearInterval(ticker);
    kernelWatch.disconnect();
    unwatchKernel();
    for (const [name, fn] of listeners) model.off(name, fn);
  };
}

export default { render };
