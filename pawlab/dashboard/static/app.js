// pawlab dashboard: one page, live from the server's event stream; loads nothing from outside.
"use strict";

const state = {
  runs: [],          // summaries from /api/runs
  current: null,     // the open run's id
  compare: new Set(),// ids whose curves are overlaid
  events: [],        // the open run's event log
  others: {},        // id -> events of compared runs
  passes: [],        // epochs with a recorded validation pass
  pass: null,        // the epoch shown in the matrix
  classes: [],
  source: null,      // EventSource of the open run
  cell: null,        // [true, predicted] shown below the matrix
};

// An exported report (`pawlab dashboard RUN --export`) carries every answer in the page.
const EXPORT = window.PAWLAB_EXPORT || null;
const $ = (id) => document.getElementById(id);
const api = (path) => {
  if (!EXPORT) return fetch(path).then((r) => (r.ok ? r.json() : Promise.reject(r.status)));
  const found = EXPORT.responses[path];
  return found === undefined || found === null ? Promise.reject(404) : Promise.resolve(found);
};
const layout = (title, extra = {}) => ({
  title: { text: title, font: { size: 13 } }, margin: { l: 48, r: 12, t: 32, b: 36 },
  legend: { orientation: "h", y: -0.2 }, xaxis: { title: "epoch" }, ...extra,
});
const plot = (id, traces, lay) => Plotly.react($(id), traces, lay, { displayModeBar: false, responsive: true });

async function loadRuns() {
  state.runs = await api("api/runs");
  const list = $("run-list");
  list.innerHTML = "";
  for (const run of state.runs) {
    const li = document.createElement("li");
    li.dataset.id = run.id;
    li.className = run.id === state.current ? "selected" : "";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.compare.has(run.id);
    box.title = "compare";
    box.onclick = (e) => { e.stopPropagation(); toggleCompare(run.id, box.checked); };
    const name = document.createElement("span");
    name.textContent = run.name;
    const st = document.createElement("span");
    st.className = "state";
    st.textContent = `${run.state} · ${run.epochs}`;
    li.append(box, name, st);
    li.onclick = () => openRun(run.id);
    list.append(li);
  }
  if (!state.current && state.runs.length) openRun(state.runs[0].id);
}

async function toggleCompare(id, on) {
  if (on) { state.compare.add(id); state.others[id] = await api(`api/runs/${id}/events`); }
  else { state.compare.delete(id); delete state.others[id]; }
  drawCurves();
  drawComparison();
}

async function drawComparison() {
  const others = [...state.compare].filter((id) => id !== state.current);
  $("compare").classList.toggle("hidden", others.length !== 1 || EXPORT !== null);
  if (others.length !== 1 || EXPORT) return;
  const other = others[0];
  const name = (id) => (state.runs.find((r) => r.id === id) || { name: id }).name;
  const d = await api(`api/compare?a=${state.current}&b=${other}`).catch(() => null);
  if (!d) { $("compare-title").textContent = `${name(other)}: nothing to compare`; return; }
  $("compare-title").textContent = `${name(state.current)} against ${name(other)} on ${d.common} images`;
  const tables = [];
  for (const [id, epoch] of [[state.current, d.epochs[0]], [other, d.epochs[1]]]) {
    const m = await api(`api/runs/${id}/matrix?epoch=${epoch}`).catch(() => null);
    if (!m) continue;
    const head = m.classes.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
    const rows = m.counts.map((row, i) => `<tr><th>${escapeHtml(m.classes[i])}</th>${row.map((v) => `<td>${v}</td>`).join("")}</tr>`);
    const table = document.createElement("div");
    table.innerHTML = `<table><caption>${escapeHtml(name(id))}, epoch ${epoch}: ${(100 * m.accuracy).toFixed(2)}%</caption>` +
      `<tr><th>true \\ predicted</th>${head}</tr>${rows.join("")}</table>`;
    tables.push(table);
  }
  $("compare-matrices").replaceChildren(...tables);
  $("compare-a-title").textContent = `right in ${name(state.current)}, wrong in ${name(other)}: ${d.a_only.length}`;
  $("compare-b-title").textContent = `right in ${name(other)}, wrong in ${name(state.current)}: ${d.b_only.length}`;
  $("compare-a").replaceChildren(...d.a_only.map((it) => thumb(it, `${it.p_a.toFixed(2)} vs ${it.p_b.toFixed(2)}`, false)));
  $("compare-b").replaceChildren(...d.b_only.map((it) => thumb(it, `${it.p_a.toFixed(2)} vs ${it.p_b.toFixed(2)}`, true, other, it.index_b)));
}

