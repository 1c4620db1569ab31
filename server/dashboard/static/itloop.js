/* itloop dashboard core: token handling, API calls, error messages, small DOM helpers.
 *
 * Every page is an empty shell; its script reads the public JSON API with the token the
 * user pasted on the login page. Any failed call becomes a visible <div class="error">
 * carrying the API's own `detail`, so a page is never silently blank.
 */
(function () {
  "use strict";
  // From data- attributes on <html> (base.html): no inline script, so the CSP can forbid them.
  const DATA = document.documentElement.dataset;
  const CFG = { api: DATA.api || "/api/v1", prefix: DATA.prefix || "/dashboard", page: DATA.page || "/" };
  const TOKEN_KEY = "itloop.token";

  class ApiError extends Error {
    constructor(status, detail, path) {
      super(detail);
      this.status = status;
      this.detail = detail;
      this.path = path;
    }
  }

  /* The token lives in this tab's sessionStorage and is shared with the dashboard's other open
   * tabs over a BroadcastChannel (same origin only): a new tab asks, an open tab answers. It is
   * never written to localStorage or a cookie, so it is gone once the last dashboard tab closes,
   * and "log out" in one tab logs out every tab. See docs/dashboard.md. */
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("itloop-dashboard") : null;
  function token() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }
  function setToken(value, quiet) {
    window.sessionStorage.setItem(TOKEN_KEY, value);
    if (channel && !quiet) channel.postMessage({ kind: "token", token: value });
  }
  function clearToken(quiet) {
    window.sessionStorage.removeItem(TOKEN_KEY);
    if (channel && !quiet) channel.postMessage({ kind: "logout" });
  }
  if (channel) {
    channel.addEventListener("message", (ev) => {
      const m = ev.data || {};
      if (m.kind === "ask" && token()) channel.postMessage({ kind: "token", token: token(), to: m.id });
      else if (m.kind === "token" && m.token && (!m.to || m.to === askId)) {
        window.sessionStorage.setItem(TOKEN_KEY, m.token);
        if (waiting) waiting(m.token);
      } else if (m.kind === "logout") {
        window.sessionStorage.removeItem(TOKEN_KEY);
        if (document.body && document.body.dataset.state) location.replace(CFG.prefix + "/login");
      }
    });
  }
  const askId = Math.random().toString(36).slice(2);
  let waiting = null;
  /* This tab's token, or one borrowed from another open dashboard tab (null after `ms`). */
  function borrowToken(ms) {
    if (token() || !channel) return Promise.resolve(token());
    return new Promise((resolve) => {
      const done = (t) => {
        waiting = null;
        resolve(t);
      };
      waiting = done;
      setTimeout(() => done(token()), ms);
      channel.postMessage({ kind: "ask", id: askId });
    });
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v === undefined || v === null || v === "") continue;
      q.append(k, String(v));
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  async function errorDetail(resp) {
    let detail = resp.statusText || "error";
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        if (body && body.detail !== undefined) {
          detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        } else if (text) {
          detail = text.slice(0, 300);
        }
      } catch (e) {
        if (text) detail = text.slice(0, 300);
      }
    } catch (e) {
      /* keep statusText */
    }
    return detail;
  }

  /* GET (or other method) a path under the API root; resolves to parsed JSON, rejects with ApiError. */
  async function request(path, params, opts) {
    const o = opts || {};
    const url = CFG.api + path + query(params);
    const headers = Object.assign({ Accept: o.accept || "application/json" }, o.headers || {});
    const tok = o.token !== undefined ? o.token : token();
    if (tok) headers.Authorization = "Bearer " + tok;
    let resp;
    try {
      resp = await fetch(url, { method: o.method || "GET", headers: headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "network error: could not reach the server (" + e.message + ")", url);
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, await errorDetail(resp), url);
    }
    if (o.blob) return resp.blob();
    if (resp.status === 204) return null;
    const text = await resp.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch (e) {
      throw new ApiError(resp.status, "the server sent something that is not JSON", url);
    }
  }

  function api(path, params) {
    return request(path, params, {});
  }

  /* A paginated list reads as {items, total, limit, offset}; tolerate a bare list too. */
  function items(resp) {
    if (Array.isArray(resp)) return resp;
    if (resp && Array.isArray(resp.items)) return resp.items;
    return [];
  }

  /* Follow limit/offset pages until `total` (or a short page, or `max` rows). */
  async function fetchAll(path, params, max, pageSize) {
    const cap = max || 5000;
    const limit = Math.min(pageSize || 500, cap);
    let offset = 0;
    const out = [];
    for (;;) {
      const resp = await api(path, Object.assign({}, params || {}, { limit: limit, offset: offset }));
      const page = items(resp);
      out.push(...page);
      offset += page.length;
      const total = resp && typeof resp.total === "number" ? resp.total : null;
      if (Array.isArray(resp) || page.length === 0 || page.length < limit) break;
      if (total !== null && offset >= total) break;
      if (out.length >= cap) break;
    }
    return out.slice(0, cap);
  }

  /* ---------- DOM helpers ---------- */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of [].concat(children === undefined ? [] : children)) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function $(id) {
    return typeof id === "string" ? document.getElementById(id) : id;
  }

  function describe(err) {
    if (err instanceof ApiError) {
      const where = err.path ? " (" + err.path.replace(/^https?:\/\/[^/]+/, "") + ")" : "";
      const status = err.status ? "HTTP " + err.status + ": " : "";
      return status + err.detail + where;
    }
    return (err && err.message) || String(err);
  }

  /* Show an error in `where` (an element or its id; default the page's #messages). */
  function showError(err, where, context) {
    const box = $(where || "messages") || $("messages") || document.body;
    const text = (context ? context + ": " : "") + describe(err);
    const node = el("div", { class: "error", role: "alert" }, [text]);
    if (err instanceof ApiError && err.status === 401) {
      node.appendChild(document.createTextNode(" "));
      node.appendChild(el("a", { href: CFG.prefix + "/login?next=" + encodeURIComponent(location.pathname + location.search) }, ["Log in again"]));
    }
    box.appendChild(node);
    if (window.console) console.warn("itloop dashboard:", text);
    return node;
  }

  function clearErrors(where) {
    const box = $(where || "messages");
    if (!box) return;
    for (const n of Array.from(box.querySelectorAll(".error"))) n.remove();
  }

  function setBusy(where, busy) {
    const box = $(where);
    if (box) box.classList.toggle("loading", !!busy);
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || x === "") return "—";
    if (typeof x === "number") {
      if (!isFinite(x)) return String(x);
      const d = digits === undefined ? 3 : digits;
      return Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toFixed(d)).toString();
    }
    if (typeof x === "boolean") return x ? "yes" : "no";
    return String(x);
  }

  function fmtTime(s) {
    if (!s) return "—";
    const d = new Date(s);
    return isNaN(d.getTime()) ? String(s) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  /* Render rows as a table: columns are [header, key or function(row) -> text|Node]. */
  function table(columns, rows, attrs) {
    const head = el("tr", {}, columns.map((c) => el("th", {}, [c[0]])));
    const body = rows.map((r) =>
      el(
        "tr",
        {},
        columns.map((c) => {
          const v = typeof c[1] === "function" ? c[1](r) : r[c[1]];
          return el("td", {}, [v instanceof Node ? v : fmt(v)]);
        })
      )
    );
    const t = el("table", Object.assign({ class: "data" }, attrs || {}), [el("thead", {}, [head]), el("tbody", {}, body)]);
    return wrap(t);
  }

  /* Wide tables scroll inside their own box (focusable, so keyboards can scroll it too), never the page. */
  function wrap(node) {
    const label = node.id ? node.id.replace(/-/g, " ") : "table";
    return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": label }, [node]);
  }

  function fill(where, node) {
    const box = $(where);
    box.replaceChildren(...[].concat(node));
    return box;
  }

  function option(value, label, selected) {
    return el("option", { value: value, selected: selected ? true : null }, [label === undefined ? value : label]);
  }

  /* Plot with Plotly when it loaded; otherwise say why there is no plot. */
  function plot(where, traces, layout) {
    const div = $(where);
    if (!window.Plotly) {
      showError(new Error("the plotting library did not load (" + CFG.prefix + "/vendor/plotly.min.js)"), div.parentNode);
      return null;
    }
    // At phone width the legend goes under the plot, one entry a line, and the figure grows to
    // hold it instead of squeezing the plot area.
    const narrow = (div.clientWidth || window.innerWidth) < 640;
    const named = traces.filter((t) => t.showlegend !== false && t.name).length;
    const legendPx = 19 * named;
    const base = {
      margin: narrow ? { l: 50, r: 10, t: 36, b: 70 + legendPx } : { l: 60, r: 20, t: 36, b: 50 },
      legend: narrow
        ? { orientation: "v", x: 0, xanchor: "left", yref: "container", y: 0.005, yanchor: "bottom", font: { size: 11 } }
        : { orientation: "h", y: -0.2 },
      hovermode: "closest",
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#fbfbfd",
    };
    if (narrow) base.height = 300 + 70 + legendPx;
    return window.Plotly.react(div, traces, Object.assign(base, layout || {}), { displaylogo: false, responsive: true });
  }

  function param(name) {
    return new URLSearchParams(location.search).get(name);
  }

  /* Put the chosen selector values in the URL so a view can be shared and reloaded. */
  function setParams(values) {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined || v === null || v === "") q.delete(k);
      else q.set(k, String(v));
    }
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }

  async function whoami() {
    const me = await api("/me");
    const who = $("whoami");
    if (who && me) who.textContent = me.name + " (" + me.role + ")";
    return me;
  }

  /* Page entry point: require a token, say who is logged in, then run the page's main(). */
  function page(main) {
    document.addEventListener("DOMContentLoaded", async () => {
      const out = $("logout");
      if (out) out.addEventListener("click", () => clearToken());
      if (!(await borrowToken(400))) {
        location.replace(CFG.prefix + "/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      document.body.dataset.state = "loading";
      try {
        await whoami();
      } catch (e) {
        showError(e, "messages", "checking the token");
        document.body.dataset.state = "error";
        return;
      }
      try {
        await main();
        document.body.dataset.state = document.querySelector(".error") ? "error" : "ready";
      } catch (e) {
        showError(e);
        document.body.dataset.state = "error";
      }
    });
  }

  /* Run fn over items with at most `width` calls in flight (keeps lineage lookups polite). */
  async function pool(list, width, fn) {
    const out = new Array(list.length);
    let next = 0;
    async function worker() {
      while (next < list.length) {
        const i = next++;
        out[i] = await fn(list[i], i);
      }
    }
    await Promise.all(Array.from({ length: Math.min(width, list.length) }, worker));
    return out;
  }

  const blobCache = new Map();
  /* Images are token-protected too: fetch the PNG with the token and show it as a blob URL. */
  async function imageUrl(sha256) {
    if (!blobCache.has(sha256)) {
      blobCache.set(
        sha256,
        request("/images/" + encodeURIComponent(sha256), null, { blob: true, accept: "image/png" }).then((b) =>
          URL.createObjectURL(b)
        )
      );
    }
    return blobCache.get(sha256);
  }

  /* ---------- colours: Okabe-Ito, one per source, the same on every page ---------- */
  // Okabe & Ito (2008), safe for the common colour-vision deficiencies; no red/green pair.
  const OKABE_ITO = {
    black: "#000000", orange: "#E69F00", sky: "#56B4E9", green: "#009E73",
    yellow: "#F0E442", blue: "#0072B2", vermillion: "#D55E00", purple: "#CC79A7",
  };
  // IT is black; the model-free baseline is reddish purple; the epsilon-free and noise baselines grey.
  const FIXED = { it: OKABE_ITO.black, model_free: OKABE_ITO.purple, baseline: "#6b6b6b" };
  // Candidates take these in the order of their names, so a candidate has one colour everywhere.
  const CANDIDATE_COLORS = [OKABE_ITO.blue, OKABE_ITO.orange, OKABE_ITO.green, OKABE_ITO.vermillion, OKABE_ITO.sky, OKABE_ITO.yellow];
  const CANDIDATE_SYMBOLS = ["square", "diamond", "triangle-up", "cross", "x", "star"];
  const COLORS = CANDIDATE_COLORS;
  let lineup = null;

  /* The model versions and the sorted list of candidate names (fetched once per page). */
  function candidates() {
    if (!lineup) {
      lineup = fetchAll("/model-versions", {}, 5000).then((versions) => {
        const names = [...new Set(versions.map((v) => v.candidate || v.version))].sort();
        const byVersion = new Map(versions.map((v) => [v.version, v]));
        return { versions: versions, names: names, byVersion: byVersion };
      });
      lineup.catch(() => { lineup = null; });
    }
    return lineup;
  }

  /* Colour and marker of a candidate: beyond six candidates colours repeat with another marker. */
  function candidateStyle(names, name) {
    const i = Math.max(0, names.indexOf(name));
    return {
      color: CANDIDATE_COLORS[i % CANDIDATE_COLORS.length],
      symbol: CANDIDATE_SYMBOLS[Math.floor(i / CANDIDATE_COLORS.length) % CANDIDATE_SYMBOLS.length],
    };
  }

  /* The night a version was fitted for (the modeling domain keeps it in trained_on.night). */
  function nightOf(v) {
    for (const x of [v && v.trained_on && v.trained_on.night, v && v.night, v && v.metrics && v.metrics.night]) {
      if (x !== undefined && x !== null) return Number(x);
    }
    const m = /^night(\d+)-/.exec((v && v.version) || "");
    return m ? Number(m[1]) : null;
  }

  /* ---------- symmetric log axis (Plotly has none): keeps zero and negative values ---------- */
  const LINTHRESH = 0.1;
  function symlog(y, c) {
    if (y === null || y === undefined || !isFinite(y)) return null;
    const k = c || LINTHRESH;
    return Math.sign(y) * Math.log10(1 + Math.abs(y) / k);
  }

  /* Tick positions and labels for a symlog axis spanning the given (untransformed) values. */
  function symlogTicks(values, c) {
    const k = c || LINTHRESH;
    const finite = values.filter((v) => v !== null && v !== undefined && isFinite(v));
    const hi = Math.max(k, ...finite.map((v) => Math.abs(v)));
    const pos = [];
    for (let d = k; d <= hi * 1.0001; d *= 10) pos.push(d);
    if (pos[pos.length - 1] < hi) pos.push(pos[pos.length - 1] * 10);
    const neg = finite.some((v) => v < 0) ? pos.map((d) => -d).reverse() : [];
    const ticks = [...neg, 0, ...pos];
    return { tickvals: ticks.map((t) => symlog(t, k)), ticktext: ticks.map((t) => Number(t.toPrecision(2)).toString()) };
  }

  /* Put a trace's y (and its asymmetric error bars) on the chosen scale; hover shows raw values. */
  function scaleTrace(trace, scale, lo, hi) {
    if (scale !== "symlog") return trace;
    const y = trace.y.map((v) => (v === null || v === undefined ? null : v));
    trace.customdata = y;
    trace.y = y.map((v) => symlog(v));
    if (lo && hi) {
      trace.error_y = Object.assign({}, trace.error_y || {}, {
        type: "data",
        symmetric: false,
        array: y.map((v, i) => (v === null || hi[i] === null || hi[i] === undefined ? null : symlog(hi[i]) - symlog(v))),
        arrayminus: y.map((v, i) => (v === null || lo[i] === null || lo[i] === undefined ? null : symlog(v) - symlog(lo[i]))),
      });
    }
    trace.hovertemplate = (trace.hovertemplate || "%{fullData.name}<br>%{x}: %{customdata:.3f}<extra></extra>").replace("%{y:.3f}", "%{customdata:.3f}");
    return trace;
  }

  /* The y axis layout for a scale ("linear" or "symlog") given every raw value drawn. */
  function yAxis(scale, title, values) {
    const axis = { title: { text: title }, zeroline: true, zerolinecolor: "#888", zerolinewidth: 1 };
    if (scale === "symlog") {
      axis.title.text = title + " (symmetric log)";
      return Object.assign(axis, symlogTicks(values), { type: "linear" });
    }
    return Object.assign(axis, { type: "linear" });
  }

  /* A scale given in the URL: "log" from old bookmarks becomes symlog (a log axis hides negatives). */
  function scaleParam(value) {
    return value === "symlog" || value === "log" ? "symlog" : "linear";
  }

  window.IT = {
    ApiError, token, setToken, clearToken, api, request, items, fetchAll, el, $, showError, clearErrors,
    describe, setBusy, fmt, fmtTime, table, fill, option, plot, param, setParams, whoami, page, pool,
    imageUrl, COLORS, OKABE_ITO, FIXED, candidates, candidateStyle, nightOf, symlog, symlogTicks, scaleTrace,
    yAxis, scaleParam, wrap, borrowToken, cfg: CFG,
  };
})();
