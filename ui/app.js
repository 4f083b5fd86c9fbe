// Heimdall dashboard: a small single-page app over the admin API. No dependencies, no build
// step. Everything on screen is built with DOM calls (never HTML strings), so names coming
// from the API are always text.
"use strict";

const TOKEN_KEY = "heimdall.admin-token";
const PAGE = 1000; // entities fetched per list

// ---------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------------------------------------------------------------------------------------------
// Formatting

const usd = (v) => {
  const digits = Math.abs(v) > 0 && Math.abs(v) < 1 ? 4 : 2;
  return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: digits }).format(v);
};
const count = (v) => (Math.abs(v) >= 10000
  ? new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(v)
  : new Intl.NumberFormat("en-US", { maximumFractionDigits: Math.abs(v) < 10 ? 2 : 0 }).format(v));
const plural = (n, one, many) => `${count(n)} ${n === 1 ? one : many}`;
const amount = (unit, v) => (unit === "$" ? usd(v) : count(v));
const pct = (f) => {
  const p = f * 100;
  return `${p >= 100 ? Math.round(p) : Math.round(p * 10) / 10}%`;
};

function span(ms) {
  const sec = Math.max(0, Math.round(ms / 1000));
  if (sec < 60) return `${sec}s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min}m`;
  const hr = Math.floor(min / 60);
  if (hr < 48) return `${hr}h ${min % 60}m`;
  const d = Math.floor(hr / 24);
  return `${d}d ${hr % 24}h`;
}
const until = (iso) => (iso ? `in ${span(Date.parse(iso) - Date.now())}` : "never");
const ago = (iso) => `${span(Date.now() - Date.parse(iso))} ago`;
const when = (iso) => new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "unreachable", `Heimdall did not answer (${e.message}).`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : { type: "error", message: text || res.statusText };
    throw new ApiError(res.status, err.type, err.message);
  }
  return data;
}
const get = (path) => api("GET", path);

/// The field an API validation message names: `budget.max_limit: …` → `max_limit`.
function fieldOf(message) {
  const m = /^(?:invalid body: )?(?:[a-z_]+(?:\[\d+\])?\.)*([a-z_]+):/.exec(message || "");
  return m ? m[1] : null;
}

// Entity lists, fetched together for the pages that need the whole picture.
async function everything() {
  const [customers, teams, keys, providers, models] = await Promise.all([
    get(`/api/governance/customers?limit=${PAGE}`),
    get(`/api/governance/teams?limit=${PAGE}`),
    get(`/api/governance/virtual-keys?limit=${PAGE}`),
    get("/api/governance/providers"),
    get(`/api/governance/model-configs?limit=${PAGE}`),
  ]);
  return { customers, teams, keys, providers, models };
}

// ---------------------------------------------------------------------------------------------
// Limits as meters

/// Every limited dimension of an entity's budget and rate limit.
function meters(entity) {
  const out = [];
  const b = entity.budget;
  if (b) {
    out.push({ label: "Budget", unit: "$", used: b.current_usage, held: b.current_held, max: b.max_limit,
      period: b.reset_duration, resetsAt: b.resets_at, forecast: b.forecast, id: b.id, kind: "budget" });
  }
  const r = entity.rate_limit;
  if (r && r.token_max_limit != null) {
    out.push({ label: "Tokens", unit: "tokens", used: r.token_current_usage, held: r.token_current_held, max: r.token_max_limit,
      period: r.token_reset_duration, resetsAt: r.token_resets_at, forecast: r.token_forecast, id: r.id, kind: "tokens" });
  }
  if (r && r.request_max_limit != null) {
    out.push({ label: "Requests", unit: "requests", used: r.request_current_usage, held: r.request_current_held, max: r.request_max_limit,
      period: r.request_reset_duration, resetsAt: r.request_resets_at, forecast: r.request_forecast, id: r.id, kind: "requests" });
  }
  for (const m of out) m.share = m.max > 0 ? (m.used + m.held) / m.max : 0;
  return out;
}

function bar(m) {
  const used = Math.min(1, m.used / m.max);
  const held = Math.max(0, Math.min(1 - used, m.held / m.max));
  const level = m.share >= 1 ? "crit" : m.share >= 0.8 ? "warn" : "";
  const el = h("div", { class: `bar ${level}`, role: "meter", "aria-valuemin": "0", "aria-valuemax": String(m.max),
    "aria-valuenow": String(m.used), "aria-label": `${m.label}: ${pct(m.share)} used` },
  h("span", { class: "used" }), h("span", { class: "held" }));
  el.children[0].style.width = `${used * 100}%`;
  el.children[1].style.left = `${used * 100}%`;
  el.children[1].style.width = `${held * 100}%`;
  return el;
}