function openRun(id) {
  if (state.source) state.source.close();
  Object.assign(state, { current: id, events: [], passes: [], pass: null, cell: null });
  for (const li of document.querySelectorAll("#run-list li")) li.classList.toggle("selected", li.dataset.id === id);
  $("cell").innerHTML = "";
  $("chart-history").classList.add("hidden");
  if (EXPORT) {
    state.events = EXPORT.responses[`api/runs/${id}/events`] || [];
    setStatus("exported report");
    refresh();
    return;
  }
  const source = new EventSource(`api/runs/${id}/stream`);
  state.source = source;
  let pending = null;
  source.onmessage = (msg) => {
    state.events.push(JSON.parse(msg.data));
    if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 100);
  };
  source.addEventListener("reset", () => { state.events = []; });
  source.addEventListener("gone", () => { setStatus("this run was deleted"); source.close(); });
  source.onopen = () => setStatus("live", true);
  source.onerror = () => setStatus("reconnecting…");
}

function setStatus(text, live = false) {
  $("status").textContent = text;
  $("status").classList.toggle("live", live);
}

function epochs(events) { return events.filter((e) => e.event === "epoch"); }

function drawCurves() {
  const mine = epochs(state.events);
  const name = (id) => (state.runs.find((r) => r.id === id) || { name: id }).name;
  const loss = [
    { x: mine.map((e) => e.epoch), y: mine.map((e) => e.train_loss), name: "train loss", mode: "lines+markers" },
    { x: mine.map((e) => e.epoch), y: mine.map((e) => e.val_loss), name: "val loss", mode: "lines+markers" },
  ];
  const acc = [{ x: mine.map((e) => e.epoch), y: mine.map((e) => e.val_accuracy), name: "val accuracy", mode: "lines+markers" }];
  for (const id of state.compare) {
    if (id === state.current || !state.others[id]) continue;
    const theirs = epochs(state.others[id]);
    loss.push({ x: theirs.map((e) => e.epoch), y: theirs.map((e) => e.val_loss), name: `${name(id)} val loss`, mode: "lines", line: { dash: "dot" } });
    acc.push({ x: theirs.map((e) => e.epoch), y: theirs.map((e) => e.val_accuracy), name: `${name(id)} val accuracy`, mode: "lines", line: { dash: "dot" } });
  }
  plot("chart-loss", loss, layout("loss"));
  plot("chart-acc", acc, layout("validation accuracy", { yaxis: { rangemode: "tozero" } }));
  const batches = state.events.filter((e) => e.event === "batch");
  const running = batches.length ? batches[batches.length - 1].epoch : null;
  plot("chart-batch", [
    { x: batches.map((e) => e.step), y: batches.map((e) => e.loss), name: "batch loss", mode: "lines", opacity: 0.35 },
    { x: batches.map((e) => e.step), y: smooth(batches.map((e) => e.loss)), name: "smoothed", mode: "lines" },
  ], layout(running ? `training loss by batch (now in epoch ${running})` : "training loss by batch", { xaxis: { title: "step" } }));
  plot("chart-rate", [
    { x: batches.map((e) => e.step), y: batches.map((e) => e.lr), name: "learning rate", mode: "lines" },
    { x: batches.map((e) => e.step), y: batches.map((e) => e.images_per_s), name: "images/s", mode: "lines", yaxis: "y2" },
  ], layout("learning rate and images/s", {
    margin: { l: 60, r: 60, t: 32, b: 36 },
    xaxis: { title: "step" }, yaxis: { title: "lr", exponentformat: "e", rangemode: "tozero" },
    yaxis2: { title: "img/s", overlaying: "y", side: "right", rangemode: "tozero" },
  }));
}

