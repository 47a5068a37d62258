// The resnet-tune page: choose or drop an image, see the top-5 classes and a Grad-CAM overlay
// (for a segmentation model: each class's share of the pixels and the mask over the image).
// Everything is served by this server; nothing is loaded from elsewhere.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { auth: false, busy: 0, previewUrl: null, heatUrl: null, segmentation: false, multilabel: false };

  function setState(s) { document.body.dataset.state = s; }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function headers() {
    const h = {};
    const token = $("token").value.trim();
    if (token) {
      h["Authorization"] = "Bearer " + token;
      try { sessionStorage.setItem("resnet-tune-token", token); } catch (e) { /* private mode */ }
    }
    return h;
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return resp.status + " " + resp.statusText;
  }

  async function loadModel() {
    try {
      const [health, model] = await Promise.all([fetch("/health").then((r) => r.json()),
                                                 fetch("/model").then((r) => r.json())]);
      state.auth = !!health.auth;
      $("token-box").hidden = !state.auth;
      state.segmentation = model.task === "segmentation";
      state.multilabel = model.task === "multilabel";
      if (state.multilabel) $("bars-title").textContent = "Labels (✓: over the label's threshold)";
      if (state.segmentation) {
        $("bars-title").textContent = "Class shares of the pixels";
        $("heatmap").alt = "segmentation mask overlay";
        $("heatmap-caption").textContent = "the predicted mask over the image";
      }
      const m = model.metrics || {};
      const pp = model.preprocessing || {};
      const nClasses = (model.classes || []).length;
      if (state.segmentation) {
        $("model-info").textContent = `${model.model || "model"} + ${model.head || "head"} · segmentation · ` +
          `${nClasses} classes` +
          (typeof m.val_miou === "number" ? ` · validation mIoU ${(m.val_miou * 100).toFixed(1)}%` : "");
      } else if (state.multilabel) {
        $("model-info").textContent = `${model.model || "model"} · multi-label · ${nClasses} labels` +
          (pp.input_size ? ` · ${pp.input_size}×${pp.input_size} input` : "") +
          (typeof m.val_map === "number" ? ` · validation mAP ${(m.val_map * 100).toFixed(1)}%` : "");
      } else {
        const acc = m.val_acc ?? m.accuracy;
        $("model-info").textContent = `${model.model || "model"} · ${nClasses} classes` +
          (pp.input_size ? ` · ${pp.input_size}×${pp.input_size} input` : "") +
          (typeof acc === "number" ? ` · validation accuracy ${(acc * 100).toFixed(1)}%` : "");
      }
      const s = model.server || {};
      if (s.max_upload_bytes) {
        const mib = s.max_upload_bytes / 1048576;
        const bytes = mib >= 1 ? `${+mib.toFixed(1)} MiB` : `${Math.round(s.max_upload_bytes / 1024)} KiB`;
        const mp = s.max_pixels / 1e6;
        const pixels = mp >= 1 ? `${+mp.toFixed(1)} MP` : `${s.max_pixels.toLocaleString("en")} pixels`;
        $("limits").textContent = `uploads up to ${bytes}, ${s.max_files} images, ${pixels} an image`;
      }
    } catch (e) {
      $("model-info").textContent = "cannot reach the server";
    }
  }

  function renderTop(top, over) {
    const list = $("top");
    list.replaceChildren();
    for (const t of top) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      const passed = over && over.has(t["class"]);
      if (over) li.className = passed ? "over" : "under";
      name.textContent = (passed ? "✓ " : "") + t["class"];
      name.title = t["class"];
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = (t.prob * 100).toFixed(1) + "%";
      li.append(name, track, pct);
      list.appendChild(li);
      requestAnimationFrame(() => { fill.style.width = Math.max(0.5, t.prob * 100).toFixed(2) + "%"; });
    }
  }

  async function predict(file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    const resp = await fetch("/predict?top_k=5", { method: "POST", body: form, headers: headers() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const out = await resp.json();
    if (state.segmentation) {
      renderTop(out[0].classes.map((c) => ({ "class": c["class"], prob: c.fraction })));
    } else if (state.multilabel) {
      renderTop(out[0].top, new Set(out[0].labels.map((l) => l.label)));
    } else {
      renderTop(out[0].top);
    }
  }

  async function explain(file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    const resp = await fetch("/explain", { method: "POST", body: form, headers: headers() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const blob = await resp.blob();
    if (state.heatUrl) URL.revokeObjectURL(state.heatUrl);
    state.heatUrl = URL.createObjectURL(blob);
    const img = $("heatmap");
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = state.heatUrl; });
    img.hidden = false;
    $("heatmap-wait").hidden = true;
    const cls = decodeURIComponent(resp.headers.get("X-Class") || "");
    if (cls && !state.segmentation) $("heatmap-caption").textContent = `Grad-CAM for “${cls}”: where the evidence lies`;
  }

  async function handle(file) {
    if (!file) return;
    showError("");
    setState("busy");
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    $("preview").src = state.previewUrl;
    $("heatmap").hidden = true;
    $("heatmap-wait").hidden = false;
    $("heatmap-wait").textContent = state.segmentation ? "computing the mask…" : "computing Grad-CAM…";
    $("top").replaceChildren();
    $("result").hidden = false;
    try {
      await predict(file);
      await explain(file);
      setState("done");
    } catch (e) {
      showError(e.message || String(e));
      $("heatmap-wait").textContent = "";
      setState("error");
    }
  }

  function init() {
    try { $("token").value = sessionStorage.getItem("resnet-tune-token") || ""; } catch (e) { /* ignore */ }
    const drop = $("drop");
    $("file").addEventListener("change", (ev) => handle(ev.target.files[0]));
    drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => {
      ev.preventDefault(); drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => {
      ev.preventDefault(); drop.classList.remove("over");
    }));
    drop.addEventListener("drop", (ev) => handle(ev.dataTransfer.files[0]));
    loadModel();
  }

  init();
})();