function meter(m) {
  return h("div", { class: "meter" },
    h("div", { class: "line" },
      h("span", {}, `${amount(m.unit, m.used)} `, h("span", { class: "muted" }, `of ${amount(m.unit, m.max)}${m.unit === "$" ? "" : ` ${m.unit}`}`)),
      h("span", { class: "pct" }, pct(m.share))),
    bar(m));
}

function forecastText(m) {
  const f = m.forecast;
  if (!f) return "idle for the last hour";
  const rate = `${amount(m.unit, f.rate_per_hour)}${m.unit === "$" ? "" : ` ${m.unit}`}/h`;
  if (!f.exhausted_at) return `${rate}, lasts until the reset`;
  if (Date.parse(f.exhausted_at) <= Date.now() + 1000) return `${rate}, used up`;
  return `${rate}, runs out ${until(f.exhausted_at)}`;
}

function limitRows(entity) {
  const ms = meters(entity);
  if (!ms.length) return h("p", { class: "muted" }, "No budget or rate limit.");
  return h("div", {}, ms.map((m) => h("div", { class: "limit-row" },
    h("div", { class: "name" }, m.label, h("div", { class: "muted small" }, `per ${m.period}`)),
    meter(m),
    h("div", { class: "meta" },
      `Resets ${until(m.resetsAt)} · ${forecastText(m)}`,
      m.held > 0 ? ` · ${amount(m.unit, m.held)} held by requests in flight` : ""))));
}

// ---------------------------------------------------------------------------------------------
// Pages

const LEVEL_NAMES = { customer: "Customer", team: "Team", virtual_key: "Key", provider_config: "Provider config",
  provider: "Provider", model: "Model", user: "User" };

function link(level, id, name) {
  const route = { customer: "customer", team: "team", virtual_key: "key" }[level];
  return route ? h("a", { href: `#/${route}/${id}` }, name) : h("span", {}, name);
}

/// Every limit of every entity, with who owns it.
function allMeters(all) {
  const rows = [];
  const add = (level, id, name, entity) => {
    for (const m of meters(entity)) rows.push({ ...m, level, owner: id, name });
  };
  for (const c of all.customers.customers) add("customer", c.id, c.name, c);
  for (const t of all.teams.teams) add("team", t.id, t.name, t);
  for (const k of all.keys.virtual_keys) {
    add("virtual_key", k.id, k.name, k);
    for (const pc of k.provider_configs || []) add("provider_config", k.id, `${k.name} / ${pc.provider}`, pc);
  }
  for (const p of all.providers.providers) add("provider", p.provider, p.provider, p);
  for (const mc of all.models.model_configs) add("model", mc.id, mc.provider ? `${mc.model_name} (${mc.provider})` : mc.model_name, mc);
  return rows;
}

function startOfDay() {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  return d;
}

async function spendSince(from) {
  const q = new URLSearchParams({ from: from.toISOString(), to: new Date(Date.now() + 1000).toISOString(), bucket: "day" });
  const report = await get(`/api/governance/usage?${q}`);
  return report.usage.reduce((acc, r) => ({ cost: acc.cost + r.cost, requests: acc.requests + r.requests, tokens: acc.tokens + r.tokens }),
    { cost: 0, requests: 0, tokens: 0 });
}

