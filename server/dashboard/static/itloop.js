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

  function token() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }
  function setToken(value) {
    window.sessionStorage.setItem(TOKEN_KEY, value);
  }
  function clearToken() {
    window.sessionStorage.removeItem(TOKEN_KEY);
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
    return el("table", Object.assign({ class: "data" }, attrs || {}), [el("thead", {}, [head]), el("tbody", {}, body)]);
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
    const base = {
      margin: { l: 60, r: 20, t: 36, b: 50 },
      legend: { orientation: "h", y: -0.2 },
      hovermode: "closest",
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#fbfbfd",
    };
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
      if (!token()) {
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

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

  window.IT = {
    ApiError, token, setToken, clearToken, api, request, items, fetchAll, el, $, showError, clearErrors,
    describe, setBusy, fmt, fmtTime, table, fill, option, plot, param, setParams, whoami, page, pool,
    imageUrl, COLORS, cfg: CFG,
  };
})();
