// The served page: loads the TF.js model (model/model.json) with the wasm backend and its card
// (model/card.json: classes, size, mean/std, layout, temperature, threshold), classifies a dropped
// photo and shows the label with its calibrated confidence, or "not conclusive" under the threshold.
// window.runGate(url, n) runs preprocessed NCHW float32 inputs (the equivalence gate's path).
'use strict';
let model = null, card = null;

function toModelLayout(nchw) {  // nchw: [1, C, H, W] tensor
  return card.layout === 'NHWC' ? tf.transpose(nchw, [0, 2, 3, 1]) : nchw;
}

function softmax(logits, t) {
  const z = logits.map((v) => v / t), m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function answer(logits) {
  const p = softmax(Array.from(logits), card.temperature || 1.0);
  let k = 0;
  p.forEach((v, i) => { if (v > p[k]) k = i; });
  const conclusive = card.threshold === null || card.threshold === undefined || p[k] >= card.threshold;
  return {label: card.class_names[k], confidence: p[k], conclusive, logits: Array.from(logits)};
}

function pixels(img) {
  // The val transform: resize the short side to resize_size, centre crop image_size, mean/std.
  const s = card.image_size, r = card.resize_size || s;
  const scale = r / Math.min(img.naturalWidth, img.naturalHeight);
  const w = Math.round(img.naturalWidth * scale), h = Math.round(img.naturalHeight * scale);
  const canvas = document.createElement('canvas');
  canvas.width = s; canvas.height = s;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(img, Math.round((s - w) / 2), Math.round((s - h) / 2), w, h);
  return tf.tidy(() => {
    const hwc = tf.browser.fromPixels(canvas).toFloat().div(255).sub(card.mean).div(card.std);
    return tf.transpose(hwc, [2, 0, 1]).expandDims(0);
  });
}

async function classifyImage(img) {
  const t0 = performance.now();
  const y = tf.tidy(() => model.execute(toModelLayout(pixels(img))));
  const logits = await y.data();
  y.dispose();
  const a = answer(logits);
  a.ms = performance.now() - t0;
  const el = document.getElementById('answer');
  el.className = a.conclusive ? '' : 'inconclusive';
  el.textContent = a.conclusive ? `${a.label}: ${(100 * a.confidence).toFixed(1)} %`
                                : `not conclusive (best guess ${a.label}, ${(100 * a.confidence).toFixed(1)} %)`;
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
    `model ${card.variant} (${card.class_names.length} classes, ${tf.getBackend()}); threshold ${card.threshold}`;
  window.pipelineReady = true;
}

init().catch((e) => { document.getElementById('status').textContent = 'error: ' + e; window.pipelineError = String(e); });
