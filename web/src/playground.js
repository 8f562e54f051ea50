// The scene playground served at `/` of the gRPC-Web port: a top-down scene editor,
// captions and dialogue streaming through ./client.js, sampling controls, timings.

import { ArBridge, Code, ConnectError, DescribeSceneRequestSchema, FinishReason, fromJson,
  statusName, toJson } from "./client.js";

const PX_PER_M = 48; // view scale
const DEFAULT_EXTENT = 0.2; // half-extent drawn when an object has none (metres)

const $ = (id) => document.getElementById(id);
const svgNS = "http://www.w3.org/2000/svg";

// The page's state: the scene in the protobuf JSON mapping (what scene.json holds).
const state = {
  scene: {
    locationHint: "a living room",
    cameraPose: { position: { x: 0, y: 1.6, z: 0 }, rotation: { x: 0, y: 0, z: 0, w: 1 } },
    objects: [
      { id: "obj-1", label: "chair", confidence: 0.9, pose: { position: { x: -1.2, y: 0, z: 1.5 } },
        extents: { x: 0.25, y: 0.45, z: 0.25 }, attributes: { color: "red" } },
      { id: "obj-2", label: "lamp", confidence: 0.9, pose: { position: { x: 1.5, y: 0, z: 2.5 } } },
    ],
  },
  instruction: "",
  sampling: {}, // a loaded file's sampling fields
  selected: null, // object id
  mentioned: new Set(),
  sessionId: "",
  abort: null,
  events: [], // {kind, at, text?}: what the last reply streamed (read by the browser tests)
};

// -- geometry -------------------------------------------------------------------
function yawOf(q) {
  // Heading of the +Z axis rotated by q, in degrees clockwise from +Z (seen from above).
  // As the server reads it: a field the JSON mapping left out is 0, an all-zero
  // quaternion is no rotation, and q is normalised first.
  if (!q) return 0;
  const { x = 0, y = 0, z = 0, w = 0 } = q;
  const norm2 = x * x + y * y + z * z + w * w;
  if (norm2 === 0) return 0;
  const fx = (2 * (x * z + w * y)) / norm2;
  const fz = 1 - (2 * (x * x + y * y)) / norm2;
  return (Math.atan2(fx, fz) * 180) / Math.PI;
}

function yawQuaternion(deg) {
  const half = (deg * Math.PI) / 360;
  return { x: 0, y: Math.sin(half), z: 0, w: Math.cos(half) };
}

function camera() {
  const pose = state.scene.cameraPose || {};
  return { x: pose.position?.x ?? 0, z: pose.position?.z ?? 0, yaw: yawOf(pose.rotation) };
}

// World (x right, z forward) -> view pixels, the camera at the centre, +z up the screen.
function toView(x, z) {
  const svg = $("view");
  const cam = camera();
  return [svg.clientWidth / 2 + (x - cam.x) * PX_PER_M,
    svg.clientHeight / 2 - (z - cam.z) * PX_PER_M];
}

function toWorld(px, py) {
  const svg = $("view");
  const cam = camera();
  return [cam.x + (px - svg.clientWidth / 2) / PX_PER_M,
    cam.z - (py - svg.clientHeight / 2) / PX_PER_M];
}

