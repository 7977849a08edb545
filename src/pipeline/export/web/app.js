// The served page: loads the TF.js model (model/model.json) with the wasm backend and its card
// (model/card.json: classes, size, mean/std, layout, temperature, threshold, crop_rule), answers a
// dropped photo and shows the label with its calibrated confidence, or "not conclusive" under the
// threshold. A model trained on crops answers the way its training data was made, as
// pipeline.export.crop_rule does in Python: grid windows over the vehicle box (here the whole photo:
// no detector runs in the browser, and the page says so when training used one), each window cut out
// and sized like a training crop, one answer per window, and the photo damaged with the most
// confident damaged window's confidence (else clean with its least sure window's p(clean)).
// window.runGate(url, n) runs preprocessed NCHW float32 inputs (the equivalence gate's path).
'use strict';
let model = null, card = null;

function toModelLayout(nchw) {  // nchw: [1, C, H, W] tensor
  return card.layout === 'NHWC' ? tf.transpose(nchw, [0, 2, 3, 1]) : nchw;
}

function pyRound(x) {  // Python's round(): halves to even (the crop geometry is computed with it)
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function softmax(logits, t) {
  const z = logits.map((v) => v / t), m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function argmax(a) { let k = 0; a.forEach((v, i) => { if (v > a[k]) k = i; }); return k; }

// -- the crop rule (retrieval/crop_item.py: _axis_starts, grid_windows, fit_size) --------------------

function axisStarts(b0, b1, limit, size, stride) {
  let starts = [];
  if (b1 - b0 <= size) starts = [pyRound((b0 + b1 - size) / 2)];
  else for (let i = 0; i < Math.ceil((b1 - b0 - size) / stride) + 1; i++) starts.push(b0 + i * stride);
  return Array.from(new Set(starts.map((s) => Math.min(Math.max(0, s), limit - size)))).sort((a, b) => a - b);
}

function overlap(a, b) {
  return Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0])) * Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
}

function gridWindows(vbox, w, h, rule) {
  const gw = Math.min(rule.grid_size, w), gh = Math.min(rule.grid_size, h);
  const stride = Math.max(1, pyRound(rule.grid_size * (1 - rule.grid_overlap)));
  const achievable = Math.min(vbox[2] - vbox[0], gw) * Math.min(vbox[3] - vbox[1], gh);
  const out = [];
  axisStarts(vbox[1], vbox[3], h, gh, stride).forEach((y, r) => {
    axisStarts(vbox[0], vbox[2], w, gw, stride).forEach((x, c) => {
      const box = [x, y, x + gw, y + gh];
      if (overlap(box, vbox) >= rule.min_vehicle_fraction * achievable) out.push({row: r, col: c, box});
    });
  });
  return out.length ? out : [{row: 0, col: 0, box: vbox}];
}

function fittedSize(w, h, target) {  // fit_size: the long side down to target (never up)
  if (Math.max(w, h) <= target) return [w, h];
  const s = target / Math.max(w, h);
  return [Math.max(1, pyRound(w * s)), Math.max(1, pyRound(h * s))];
}

// -- pixels: a region of the photo, as the model's val transform sees it ----------------------------

function pixels(img, box, fit) {
  // box [x0, y0, x1, y1] in photo pixels, sized like a training crop (fit: target_size or null), then
  // torchvision's Resize(resize_size) (short side; long side truncated) and CenterCrop(image_size).
  const s = card.image_size, r = card.resize_size || s;
  const [cw, ch] = fit ? fittedSize(box[2] - box[0], box[3] - box[1], fit) : [box[2] - box[0], box[3] - box[1]];
  const short = Math.min(cw, ch), long = Math.max(cw, ch), scaledLong = Math.floor(r * long / short);
  const rw = cw <= ch ? r : scaledLong, rh = cw <= ch ? scaledLong : r;
  const left = pyRound((rw - s) / 2), top = pyRound((rh - s) / 2);
  let src = img, region = [box[0], box[1], box[2] - box[0], box[3] - box[1]];
  if (cw !== region[2] || ch !== region[3]) {  // the crop fitted first, as a training crop was saved
    src = document.createElement('canvas');
    src.width = cw; src.height = ch;
    const fctx = src.getContext('2d');
    fctx.imageSmoothingEnabled = true; fctx.imageSmoothingQuality = 'high';
    fctx.drawImage(img, ...region, 0, 0, cw, ch);
    region = [0, 0, cw, ch];
  }
  const canvas = document.createElement('canvas');
  canvas.width = s; canvas.height = s;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(src, ...region, -left, -top, rw, rh);
  return tf.tidy(() => {
    const hwc = tf.browser.fromPixels(canvas).toFloat().div(255).sub(card.mean).div(card.std);
    return tf.transpose(hwc, [2, 0, 1]).expandDims(0);
  });
}

