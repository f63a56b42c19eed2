// Portability suite, end to end: blip-onnx's browser module (web/index.js: the Rust task code as
// wasm) over another runtime (register.mjs picks it: BLIP_E2E_RUNTIME = web | node | ort-mobile |
// openvino | tract), on every shapes flavour whose manifest claims that runtime. Captions (greedy, beam 3), VQA
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

// Flavours: the shapes packages' suffixes ('' is the converted FP32 package).
const flavours = readdirSync(PACKAGES)
  .filter((p) => p.startsWith('shapes-caption'))
  .map((p) => p.slice('shapes-caption'.length))
  .sort();

for (const flavour of flavours) {
  const pkgs = ['caption', 'retrieval', 'vqa'].map((h) => `shapes-${h}${flavour}`);
  const claimed = pkgs.every((p) => manifest(p).runtimes.includes(RUNTIME));
  const name = flavour ? flavour.slice(2) : 'fp32';
  test(`${RUNTIME}, ${name}: captions, VQA answers and the search ranking equal the native CLI's`,
    { skip: !claimed && `the ${name} packages are not made for ${RUNTIME}` }, async () => {
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
