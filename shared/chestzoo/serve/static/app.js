// chestzoo serve: the page's behaviour. Plain JavaScript, no build step. Text from the server is only ever set
// through textContent / attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { status: null, analysis: null };

function show(el, visible) { el.hidden = !visible; }

function showError(el, body) {
  el.textContent = "";
  const line = document.createElement("div");
  line.textContent = body.error || String(body);
  el.appendChild(line);
  if (body.command) {
    const code = document.createElement("code");
    code.textContent = body.command;
    el.appendChild(code);
  }
  show(el, true);
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw { error: "the server did not answer (" + err.message + ")" };
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw { error: "unexpected answer from the server (HTTP " + response.status + ")" };
  }
  if (!response.ok) throw body;
  return body;
}

function bundleMessages(status) {
  const box = $("bundle-messages");
  box.textContent = "";
  for (const [name, info] of Object.entries(status.bundles)) {
    if (info.ready) continue;
    const div = document.createElement("div");
    div.className = "warning";
    div.dataset.bundle = name;
    const text = document.createElement("div");
    text.textContent = info.message + " (" + info.role + " unavailable)";
    const code = document.createElement("code");
    code.textContent = info.command;
    div.append(text, code);
    box.appendChild(div);
  }
}

function fillGenerationPanel(status) {
  const checks = $("gmvae-findings");
  checks.textContent = "";
  status.gmvae_findings.forEach((name, i) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = i < 2;
    label.append(box, " " + name);
    checks.appendChild(label);
  });
  if (status.gmvae_conditional === false) {
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = "This GMVAE is unconditional: every row is drawn from its prior.";
    checks.appendChild(note);
  }
  for (const [name, panel] of [["cxr14_gmvae", "gmvae-panel"], ["lung_ct_dcgan", "dcgan-panel"]]) {
    const ready = status.bundles[name].ready;
    $(panel).classList.toggle("disabled", !ready);
    $(panel).querySelector("button").disabled = !ready;
  }
}

async function loadStatus() {
  const status = await api("/api/status");
  state.status = status;
  $("server-status").textContent = "device " + status.device + ", settings " + status.settings;
  bundleMessages(status);
  fillGenerationPanel(status);
  const methods = $("heatmap-method");
  methods.textContent = "";
  for (const m of status.heatmap_methods) methods.add(new Option(m === "lse" ? "LSE" : "Grad-CAM", m));
}

function drawBoxes(group, boxes, width) {
  group.textContent = "";
  const stroke = Math.max(1, width / 300);
  for (const b of boxes) {
    const [x0, y0, x1, y1] = b.box;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", x0);
    rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(0, x1 - x0));
    rect.setAttribute("height", Math.max(0, y1 - y0));
    rect.setAttribute("stroke", b.colour);
    rect.setAttribute("stroke-width", stroke * 2);
    rect.setAttribute("fill", "none");
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x0 + stroke);
    text.setAttribute("y", Math.max(y0 - stroke * 2, width / 40));
    text.setAttribute("fill", b.colour);
    text.setAttribute("stroke", "black");  // a dark rim keeps the label readable on any layer
    text.setAttribute("stroke-width", width / 400);
    text.setAttribute("paint-order", "stroke");
    text.setAttribute("font-size", width / 32);
    text.textContent = b.label + " " + b.score.toFixed(2);
    group.append(rect, text);
  }
}

function renderFindings(findings) {
  const body = $("findings").querySelector("tbody");
  body.textContent = "";
  const select = $("heatmap-finding");
  select.textContent = "";
  for (const f of findings) {
    const row = document.createElement("tr");
    row.dataset.label = f.label;
    if (f.positive) row.className = "positive";
    row.title = "threshold " + f.threshold.toFixed(3) + "; click for its heatmap";
    const name = document.createElement("td");
    name.textContent = f.label;
    const bar = document.createElement("td");
    const meter = document.createElement("meter");
    meter.min = 0; meter.max = 1; meter.value = f.probability;
    bar.appendChild(meter);
    const value = document.createElement("td");
    value.className = "num";
    value.textContent = f.probability.toFixed(3);
    row.append(name, bar, value);
    row.addEventListener("click", () => { select.value = f.label; updateHeatmap(); });
    body.appendChild(row);
    select.add(new Option(f.label, f.label));
  }
}