// -- the view ---------------------------------------------------------------------
function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(svgNS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function drawView() {
  const svg = $("view");
  svg.replaceChildren();
  const w = svg.clientWidth;
  const h = svg.clientHeight;
  for (let m = -10; m <= 10; m++) { // a metre grid
    const [gx] = toView(camera().x + m, 0);
    const [, gy] = toView(0, camera().z + m);
    el("line", { x1: gx, y1: 0, x2: gx, y2: h, class: "grid" }, svg);
    el("line", { x1: 0, y1: gy, x2: w, y2: gy, class: "grid" }, svg);
  }
  const cam = camera();
  const [cx, cy] = toView(cam.x, cam.z);
  const fov = el("g", { transform: `translate(${cx} ${cy}) rotate(${cam.yaw})`, id: "camera" }, svg);
  el("path", { d: "M0 0 L-60 -104 A120 120 0 0 1 60 -104 Z", class: "fov" }, fov);
  el("path", { d: "M0 -14 L9 8 L-9 8 Z", class: "camera" }, fov);
  for (const obj of state.scene.objects) {
    const p = obj.pose?.position || {};
    const [ox, oy] = toView(p.x ?? 0, p.z ?? 0);
    const ex = (obj.extents?.x || DEFAULT_EXTENT) * PX_PER_M;
    const ez = (obj.extents?.z || DEFAULT_EXTENT) * PX_PER_M;
    const yaw = yawOf(obj.pose?.rotation);
    const classes = ["object"];
    if (obj.id === state.selected) classes.push("selected");
    if (state.mentioned.has(obj.id)) classes.push("mentioned");
    const g = el("g", { class: classes.join(" "), "data-id": obj.id,
      transform: `translate(${ox} ${oy}) rotate(${yaw})` }, svg);
    el("rect", { x: -ex, y: -ez, width: 2 * ex, height: 2 * ez, rx: 3 }, g);
    const label = el("text", { x: 0, y: -ez - 6, "text-anchor": "middle",
      transform: `rotate(${-yaw})` }, g);
    label.textContent = obj.label || "(no label)";
    g.addEventListener("pointerdown", (e) => startDrag(e, obj));
  }
}

function startDrag(event, obj) {
  event.preventDefault();
  select(obj.id);
  const svg = $("view");
  svg.setPointerCapture(event.pointerId);
  let moved = false;
  const move = (e) => {
    moved = true;
    const box = svg.getBoundingClientRect();
    const [x, z] = toWorld(e.clientX - box.left, e.clientY - box.top);
    obj.pose = obj.pose || {};
    obj.pose.position = { ...(obj.pose.position || {}), x: round(x), z: round(z) };
    drawView();
    showObject();
  };
  const up = () => {
    svg.removeEventListener("pointermove", move);
    svg.removeEventListener("pointerup", up);
    if (moved) sceneChanged();
  };
  svg.addEventListener("pointermove", move);
  svg.addEventListener("pointerup", up);
}

const round = (v) => Math.round(v * 100) / 100;

// -- the object editor -------------------------------------------------------------
function selectedObject() {
  return state.scene.objects.find((o) => o.id === state.selected) || null;
}

function select(id) {
  state.selected = id;
  drawView();
  showObject();
}

function showObject() {
  const obj = selectedObject();
  $("object-editor").hidden = !obj;
  if (!obj) return;
  $("obj-id").textContent = obj.id;
  $("obj-label").value = obj.label || "";
  $("obj-attributes").value = Object.entries(obj.attributes || {})
    .map(([k, v]) => `${k}=${v}`).join(", ");
  $("obj-confidence").value = obj.confidence ?? 0;
  $("obj-yaw").value = Math.round(yawOf(obj.pose?.rotation));
  const p = obj.pose?.position || {};
  $("obj-position").textContent = `x ${(p.x ?? 0).toFixed(2)} m, z ${(p.z ?? 0).toFixed(2)} m`;
}

function editObject() {
  const obj = selectedObject();
  if (!obj) return;
  obj.label = $("obj-label").value;
  obj.confidence = Number($("obj-confidence").value) || 0;
  const attributes = {};
  for (const part of $("obj-attributes").value.split(",")) {
    const [k, ...v] = part.split("=");
    if (k.trim() && v.join("=").trim()) attributes[k.trim()] = v.join("=").trim();
  }
  obj.attributes = attributes;
  const yaw = Number($("obj-yaw").value) || 0;
  if (Math.round(yawOf(obj.pose?.rotation)) !== yaw) {
    obj.pose = obj.pose || { position: { x: 0, y: 0, z: 1 } };
    obj.pose.rotation = yawQuaternion(yaw);
  }
  drawView();
  sceneChanged();
}

function addObject() {
  const used = new Set(state.scene.objects.map((o) => o.id));
  let n = state.scene.objects.length + 1;
  while (used.has(`obj-${n}`)) n++;
  const cam = camera();
  const rad = (cam.yaw * Math.PI) / 180;
  state.scene.objects.push({ id: `obj-${n}`, label: "box", confidence: 0.9,
    pose: { position: { x: round(cam.x + 1.5 * Math.sin(rad)), y: 0,
      z: round(cam.z + 1.5 * Math.cos(rad)) } } });
  select(`obj-${n}`);
  sceneChanged();
}

function deleteObject() {
  state.scene.objects = state.scene.objects.filter((o) => o.id !== state.selected);
  select(null);
  sceneChanged();
}

function sceneChanged() {
  // The dialogue goes on: the next Ask carries the edited scene (AskRequest.scene).
  $("camera-yaw").value = Math.round(camera().yaw);
  $("location").value = state.scene.locationHint || "";
}

// -- load and save (the protobuf JSON mapping, as examples/scene.json) ---------------
function loadJson(text) {
  const json = JSON.parse(text);
  // A DescribeSceneRequest ({"scene": ..., "sampling": ...}) or a bare SceneFeatures.
  const request = fromJson(DescribeSceneRequestSchema, json.scene ? json : { scene: json });
  const normal = toJson(DescribeSceneRequestSchema, request);
  state.scene = { objects: [], ...normal.scene };
  state.instruction = normal.instruction || "";
  $("instruction").value = state.instruction;
  setSampling(normal.sampling || {});
  state.mentioned = new Set();
  select(null);
  sceneChanged();
}

function saveJson() {
  const request = fromJson(DescribeSceneRequestSchema, requestJson());
  const text = JSON.stringify(toJson(DescribeSceneRequestSchema, request), null, 2);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  link.download = "scene.json";
  link.click();
  URL.revokeObjectURL(link.href);
}

// -- sampling ----------------------------------------------------------------------
function sampling() {
  // A loaded file's other fields (topK, stop, ...) are kept; the form's win.
  const out = { ...state.sampling, maxNewTokens: Number($("max-tokens").value) || 0,
    temperature: Number($("temperature").value) || 0,
    topP: Number($("top-p").value) || 0 };
  delete out.seed;
  delete out.sceneConstraint;
  if ($("seed").value !== "") out.seed = $("seed").value;
  if ($("scene-constraint").value !== "") out.sceneConstraint = Number($("scene-constraint").value);
  return out;
}

function setSampling(s) {
  // The JSON mapping leaves zero values out: a missing field is 0 (or unset).
  state.sampling = { ...s };
  $("max-tokens").value = s.maxNewTokens ?? 0;
  $("temperature").value = s.temperature ?? 0;
  $("top-p").value = s.topP ?? 0;
  $("seed").value = s.seed ?? "";
  $("scene-constraint").value = s.sceneConstraint ?? "";
}

function requestJson() {
  return { scene: state.scene, instruction: $("instruction").value, sampling: sampling() };
}

// -- calls -------------------------------------------------------------------------
function bridge() {
  const params = new URLSearchParams(location.search);
  const baseUrl = $("server").value || params.get("server") || location.origin;
  return new ArBridge({ baseUrl, token: $("token").value.trim() });
}

async function run(kind) {
  if (state.abort) state.abort.abort();
  const abort = new AbortController();
  state.abort = abort;
  state.events = [];
  state.mentioned = new Set();
  drawView();
  const out = $("reply");
  out.textContent = "";
  $("error").hidden = true;
  $("status").textContent = "streaming…";
  $("cancel").disabled = false;
  document.body.dataset.reply = "streaming";
  const started = performance.now();
  let first = null;
  let text = "";
  try {
    const api = bridge();
    let stream;
    if (kind === "describe") {
      stream = api.describeScene(fromJson(DescribeSceneRequestSchema, requestJson()),
        { signal: abort.signal });
    } else {
      const question = $("question").value.trim();
      stream = api.ask({ sessionId: state.sessionId, start: { scene: state.scene },
        scene: state.sessionId ? state.scene : undefined, text: question,
        sampling: sampling() }, { signal: abort.signal });
      appendTurn("you", question);
    }
    for await (const event of stream) {
      if (event.sessionId) state.sessionId = event.sessionId;
      if (event.chunk) {
        first = first ?? performance.now();
        text += event.chunk.text;
        out.textContent = text;
        state.events.push({ kind: "chunk", at: performance.now(), text: event.chunk.text });
      } else if (event.completion) {
        state.events.push({ kind: "completion", at: performance.now() });
        finished(event.completion, text, started, first);
        if (kind === "ask") appendTurn("assistant", event.completion.text);
      }
    }
    if (state.abort === abort) document.body.dataset.reply = "done";
  } catch (err) {
    const e = ConnectError.from(err);
    if (state.abort !== abort && abort.signal.aborted) {
      // A newer reply replaced this one: the page is that reply's now.
    } else if (abort.signal.aborted) {
      $("status").textContent = "cancelled";
      document.body.dataset.reply = "cancelled";
    } else {
      if (e.code === Code.NotFound && kind === "ask") state.sessionId = ""; // expired
      showError(e);
    }
  } finally {
    if (state.abort === abort) {
      state.abort = null;
      $("cancel").disabled = true;
    }
  }
}

function finished(completion, text, started, first) {
  const reason = finishName(completion.finishReason);
  const usage = completion.usage || {};
  const timings = completion.timings || {};
  const seconds = (performance.now() - (first ?? started)) / 1000;
  const rate = usage.completionTokens > 1 && seconds > 0
    ? ((usage.completionTokens - 1) / seconds).toFixed(1) : "–";
  $("status").textContent = `finish: ${reason} · ${usage.promptTokens ?? 0} prompt + ` +
    `${usage.completionTokens ?? 0} tokens · first token ${(timings.timeToFirstTokenMs ?? 0)
      .toFixed(0)} ms (server), ${first ? (first - started).toFixed(0) : "–"} ms (here) · ` +
    `${rate} tok/s`;
  highlight(completion.text || text, completion.grounding || []);
  if (completion.errorMessage) showError({ code: Code.Internal, rawMessage:
    `${reason}: ${completion.errorMessage}` });
}

function finishName(value) {
  return FinishReason[value] ?? String(value);
}

function highlight(text, spans) {
  const out = $("reply");
  out.replaceChildren();
  let at = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start < at) continue;
    out.append(text.slice(at, span.start));
    const mark = document.createElement("mark");
    mark.dataset.objectId = span.objectId;
    mark.textContent = text.slice(span.start, span.end);
    mark.addEventListener("mouseenter", () => select(span.objectId));
    out.append(mark);
    state.mentioned.add(span.objectId);
    at = span.end;
  }
  out.append(text.slice(at));
  drawView();
}

