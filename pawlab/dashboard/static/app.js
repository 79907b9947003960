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
  damaged: {},       // epoch -> why its validation pass is not shown
  typical: [],       // epochs whose pass recorded each image's typicality
  atypical: {},      // epoch -> why its typicality is not shown
  order: "p",        // how a cell lists its images: "p" (by probability) or "typicality"
  source: null,      // EventSource of the open run
  cell: null,        // [true, predicted] shown below the matrix
};
// The confusion matrix by the number of classes k: cell counts written in the cells up to
// `annotate` classes, with how many entered and left them up to `moves`; beyond, colour and
// hover only, in a scrollable, zoomable chart, and the most confused pairs listed.
const MATRIX = { annotate: 16, moves: 4, confused: 15, label: 16 };
const cellPixels = (k) => Math.max(12, Math.min(130, Math.floor(480 / k)));

// An exported report (`pawlab dashboard RUN --export`) carries every answer in the page.
const EXPORT = window.PAWLAB_EXPORT || null;
const $ = (id) => document.getElementById(id);
// An answer, or a rejection with the server's reason (its "error"), or the status.
const api = (path) => {
  if (!EXPORT) {
    return fetch(path).then((r) => (r.ok ? r.json()
      : r.json().then((body) => Promise.reject(body.error || r.status), () => Promise.reject(r.status))));
  }
  const found = EXPORT.responses[path];
  return found === undefined || found === null ? Promise.reject(404) : Promise.resolve(found);
};
// A number as text; null (NaN or infinity on the server), or none at all, as a dash.
const fmt = (v, digits) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");
const layout = (title, extra = {}) => ({
  title: { text: escapeHtml(title), font: { size: 13 } }, margin: { l: 48, r: 12, t: 32, b: 36 },
  legend: { orientation: "h", y: -0.2 }, ...extra,
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
    if (run.reason) {
      const why = document.createElement("div");
      why.className = "reason";
      why.textContent = run.reason;
      li.append(why);
    }
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
    const caption = `<caption>${escapeHtml(name(id))}, epoch ${epoch}: ${fmt(100 * m.accuracy, 2)}%</caption>`;
    const big = m.classes.length > MATRIX.annotate;  // each run's own view has its matrix
    const head = big ? "" : m.classes.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
    const rows = big ? [] : m.counts.map((row, i) => `<tr><th>${escapeHtml(m.classes[i])}</th>${row.map((v) => `<td>${v}</td>`).join("")}</tr>`);
    const table = document.createElement("div");
    table.innerHTML = `<table>${caption}` + (big ? "" : `<tr><th>true \\ predicted</th>${head}</tr>${rows.join("")}`) + "</table>";
    tables.push(table);
  }
  $("compare-matrices").replaceChildren(...tables);
  $("compare-a-title").textContent = `right in ${name(state.current)}, wrong in ${name(other)}: ${d.a_only.length}`;
  $("compare-b-title").textContent = `right in ${name(other)}, wrong in ${name(state.current)}: ${d.b_only.length}`;
  $("compare-a").replaceChildren(...d.a_only.map((it) => thumb(it, `${fmt(it.p_a, 2)} vs ${fmt(it.p_b, 2)}`, false)));
  $("compare-b").replaceChildren(...d.b_only.map((it) => thumb(it, `${fmt(it.p_a, 2)} vs ${fmt(it.p_b, 2)}`, true, other, it.index_b)));
}