function stat(label, value, sub) {
  return h("div", { class: "panel stat" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function statusBadge(status) {
  return h("span", { class: `badge ${status === "delivered" ? "ok" : "warn"}` }, status);
}

async function overview() {
  const month = startOfDay();
  month.setUTCDate(1);
  const [all, today, thisMonth, alerts] = await Promise.all([
    everything(), spendSince(startOfDay()), spendSince(month), get("/api/governance/alerts?limit=8"),
  ]);
  const rows = allMeters(all);
  const closest = rows.filter((m) => m.share > 0 || m.forecast).sort((a, b) => b.share - a.share).slice(0, 10);
  const holding = rows.filter((m) => m.held > 0).sort((a, b) => b.held / b.max - a.held / a.max);
  const page = h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Overview"), h("div", { class: "muted" }, "Spend, the limits closest to running out, and recent alerts."))),
    h("div", { class: "grid" },
      stat("Spend today (UTC)", usd(today.cost), `${plural(today.requests, "request", "requests")} · ${plural(today.tokens, "token", "tokens")}`),
      stat("Spend this month", usd(thisMonth.cost), plural(thisMonth.requests, "request", "requests")),
      stat("Virtual keys", count(all.keys.total_count), `${plural(all.teams.total_count, "team", "teams")} · ${plural(all.customers.total_count, "customer", "customers")}`),
      stat("Limits watched", count(rows.length), holding.length ? `${holding.length} with holds in flight` : "no holds in flight")));
  const closestPanel = h("section", { class: "panel", id: "closest" }, h("h2", {}, "Closest to exhaustion"),
    closest.length
      ? h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Limit"), h("th", {}, "Used"), h("th", { class: "hide-narrow" }, "Forecast"), h("th", { class: "hide-narrow" }, "Resets"))),
        h("tbody", {}, closest.map((m) => h("tr", {},
          h("td", {}, link(m.level, m.owner, m.name), h("div", { class: "muted small" }, `${LEVEL_NAMES[m.level]} · ${m.label.toLowerCase()} per ${m.period}`)),
          h("td", {}, meter(m)),
          h("td", { class: "hide-narrow small" }, forecastText(m)),
          h("td", { class: "hide-narrow small muted" }, until(m.resetsAt)))))))
      : h("p", { class: "empty" }, "Nothing used yet in the current windows."));
  const side = h("div", {});
  if (holding.length) {
    side.append(h("section", { class: "panel", id: "holds" }, h("h2", {}, "Holds in flight"),
      h("table", {}, h("tbody", {}, holding.slice(0, 8).map((m) => h("tr", {},
        h("td", {}, link(m.level, m.owner, m.name), h("div", { class: "muted small" }, m.label)),
        h("td", { class: "small" }, `${amount(m.unit, m.held)} held`)))))));
  }
  side.append(h("section", { class: "panel", id: "recent-alerts" }, h("div", { class: "page-head" }, h("h2", {}, "Recent alerts"), h("a", { href: "#/alerts", class: "small" }, "All alerts")),
    alerts.alerts.length
      ? h("table", {}, h("tbody", {}, alerts.alerts.map((d) => h("tr", {},
        h("td", {}, link(d.alert.level, d.alert.entity_id, d.alert.entity_name), h("div", { class: "muted small" }, `${d.alert.kind} reached ${pct(d.alert.threshold)} · ${ago(d.created_at)}`)),
        h("td", {}, statusBadge(d.status))))))
      : h("p", { class: "muted" }, "No threshold alerts yet (webhooks are set in [[alerts.webhooks]]).")));
  page.append(h("div", { class: "cols" }, closestPanel, side));
  if (all.keys.total_count > all.keys.count) {
    page.append(h("p", { class: "muted small" }, `Showing the first ${all.keys.count} of ${all.keys.total_count} keys.`));
  }
  return page;
}

// The customer → team → key tree.
function node(level, id, name, entity, extra) {
  const ms = meters(entity);
  const budget = ms.find((m) => m.kind === "budget");
  const rate = ms.filter((m) => m.kind !== "budget").sort((a, b) => b.share - a.share)[0];
  const next = ms.map((m) => m.resetsAt).filter(Boolean).sort()[0];
  return h("div", { class: "node", "data-id": id },
    h("div", { class: "who" }, h("span", { class: "kind" }, LEVEL_NAMES[level]), link(level, id, name), extra),
    h("div", { class: "budget" }, budget ? meter(budget) : h("span", { class: "none" }, "no budget")),
    h("div", { class: "rate" }, rate ? meter(rate) : h("span", { class: "none" }, "no rate limit")),
    h("div", { class: "reset" }, next ? `resets ${until(next)}` : ""));
}

async function tree() {
  const all = await everything();
  const keysOf = (pred) => all.keys.virtual_keys.filter(pred);
  const keyItem = (k) => h("li", {}, node("virtual_key", k.id, k.name, k, k.is_active ? null : h("span", { class: "badge off" }, "inactive")));
  const teamItem = (t) => h("li", {}, node("team", t.id, t.name, t), h("ul", {}, keysOf((k) => k.team_id === t.id).map(keyItem)));
  const customerItems = all.customers.customers.map((c) => h("li", {}, node("customer", c.id, c.name, c),
    h("ul", {}, all.teams.teams.filter((t) => t.customer_id === c.id).map(teamItem),
      keysOf((k) => k.customer_id === c.id && !k.team_id).map(keyItem))));
  const loneTeams = all.teams.teams.filter((t) => !t.customer_id).map(teamItem);
  const loneKeys = keysOf((k) => !k.team_id && !k.customer_id).map(keyItem);
  const empty = !customerItems.length && !loneTeams.length && !loneKeys.length;
  return h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Customers & keys"), h("div", { class: "muted" }, "Budget and the busiest rate limit of each, with the time to the next reset.")),
      h("a", { href: "#/new-key" }, h("button", { type: "button" }, "New key"))),
    h("section", { class: "panel tree", id: "tree" },
      empty ? h("p", { class: "empty" }, "No customers, teams or keys yet. ", h("a", { href: "#/new-key" }, "Create a key")) : null,
      h("ul", {}, customerItems, loneTeams, loneKeys)));
}

