/* Day over day: how the sensitivity estimates and the models' predictivity move across days.
 *
 * API: GET /sites, GET /analysis/sensitivity/summary (which epsilons),
 * GET /analysis/sensitivity?epsilon= (and ?estimator=random_pair), population=true or site_id=,
 * GET /model-versions, GET /model-versions/{version},
 * GET /model-versions/sites/{site_id}/history (when a site is chosen).
 */
(function () {
  "use strict";
  const SHOWN = ["sign_corrected", "plain", "model_free_sign_corrected", "random_pair", "model"];
  const LABEL = {
    sign_corrected: "IT sign-corrected",
    plain: "IT plain",
    model_free_sign_corrected: "IT model-free baseline",
    random_pair: "IT random-pair baseline",
  };
  const COLOR = { sign_corrected: "#d62728", plain: "#d62728", model_free_sign_corrected: "#ff7f0e", random_pair: "#444" };
  const cache = new Map();

  function name(source, estimator) {
    if (source === "it") return LABEL[estimator] || "IT " + estimator;
    return (source.startsWith("model:") ? "model " + source.slice(6) : source) + (estimator === "model" ? "" : " " + estimator);
  }

  async function records(eps, site) {
    const key = eps + "|" + site;
    if (!cache.has(key)) {
      const params = site ? { site_id: site } : { population: true };
      cache.set(
        key,
        Promise.all([
          IT.fetchAll("/analysis/sensitivity", Object.assign({ epsilon: eps }, params), 50000, 1000),
          IT.fetchAll("/analysis/sensitivity", Object.assign({ estimator: "random_pair" }, params), 50000, 1000),
        ]).then(([a, b]) => a.concat(b))
      );
    }
    try {
      return await cache.get(key);
    } catch (e) {
      cache.delete(key);
      throw e;
    }
  }

  async function drawSensitivity() {
    IT.clearErrors("days-errors");
    const site = IT.$("site-select").value;
    const eps = IT.$("eps-select").value;
    IT.setParams({ site: site, eps: eps });
    let rows;
    try {
      rows = await records(eps, site);
    } catch (e) {
      IT.showError(e, "days-errors", "sensitivity by day");
      IT.plot("days-sens-plot", [], {});
      return;
    }
    rows = rows.filter((r) => (site ? r.site_id === site : r.site_id === null || r.site_id === undefined) && r.day !== null && r.day !== undefined);
    const groups = new Map();
    for (const r of rows) {
      if (!SHOWN.includes(r.estimator)) continue;
      const key = (r.source || "it") + "|" + r.estimator;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const keys = [...groups.keys()].sort((a, b) => {
      const [sa, ea] = a.split("|");
      const [sb, eb] = b.split("|");
      return (sa === "it" ? "0" : "1" + sa).localeCompare(sb === "it" ? "0" : "1" + sb) || SHOWN.indexOf(ea) - SHOWN.indexOf(eb);
    });
    let m = 0;
    const traces = keys.map((key) => {
      const [source, estimator] = key.split("|");
      const pts = groups.get(key).slice().sort((a, b) => Number(a.day) - Number(b.day));
      const color = source === "it" ? COLOR[estimator] || "#333" : IT.COLORS[(2 + m++) % IT.COLORS.length];
      return {
        type: "scatter",
        mode: "lines+markers",
        name: name(source, estimator),
        x: pts.map((r) => r.day),
        y: pts.map((r) => r.value),
        error_y: {
          type: "data",
          symmetric: false,
          array: pts.map((r) => (r.ci_high !== null && r.value !== null ? r.ci_high - r.value : null)),
          arrayminus: pts.map((r) => (r.ci_low !== null && r.value !== null ? r.value - r.ci_low : null)),
        },
        line: { color: color, dash: estimator === "plain" || estimator === "random_pair" ? "dash" : "solid" },
        marker: { color: color },
        meta: { source: source, estimator: estimator },
      };
    });
    if (!traces.length) IT.showError(new Error("no sensitivity figures at ε=" + eps + " for " + (site || "the population")), "days-errors");
    IT.plot("days-sens-plot", traces, {
      title: { text: (site ? "site " + site : "population") + ", ε=" + eps, font: { size: 13 } },
      xaxis: { title: { text: "day" }, dtick: 1 },
      yaxis: { title: { text: "normalised sensitivity" }, type: "log" },
    });
  }

  function nightOf(v, i) {
    for (const x of [v.night, v.night_id, v.day, v.trained_on && v.trained_on.night, v.metrics && v.metrics.night]) {
      if (x !== undefined && x !== null) return x;
    }
    return i + 1;
  }

  function median(xs) {
    const v = xs.filter((x) => typeof x === "number" && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return null;
    const k = Math.floor(v.length / 2);
    return v.length % 2 ? v[k] : (v[k - 1] + v[k]) / 2;
  }

  async function drawPredictivity(versions) {
    const site = IT.$("site-select").value;
    const traces = [];
    if (site) {
      let hist;
      try {
        hist = IT.items(await IT.api("/model-versions/sites/" + encodeURIComponent(site) + "/history"));
      } catch (e) {
        IT.showError(e, "days-errors", "model history of site " + site);
        hist = [];
      }
      // History rows name their version; the night comes from the version's record.
      const byName = new Map(versions.map((v, i) => [v.version, nightOf(v, i)]));
      hist.sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
      const x = hist.map((h, i) => (byName.has(h.version) ? byName.get(h.version) : nightOf(h, i)));
      traces.push(
        { type: "scatter", mode: "lines+markers", name: "noise-ceiled predictivity", x: x, y: hist.map((h) => h.ceiled_predictivity), text: hist.map((h) => h.version || h.model_version), marker: { color: "#1f77b4" } },
        { type: "scatter", mode: "lines+markers", name: "raw predictivity", x: x, y: hist.map((h) => h.predictivity), text: hist.map((h) => h.version || h.model_version), line: { dash: "dash", color: "#9ab" }, marker: { color: "#9ab" } }
      );
    } else {
      const chosen = versions.filter((v) => v.chosen);
      const got = await IT.pool(chosen, 6, (v) =>
        IT.api("/model-versions/" + encodeURIComponent(v.version)).catch((e) => {
          IT.showError(e, "days-errors", "model version " + v.version);
          return null;
        })
      );
      const rowsOf = (d) => (d && (d.site_metrics || d.sites || [])) || [];
      const x = chosen.map((v) => nightOf(v, versions.indexOf(v)));
      const text = chosen.map((v) => v.version);
      traces.push(
        { type: "scatter", mode: "lines+markers", name: "chosen model: median noise-ceiled predictivity", x: x, y: got.map((d) => median(rowsOf(d).map((r) => r.ceiled_predictivity))), text: text, marker: { color: "#1f77b4" } },
        { type: "scatter", mode: "lines+markers", name: "chosen model: median raw predictivity", x: x, y: got.map((d) => median(rowsOf(d).map((r) => r.predictivity))), text: text, line: { dash: "dash", color: "#9ab" }, marker: { color: "#9ab" } }
      );
    }
    IT.plot("days-pred-plot", traces, {
      xaxis: { title: { text: "night" }, dtick: 1 },
      yaxis: { title: { text: "r" }, range: [0, 1.05] },
      title: { text: site ? "site " + site : "median over sites", font: { size: 13 } },
    });
  }

  IT.page(async () => {
    const wantedSite = IT.param("site") || "";
    const [sites, versions, summary] = await Promise.all([
      IT.fetchAll("/sites", {}, 5000),
      IT.fetchAll("/model-versions", {}, 2000).catch((e) => {
        IT.showError(e, "days-errors", "model versions");
        return [];
      }),
      IT.api("/analysis/sensitivity/summary").catch((e) => {
        IT.showError(e, "days-errors", "sensitivity summary");
        return null;
      }),
    ]);
    versions.sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
    const siteSel = IT.$("site-select");
    for (const s of sites) siteSel.appendChild(IT.option(s.site_id, s.site_id, s.site_id === wantedSite));
    // The summary's population curves tell which epsilons have figures.
    const curves = (summary && summary.curves) || [];
    const points = curves.flatMap((c) => c.points || []);
    let eps = [...new Set(points.map((p) => p.epsilon).filter((e) => e !== null && e !== undefined).map(Number))].sort((a, b) => a - b);
    if (!eps.length) eps = [1, 3, 10];
    const epsSel = IT.$("eps-select");
    const wantedEps = IT.param("eps");
    epsSel.replaceChildren(...eps.map((e) => IT.option(String(e), String(e), wantedEps !== null && Number(wantedEps) === e)));
    if (wantedEps === null || !eps.includes(Number(wantedEps))) epsSel.value = String(eps[Math.min(1, eps.length - 1)]);
    siteSel.addEventListener("change", () => Promise.all([drawSensitivity(), drawPredictivity(versions)]));
    epsSel.addEventListener("change", drawSensitivity);
    await Promise.all([drawSensitivity(), drawPredictivity(versions)]);
  });
})();