function openRun(id) {
  if (state.source) state.source.close();
  Object.assign(state, { current: id, events: [], passes: [], pass: null, cell: null, damaged: {}, typical: [], atypical: {} });
  for (const li of document.querySelectorAll("#run-list li")) li.classList.toggle("selected", li.dataset.id === id);
  $("cell").innerHTML = "";
  $("chart-history").classList.add("hidden");
  $("matrix-epoch").textContent = "";  // no other run's matrix under this one's name
  clearMatrix();
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
    const legend = escapeHtml(name(id));  // plotly draws its own subset of HTML
    loss.push({ x: theirs.map((e) => e.epoch), y: theirs.map((e) => e.val_loss), name: `${legend} val loss`, mode: "lines", line: { dash: "dot" } });
    acc.push({ x: theirs.map((e) => e.epoch), y: theirs.map((e) => e.val_accuracy), name: `${legend} val accuracy`, mode: "lines", line: { dash: "dot" } });
  }
  plot("chart-loss", loss, layout("loss"));
  plot("chart-acc", acc, layout("validation accuracy", { yaxis: { rangemode: "tozero" } }));
  const batches = state.events.filter((e) => e.event === "batch");
  const running = batches.length ? batches[batches.length - 1].epoch : null;
  plot("chart-batch", [
    { x: batches.map((e) => e.step), y: batches.map((e) => e.loss), name: "batch loss", mode: "lines", opacity: 0.35 },
    { x: batches.map((e) => e.step), y: smooth(batches.map((e) => e.loss)), name: "smoothed", mode: "lines" },
  ], layout(running ? `training loss by batch (now in epoch ${running})` : "training loss by batch"));
  plot("chart-rate", [
    { x: batches.map((e) => e.step), y: batches.map((e) => e.lr), name: "learning rate", mode: "lines" },
    { x: batches.map((e) => e.step), y: batches.map((e) => e.images_per_s), name: "images/s", mode: "lines", yaxis: "y2" },
  ], layout("learning rate and images/s", {
    margin: { l: 60, r: 60, t: 32, b: 36 },
    yaxis: { title: { text: "lr" }, exponentformat: "e", rangemode: "tozero" },
    yaxis2: { title: { text: "img/s" }, overlaying: "y", side: "right", rangemode: "tozero" },
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
  const run = state.runs.find((r) => r.id === state.current) || {};
  $("summary").innerHTML = "";
  const parts = [
    ["state", status], ["epoch", `${mine.length}${start.epochs ? " / " + start.epochs : ""}`],
    ["best epoch", best ? `${best.epoch} (val loss ${fmt(best.val_loss, 4)}, acc ${fmt(best.val_accuracy, 4)})` : "–"],
    ["model written", when],
    ...(run.reason ? [["damaged", run.reason]] : []),
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
  state.damaged = info.damaged || {};
  state.typical = info.typicality || [];  // none from a server or an export older than typicality
  state.atypical = info.typicality_damaged || {};
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
  const epoch = state.pass;
  $("pass-label").textContent = `epoch ${epoch}`;
  let why = state.damaged[epoch] || null;
  const m = why ? null : await api(`api/runs/${state.current}/matrix?epoch=${epoch}`).catch((e) => { why = e; return null; });
  $("matrix-box").classList.toggle("hidden", !m);
  if (!m) {  // a damaged pass: why, in place of its matrix and cells
    $("matrix-epoch").textContent = `after epoch ${epoch}: ${typeof why === "string" ? why : "not readable"}`;
    clearMatrix();
    $("cell-title").textContent = "";
    $("cell").replaceChildren();
    $("cell-order-box").classList.add("hidden");
    $("cell-note").classList.add("hidden");
    return;
  }
  $("matrix-epoch").textContent = `after epoch ${m.epoch}: accuracy ${fmt(100 * m.accuracy, 2)}%`;
  const k = m.classes.length;
  const moved = (i, j) => (m.entered[i][j] || m.left[i][j] ? `  (+${m.entered[i][j]} −${m.left[i][j]})` : "");
  const hover = m.counts.map((row, i) => row.map((v, j) => `${v} image${v === 1 ? "" : "s"}${moved(i, j)}`));
  const text = m.counts.map((row, i) => row.map((v, j) => (k <= MATRIX.moves ? `${v}${moved(i, j)}` : `${v}`)));
  const rowTotals = m.counts.map((row) => row.reduce((a, b) => a + b, 0) || 1);
  const share = m.counts.map((row, i) => row.map((v) => v / rowTotals[i]));
  // plotly draws its own subset of HTML in labels and hover text: names go in escaped
  const names = m.classes.map(escapeHtml);
  const short = m.classes.map((c) => escapeHtml(c.length > MATRIX.label ? `${c.slice(0, MATRIX.label - 1)}…` : c));
  const big = k > MATRIX.annotate;
  const px = cellPixels(k);
  const chart = $("chart-matrix");
  chart.style.width = `${k * px + 170}px`;
  chart.style.height = `${k * px + 150}px`;
  // many classes: the predicted classes along the top, where a scrolled chart starts
  const axis = (title) => ({
    title: { text: title }, type: "category", tickvals: names, ticktext: short, automargin: true,
    tickfont: { size: big ? 9 : 12 },
  });
  plot("chart-matrix", [{
    type: "heatmap", z: share, x: names, y: names, customdata: hover,
    text, texttemplate: big ? "" : "%{text}", textfont: { size: k <= MATRIX.moves ? 14 : 11 },
    colorscale: [[0, "#f7fafd"], [1, "#2a6fdb"]], zmin: 0, zmax: 1, showscale: false, xgap: big ? 0 : 1, ygap: big ? 0 : 1,
    hovertemplate: "true %{y}<br>predicted %{x}<br>%{customdata}<extra></extra>",
  }], {
    margin: { l: 10, r: 10, t: 10, b: 10 },
    xaxis: { ...axis("predicted"), ...(big ? { side: "top", tickangle: -90 } : {}) },
    yaxis: { ...axis("true"), autorange: "reversed" },
  });
  chart.removeAllListeners?.("plotly_click");  // one handler, however often it is drawn
  chart.on("plotly_click", (ev) => {
    const [t, p] = ev.points[0].pointIndex;  // [row, column]: class names may look like numbers
    showCell(t, p);
  });
  $("matrix-hint").classList.toggle("hidden", !big);
  const rows = m.classes.map((c, i) => `<tr><th>${escapeHtml(c)}</th><td>${fmt(m.precision[i], 3)}</td><td>${fmt(m.recall[i], 3)}</td></tr>`);
  $("matrix-stats").innerHTML = `<table><tr><th>class</th><th>precision</th><th>recall</th></tr>${rows.join("")}` +
    `<tr><th>accuracy</th><td colspan="2">${fmt(m.accuracy, 4)} of ${m.count}</td></tr></table>`;
  drawConfused(m);
  if (state.cell) showCell(...state.cell);
}

function clearMatrix() {
  Plotly.purge($("chart-matrix"));
  $("matrix-hint").classList.add("hidden");
  $("matrix-stats").replaceChildren();
  $("confused-list").replaceChildren();
  $("confused").classList.add("hidden");
}

// The off-diagonal cells with the most images, each a link to its images.
function drawConfused(m) {
  const pairs = [];
  m.counts.forEach((row, i) => row.forEach((v, j) => { if (i !== j && v > 0) pairs.push([v, i, j]); }));
  pairs.sort((a, b) => b[0] - a[0] || a[1] - b[1] || a[2] - b[2]);
  const items = pairs.slice(0, MATRIX.confused).map(([v, i, j]) => {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = `${m.classes[i]} → ${m.classes[j]}`;
    link.title = `true ${m.classes[i]}, predicted ${m.classes[j]}`;
    link.onclick = (e) => { e.preventDefault(); showCell(i, j).then(() => $("cell-title").scrollIntoView({ block: "nearest" })); };
    li.append(link, ` ${v}`);
    return li;
  });
  $("confused-list").replaceChildren(...items);
  $("confused").classList.toggle("hidden", m.classes.length <= 2 || !items.length);
}

// Text as HTML, and as plotly's own subset of it (which knows &amp; &lt; &gt; and numbered entities).
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;" }[c]));
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
  const typical = state.typical.includes(state.pass);
  const byTypicality = typical && state.order === "typicality";
  const order = byTypicality ? "&order=typicality" : "";
  const items = await api(`api/runs/${state.current}/cell?epoch=${state.pass}&true=${t}&predicted=${p}${order}`).catch(() => []);
  const c = state.classes;
  const how = byTypicality ? "least typical first" : t === p ? "least sure first" : "most confidently wrong first";
  $("cell-title").textContent = `true ${c[t]}, predicted ${c[p]}: ${items.length}${items.length === 100 ? "+" : ""} images (${how})`;
  $("cell-order-box").classList.toggle("hidden", !typical);
  const why = state.atypical[state.pass];
  $("cell-note").textContent = why ? `typicality not shown: ${why}` : "";
  $("cell-note").classList.toggle("hidden", !why);
  const box = $("cell");
  box.innerHTML = "";
  for (const it of items) {
    const div = thumb(it, `p(${c[p]}) ${fmt(it.p, 3)}`, t !== p);
    if ("typicality" in it) {  // null where the number was not finite
      const typ = document.createElement("div");
      typ.className = "typ";
      typ.textContent = `typicality ${fmt(it.typicality, 3)}`;
      div.insertBefore(typ, div.querySelector(".name"));
    }
    box.append(div);
  }
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
  for (const r of rows.slice(0, 60)) box.append(thumb(r, `${r.label}→${r.predicted} ${fmt(r.p_true, 2)}`, true));
}

$("cell-order").addEventListener("change", (e) => {
  state.order = e.target.value;
  if (state.cell) showCell(...state.cell);
});

$("pass-slider").addEventListener("input", async (e) => {
  state.pass = state.passes[Number(e.target.value)];
  await drawMatrix();
});

loadRuns();
if (!EXPORT) setInterval(loadRuns, 5000);