// Usage chart from the hourly rollups.
const PALETTE = ["#2f5bea", "#16a394", "#e08a00", "#c2418f", "#7a5af5", "#3f9b2f", "#d2333f", "#5c6f8a"];
const METRICS = { cost: { label: "Cost", fmt: usd }, tokens: { label: "Tokens", fmt: count }, requests: { label: "Requests", fmt: count } };

async function usageChart(filter) {
  const box = h("section", { class: "panel chart", id: "usage" });
  let hours = 24;
  let metric = "cost";
  const draw = async () => {
    const to = new Date(Math.ceil(Date.now() / 3600e3) * 3600e3);
    const from = new Date(to.getTime() - hours * 3600e3);
    const q = new URLSearchParams({ ...filter, from: from.toISOString(), to: to.toISOString(), bucket: "hour", group_by: "model" });
    const report = await get(`/api/governance/usage?${q}`);
    const models = [...new Set(report.usage.map((r) => r.model || "(none)"))].sort();
    const buckets = Array.from({ length: hours }, (_, i) => ({ at: from.getTime() + i * 3600e3, by: {} }));
    for (const r of report.usage) {
      const i = Math.floor((Date.parse(r.bucket_start) - from.getTime()) / 3600e3);
      if (buckets[i]) buckets[i].by[r.model || "(none)"] = (buckets[i].by[r.model || "(none)"] || 0) + r[metric];
    }
    const totals = buckets.map((b) => Object.values(b.by).reduce((a, v) => a + v, 0));
    const top = Math.max(...totals, 0);
    const W = 720, H = 220, L = 56, B = 24, T = 8;
    const bw = (W - L) / hours;
    const y = (v) => H - B - (top > 0 ? (v / top) * (H - B - T) : 0);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${METRICS[metric].label} per hour by model` });
    svg.append(s("line", { x1: L, x2: W, y1: H - B, y2: H - B, class: "axis" }));
    for (const frac of [0.5, 1]) {
      svg.append(s("line", { x1: L, x2: W, y1: y(top * frac), y2: y(top * frac), class: "axis", "stroke-dasharray": "3 4" }));
      svg.append(s("text", { x: L - 6, y: y(top * frac) + 4, "text-anchor": "end" }, top > 0 ? METRICS[metric].fmt(top * frac) : ""));
    }
    buckets.forEach((b, i) => {
      let base = 0;
      models.forEach((m, mi) => {
        const v = b.by[m] || 0;
        if (v <= 0) return;
        const rect = s("rect", { x: L + i * bw + 1, width: Math.max(1, bw - 2), y: y(base + v), height: Math.max(1, y(base) - y(base + v)), fill: PALETTE[mi % PALETTE.length], rx: 1.5 },
          s("title", {}, `${new Date(b.at).toLocaleString(undefined, { hour: "2-digit", minute: "2-digit", day: "numeric", month: "short" })} · ${m}: ${METRICS[metric].fmt(v)}`));
        svg.append(rect);
        base += v;
      });
      const every = hours <= 24 ? 6 : 24;
      if (new Date(b.at).getUTCHours() % every === 0) {
        const d = new Date(b.at);
        const label = hours <= 24 ? `${String(d.getHours()).padStart(2, "0")}:00` : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
        svg.append(s("text", { x: L + i * bw, y: H - 6 }, label));
      }
    });
    const total = totals.reduce((a, v) => a + v, 0);
    chartBody.replaceChildren(
      report.usage.length ? svg : h("p", { class: "empty" }, `No usage in the last ${hours === 24 ? "24 hours" : "7 days"}.`),
      h("div", { class: "legend" }, models.map((m, mi) => {
        const el = h("span", {}, m);
        el.style.setProperty("--swatch", PALETTE[mi % PALETTE.length]);
        return el;
      })),
      h("div", { class: "muted small" }, `Total ${METRICS[metric].fmt(total)} · hourly rollups, current within one flush interval`));
  };
  const seg = (options, current, set) => {
    const el = h("div", { class: "seg" });
    for (const [value, label] of options) {
      el.append(h("button", { type: "button", class: value === current() ? "on" : "", onclick: async (e) => {
        set(value);
        for (const b of el.children) b.classList.toggle("on", b === e.currentTarget);
        await draw().catch(showError);
      } }, label));
    }
    return el;
  };
  const chartBody = h("div", {});
  box.append(h("div", { class: "page-head" }, h("h2", {}, "Usage"),
    h("div", { class: "actions" },
      seg(Object.entries(METRICS).map(([k, v]) => [k, v.label]), () => metric, (v) => { metric = v; }),
      seg([[24, "24 h"], [168, "7 days"]], () => hours, (v) => { hours = v; }))), chartBody);
  await draw();
  return box;
}

// Forms.
function field(name, label, attrs, hint) {
  const input = attrs.tag === "select"
    ? h("select", { name, id: `f-${name}` }, attrs.options.map(([v, l]) => h("option", { value: v, selected: v === attrs.value }, l)))
    : h("input", { name, id: `f-${name}`, type: attrs.type || "text", value: attrs.value ?? "", placeholder: attrs.placeholder, inputmode: attrs.inputmode, autocomplete: "off", required: attrs.required });
  if (attrs.type === "checkbox") input.checked = !!attrs.checked;
  return h("div", { class: "field", "data-field": name }, h("label", { for: `f-${name}` }, label), input,
    hint ? h("div", { class: "hint" }, hint) : null, h("div", { class: "error", role: "alert" }));
}

function clearErrors(form) {
  for (const f of form.querySelectorAll(".field")) {
    f.classList.remove("invalid");
    f.querySelector(".error").textContent = "";
  }
  form.querySelector(".form-error")?.replaceChildren();
}

/// Shows an API error at the field it names, or above the buttons.
function showFormError(form, err) {
  const name = fieldOf(err.message);
  const f = name && form.querySelector(`.field[data-field="${name}"]`);
  if (f) {
    f.classList.add("invalid");
    f.querySelector(".error").textContent = err.message.replace(/^invalid body: /, "");
    f.querySelector("input, select")?.focus();
  } else {
    form.querySelector(".form-error").replaceChildren(h("p", { class: "notice error" }, err.message));
  }
}

const DURATION_HINT = "e.g. 30s, 1h, 1d, 1w, 1M";

function limitFields(entity) {
  const b = entity?.budget;
  const r = entity?.rate_limit;
  return [
    h("fieldset", {}, h("legend", {}, "Budget"),
      field("max_limit", "Max (USD)", { value: b?.max_limit ?? "", inputmode: "decimal", placeholder: "e.g. 50" }),
      field("reset_duration", "Period", { value: b?.reset_duration ?? "", placeholder: "1M" }, DURATION_HINT)),
    h("fieldset", {}, h("legend", {}, "Rate limit"),
      field("token_max_limit", "Tokens", { value: r?.token_max_limit ?? "", inputmode: "numeric", placeholder: "e.g. 100000" }),
      field("token_reset_duration", "per", { value: r?.token_reset_duration ?? "", placeholder: "1h" }),
      field("request_max_limit", "Requests", { value: r?.request_max_limit ?? "", inputmode: "numeric", placeholder: "e.g. 600" }),
      field("request_reset_duration", "per", { value: r?.request_reset_duration ?? "", placeholder: "1m" })),
  ];
}

/// A number typed into a field, or the text itself (the API says what is wrong with it).
function numberOrText(raw) {
  const t = raw.trim();
  if (t === "") return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : t;
}

/// The budget and rate_limit of a create or update body from the form; on update, cleared
/// fields clear (`null`) what the entity had.
function limitsBody(form, entity) {
  const v = (name) => form.elements[name].value.trim();
  const body = {};
  const maxLimit = numberOrText(v("max_limit"));
  const period = v("reset_duration");
  if (maxLimit !== null || period) {
    body.budget = {};
    if (maxLimit !== null) body.budget.max_limit = maxLimit;
    if (period) body.budget.reset_duration = period;
  } else if (entity?.budget) {
    body.budget = null;
  }
  const dims = ["token_max_limit", "token_reset_duration", "request_max_limit", "request_reset_duration"];
  const values = Object.fromEntries(dims.map((d) => [d, d.endsWith("duration") ? (v(d) || null) : numberOrText(v(d))]));
  if (dims.some((d) => values[d] !== null)) {
    body.rate_limit = entity?.rate_limit ? values : Object.fromEntries(Object.entries(values).filter(([, x]) => x !== null));
  } else if (entity?.rate_limit) {
    body.rate_limit = null;
  }
  return body;
}

async function submitting(form, work) {
  clearErrors(form);
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await work();
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signOut(err);
    showFormError(form, err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function limitsEditor(kindPath, id, entity, wrap) {
  const form = h("form", { class: "stack", id: "edit-limits", novalidate: true },
    limitFields(entity), h("div", { class: "form-error" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save limits"),
      h("span", { class: "muted small" }, "Clear every field of a limit to remove it. Usage and the current window are kept.")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      await api("PUT", `/api/governance/${kindPath}/${id}`, limitsBody(form, entity));
      flash(`Limits of ${entity.name} saved.`);
      await render();
    });
  });
  return h("section", { class: "panel" }, h("h2", {}, "Edit limits"), wrap ? wrap(form) : form);
}

let flashMessage = null;
function flash(text) { flashMessage = text; }

async function keyPage(id) {
  const { virtual_key: k } = await get(`/api/governance/virtual-keys/${encodeURIComponent(id)}`);
  const [team, customer] = await Promise.all([
    k.team_id ? get(`/api/governance/teams/${k.team_id}`).then((r) => r.team).catch(() => null) : null,
    k.customer_id ? get(`/api/governance/customers/${k.customer_id}`).then((r) => r.customer).catch(() => null) : null,
  ]);
  const toggle = h("button", { type: "button", class: k.is_active ? "danger" : "secondary", onclick: async (e) => {
    e.currentTarget.disabled = true;
    try {
      await api("PUT", `/api/governance/virtual-keys/${k.id}`, { is_active: !k.is_active });
      flash(`${k.name} is ${k.is_active ? "deactivated" : "active again"}.`);
      await render();
    } catch (err) { showError(err); }
  } }, k.is_active ? "Deactivate" : "Activate");
  const chart = await usageChart({ virtual_key_id: k.id });
  return h("div", {},
    h("div", { class: "page-head" },
      h("div", {}, h("div", { class: "crumbs" }, h("a", { href: "#/tree" }, "Customers & keys"),
        customer ? [" / ", h("a", { href: `#/customer/${customer.id}` }, customer.name)] : null,
        team ? [" / ", h("a", { href: `#/team/${team.id}` }, team.name)] : null),
      h("h1", {}, k.name, " ", h("span", { class: `badge ${k.is_active ? "ok" : "off"}` }, k.is_active ? "active" : "inactive"))),
      h("div", { class: "actions" }, toggle)),
    h("div", { class: "cols" },
      h("div", {}, h("section", { class: "panel", id: "limits" }, h("h2", {}, "Limits"), limitRows(k)), chart),
      h("div", {},
        h("section", { class: "panel" }, h("h2", {}, "Key"), h("dl", { class: "facts" },
          h("dt", {}, "Value"), h("dd", { class: "mono" }, k.value_prefix),
          h("dt", {}, "Id"), h("dd", { class: "mono small" }, k.id),
          k.description ? [h("dt", {}, "Description"), h("dd", {}, k.description)] : null,
          h("dt", {}, "Team"), h("dd", {}, team ? h("a", { href: `#/team/${team.id}` }, team.name) : "—"),
          h("dt", {}, "Customer"), h("dd", {}, customer ? h("a", { href: `#/customer/${customer.id}` }, customer.name) : "—"),
          h("dt", {}, "Created"), h("dd", {}, when(k.created_at)))),
        (k.provider_configs || []).length ? h("section", { class: "panel" }, h("h2", {}, "Provider configs"),
          k.provider_configs.map((pc) => h("div", {}, h("h3", {}, pc.provider, pc.allowed_models?.length ? ` · ${pc.allowed_models.join(", ")}` : ""), limitRows(pc)))) : null,
        limitsEditor("virtual-keys", k.id, k))));
}