function showError(err) {
  const box = $("error");
  box.hidden = false;
  box.textContent = `${statusName(err.code)}: ${err.rawMessage}`;
  $("status").textContent = "failed";
  document.body.dataset.reply = "error";
}

function appendTurn(who, text) {
  const line = document.createElement("div");
  line.className = `turn ${who}`;
  line.textContent = `${who}: ${text}`;
  $("dialogue").append(line);
}

async function showModel() {
  try {
    const info = await bridge().modelInfo();
    $("model").textContent = `${info.modelName} · ${info.dtype} · ${info.device} · ` +
      `features: ${info.features.join(", ")}`;
  } catch (err) {
    $("model").textContent = `model info: ${statusName(ConnectError.from(err).code)}`;
  }
}

// -- wiring ------------------------------------------------------------------------
function init() {
  const params = new URLSearchParams(location.search);
  $("server").value = params.get("server") || "";
  $("server").placeholder = location.origin;
  $("describe").addEventListener("click", () => run("describe"));
  $("ask").addEventListener("click", () => run("ask"));
  $("question").addEventListener("keydown", (e) => { if (e.key === "Enter") run("ask"); });
  $("cancel").addEventListener("click", () => state.abort?.abort());
  $("add").addEventListener("click", addObject);
  $("delete").addEventListener("click", deleteObject);
  for (const id of ["obj-label", "obj-attributes", "obj-confidence", "obj-yaw"]) {
    $(id).addEventListener("change", editObject);
  }
  $("camera-yaw").addEventListener("change", () => {
    state.scene.cameraPose = state.scene.cameraPose || { position: { x: 0, y: 1.6, z: 0 } };
    state.scene.cameraPose.rotation = yawQuaternion(Number($("camera-yaw").value) || 0);
    drawView();
    sceneChanged();
  });
  $("location").addEventListener("change", () => {
    state.scene.locationHint = $("location").value;
    sceneChanged();
  });
  $("load").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      loadJson(await file.text());
    } catch (err) {
      showError({ code: 3, rawMessage: `${file.name}: ${err.message}` });
    }
  });
  $("save").addEventListener("click", saveJson);
  $("token").addEventListener("change", showModel);
  $("server").addEventListener("change", showModel);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Delete" && state.selected && document.activeElement === document.body) {
      deleteObject();
    }
  });
  window.addEventListener("resize", drawView);
  sceneChanged();
  drawView();
  showObject();
  showModel();
  // For the browser tests and the curious: the state and the last reply's events.
  window.arbridgePlayground = { state, loadJson, select, requestJson };
}

init();
