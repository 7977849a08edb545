// Runs a TF.js graph model in Node (tfjs + wasm backend) over NCHW float32 inputs, one image at a time.
// Usage: node run_tfjs.cjs MODEL_DIR INPUTS.f32 N,C,H,W OUT.f32 [backend]
// Writes the logits (float32, N x K) to OUT.f32 and prints one JSON line with timings.
// @tensorflow/tfjs is resolved through NODE_PATH (the lock-file install under export/node_modules).
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');
require('@tensorflow/tfjs-backend-wasm');

function fileHandler(dir) {
  // A custom IOHandler: model.json plus its shards from disk, concatenated in manifest order.
  return {
    load: async () => {
      const mj = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
      const specs = [], parts = [];
      for (const group of mj.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) parts.push(fs.readFileSync(path.join(dir, p)));
      }
      const buf = Buffer.concat(parts);
      return {modelTopology: mj.modelTopology, weightSpecs: specs, format: mj.format,
              generatedBy: mj.generatedBy, convertedBy: mj.convertedBy, signature: mj.signature,
              userDefinedMetadata: mj.userDefinedMetadata,
              weightData: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)};
    },
  };
}

async function main() {
  const [dir, inPath, shapeArg, outPath, backend = 'wasm'] = process.argv.slice(2);
  const [n, c, h, w] = shapeArg.split(',').map(Number);
  await tf.setBackend(backend);
  await tf.ready();
  const t0 = Date.now();
  const model = await tf.loadGraphModel(fileHandler(dir));
  const loadMs = Date.now() - t0;
  const dims = model.inputs[0].shape;
  const nhwc = dims[dims.length - 1] === c;
  const raw = fs.readFileSync(inPath);
  const data = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const per = c * h * w, outs = [], times = [];
  const run = (i) => tf.tidy(() => {
    let x = tf.tensor4d(data.subarray(i * per, (i + 1) * per), [1, c, h, w]);
    if (nhwc) x = tf.transpose(x, [0, 2, 3, 1]);
    return model.execute(x);
  });
  (await run(0).data());  // warm-up
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    const y = run(i);
    outs.push(await y.data());
    y.dispose();
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const k = outs[0].length, all = new Float32Array(n * k);
  outs.forEach((o, i) => all.set(o, i * k));
  fs.writeFileSync(outPath, Buffer.from(all.buffer));
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({backend: tf.getBackend(), n, k, layout: nhwc ? 'NHWC' : 'NCHW',
                              load_ms: loadMs, median_ms: times[Math.floor(n / 2)], min_ms: times[0]}));
}

main().catch((e) => { console.error(e && e.stack || String(e)); process.exit(1); });
