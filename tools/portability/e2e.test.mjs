// Portability suite, end to end: blip-onnx's browser module (web/index.js: the Rust task code as
// wasm) over another runtime (register.mjs picks it: BLIP_E2E_RUNTIME = web | node | ort-mobile |
// openvino | tract), on every shapes flavour made for that runtime (MADE_FOR, pinned below; the
// manifests must claim exactly those, and an unexpected skip fails). Captions (greedy, beam 3), VQA
// answers and the search ranking must equal `blip-onnx caption/vqa/search` (native ONNX Runtime)
// on the same package, token for token; search scores within SCORE_TOL on FP32 packages and
// QUANT_SCORE_TOL on quantized ones (INT8/INT4 kernels round differently between runtimes and ORT
// releases, and the ORT format fuses less: docs/runtimes.md), the ranking equal.
// scripts/test-portability.sh sets the environment.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join, normalize, resolve, sep } from 'node:path';
import { Blip } from '../../web/index.js';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run scripts/test-portability.sh`);
  return v;
};
const RUNTIME = env('BLIP_E2E_RUNTIME');
const CLI = env('BLIP_ONNX');
const PACKAGES = resolve(env('BLIP_PACKAGES'));
const GALLERY = env('BLIP_GALLERY');
const QUESTIONS = JSON.parse(readFileSync(env('BLIP_VQA_QUESTIONS'), 'utf8')).questions;
const SCORE_TOL = 1e-4;
const QUANT_SCORE_TOL = 2e-2;

const wasm = readFileSync(new URL('../../web/dist/pkg/blip_web_bg.wasm', import.meta.url));
const galleryFiles = readdirSync(GALLERY).filter((f) => f.endsWith('.png')).sort();
const images = galleryFiles.map((f) => new Uint8Array(readFileSync(join(GALLERY, f))));
const native = (args) => JSON.parse(execFileSync(CLI, [...args, '--format', 'json', '--quiet'], { encoding: 'utf8' }));
const manifest = (pkg) => JSON.parse(readFileSync(join(PACKAGES, pkg, 'blip.json'), 'utf8'));

let server;
let base;
const tmp = mkdtempSync(join(tmpdir(), 'blip-e2e-'));

// The packages over loopback HTTP (Blip.load fetches them; Node's fetch takes no file: URLs).
before(async () => {
  server = createServer((req, res) => {
    const path = normalize(join(PACKAGES, decodeURIComponent(new URL(req.url, 'http://x').pathname)));
    if (!path.startsWith(PACKAGES + sep) || !existsSync(path) || !statSync(path).isFile()) {
      res.writeHead(404).end();
      return;
    }
    // No keep-alive: a session created in wasm blocks this event loop past the server's idle
    // timeout, and a reused socket the server closed meanwhile would fail the next fetch.
    res.writeHead(200, { 'content-length': statSync(path).size, connection: 'close' }).end(readFileSync(path));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${server.address().port}/`;
});

after(() => {
  server?.close();
  rmSync(tmp, { recursive: true, force: true });
});

// The runtimes of this suite each flavour's packages are made for (scripts/test-portability.sh makes
// the flavours; `quantize --target` and `optimize` write the manifests' `runtimes`). Pinned here, not
// read from the manifests: a manifest that stopped claiming a runtime would otherwise turn its whole
// run into skips that pass. A flavour runs on exactly these; any other skip fails.
const RUNTIMES = ['web', 'node', 'ort-mobile', 'openvino', 'tract'];
const MADE_FOR = {
  fp32: ['web', 'node', 'ort-mobile', 'openvino', 'tract'],
  int8: ['node'], // full-range QInt8: not ORT mobile (check --target ort-mobile says why)
  int4: ['node', 'ort-mobile'],
  fp16: ['node', 'ort-mobile'],
  web: ['web', 'ort-mobile'],
  opt: ['web', 'node', 'ort-mobile', 'openvino'], // fused attention: not tract
  'opt-int8': ['node'],
};
assert.ok(RUNTIMES.includes(RUNTIME), `BLIP_E2E_RUNTIME=${RUNTIME} is none of ${RUNTIMES.join(', ')}`);

