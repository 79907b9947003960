// pawlab serve's API docs: /openapi.json rendered, its operations grouped by tag, each with
// its parameters, bodies, answers and a curl line. Loads nothing from outside.
"use strict";

// "#/components/responses/400" -> the object it points at.
function resolve(doc, item) {
  if (!item || !item.$ref) return item;
  return item.$ref.slice(2).split("/").reduce((node, key) => node[key], doc);
}

// A schema in a few words: its type, or the name of the schema it refers to.
function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.oneOf) return schema.oneOf.map(schemaText).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.join(" | ");
  if (schema.type === "array") return `[${schemaText(schema.items)}]`;
  if (schema.type === "object" && schema.properties) {
    return `{${Object.entries(schema.properties).map(([k, v]) => `${k}: ${schemaText(v)}`).join(", ")}}`;
  }
  if (schema.type === "object" && schema.additionalProperties) return `{string: ${schemaText(schema.additionalProperties)}}`;
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  return schema.contentMediaType ? `${type} (${schema.contentMediaType})` : schema.format ? `${type} (${schema.format})` : type;
}

function table(head, rows) {
  const t = el("table");
  t.append(el("thead", "", undefined, el("tr", "", undefined, ...head.map((h) => el("th", "", h)))));
  t.append(el("tbody", "", undefined, ...rows.map((r) => el("tr", "", undefined, ...r.map((c) => el("td", "", c))))));
  return t;
}

// A curl line for the operation: its body as the commonest client sends it.
function curl(method, path, operation, secured) {
  const url = `${location.origin}${path.replace(/\{(\w+)\}/g, (_, name) => name.toUpperCase())}`;
  const parts = ["curl"];
  if (secured) parts.push(`-H "Authorization: Bearer $TOKEN"`);
  const content = operation.requestBody ? Object.keys(operation.requestBody.content) : [];
  if (content.includes("image/*")) {
    return [[...parts, "-H 'Content-Type: image/jpeg' --data-binary @cat.jpg", `'${url}'`].join(" "),
      [...parts, "-F a=@cat.jpg -F b=@dog.jpg", `'${url}?top=1'`].join(" ")];
  }
  if (content.includes("application/json")) {
    parts.push("-H 'Content-Type: application/json' --data-binary @request.json");
  } else if (method !== "get") {
    parts.push(`-X ${method.toUpperCase()}`);
  }
  return [[...parts, `'${url}'`].join(" ")];
}

function operationCard(doc, path, method, operation) {
  const secured = (operation.security || doc.security || []).length > 0;
  const head = el("summary", "", undefined,
    el("span", `method ${method}`, method.toUpperCase()), el("code", "path", path),
    el("span", "summary", operation.summary || ""));
  if (secured) head.append(el("span", "lock", "token needed"));
  const card = el("details", "card op", undefined, head);
  card.id = `${method}-${path}`;
  const params = (operation.parameters || []).map((p) => resolve(doc, p));
  if (params.length) {
    card.append(el("h4", "", "Parameters"), table(["name", "in", "type", "what"],
      params.map((p) => [p.name + (p.required ? " *" : ""), p.in, schemaText(p.schema), p.description || ""])));
  }
  if (operation.requestBody) {
    const rows = Object.entries(operation.requestBody.content).map(([media, c]) => [media, schemaText(c.schema)]);
    card.append(el("h4", "", "Request body"), table(["Content-Type", "schema"], rows));
  }
  const answers = Object.entries(operation.responses).map(([status, r]) => {
    const response = resolve(doc, r);
    const content = Object.entries(response.content || {}).map(([m, c]) => `${m}: ${schemaText(c.schema)}`).join("; ");
    const headers = Object.keys(response.headers || {}).join(", ");
    return [status, response.description || "", content, headers];
  });
  card.append(el("h4", "", "Answers"), table(["status", "when", "body", "headers"], answers));
  card.append(el("h4", "", "Example"), ...curl(method, path, operation, secured).map((line) => el("pre", "", line)));
  return card;
}

function render(doc) {
  document.title = `${doc.info.title} ${doc.info.version}: API`;
  $("title").textContent = doc.info.title;
  $("description").textContent = `${doc.info.description} (version ${doc.info.version}, OpenAPI ${doc.openapi})`;
  $("auth").textContent = doc.security
    ? "This server has a token: the operations marked “token needed” want Authorization: Bearer TOKEN."
    : "This server needs no token.";
  const groups = new Map((doc.tags || []).map((t) => [t.name, []]));
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const tag = (operation.tags || ["other"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operationCard(doc, path, method, operation));
    }
  }
  const sections = [...groups].filter(([, cards]) => cards.length).map(([tag, cards], i) => {
    const section = el("section", "group", undefined, el("h2", "", tag), ...cards);
    section.id = `group-${i}`;
    const link = el("a", "", `${tag} (${cards.length})`);
    link.href = `#group-${i}`;
    $("toc").append(el("li", "", undefined, link));
    return section;
  });
  const schemas = Object.entries(doc.components.schemas).map(([name, schema]) =>
    el("details", "card op schema", undefined, el("summary", "", undefined, el("code", "path", name)),
      el("pre", "", JSON.stringify(schema, null, 2))));
  $("groups").replaceChildren(...sections, el("section", "group", undefined, el("h2", "", "Schemas"), ...schemas));
}

fetch("openapi.json")
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`openapi.json: HTTP ${r.status}`))))
  .then(render)
  .catch((e) => {
    $("notice").textContent = String(e.message || e);
    $("notice").classList.remove("hidden");
  });