function smooth(values, alpha = 0.3) {
  let s = null;
  return values.map((v) => (s = s === null ? v : alpha * v + (1 - alpha) * s));
}

function drawSummary() {
  const mine = epochs(state.events);
  const start = state.events.find((e) => e.event === "start") || {};
  const last = state.events[state.events.length - 1] || {};
  const saved = mine.filter((e) => e.saved);
  const best = saved.length ? saved[saved.length - 1] : null;
  const when = best ? new Date(best.time * 1000).toLocaleTimeString() : "not yet";
  const status = { end: "finished", failed: `failed: ${last.error || ""}` }[last.event] || "running";
  $("summary").innerHTML = "";
  const parts = [
    ["state", status], ["epoch", `${mine.length}${start.epochs ? " / " + start.epochs : ""}`],
    ["best epoch", best ? `${best.epoch} (val loss ${best.val_loss.toFixed(4)}, acc ${best.val_accuracy.toFixed(4)})` : "–"],
    ["model written", when],
  ];
  for (const [k, v] of parts) {
    const span = document.createElement("span");
    span.innerHTML = `<b></b> `;
    span.firstChild.textContent = `${k}:`;
    span.append(`${v}   `);
    $("summary").append(span);
  }
}

function drawSeen() {
  const epoch = epochs(state.events).length;
  for (const which of ["train", "validation"]) {
    const img = $(`seen-${which}`);
    const src = EXPORT ? EXPORT.seen[which] || "" : `api/runs/${state.current}/seen/${which}?v=${state.current}-${epoch}`;
    img.onerror = () => img.parentElement.classList.add("hidden");  // not written (yet), or no pixels
    img.onload = () => img.parentElement.classList.remove("hidden");
    if (img.getAttribute("src") !== src) img.src = src;
  }
}

async function refresh() {
  drawSummary();
  drawCurves();
  drawSeen();
  const info = await api(`api/runs/${state.current}/passes`).catch(() => null);
  if (!info) return;
  state.classes = info.classes;
  const follow = state.pass === null || state.pass === state.passes[state.passes.length - 1];
  state.passes = info.epochs;
  const slider = $("pass-slider");
  slider.max = Math.max(0, state.passes.length - 1);
  slider.disabled = state.passes.length < 2;
  if (state.passes.length && follow) {
    state.pass = state.passes[state.passes.length - 1];
    slider.value = slider.max;
    await drawMatrix();
    await drawSuspects();
  }
  drawComparison();
}

