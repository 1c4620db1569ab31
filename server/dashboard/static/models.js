/* Models: every fitted version, which one each night chose and why, per-site predictivity
 * (raw and noise-ceiled), CKA when screened, and perturbation transfer.
 *
 * API: GET /model-versions, GET /model-versions/{version}.
 */
(function () {
  "use strict";
  const details = new Map();
  let lineup = { names: [], byVersion: new Map() };
  const nightOf = IT.nightOf;

  function colorOf(version) {
    const v = lineup.byVersion.get(version);
    return IT.candidateStyle(lineup.names, v ? v.candidate : version).color;
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
          ["candidate", (v) => IT.el("span", { class: "swatch-label" }, [IT.el("span", { class: "swatch", style: { background: colorOf(v.version) }, "aria-hidden": "true" }), v.candidate])],
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
    // The version's candidate colour throughout; raw and transfer r are hatched, not recoloured.
    const color = colorOf(version);
    IT.plot(
      "pred-plot",
      [
        { type: "bar", name: "predictivity (Pearson r)", x: sites, y: rows.map((r) => r.predictivity), marker: { color: color, opacity: 0.55, pattern: { shape: "/" } } },
        { type: "bar", name: "noise-ceiled predictivity", x: sites, y: rows.map((r) => r.ceiled_predictivity), marker: { color: color } },
        { type: "scatter", mode: "markers", name: "noise ceiling", x: sites, y: rows.map((r) => r.noise_ceiling), marker: { symbol: "line-ew-open", size: 18, color: IT.FIXED.it, line: { width: 2 } } },
      ],
      { barmode: "group", yaxis: { title: { text: "r" }, range: [0, 1.05] }, title: { text: version, font: { size: 13 } } }
    );
    IT.plot(
      "transfer-plot",
      [
        { type: "bar", name: "sign agreement", x: sites, y: rows.map((r) => r.transfer_sign), marker: { color: color } },
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
          marker: { color: color, opacity: 0.55, pattern: { shape: "x" } },
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
    // One line per candidate across nights (a candidate gets a new version name every night).
    const traces = [];
    const cands = [...new Set(recent.map((v) => v.candidate))].sort();
    for (const cand of cands) {
      const idx = recent.map((v, i) => (v.candidate === cand ? i : -1)).filter((i) => i >= 0);
      idx.sort((a, b) => (nightOf(recent[a]) || 0) - (nightOf(recent[b]) || 0));
      const st = IT.candidateStyle(lineup.names, cand);
      traces.push({
        type: "scatter",
        mode: "lines+markers",
        name: cand,
        x: idx.map((i) => nightOf(recent[i])),
        y: idx.map((i) => (got[i] ? median(siteRows(got[i]).map((r) => r.ceiled_predictivity)) : null)),
        text: idx.map((i) => recent[i].version + (recent[i].chosen ? " (chosen: " + (recent[i].chosen_reason || "") + ")" : "")),
        hovertemplate: "%{fullData.name}<br>night %{x}: %{y:.3f}<br>%{text}<extra></extra>",
        line: { color: st.color },
        marker: { color: st.color, symbol: st.symbol, size: 8 },
        meta: { candidate: cand, versions: idx.map((i) => recent[i].version) },
      });
    }
    const chosen = recent.map((v, i) => (v.chosen ? i : -1)).filter((i) => i >= 0);
    traces.push({
      type: "scatter",
      mode: "markers",
      name: "chosen model",
      x: chosen.map((i) => nightOf(recent[i])),
      y: chosen.map((i) => (got[i] ? median(siteRows(got[i]).map((r) => r.ceiled_predictivity)) : null)),
      text: chosen.map((i) => recent[i].version + ": " + (recent[i].chosen_reason || "")),
      marker: { symbol: "star-open", size: 18, color: IT.FIXED.it, line: { width: 2 } },
    });
    const cka = recent.map((v) => ckaOf(v));
    if (cka.some((c) => c !== null)) {
      traces.push({
        type: "scatter",
        mode: "markers",
        name: "CKA (layer vs IT)",
        x: recent.map((v) => nightOf(v)),
        y: cka,
        text: recent.map((v) => v.version),
        marker: { symbol: "triangle-up-open", color: recent.map((v) => colorOf(v.version)), size: 10, line: { width: 2 } },
      });
    }
    IT.plot("nights-plot", traces, {
      xaxis: { title: { text: "night" }, dtick: 1 },
      yaxis: { title: { text: "median noise-ceiled predictivity (r); CKA" }, range: [0, 1.05] },
      hovermode: "closest",
    });
  }

  IT.page(async () => {
    lineup = await IT.candidates().catch(() => lineup);
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
    versions.sort((a, b) => (nightOf(a) || 0) - (nightOf(b) || 0) || String(a.created_at).localeCompare(String(b.created_at)));
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
