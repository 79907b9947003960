// pawlab serve's page: drop, pick or paste images, post them to /v1/predict, show each one's
// classes; the models and a few live metrics from /v1/models. Loads nothing from outside.
"use strict";

const TOKEN_KEY = "pawlab-serve-token";
const POLL_MS = 2000;
const PER_REQUEST = 16;  // images posted in one request
const RATE_WINDOW_MS = 5000;  // images/s: over the polls of the last few seconds ...
const RATE_MIN_MS = 2000;     // ... once they span this much (a shorter span says little)

const state = {
  models: [],     // from /v1/models
  samples: [],    // [time in ms, images run in all] of recent polls
  polling: null,  // the poll's timer
};

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A request's JSON, or a rejection {status, error} with the server's one-line reason.
async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (e) {
    throw { status: 0, error: "the server cannot be reached" };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const error = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
    if (response.status === 401) askForToken(error);
    throw { status: response.status, error };
  }
  return body;
}

// --- the token ---------------------------------------------------------------------------

function askForToken(reason) {
  $("token-form").classList.remove("hidden");
  if (!state.models.length) $("models").replaceChildren(el("p", "card hint", "The models show once the token is given."));
  if (sessionStorage.getItem(TOKEN_KEY)) $("token-hint").textContent = `The server said: ${reason}`;
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token-form").classList.add("hidden");
  refresh();
});

// --- the models and metrics --------------------------------------------------------------

function short(digest) {
  return digest.slice(0, 12);
}

function showModels(models) {
  const box = $("models");
  box.replaceChildren(...models.map((m) => {
    const classes = el("ul", "chips");
    classes.setAttribute("aria-label", `classes of ${m.name}`);
    classes.append(...m.classes.map((c) => el("li", "chip", c)));
    const facts = el("dl", "facts",
      undefined,
      el("dt", "", "digest"), el("dd", "mono", short(m.digest)),
      el("dt", "", "input"), el("dd", "", `${m.input.size.join(" × ")} × ${m.input.channels}`),
      el("dt", "", "classes"), el("dd", "", String(m.classes.length)),
      el("dt", "", "images run"), el("dd", "", String(m.images)));
    facts.querySelector(".mono").title = m.digest;
    const card = el("article", "card model", undefined, el("h2", "", m.name), facts, classes);
    card.dataset.model = m.name;
    return card;
  }));
  const select = $("model");
  if (models.length > 1 && select.options.length !== models.length) {
    select.replaceChildren(...models.map((m) => el("option", "", m.name)));
  }
  $("model-choice").classList.toggle("hidden", models.length < 2);
}

function showStats(answer) {
  const images = answer.models.reduce((n, m) => n + m.images, 0);
  const queued = answer.models.reduce((n, m) => n + m.queued, 0);
  const requests = Object.values(answer.requests).reduce((n, v) => n + v, 0);
  const now = performance.now();
  state.samples.push([now, images]);
  while (state.samples.length > 2 && now - state.samples[1][0] >= RATE_WINDOW_MS) state.samples.shift();
  const [t0, n0] = state.samples[0];
  $("stat-requests").textContent = requests.toLocaleString();
  $("stat-images").textContent = images.toLocaleString();
  $("stat-queued").textContent = queued.toLocaleString();
  $("stat-rate").textContent = now - t0 >= RATE_MIN_MS ? ((images - n0) / ((now - t0) / 1000)).toFixed(1) : "–";
}

async function refresh() {
  clearTimeout(state.polling);
  try {
    const answer = await call("v1/models");
    const names = answer.models.map((m) => m.name + m.digest).join();
    if (names !== state.models.map((m) => m.name + m.digest).join()) {
      state.models = answer.models;
      showModels(answer.models);
    } else {
      answer.models.forEach((m) => {  // only the counts changed
        const card = $("models").querySelector(`[data-model="${CSS.escape(m.name)}"] .facts dd:last-of-type`);
        if (card) card.textContent = String(m.images);
      });
    }
    showStats(answer);
    $("notice").classList.add("hidden");
  } catch (e) {
    if (e.status !== 401) notice(`metrics: ${e.error}`);
    if (e.status === 401) return;  // polled again once a token is given
  }
  state.polling = setTimeout(refresh, POLL_MS);
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").classList.remove("hidden");
}