async function drawMatrix() {
  if (state.pass === null) return;
  const m = await api(`api/runs/${state.current}/matrix?epoch=${state.pass}`).catch(() => null);
  if (!m) return;
  $("matrix-epoch").textContent = `after epoch ${m.epoch}: accuracy ${(100 * m.accuracy).toFixed(2)}%`;
  $("pass-label").textContent = `epoch ${m.epoch}`;
  const k = m.classes.length;
  const text = m.counts.map((row, i) => row.map((v, j) => {
    const moved = m.entered[i][j] || m.left[i][j] ? `  (+${m.entered[i][j]} −${m.left[i][j]})` : "";
    return `${v}${moved}`;
  }));
  const rowTotals = m.counts.map((row) => row.reduce((a, b) => a + b, 0) || 1);
  const share = m.counts.map((row, i) => row.map((v) => v / rowTotals[i]));
  plot("chart-matrix", [{
    type: "heatmap", z: share, x: m.classes, y: m.classes, text, texttemplate: "%{text}", textfont: { size: 14 },
    colorscale: [[0, "#f7fafd"], [1, "#2a6fdb"]], zmin: 0, zmax: 1, showscale: false,
    hovertemplate: "true %{y}, predicted %{x}: %{text}<extra></extra>",
  }], {
    margin: { l: 80, r: 10, t: 10, b: 60 }, xaxis: { title: "predicted", side: "bottom", type: "category" },
    yaxis: { title: "true", autorange: "reversed", type: "category" },
  });
  $("chart-matrix").on("plotly_click", (ev) => {
    const [t, p] = ev.points[0].pointIndex;  // [row, column]: class names may look like numbers
    showCell(t, p);
  });
  const rows = m.classes.map((c, i) => `<tr><th>${escapeHtml(c)}</th><td>${m.precision[i].toFixed(3)}</td><td>${m.recall[i].toFixed(3)}</td></tr>`);
  $("matrix-stats").innerHTML = `<table><tr><th>class</th><th>precision</th><th>recall</th></tr>${rows.join("")}` +
    `<tr><th>accuracy</th><td colspan="2">${m.accuracy.toFixed(4)} of ${m.count}</td></tr></table>`;
  if (state.cell) showCell(...state.cell);
  return k;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function thumb(item, extra, wrong, run = state.current, index = item.index) {
  const div = document.createElement("div");
  div.className = "thumb" + (wrong ? " wrong" : "");
  div.dataset.index = item.index;
  const img = document.createElement("img");
  img.src = EXPORT ? EXPORT.thumbs[index] || "" : `api/runs/${run}/images/${index}/thumb`;
  img.alt = item.name;
  img.loading = "lazy";
  const p = document.createElement("div");
  p.className = "p";
  p.textContent = extra;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = item.name.split("/").pop();
  name.title = item.name;
  div.append(img, p, name);
  if (run === state.current) div.onclick = () => showHistory(item, div);
  return div;
}

async function showCell(t, p) {
  state.cell = [t, p];
  const items = await api(`api/runs/${state.current}/cell?epoch=${state.pass}&true=${t}&predicted=${p}`).catch(() => []);
  const c = state.classes;
  $("cell-title").textContent = `true ${c[t]}, predicted ${c[p]}: ${items.length}${items.length === 100 ? "+" : ""} images` +
    (t === p ? " (least sure first)" : " (most confidently wrong first)");
  const box = $("cell");
  box.innerHTML = "";
  for (const it of items) box.append(thumb(it, `p(${c[p]}) ${it.p.toFixed(3)}`, t !== p));
}

async function showHistory(item, div) {
  for (const el of document.querySelectorAll(".thumb.picked")) el.classList.remove("picked");
  div.classList.add("picked");
  const h = await api(`api/runs/${state.current}/images/${item.index}/history`).catch(() => []);
  $("chart-history").classList.remove("hidden");
  plot("chart-history", [{ x: h.map((e) => e.epoch), y: h.map((e) => e.p_true), mode: "lines+markers", name: "p(true class)" }],
    layout(`${item.name}: probability of its true class`, { yaxis: { range: [0, 1] } }));
}

async function drawSuspects() {
  const rows = await api(`api/runs/${state.current}/suspects`).catch(() => []);
  $("suspects-csv").href = EXPORT
    ? `data:text/csv;charset=utf-8,${encodeURIComponent(EXPORT.csv)}`
    : `api/runs/${state.current}/suspects?format=csv`;
  const box = $("suspects");
  box.innerHTML = "";
  for (const r of rows.slice(0, 60)) box.append(thumb(r, `${r.label}→${r.predicted} ${r.p_true.toFixed(2)}`, true));
}

$("pass-slider").addEventListener("input", async (e) => {
  state.pass = state.passes[Number(e.target.value)];
  await drawMatrix();
});

loadRuns();
if (!EXPORT) setInterval(loadRuns, 5000);
