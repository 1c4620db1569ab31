/* Images: a clean image beside its up and down perturbations for one site and epsilon,
 * with the predicted change (from lineage) and the observed change (from the responses
 * of the session that showed the batch, when it has been recorded).
 *
 * API: GET /batches?state=published, GET /batches/{id} (manifest), GET /images/{sha}/lineage,
 * GET /images/{sha} (PNG), GET /sessions, GET /sessions/{id}/responses?site_id=.
 */
(function () {
  "use strict";
  const MAX_LINEAGE = 1500;
  const st = { manifest: null, lineage: new Map(), observed: null, sessions: [] };

  function short(sha) {
    return sha ? sha.slice(0, 10) + "…" : "—";
  }

  async function loadLineage(manifest) {
    const shas = manifest.images.map((i) => i.sha256);
    if (shas.length > MAX_LINEAGE) {
      IT.$("images-note").textContent = "Showing the first " + MAX_LINEAGE + " of " + shas.length + " images of this batch.";
    }
    let failures = 0;
    await IT.pool(shas.slice(0, MAX_LINEAGE), 8, async (sha) => {
      if (st.lineage.has(sha)) return;
      try {
        st.lineage.set(sha, await IT.api("/images/" + sha + "/lineage"));
      } catch (e) {
        if (failures++ === 0) IT.showError(e, "images-errors", "lineage of image " + short(sha));
      }
    });
  }

  /* Mean rate per image for one site, over the sessions that showed this batch. */
  async function observedRates(batchId, site) {
    const sessions = st.sessions.filter((s) => s.batch_id === batchId);
    const sums = new Map();
    for (const s of sessions) {
      let rows;
      try {
        rows = await IT.fetchAll("/sessions/" + encodeURIComponent(s.session_id) + "/responses", { site_id: site }, 50000, 1000);
      } catch (e) {
        IT.showError(e, "images-errors", "responses of session " + s.session_id);
        continue;
      }
      for (const r of rows) {
        if (r.site_id !== site || r.fixation_ok === false) continue;
        const acc = sums.get(r.image_sha256) || [0, 0];
        acc[0] += r.rate_hz;
        acc[1] += 1;
        sums.set(r.image_sha256, acc);
      }
    }
    const out = new Map();
    for (const [sha, [sum, n]] of sums) out.set(sha, { mean: sum / n, n: n });
    return { sessions: sessions.map((s) => s.session_id), rates: out };
  }

  function figure(sha, caption, details) {
    const fig = IT.el("figure", { "data-sha256": sha || "" });
    if (!sha) {
      fig.appendChild(IT.el("div", { class: "missing" }, ["not in this batch"]));
    } else {
      const img = IT.el("img", { alt: caption + " " + sha, width: 224, height: 224 });
      fig.appendChild(img);
      IT.imageUrl(sha).then(
        (url) => { img.src = url; },
        (e) => { img.replaceWith(IT.el("div", { class: "missing" }, ["image unavailable"])); IT.showError(e, "images-errors", "image " + short(sha)); }
      );
    }
    const dl = IT.el("dl", { class: "kv" }, details.flatMap(([k, v]) => [IT.el("dt", {}, [k]), IT.el("dd", {}, [v])]));
    fig.appendChild(IT.el("figcaption", {}, [IT.el("strong", {}, [caption]), " ", IT.el("code", {}, [short(sha)]), dl]));
    return fig;
  }

  function observed(sha, cleanSha) {
    if (!st.observed || !st.observed.sessions.length) return "not recorded yet";
    const p = st.observed.rates.get(sha);
    const c = st.observed.rates.get(cleanSha);
    if (!p || !c) return "no responses";
    return IT.fmt(p.mean - c.mean, 2) + " Hz (n=" + p.n + " vs " + c.n + ")";
  }

  function render() {
    const site = IT.$("site-select").value;
    const eps = Number(IT.$("eps-select").value);
    IT.setParams({ batch: IT.$("batch-select").value, site: site, eps: IT.$("eps-select").value });
    const perturbed = [...st.lineage.values()].filter(
      (l) => l.site_id === site && Math.abs(Number(l.epsilon) - eps) < 1e-9 && l.parent_sha256 && (l.direction === "up" || l.direction === "down")
    );
    const byParent = new Map();
    for (const l of perturbed) {
      if (!byParent.has(l.parent_sha256)) byParent.set(l.parent_sha256, {});
      byParent.get(l.parent_sha256)[l.direction] = l;
    }
    const rows = [];
    for (const [parent, dirs] of byParent) {
      const clean = st.lineage.get(parent) || { sha256: parent };
      const cleanRate = st.observed && st.observed.rates.get(parent);
      const row = IT.el("div", { class: "triplet", "data-parent": parent }, [
        figure(parent, "clean", [
          ["category", IT.fmt(clean.category)],
          ["source", IT.fmt(clean.source_name)],
          ["observed rate", cleanRate ? IT.fmt(cleanRate.mean, 2) + " Hz" : "—"],
        ]),
      ]);
      for (const dir of ["up", "down"]) {
        const l = dirs[dir];
        row.appendChild(
          l
            ? figure(l.sha256, dir === "up" ? "up (raise the site)" : "down (lower the site)", [
                ["predicted change", IT.fmt(l.predicted_change)],
                ["observed change", observed(l.sha256, parent)],
                ["achieved L2", IT.fmt(l.achieved_l2)],
                ["model", IT.fmt(l.model_version)],
                ["seed", IT.fmt(l.seed)],
              ])
            : figure(null, dir, [])
        );
      }
      rows.push(row);
    }
    IT.fill("triplets", rows.length ? rows : IT.el("p", { class: "note" }, ["no perturbation of site " + site + " at ε=" + eps + " in this batch"]));
    const where = st.observed && st.observed.sessions.length ? "observed in session " + st.observed.sessions.join(", ") : "this batch has not been recorded yet, so there are no observed changes";
    IT.$("images-note").textContent = rows.length + " clean image(s) with perturbations; " + where + ".";
  }

  async function selectSite() {
    const site = IT.$("site-select").value;
    const eps = [...new Set([...st.lineage.values()].filter((l) => l.site_id === site && l.epsilon !== null).map((l) => Number(l.epsilon)))].sort((a, b) => a - b);
    const sel = IT.$("eps-select");
    const wanted = IT.param("eps");
    sel.replaceChildren(...eps.map((e) => IT.option(String(e), String(e), wanted !== null && Number(wanted) === e)));
    st.observed = site ? await observedRates(IT.$("batch-select").value, site) : null;
    render();
  }

  async function selectBatch(batchId) {
    IT.clearErrors("images-errors");
    IT.fill("triplets", IT.el("p", { class: "note" }, ["loading batch " + batchId + "…"]));
    try {
      st.manifest = await IT.api("/batches/" + encodeURIComponent(batchId));
    } catch (e) {
      IT.fill("triplets", []);
      IT.showError(e, "images-errors", "batch " + batchId);
      return;
    }
    await loadLineage(st.manifest);
    const sites = [...new Set([...st.lineage.values()].map((l) => l.site_id).filter((s) => s))].sort();
    const sel = IT.$("site-select");
    const wanted = IT.param("site");
    sel.replaceChildren(...sites.map((s) => IT.option(s, s, s === wanted)));
    if (!sites.length) {
      IT.fill("triplets", IT.el("p", { class: "note" }, ["batch " + batchId + " has no perturbed images"]));
      return;
    }
    if (wanted && !sites.includes(wanted)) {
      IT.showError(new Error("batch " + batchId + " has no perturbation for site " + wanted + "; showing " + sites[0]), "images-errors");
    }
    await selectSite();
  }

  IT.page(async () => {
    const [batches, sessions] = await Promise.all([
      IT.fetchAll("/batches", { state: "published" }, 1000),
      IT.fetchAll("/sessions", {}, 5000).catch((e) => {
        IT.showError(e, "images-errors", "recording sessions (needed for observed changes)");
        return [];
      }),
    ]);
    st.sessions = sessions;
    batches.sort((a, b) => String(b.published_at).localeCompare(String(a.published_at)));
    const sel = IT.$("batch-select");
    const wanted = IT.param("batch");
    for (const b of batches) sel.appendChild(IT.option(b.batch_id, b.batch_id + " (day " + b.day + ")"));
    if (wanted && !batches.some((b) => b.batch_id === wanted)) sel.appendChild(IT.option(wanted, wanted));
    if (!wanted && !batches.length) {
      IT.fill("triplets", IT.el("p", { class: "note" }, ["no batch has been published yet"]));
      return;
    }
    sel.value = wanted || batches[0].batch_id;
    sel.addEventListener("change", () => { st.lineage.clear(); IT.setParams({ site: "", eps: "" }); selectBatch(sel.value); });
    IT.$("site-select").addEventListener("change", () => { IT.setParams({ eps: "" }); selectSite(); });
    IT.$("eps-select").addEventListener("change", render);
    await selectBatch(sel.value);
  });
})();