async function logitsOf(img, box, fit) {
  const y = tf.tidy(() => model.execute(toModelLayout(pixels(img, box, fit))));
  const out = Array.from(await y.data());
  y.dispose();
  return out;
}

function cropRule() {
  const rule = card.crop_rule || {};
  return rule.source === 'crops' ? rule : null;
}

function photoAnswer(windows, rule) {  // pipeline.export.crop_rule.photo_answer
  const classes = card.class_names, clean = rule && rule.clean_class;
  const top = windows.map((w) => argmax(w.probs)), conf = windows.map((w, i) => w.probs[top[i]]);
  let w = 0, damaged = null;
  if (clean && classes.includes(clean)) {
    const ci = classes.indexOf(clean), hit = top.map((k, i) => (k !== ci ? i : -1)).filter((i) => i >= 0);
    damaged = hit.length > 0;
    if (damaged) { w = hit[0]; hit.forEach((i) => { if (conf[i] > conf[w]) w = i; }); }
    else windows.forEach((x, i) => { if (x.probs[ci] < windows[w].probs[ci]) w = i; });
  } else conf.forEach((v, i) => { if (v > conf[w]) w = i; });
  const label = damaged === false ? clean : classes[top[w]];
  const confidence = damaged === false ? windows[w].probs[classes.indexOf(clean)] : conf[w];
  const conclusive = card.threshold === null || card.threshold === undefined || confidence >= card.threshold;
  return {label, confidence, conclusive, damaged, window: w, logits: windows[w].logits};
}

async function answerPhoto(img) {
  const W = img.naturalWidth, H = img.naturalHeight, rule = cropRule(), t = card.temperature || 1.0;
  const boxes = rule ? gridWindows([0, 0, W, H], W, H, rule) : [{row: 0, col: 0, box: [0, 0, W, H]}];
  const windows = [];
  for (const b of boxes) {
    const logits = await logitsOf(img, b.box, rule ? rule.target_size : null);
    const probs = softmax(logits, t), k = argmax(probs);
    windows.push({...b, logits, probs, label: card.class_names[k], confidence: probs[k]});
  }
  return {...photoAnswer(windows, rule), windows: rule ? windows : [], vehicle_box: [0, 0, W, H]};
}

function drawWindows(img, a) {
  const c = document.getElementById('overlay'), scale = Math.min(1, 480 / img.naturalWidth);
  c.width = Math.round(img.naturalWidth * scale); c.height = Math.round(img.naturalHeight * scale);
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0, c.width, c.height);
  a.windows.forEach((w, i) => {
    const clean = cropRule().clean_class, bad = clean ? w.label !== clean : i === a.window;
    ctx.strokeStyle = bad ? '#d22' : '#2a2'; ctx.lineWidth = i === a.window ? 4 : 1.5;
    ctx.strokeRect(w.box[0] * scale + 2, w.box[1] * scale + 2, (w.box[2] - w.box[0]) * scale - 4, (w.box[3] - w.box[1]) * scale - 4);
    ctx.fillStyle = bad ? '#d22' : '#2a2'; ctx.font = '12px sans-serif';
    ctx.fillText(`${w.label} ${(100 * w.confidence).toFixed(0)}%`, w.box[0] * scale + 6, w.box[1] * scale + 16);
  });
  c.style.display = 'block';
  document.getElementById('preview').style.display = 'none';
}