async function groupPage(kind, id) {
  const path = kind === "team" ? "teams" : "customers";
  const data = await get(`/api/governance/${path}/${encodeURIComponent(id)}`);
  const e = data[kind];
  const filter = kind === "team" ? { team_id: e.id } : { customer_id: e.id };
  const [keys, teams, chart] = await Promise.all([
    get(`/api/governance/virtual-keys?limit=${PAGE}&${kind}_id=${e.id}`),
    kind === "customer" ? get(`/api/governance/teams?limit=${PAGE}&customer_id=${e.id}`) : null,
    usageChart(filter),
  ]);
  const children = h("ul", {},
    (teams?.teams || []).map((t) => h("li", {}, node("team", t.id, t.name, t))),
    keys.virtual_keys.map((k) => h("li", {}, node("virtual_key", k.id, k.name, k))));
  return h("div", {},
    h("div", { class: "page-head" }, h("div", {},
      h("div", { class: "crumbs" }, h("a", { href: "#/tree" }, "Customers & keys")),
      h("h1", {}, e.name), h("div", { class: "muted" }, LEVEL_NAMES[kind]))),
    h("div", { class: "cols" },
      h("div", {}, h("section", { class: "panel", id: "limits" }, h("h2", {}, "Limits"), limitRows(e)), chart,
        h("section", { class: "panel tree" }, h("h2", {}, kind === "team" ? "Keys" : "Teams and keys"),
          children.childElementCount ? children : h("p", { class: "muted" }, "None yet."))),
      h("div", {}, limitsEditor(path, e.id, e))));
}

