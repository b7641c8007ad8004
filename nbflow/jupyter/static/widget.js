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
//   .nbflow-detail[data-task] pre.nbflow-detail-{preview,stdout,stderr,traceback}
//   .nbflow-controls button.nbflow-{cancel,rerun,approve}, .nbflow-message

const STATE_CLASSES = [
  "pending", "stale", "running", "retrying", "waiting", "awaiting_signal",
  "done", "restored", "failed", "cancelled", "skipped",
].map((s) => `nbflow-state-${s}`);

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

function render({ model, el }) {
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
  for (const name of ["Task", "State", "Attempts", "Duration", "Items"]) headRow.appendChild(h("th", "", name));
  thead.appendChild(headRow);
  const tbody = h("tbody");
  table.append(thead, tbody);
  const more = h("div", "nbflow-table-more");
  tableBox.append(table, more);
  const detail = h("div", "nbflow-detail");
  lower.append(tableBox, detail);
  root.append(header, controls, dag, lower);

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

  function paint() {
    const states = model.get("states") || {};
    for (const [taskId, g] of nodes) {
      const cls = `nbflow-state-${states[taskId] || "pending"}`;
      if (painted.get(taskId) === cls) continue;
      g.classList.remove(...STATE_CLASSES);
      g.classList.add(cls);
      painted.set(taskId, cls);
    }
    const sel = model.get("selected");
    for (const [taskId, g] of nodes) g.classList.toggle("nbflow-selected", taskId === sel);
  }

  let receivedAt = Date.now();
  function drawProgress() {
    const p = model.get("progress") || {};
    receivedAt = Date.now();
    title.textContent = `${model.get("workflow")}${model.get("instance_id") ? " / " + model.get("instance_id") : ""}`;
    bar.style.width = `${Math.round(100 * (p.fraction || 0))}%`;
    text.textContent = p.text || "";
    root.dataset.runState = p.run_state || "idle";
    root.dataset.done = String(p.done ?? 0);
    root.dataset.total = String(p.total ?? 0);
    progress.classList.toggle("nbflow-progress-failed", (p.counts || {}).failed > 0);
    if (p.signals && p.signals.length && !signalName.value) signalName.value = p.signals[0];
  }

  // Between pushes (a long task sends no events) keep the elapsed time ticking locally.
  const ticker = setInterval(() => {
    const p = model.get("progress") || {};
    if (p.run_state !== "running" || p.elapsed === null || p.elapsed === undefined) return;
    const dt = (Date.now() - receivedAt) / 1000;
    let line = `${p.base} · elapsed ${fmt(p.elapsed + dt)}`;
    if (p.eta !== null && p.eta !== undefined) line += ` · ETA ${fmt(Math.max(0, p.eta - dt))}`;
    text.textContent = line;
  }, 1000);

  function drawRows() {
    const rows = model.get("rows") || [];
    const sel = model.get("selected");
    tbody.innerHTML = "";
    for (const [taskId, state, attempts, duration, items] of rows) {
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
      tr.addEventListener("click", () => select(taskId));
      tbody.appendChild(tr);
    }
    const total = (model.get("tasks") || []).length;
    more.textContent = rows.length < total ? `${total - rows.length} more tasks not listed` : "";
  }

  function section(name, body) {
    if (!body) return;
    detail.appendChild(h("div", "nbflow-detail-label", name));
    detail.appendChild(h("pre", `nbflow-detail-${name}`, body));
  }

  function drawDetail() {
    const d = model.get("detail") || {};
    detail.innerHTML = "";
    if (!d.task) {
      delete detail.dataset.task;
      detail.appendChild(h("div", "nbflow-detail-hint", "Click a task in the graph or the table for its output."));
      return;
    }
    detail.dataset.task = d.task;
    detail.appendChild(h("div", "nbflow-detail-title", d.task));
    const meta = [`state: ${d.state}`, `attempts: ${d.attempts}`, `duration: ${d.duration_text}`];
    if (d.worker) meta.push(`worker: ${d.worker}`);
    if (d.map) meta.push(`items: ${d.map[0]}/${d.map[1]}${d.map[2] ? ` (${d.map[2]} failed)` : ""}`);
    if (d.signal) meta.push(`waiting for signal: ${d.signal}`);
    if (d.reason) meta.push(`reason: ${d.reason}`);
    detail.appendChild(h("div", "nbflow-detail-meta", meta.join(" · ")));
    if (d.description) detail.appendChild(h("div", "nbflow-detail-description", d.description));
    section("error", d.error && !d.traceback ? d.error : "");
    section("traceback", d.traceback);
    section("preview", d.preview);
    section("stdout", d.stdout);
    section("stderr", d.stderr);
  }

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

  const onSvg = () => { drawSvg(); paint(); };
  const onStates = () => paint();
  const onSelected = () => { paint(); drawRows(); drawControls(); };
  // trait -> what repaints when it changes (registered here, removed on teardown)
  const listeners = [
    ["change:svg", onSvg],
    ["change:states", onStates],
    ["change:progress", drawProgress],
    ["change:rows", drawRows],
    ["change:detail", drawDetail],
    ["change:selected", onSelected],
    ["change:controls_enabled", drawControls],
    ["change:message", drawControls],
  ];
  for (const [name, fn] of listeners) model.on(name, fn);

  onSvg();
  drawProgress();
  drawRows();
  drawDetail();
  drawControls();

  return () => {
    clearInterval(ticker);
    for (const [name, fn] of listeners) model.off(name, fn);
  };
}

export default { render };