function renderAnalysis(data) {
  state.analysis = data;
  const r = data.results;
  $("picture").src = data.picture;
  const svg = $("boxes");
  svg.setAttribute("viewBox", "0 0 " + r.image.width + " " + r.image.height);
  $("stage").style.aspectRatio = data.display.width + " / " + data.display.height;

  const hasFindings = Array.isArray(r.findings);
  renderFindings(hasFindings ? r.findings : []);
  $("findings-note").textContent = hasFindings
    ? "Sorted by probability; bold rows reach their threshold (" + state.status.thresholds + ")."
    : "No classifier is trained: findings and heatmaps are unavailable.";
  $("heatmap-img").src = data.layers.heatmap || "";
  $("lungs-img").src = data.layers.lungs || "";
  drawBoxes($("pathology-boxes"), r.pathology_boxes || [], r.image.width);
  drawBoxes($("opacity-boxes"), r.opacity_boxes || [], r.image.width);

  const list = $("box-list");
  list.textContent = "";
  const all = [["NIH pathology", r.pathology_boxes], ["RSNA opacity", r.opacity_boxes]];
  for (const [kind, boxes] of all) {
    const item = document.createElement("li");
    if (boxes === undefined) item.textContent = kind + ": detector not trained";
    else if (boxes.length === 0) item.textContent = kind + ": no boxes above threshold";
    else item.textContent = kind + ": " + boxes.map((b) => b.label + " " + b.score.toFixed(2)).join(", ");
    list.appendChild(item);
  }
  $("lungs-note").textContent = r.lungs
    ? "Lungs cover " + (100 * r.lungs.area_fraction).toFixed(1) + "% of the image."
    : "Lung segmentation not trained.";
  for (const [id, available] of [["layer-heatmap", !!data.layers.heatmap], ["layer-lungs", !!data.layers.lungs],
                                 ["layer-pathology", !!r.pathology_boxes], ["layer-opacity", !!r.opacity_boxes]]) {
    $(id).disabled = !available;
  }
  applyLayers();
  show($("result"), true);
}

function applyLayers() {
  $("heatmap-img").hidden = !$("layer-heatmap").checked || !state.analysis || !state.analysis.layers.heatmap;
  $("lungs-img").hidden = !$("layer-lungs").checked || !state.analysis || !state.analysis.layers.lungs;
  $("pathology-boxes").style.display = $("layer-pathology").checked ? "" : "none";
  $("opacity-boxes").style.display = $("layer-opacity").checked ? "" : "none";
}

async function updateHeatmap() {
  const a = state.analysis;
  if (!a || !a.results.findings) return;
  const params = new URLSearchParams({ token: a.token, finding: $("heatmap-finding").value, method: $("heatmap-method").value });
  try {
    const body = await api("/api/heatmap?" + params.toString());
    a.layers.heatmap = body.heatmap;
    a.layers.heatmap_finding = $("heatmap-finding").value;
    $("heatmap-img").src = body.heatmap;
    $("layer-heatmap").checked = true;
    applyLayers();
    show($("error"), false);
  } catch (err) {
    showError($("error"), err);
  }
}

async function upload(file) {
  show($("error"), false);
  const limit = state.status ? state.status.max_upload_mb : null;
  if (limit && file.size > limit * 1024 * 1024) {
    showError($("error"), { error: file.name + ": the upload is larger than " + limit + " MB" });
    show($("result"), false);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  show($("busy"), true);
  try {
    renderAnalysis(await api("/api/analyse", { method: "POST", body: form }));
  } catch (err) {
    show($("result"), false);
    state.analysis = null;
    showError($("error"), err);
  } finally {
    show($("busy"), false);
  }
}

function downloadJSON() {
  const a = state.analysis;
  if (!a) return;
  const blob = new Blob([JSON.stringify(a.results, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = (a.results.file || "image").replace(/\.[^.]*$/, "") + "_chestzoo.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function generate(kind) {
  const error = $(kind + "-error");
  show(error, false);
  const button = $("generate-" + kind);
  button.disabled = true;
  try {
    let body;
    if (kind === "gmvae") {
      const findings = [...$("gmvae-findings").querySelectorAll("input:checked")].map((b) => b.value);
      body = await api("/api/generate/gmvae", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ findings, per_finding: Number($("gmvae-count").value), seed: Number($("gmvae-seed").value) }) });
      const rows = $("gmvae-rows");
      rows.textContent = "";
      for (const name of body.rows) {
        const li = document.createElement("li");
        li.textContent = name;
        rows.appendChild(li);
      }
      rows.style.setProperty("--rows", body.rows.length);
    } else {
      body = await api("/api/generate/dcgan", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ count: Number($("dcgan-count").value), seed: Number($("dcgan-seed").value) }) });
    }
    $(kind + "-grid").src = body.grid;
    $(kind + "-download").href = body.grid;
    show($(kind + "-result"), true);
  } catch (err) {
    showError(error, err);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadStatus().catch((err) => showError($("error"), err));
  $("file-input").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });
  for (const id of ["layer-heatmap", "layer-lungs", "layer-pathology", "layer-opacity"]) $(id).addEventListener("change", applyLayers);
  $("heatmap-finding").addEventListener("change", updateHeatmap);
  $("heatmap-method").addEventListener("change", updateHeatmap);
  $("download-json").addEventListener("click", downloadJSON);
  $("generate-gmvae").addEventListener("click", () => generate("gmvae"));
  $("generate-dcgan").addEventListener("click", () => generate("dcgan"));
});