async function newKey() {
  const all = await Promise.all([get(`/api/governance/teams?limit=${PAGE}`), get(`/api/governance/customers?limit=${PAGE}`)]);
  const [teams, customers] = all;
  const out = h("div", {});
  const form = h("form", { class: "stack", id: "new-key", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Key"),
      field("name", "Name", { required: true, placeholder: "e.g. checkout-service" }),
      field("description", "Description", { placeholder: "optional" }),
      field("team_id", "Team", { tag: "select", options: [["", "— none —"], ...teams.teams.map((t) => [t.id, t.name])] }),
      field("customer_id", "Customer", { tag: "select", options: [["", "— none —"], ...customers.customers.map((c) => [c.id, c.name])] }, "A key belongs to a team or a customer, not both.")),
    limitFields(null), h("div", { class: "form-error" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitting(form, async () => {
      const v = (name) => form.elements[name].value.trim();
      const body = { name: form.elements.name.value, ...limitsBody(form, null) };
      if (v("description")) body.description = v("description");
      if (v("team_id")) body.team_id = v("team_id");
      if (v("customer_id")) body.customer_id = v("customer_id");
      const created = (await api("POST", "/api/governance/virtual-keys", body)).virtual_key;
      out.replaceChildren(created_panel(created));
      window.scrollTo(0, 0);
    });
  });
  out.append(h("section", { class: "panel" }, form));
  return h("div", {}, h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "New virtual key"),
    h("div", { class: "muted" }, "Gateways send the key's value; its limits apply together with its team's and customer's."))), out);
}