async function classifyImage(img) {
  const t0 = performance.now();
  const a = await answerPhoto(img);
  a.ms = performance.now() - t0;
  const el = document.getElementById('answer'), pct = (100 * a.confidence).toFixed(1);
  const where = a.windows.length ? ` (${a.windows.length} windows)` : '';
  el.className = a.conclusive ? '' : 'inconclusive';
  el.textContent = a.conclusive ? `${a.label}: ${pct} %${where}` : `not conclusive (best guess ${a.label}, ${pct} %)${where}`;
  if (a.windows.length) drawWindows(img, a);
  document.getElementById('meta').textContent = `${a.ms.toFixed(0)} ms, ${tf.getBackend()} backend`;
  window.lastAnswer = a;
  return a;
}

const MAX_UPLOAD_MB = 20, MAX_PIXELS = 40e6;  // bounds of a dropped photo (size, then decoded pixels)

function refuse(message) {
  const el = document.getElementById('answer');
  el.className = 'inconclusive';
  el.textContent = message;
  window.lastAnswer = {refused: message};
  return Promise.reject(new Error(message));
}

function classifyFile(file) {
  if (file.size > MAX_UPLOAD_MB * 1024 * 1024) {
    return refuse(`${(file.size / 1048576).toFixed(1)} MB: the limit is ${MAX_UPLOAD_MB} MB`);
  }
  return new Promise((resolve, reject) => {
    const img = document.getElementById('preview');
    img.style.display = 'block'; document.getElementById('overlay').style.display = 'none';
    img.onload = () => (img.naturalWidth * img.naturalHeight > MAX_PIXELS
      ? refuse(`${img.naturalWidth} x ${img.naturalHeight} pixels: the limit is ${MAX_PIXELS / 1e6} megapixels`)
      : classifyImage(img)).then(resolve, reject);
    img.onerror = () => reject(new Error('not an image'));
    img.src = URL.createObjectURL(file);
  });
}

window.runGate = async function (url, n) {
  const buf = new Float32Array(await (await fetch(url)).arrayBuffer());
  const c = card.in_chans || 3, s = card.image_size, per = c * s * s, out = [], times = [];
  const run = (i) => tf.tidy(() => model.execute(toModelLayout(tf.tensor4d(buf.subarray(i * per, (i + 1) * per), [1, c, s, s]))));
  const w = run(0); await w.data(); w.dispose();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const y = run(i);
    out.push(Array.from(await y.data()));
    y.dispose();
    times.push(performance.now() - t0);
  }
  return {logits: out, times, backend: tf.getBackend()};
};

function ruleText() {
  const rule = cropRule();
  if (!rule) return 'answers on the whole photo';
  const det = (rule.detector || {}).backend;
  const box = !det || det === 'none' ? 'the whole photo as vehicle box, as in training'
    : `the whole photo as vehicle box (training used the ${det} detector, which does not run in the browser)`;
  return `trained on crops: ${rule.grid_size} px windows, overlap ${rule.grid_overlap}, ${box}`;
}

async function init() {
  tf.wasm.setWasmPaths(new URL('vendor/', location.href).href);
  await tf.setBackend('wasm');
  await tf.ready();
  card = await (await fetch('model/card.json')).json();
  model = await tf.loadGraphModel('model/model.json');
  const drop = document.getElementById('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault(); drop.classList.remove('over');
    if (e.dataTransfer.files.length) classifyFile(e.dataTransfer.files[0]);
  });
  document.getElementById('file').addEventListener('change', (e) => {
    if (e.target.files.length) classifyFile(e.target.files[0]);
  });
  document.getElementById('status').textContent =
    `model ${card.variant} (${card.class_names.length} classes, ${tf.getBackend()}); threshold ${card.threshold}; ${ruleText()}`;
  window.pipelineReady = true;
}

init().catch((e) => { document.getElementById('status').textContent = 'error: ' + e; window.pipelineError = String(e); });