// --- images and their answers ------------------------------------------------------------

// A result card for `file`, waiting for its answer; its `show` and `fail` fill it in.
function card(file) {
  const item = el("li", "card result pending");
  const figure = el("div", "thumb");
  if (file.type.startsWith("image/")) {
    const img = el("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    img.addEventListener("error", () => figure.replaceChildren(el("span", "no-preview", "no preview")), { once: true });
    figure.append(img);
  } else {
    figure.append(el("span", "no-preview", "no preview"));
  }
  const body = el("div", "answer", undefined, el("h3", "name", file.name), el("p", "status", "classifying…"));
  item.append(figure, body);
  return {
    item,
    show(answer) {
      item.classList.remove("pending");
      const ranked = Object.entries(answer["probability-map"]).sort((a, b) => b[1] - a[1]);
      const top = answer["probability-map"][answer.classification];
      const verdict = el("p", "verdict", undefined,
        el("span", "class", answer.classification), el("span", "p", top.toFixed(4)));
      const bars = el("ul", "bars");
      bars.setAttribute("aria-label", `probabilities of ${file.name}`);
      bars.append(...ranked.map(([name, p]) => {
        const fill = el("span", "fill");
        fill.style.width = `${(100 * p).toFixed(2)}%`;
        const row = el("li", name === answer.classification ? "bar top" : "bar",
          undefined, el("span", "label", name), el("span", "track", undefined, fill), el("span", "value", p.toFixed(4)));
        row.dataset.class = name;
        row.dataset.p = String(p);
        return row;
      }));
      const typical = answer.typicality === null ? "" : ` · typicality ${answer.typicality.toFixed(3)}`;
      const meta = el("p", "meta", `${answer.model} · ${short(answer.digest)}${typical}`);
      const shown = [body.firstChild];
      if (answer.unknown) {
        // less typical than nearly all the validation images: none of the model's classes
        const warning = el("p", "unknown", "none of these: unlike the images this model learned from");
        warning.setAttribute("role", "note");
        shown.push(warning);
        item.classList.add("unknown");
      }
      body.replaceChildren(...shown, verdict, bars, meta);
    },
    fail(reason) {
      item.classList.remove("pending");
      item.classList.add("failed");
      const error = el("p", "error", reason);
      error.setAttribute("role", "alert");
      body.replaceChildren(body.firstChild, error);
    },
  };
}

function predictUrl() {
  const select = $("model");
  return state.models.length > 1 && select.value ? `v1/predict?model=${encodeURIComponent(select.value)}` : "v1/predict";
}

function form(cards) {
  const data = new FormData();
  cards.forEach(({ file }, i) => data.append(`image${i}`, file, file.name || `pasted-${i}.png`));
  return data;
}

// Post cards' files in one multipart request; when one of them is no image (422), each alone,
// so that every image gets its answer and the one at fault its reason.
async function post(url, cards) {
  try {
    const answers = await call(url, { method: "POST", body: form(cards) });
    answers.forEach((answer, i) => cards[i].show(answer));
  } catch (e) {
    if (e.status !== 422 || cards.length === 1) {
      cards.forEach((c) => c.fail(e.error));
    } else {
      await Promise.all(cards.map((c) => post(url, [c])));
    }
  }
}

// The files' cards, then their answers: PER_REQUEST images a request (the server's limit on
// parts is 64 by default), the requests at once (the server batches them).
async function classify(files) {
  if (!files.length) return;
  const cards = files.map((file) => ({ file, ...card(file) }));
  $("results").prepend(...cards.map((c) => c.item));
  const url = predictUrl();
  const groups = [];
  for (let i = 0; i < cards.length; i += PER_REQUEST) groups.push(cards.slice(i, i + PER_REQUEST));
  await Promise.all(groups.map((group) => post(url, group)));
  refresh();
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classify([...event.dataTransfer.files]);
});
$("files").addEventListener("change", (event) => {
  classify([...event.target.files]);
  event.target.value = "";
});
document.addEventListener("paste", (event) => {
  if (event.target === $("token")) return;
  const files = [...event.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) {
    event.preventDefault();
    classify(files);
  }
});

refresh();