function created_panel(k) {
  const value = h("code", { id: "key-value" }, k.value);
  const copied = h("span", { class: "muted small", role: "status" });
  const copy = h("button", { type: "button", id: "copy-key", onclick: async () => {
    try {
      await navigator.clipboard.writeText(k.value);
    } catch {
      const range = document.createRange();
      range.selectNodeContents(value);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.execCommand("copy");
    }
    copied.textContent = "Copied.";
  } }, "Copy");
  return h("section", { class: "panel" },
    h("p", { class: "notice success" }, h("strong", {}, `Key ${k.name} created. `), "Copy its value now: Heimdall keeps only a digest and will not show it again."),
    h("div", { class: "secret" }, value, copy, copied),
    h("div", { class: "actions" }, h("a", { href: `#/key/${k.id}` }, h("button", { type: "button" }, "Open the key")),
      h("a", { href: "#/new-key", onclick: () => setTimeout(render) }, h("button", { type: "button", class: "secondary" }, "Create another"))));
}

async function alertsPage() {
  const status = new URLSearchParams(location.hash.split("?")[1] || "").get("status") || "";
  const q = new URLSearchParams({ limit: "200" });
  if (status) q.set("status", status);
  const list = await get(`/api/governance/alerts?${q}`);
  const tab = (value, label) => h("a", { href: value ? `#/alerts?status=${value}` : "#/alerts" }, h("button", { type: "button", class: value === status ? "" : "secondary" }, label));
  return h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Alerts"),
      h("div", { class: "muted" }, "Threshold webhooks: one per threshold, window and limit, retried until the receiver answers 2xx.")),
    h("div", { class: "actions" }, tab("", "All"), tab("pending", "Pending"), tab("delivered", "Delivered"))),
    h("section", { class: "panel", id: "alerts" }, list.alerts.length
      ? h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Limit"), h("th", {}, "Reached"), h("th", { class: "hide-narrow" }, "Receiver"), h("th", {}, "Status"))),
        h("tbody", {}, list.alerts.map((d) => h("tr", {},
          h("td", {}, link(d.alert.level, d.alert.entity_id, d.alert.entity_name),
            h("div", { class: "muted small" }, `${LEVEL_NAMES[d.alert.level] || d.alert.level} · ${d.alert.kind} · ${when(d.created_at)}`)),
          h("td", {}, h("strong", {}, pct(d.alert.threshold)),
            h("div", { class: "muted small" }, `${amount(d.alert.kind === "budget" ? "$" : "", d.alert.used)} of ${amount(d.alert.kind === "budget" ? "$" : "", d.alert.max)}`)),
          h("td", { class: "hide-narrow small mono" }, d.webhook),
          h("td", {}, statusBadge(d.status), h("div", { class: "muted small" },
            d.status === "delivered" ? `after ${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` : `${d.attempts} attempts${d.last_error ? ` · ${d.last_error}` : ""}`)))))))
      : h("p", { class: "empty" }, status ? `No ${status} deliveries.` : "No threshold alerts yet. Configure receivers with [[alerts.webhooks]] (see docs/alerts.md).")),
    list.total_count > list.count ? h("p", { class: "muted small" }, `Showing the newest ${list.count} of ${list.total_count}.`) : null);
}

