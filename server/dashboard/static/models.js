/* Models: every fitted version, which one each night chose and why, per-site predictivity
 * (raw and noise-ceiled), CKA when screened, and perturbation transfer.
 *
 * API: GET /model-versions, GET /model-versions/{version}.
 */
(function () {
  "use strict";
  const details = new Map();

  /* The night a version was fitted for, wherever the API puts it. */
  function nightOf(v) {
    for (const x of [v.night, v.night_id, v.day, v.trained_on && v.trained_on.night, v.metrics && v.metrics.night]) {
      if (x !== undefined && x !== null) return x;
    }
    return null;
  }

  function ckaOf(v) {
    const m = v.metrics || {};
    for (const x of [v.cka, m.cka, m.CKA, m.cka_it]) if (typeof x === "number") return x;
    return null;
  }

  function siteRows(detail) {
    for (const key of ["site_metrics", "sites", "per_site", "metrics_per_site"]) {
      if (detail && Array.isArray(detail[key])) return detail[key];
    }
    return [];
  }

  function median(xs) {
    const v = xs.filter((x) => typeof x === "number" && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return null;
    const m = Math.floor(v.length / 2);
    return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
  }

  async function detail(version) {
    if (!details.has(version)) details.set(version, IT.api("/model-versions/" + encodeURIComponent(version)));
    return details.get(version);
  }

  function versionTable(versions) {
    IT.fill(
      "versions",
      IT.table(
        [
          ["version", "version"],
          ["night", (v) => nightOf(v)],
          ["backbone", (v) => v.backbone + (v.layer ? " / " + v.layer : "")],
          ["fitted", (v) => IT.fmtTime(v.created_at)],
          ["score", "score"],
          ["CKA", (v) => ckaOf(v)],
          ["chosen", (v) => (v.chosen ? IT.el("span", { class: "state state-succeeded" }, ["chosen"]) : "")],
          ["why", (v) => v.chosen_reason || ""],
        ],
        versions,
        { id: "versions-table" }
      )
    );
  }

  async function drawVersion(version) {
    IT.clearErrors("version-errors");
    IT.setParams({ version: version });
    let d;
    try {
      d = await detail(version);
    } catch (e) {
      details.delete(version);
      IT.showError(e, "version-errors", "model version " + version);
      IT.plot("pred-plot", [], {});
      IT.plot("transfer-plot", [], {});
      return;
    }
    const rows = siteRows(d).slice().sort((a, b) => String(a.site_id).localeCompare(String(b.site_id)));
    const sites = rows.map((r) => r.site_id);
    IT.plot(
      "pred-plot",
      [
        { type: "bar", name: "predictivity (Pearson r)", x: sites, y: rows.map((r) => r.predictivity), marker: { color: "#9ab" } },
        { type: "bar", name: "noise-ceiled predictivity", x: sites, y: rows.map((r) => r.ceiled_predictivity), marker: { color: "#1f77b4" } },
        { type: "scatter", mode: "markers", name: "noise ceiling", x: sites, y: rows.map((r) => r.noise_ceiling), marker: { symbol: "line-ew-open", size: 18, color: "#333", line: { width: 2 } } },
      ],
      { barmode: "group", yaxis: { title: { text: "r" }, range: [0, 1.05] }, title: { text: version, font: { size: 13 } } }
    );
    IT.plot(
      "transfer-plot",
      [
        { type: "bar", name: "sign agreement", x: sites, y: rows.map((r) => r.transfer_sign), marker: { color: "#2ca02c" } },
        {
          type: "bar",
          name: "transfer r, 95% CI (chance 0)",
          x: sites,
          y: rows.map((r) => r.transfer_r),
          error_y: {
            type: "data",
            symmetric: false,
            array: rows.map((r) => (r.transfer_r_high == null || r.transfer_r == null ? null : r.transfer_r_high - r.transfer_r)),
            arrayminus: rows.map((r) => (r.transfer_r_low == null || r.transfer_r == null ? null : r.transfer_r - r.transfer_r_low)),
          },
          marker: { color: "#9467bd" },
        },
      ],
      {
        barmode: "group",
        yaxis: { title: { text: "on every twin shown so far (held out)" } },
        shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0.5, y1: 0.5, line: { dash: "dot", color: "#888" } }],
      }
    );
    IT.fill(
      "site-metrics",
      rows.length
        ? IT.table(
            [
              ["site", "site_id"],
              ["predictivity", "predictivity"],
              ["noise-ceiled", "ceiled_predictivity"],
              ["noise ceiling", "noise_ceiling"],
              ["transfer sign", "transfer_sign"],
              ["transfer r", "transfer_r"],
              ["r 95% CI", (r) => (r.transfer_r_low == null ? "" : IT.fmt(r.transfer_r_low) + " to " + IT.fmt(r.transfer_r_high))],
              ["slope", "transfer_slope"],
              ["pairs", "transfer_n"],
              ["made the site's twins", (r) => (r.chosen_for_site ? "yes: " + (r.choice_reason || "") : "")],
              ["ridge α", "alpha"],
              ["drift", "drift"],
              ["gated", (r) => (r.gated ? "gated: " + (r.gate_reason || "") : "no")],
            ],
            rows,
            { id: "site-metrics-table" }
          )
        : IT.el("span", { class: "note" }, ["no per-site metrics for this version"])
    );
  }

  async function drawNights(versions) {
    const recent = versions.slice(-60);
    const got = await IT.pool(recent, 6, async (v) => {
      try {
        return await detail(v.version);
      } catch (e) {
        IT.showError(e, "version-errors", "model version " + v.version);
        return null;
      }
    });
    const x = recent.map((v, i) => (nightOf(v) !== null ? nightOf(v) : i + 1));
    const ceiled = got.map((d) => (d ? median(siteRows(d).map((r) => r.ceiled_predictivity)) : null));
    const raw = got.map((d) => (d ? median(siteRows(d).map((r) => r.predictivity)) : null));
    const text = recent.map((v) => v.version);
    const traces = [
      { type: "scatter", mode: "markers", name: "median noise-ceiled predictivity", x: x, y: ceiled, text: text, marker: { color: "#1f77b4", size: 9 } },
      { type: "scatter", mode: "markers", name: "median raw predictivity", x: x, y: raw, text: text, marker: { color: "#9ab", size: 8 } },
    ];
    const chosen = recent.map((v, i) => (v.chosen ? i : -1)).filter((i) => i >= 0);
    traces.push({
      type: "scatter",
      mode: "lines+markers",
      name: "chosen model",
      x: chosen.map((i) => x[i]),
      y: chosen.map((i) => ceiled[i]),
      text: chosen.map((i) => recent[i].version + ": " + (recent[i].chosen_reason || "")),
      marker: { symbol: "star", size: 15, color: "#d62728" },
      line: { color: "#d62728" },
    });
    const cka = recent.map((v) => ckaOf(v));
    if (cka.some((c) => c !== null)) {
      traces.push({ type: "scatter", mode: "markers", name: "CKA (layer vs IT)", x: x, y: cka, text: text, marker: { symbol: "triangle-up", color: "#ff7f0e", size: 9 } });
    }
    IT.plot("nights-plot", traces, {
      xaxis: { title: { text: "night" }, dtick: 1 },
      yaxis: { title: { text: "r" }, range: [0, 1.05] },
      hovermode: "closest",
    });
  }

  IT.page(async () => {
    let versions;
    try {
      versions = await IT.fetchAll("/model-versions", {}, 2000);
    } catch (e) {
      IT.showError(e, "messages", "model versions");
      return;
    }
    if (!versions.length) {
      IT.fill("versions", IT.el("span", { class: "note" }, ["no model has been fitted yet"]));
      return;
    }
    versions.sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
    versionTable(versions.slice().reverse());
    const sel = IT.$("version-select");
    const wanted = IT.param("version");
    const chosen = versions.filter((v) => v.chosen);
    const initial = wanted || (chosen.length ? chosen[chosen.length - 1] : versions[versions.length - 1]).version;
    for (const v of versions.slice().reverse()) sel.appendChild(IT.option(v.version, v.version + (v.chosen ? " (chosen)" : "")));
    if (!versions.some((v) => v.version === initial)) sel.appendChild(IT.option(initial, initial + " (unknown)"));
    sel.value = initial;
    sel.addEventListener("change", () => drawVersion(sel.value));
    await Promise.all([drawVersion(initial), drawNights(versions)]);
  });
})();