// Flavours: the shapes packages' suffixes ('' is the converted FP32 package).
const flavours = readdirSync(PACKAGES)
  .filter((p) => p.startsWith('shapes-caption'))
  .map((p) => p.slice('shapes-caption'.length))
  .sort();
const flavourName = (flavour) => (flavour ? flavour.slice(2) : 'fp32');

test('the packages are the pinned flavours, and each claims exactly its pinned runtimes', () => {
  assert.deepEqual(flavours.map(flavourName).sort(), Object.keys(MADE_FOR).sort());
  for (const flavour of flavours) {
    for (const head of ['caption', 'retrieval', 'vqa']) {
      const pkg = `shapes-${head}${flavour}`;
      const claimed = RUNTIMES.filter((r) => manifest(pkg).runtimes.includes(r));
      assert.deepEqual(claimed, MADE_FOR[flavourName(flavour)], `${pkg}'s manifest runtimes`);
    }
  }
});

for (const flavour of flavours) {
  const pkgs = ['caption', 'retrieval', 'vqa'].map((h) => `shapes-${h}${flavour}`);
  const name = flavourName(flavour);
  const madeFor = MADE_FOR[name]?.includes(RUNTIME);
  test(`${RUNTIME}, ${name}: captions, VQA answers and the search ranking equal the native CLI's`,
    { skip: madeFor === false && `the ${name} packages are not made for ${RUNTIME}` }, async () => {
      assert.ok(madeFor, `no pinned runtimes for the ${name} flavour`);
      const [caption, retrieval, vqa] = await Promise.all(pkgs.map((p) => Blip.load(`${base}${p}/`, { wasm })));
      const [capPkg, retPkg, vqaPkg] = pkgs.map((p) => join(PACKAGES, p));

      for (const [label, options, flags] of [['greedy', { beams: 1 }, ['--beams', '1']], ['beam 3', { beams: 3 }, ['--beams', '3']]]) {
        const want = native(['caption', '-p', capPkg, ...flags, ...galleryFiles.map((f) => join(GALLERY, f))]);
        const got = await caption.caption(images, options);
        for (const [i, w] of want.entries()) {
          assert.deepEqual(got[i].tokens, w.tokens, `${label} ${galleryFiles[i]}: ${got[i].caption} vs ${w.caption}`);
        }
      }

      for (const [i, file] of galleryFiles.slice(0, 3).entries()) {
        const id = Number(file.match(/(\d+)/)[1]);
        const qs = QUESTIONS.filter((q) => q.image_id === id).map((q) => q.question);
        assert.ok(qs.length > 0, `no questions for ${file}`);
        const want = native(['vqa', '-p', vqaPkg, join(GALLERY, file), ...qs]);
        const got = await vqa.answer(images[i], qs);
        assert.deepEqual(got.map((a) => a.tokens), want.map((a) => a.tokens), file);
      }

      const index = join(tmp, `index${flavour}.json`);
      native(['index', '-p', retPkg, GALLERY, '-o', index]);
      const float = Object.values(manifest(`shapes-retrieval${flavour}`).graphs).every((g) => g.precision === 'fp32');
      const tol = float ? SCORE_TOL : QUANT_SCORE_TOL;
      for (const query of ['a red circle', 'two blue squares']) {
        const want = native(['search', '-p', retPkg, index, query, '-k', '100']);
        const got = await retrieval.rankImages(query, images);
        assert.deepEqual(got.map((h) => galleryFiles[h.index]), want.map((h) => basename(h.image)), query);
        for (const [i, w] of want.entries()) {
          assert.ok(Math.abs(got[i].score - w.score) < tol, `${query} #${i + 1}: ${got[i].score} vs ${w.score}`);
        }
      }
    });
}