// ---------------------------------------------------------------------------------------------
// Sign-in, routing, errors

const main = () => document.getElementById("main");

function signIn(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", name: "token", id: "f-token", autocomplete: "current-password", placeholder: "an entry of auth.admin_tokens", required: true });
  const form = h("form", { class: "stack", id: "sign-in" },
    h("div", { class: "field", "data-field": "token" }, h("label", { for: "f-token" }, "Admin token"), input, h("div", { class: "error", role: "alert" }, message || "")),
    h("button", { type: "submit" }, "Sign in"));
  if (message) form.querySelector(".field").classList.add("invalid");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await get("/api/governance/virtual-keys?limit=1");
      await render();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      signIn(describeAuthError(err));
    }
  });
  main().replaceChildren(h("section", { class: "panel login" }, h("h1", {}, "Heimdall"),
    h("p", {}, "Budgets, rate limits and usage of your LLM gateway. Sign in with an admin token; it stays in this tab only."), form));
  input.focus();
}

function describeAuthError(err) {
  if (err.status === 401) return "Heimdall refused this token (401): it is not one of auth.admin_tokens.";
  if (err.status === 403) return "This is a gateway token (403): the dashboard needs an admin token.";
  return err.message;
}

function signOut(err) {
  sessionStorage.removeItem(TOKEN_KEY);
  signIn(err ? describeAuthError(err) : "");
}

function showError(err) {
  if (err.status === 401 || err.status === 403) return signOut(err);
  main().prepend(h("p", { class: "notice error" }, err.status === 404 ? `Not found: ${err.message}` : err.message));
  return undefined;
}

const ROUTES = [
  [/^$/, "overview", () => overview()],
  [/^tree$/, "tree", () => tree()],
  [/^alerts$/, "alerts", () => alertsPage()],
  [/^new-key$/, "new-key", () => newKey()],
  [/^key\/([^/]+)$/, "tree", (m) => keyPage(m[1])],
  [/^team\/([^/]+)$/, "tree", (m) => groupPage("team", m[1])],
  [/^customer\/([^/]+)$/, "tree", (m) => groupPage("customer", m[1])],
];

let rendering = 0;
async function render() {
  if (token() === null) return signIn();
  const nav = document.getElementById("nav");
  nav.hidden = false;
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const route = ROUTES.map(([re, name, view]) => [re.exec(path), name, view]).find(([m]) => m);
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", !!route && a.dataset.nav === route[1]);
  const mine = ++rendering;
  if (!main().childElementCount) main().replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const page = route ? await route[2](route[0]) : h("p", { class: "notice error" }, "No such page. ", h("a", { href: "#/" }, "Back to the overview"));
    if (mine !== rendering) return;
    main().replaceChildren(flashMessage ? h("p", { class: "notice success", role: "status" }, flashMessage) : "", page);
    flashMessage = null;
  } catch (err) {
    if (mine !== rendering) return;
    main().replaceChildren();
    showError(err);
  }
}

window.addEventListener("hashchange", () => { main().replaceChildren(); render(); });
document.getElementById("signout").addEventListener("click", () => signOut());
render();
