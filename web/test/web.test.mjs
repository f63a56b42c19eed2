// The exported sites in real headless Chromium against the native CLI (scripts/test-web.sh sets
// them up): in-browser captions (greedy, beam 3, seeded sampling), VQA answers (generated and
// ranked), ITM and the search ranking equal `blip-onnx caption/vqa/itm/search --format json` on
// the FP32 packages; captions (greedy, beam 3), VQA answers and the search ranking equal them on
// the web INT8 flavour (`quantize --target web`) too, and on WebGPU (Chromium's SwiftShader
// adapter: the FP32 packages are made for WebGPU, so the page picks it); without an adapter the
// same packages run on wasm and say why; the page's own buttons show the CLI's caption, answer and
// top five; a reload downloads no graph again; a corrupt graph on the server is a clear error on the
// page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, cpSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, basename, dirname } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run scripts/test-web.sh`);
  return v;
};
const CLI = env('BLIP_ONNX');
const SITE = env('BLIP_SITE_DIR');
const WEB_SITE = env('BLIP_WEB_SITE_DIR');
const WEBGPU_SITE = env('BLIP_WEBGPU_SITE_DIR');
const PACKAGES = env('BLIP_PACKAGES');
const GALLERY = env('BLIP_GALLERY');
const QUESTIONS = env('BLIP_VQA_QUESTIONS');
const SCREENSHOT = process.env.BLIP_SCREENSHOT;
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
// WebGPU without a GPU: Chromium's software Vulkan (SwiftShader, shipped in Debian's chromium).
const WEBGPU_ARGS = [...ARGS, '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

const galleryFiles = readdirSync(GALLERY).filter((f) => f.endsWith('.png')).sort();
const pkg = (name, suffix = '') => join(PACKAGES, name + suffix);
const native = (args) => JSON.parse(execFileSync(CLI, [...args, '--format', 'json', '--quiet'], { encoding: 'utf8' }));

const servers = [];
const dirs = [];

// `blip-onnx serve-static DIR --port 0`; resolves with the URL it prints.
function serve(dir) {
  const child = spawn(CLI, ['serve-static', dir, '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  servers.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`serve-static exited with ${code}: ${out}`)));
  });
}

async function browser(args = ARGS) {
  const dir = mkdtempSync(join(tmpdir(), 'blip-chromium-'));
  dirs.push(dir);
  return chromium.launchPersistentContext(dir, { executablePath: '/usr/bin/chromium', headless: true, args });
}

// Opens the demo and waits until it is ready (or failed); returns the page and every request URL.
async function open(context, url) {
  const page = await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  await page.waitForSelector('#status[data-state=ready], #status[data-state=error]', { timeout: 300_000 });
  return { page, requests, errors };
}

let context;
let site;
let page;
let firstRequests;
let webPage;
let webRequests;
let gpuContext;
let gpuPage;
let gpuRequests;
let gpuWebPage;
let webgpuFlavourPage;

async function ready(p) {
  const error = await p.textContent('#error');
  assert.equal(await p.getAttribute('#status', 'data-state'), 'ready', `page failed: ${error}`);
}

before(async () => {
  site = await serve(SITE);
  context = await browser();
  ({ page, requests: firstRequests } = await open(context, site));
  await ready(page);
  ({ page: webPage, requests: webRequests } = await open(context, await serve(WEB_SITE)));
  await ready(webPage);
  gpuContext = await browser(WEBGPU_ARGS);
  ({ page: gpuPage, requests: gpuRequests } = await open(gpuContext, site));
  await ready(gpuPage);
  ({ page: gpuWebPage } = await open(gpuContext, await serve(WEB_SITE)));
  await ready(gpuWebPage);
  ({ page: webgpuFlavourPage } = await open(gpuContext, await serve(WEBGPU_SITE)));
  await ready(webgpuFlavourPage);
});

after(async () => {
  await gpuContext?.close();
  await context?.close();
  for (const s of servers) s.kill();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('the page is cross-origin isolated, uses threads, and loads everything from its own server', async () => {
  const info = await page.evaluate(() => ({
    isolated: crossOriginIsolated,
    cores: navigator.hardwareConcurrency,
    runtime: document.querySelector('#runtime').textContent,
  }));
  assert.equal(info.isolated, true);
  assert.match(info.runtime, new RegExp(`, ${Math.min(4, info.cores)} thread\\(s\\) \\(cross-origin isolated\\)`));
  const foreign = firstRequests.filter((u) => !u.startsWith(site) && !u.startsWith('blob:') && !u.startsWith('data:'));
  assert.deepEqual(foreign, []);
  const graphs = firstRequests.filter((u) => u.endsWith('.onnx'));
  const expected = readdirSync(join(SITE, 'packages')).flatMap((p) =>
    Object.values(JSON.parse(readFileSync(join(SITE, 'packages', p, 'blip.json'), 'utf8')).graphs).map((g) => `${site}packages/${p}/${g.file}`));
  assert.deepEqual([...graphs].sort(), [...expected].sort());
});

const decodings = [
  ['greedy', { beams: 1 }, ['--beams', '1']],
  ['beam 3', { beams: 3 }, ['--beams', '3']],
  ['seeded sampling', { sample: true, seed: 7, topK: 5, temperature: 0.8, repetitionPenalty: 1.1 },
    ['--sample', '--seed', '7', '--top-k', '5', '--temperature', '0.8', '--repetition-penalty', '1.1']],
];
// Each flavour's site, the suffix of its packages' folders, and the decodings it is checked with.
const flavours = [
  { label: 'FP32', page: () => page, suffix: '', decodings, tolerance: 1e-4 },
  { label: 'web INT8', page: () => webPage, suffix: '-web', decodings: decodings.slice(0, 2), tolerance: 2e-2 },
  { label: 'WebGPU FP32', page: () => gpuPage, suffix: '', decodings: decodings.slice(0, 2), tolerance: 1e-4 },
  // MatMulNBits on SwiftShader takes ~10 s per image and task: greedy captions and VQA only (the
  // FP32 packages check search on WebGPU).
  { label: 'WebGPU INT4 (--target webgpu)', page: () => webgpuFlavourPage, suffix: '-webgpu', decodings: decodings.slice(0, 1), tolerance: 2e-2, search: false },
];

for (const flavour of flavours) {
  for (const [label, options, flags] of flavour.decodings) {
    test(`${flavour.label} captions (${label}) equal the native CLI's token for token`, async () => {
      const want = native(['caption', '-p', pkg('shapes-caption', flavour.suffix), ...flags, ...galleryFiles.map((f) => join(GALLERY, f))]);
      const got = await flavour.page().evaluate(async ({ files, options }) => {
        const m = window.blipDemo.state.models.caption;
        const images = await Promise.all(files.map(async (f) => new Uint8Array(await (await fetch(`gallery/${f}`)).arrayBuffer())));
        return m.caption(images, options);
      }, { files: galleryFiles, options });
      assert.equal(got.length, want.length);
      for (const [i, w] of want.entries()) {
        assert.deepEqual(got[i].tokens, w.tokens, `${galleryFiles[i]}: ${got[i].caption} vs ${w.caption}`);
        assert.equal(got[i].caption, w.caption);
      }
    });
  }

  test(`${flavour.label} VQA answers equal the native CLI's token for token`, async () => {
    const questions = JSON.parse(readFileSync(QUESTIONS, 'utf8')).questions;
    for (const file of galleryFiles.slice(0, 3)) {
      const id = Number(file.match(/(\d+)/)[1]);
      const qs = questions.filter((q) => q.image_id === id).map((q) => q.question);
      assert.ok(qs.length > 0, `no questions for ${file}`);
      const want = native(['vqa', '-p', pkg('shapes-vqa', flavour.suffix), join(GALLERY, file), ...qs]);
      const got = await flavour.page().evaluate(async ({ file, qs }) => {
        const image = new Uint8Array(await (await fetch(`gallery/${file}`)).arrayBuffer());
        return window.blipDemo.state.models.vqa.answer(image, qs);
      }, { file, qs });
      assert.deepEqual(got.map((a) => a.tokens), want.map((a) => a.tokens), file);
      assert.deepEqual(got.map((a) => a.answer), want.map((a) => a.answer), file);
    }
  });

  if (flavour.search !== false) test(`${flavour.label} search ranking equals blip-onnx search over the same gallery`, async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'blip-index-'));
    dirs.push(tmp);
    const index = join(tmp, 'index.json');
    const retrieval = pkg('shapes-retrieval', flavour.suffix);
    native(['index', '-p', retrieval, GALLERY, '-o', index]);
    // FP32 scores agree to float rounding; INT8 kernels differ between runtimes (dynamic activation
    // scales, docs/runtimes.md), so there the ranking is what must agree.
    const { tolerance } = flavour;
    for (const query of ['a red circle', 'two blue squares']) {
      const want = native(['search', '-p', retrieval, index, query, '-k', '100']);
      const got = await flavour.page().evaluate(async (query) => {
        const { state } = window.blipDemo;
        return state.models.retrieval.rankImages(query, state.gallery.map((g) => g.bytes), { embeddings: state.embeddings });
      }, query);
      assert.deepEqual(got.map((h) => galleryFiles[h.index]), want.map((h) => basename(h.image)), query);
      for (const [i, w] of want.entries()) assert.ok(Math.abs(got[i].score - w.score) < tolerance, `${query} #${i + 1}: ${got[i].score} vs ${w.score}`);
    }
  });
}

test('each package runs on the execution provider it is made for, where the browser has it, and says why', async () => {
  const providers = (p) => p.evaluate(() => Object.fromEntries(Object.entries(window.blipDemo.state.models)
    .map(([head, m]) => [head, [m.executionProvider, m.executionProviderReason]])));
  for (const p of [gpuPage, webgpuFlavourPage]) {
    for (const [head, [ep, why]] of Object.entries(await providers(p))) {
      assert.equal(ep, 'webgpu', head);
      assert.match(why, /made for webgpu and the browser has a WebGPU adapter \(google swiftshader\)/, head);
    }
  }
  // FP16 graphs need shader-f16, which SwiftShader's adapter lacks: auto falls back, webgpu refuses.
  const fp16 = await webgpuFlavourPage.evaluate(async () => {
    const { Blip } = await import('./blip/index.js');
    const auto = await Blip.load('extra/shapes-caption-webgpu-fp16/');
    const hasF16 = (await navigator.gpu.requestAdapter()).features.has('shader-f16');
    try {
      await Blip.load('extra/shapes-caption-webgpu-fp16/', { executionProvider: 'webgpu' });
      return { auto: [auto.executionProvider, auto.executionProviderReason], hasF16, error: null };
    } catch (e) {
      return { auto: [auto.executionProvider, auto.executionProviderReason], hasF16, error: e.message };
    }
  });
  assert.deepEqual(fp16, {
    auto: ['wasm', 'the WebGPU adapter lacks shader-f16, which the FP16 graphs need'],
    hasF16: false,
    error: 'WebGPU was asked for, but the WebGPU adapter lacks shader-f16, which the FP16 graphs need',
  });
  for (const [head, [ep, why]] of Object.entries(await providers(page))) {
    assert.deepEqual([ep, why], ['wasm', 'this browser offers no WebGPU adapter'], head);
  }
  for (const [head, [ep, why]] of Object.entries(await providers(webPage))) {
    assert.deepEqual([ep, why], ['wasm', "the package is not made for webgpu (its manifest's runtimes)"], head);
  }
  assert.match(await gpuPage.textContent('#runtime'), /caption on webgpu, retrieval on webgpu, vqa on webgpu$/);
  // Asked for explicitly, WebGPU that cannot be had is an error, not a silent fallback; wasm can be asked for.
  const asked = await page.evaluate(async () => {
    const { Blip } = await import('./blip/index.js');
    const forced = await Blip.load('packages/shapes-caption/', { executionProvider: 'wasm' });
    try {
      await Blip.load('packages/shapes-caption/', { executionProvider: 'webgpu' });
      return { forced: forced.executionProvider, error: null };
    } catch (e) {
      return { forced: forced.executionProvider, error: e.message };
    }
  });
  assert.deepEqual(asked, { forced: 'wasm', error: 'WebGPU was asked for, but this browser offers no WebGPU adapter' });
  // The page loads onnxruntime-web's WebGPU build only where it has a WebGPU package and an adapter;
  // else the wasm-only build (faster wasm kernels). The web INT8 site carries no WebGPU build.
  const ortFiles = (requests) => [...new Set(requests.filter((u) => u.includes('/blip/dist/ort/')).map((u) => u.split('/').pop()))].sort();
  assert.deepEqual(ortFiles(gpuRequests), ['ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm', 'ort.webgpu.min.mjs']);
  assert.deepEqual(ortFiles(firstRequests), ['ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm', 'ort.wasm.min.mjs']);
  assert.deepEqual(ortFiles(webRequests), ['ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm', 'ort.wasm.min.mjs']);
  assert.ok(existsSync(join(SITE, 'blip/dist/ort/ort.webgpu.min.mjs')) && !existsSync(join(WEB_SITE, 'blip/dist/ort/ort.webgpu.min.mjs')));
  // A WebGPU package on a page with the wasm-only build, in a browser with an adapter: auto falls
  // back to wasm and says why; webgpu asked for is an error naming the graph.
  const wasmOnly = await gpuWebPage.evaluate(async () => {
    const { Blip } = await import('./blip/index.js');
    const auto = await Blip.load('extra/shapes-caption/');
    const images = [new Uint8Array(await (await fetch('gallery/test_00000.png')).arrayBuffer())];
    const [c] = await auto.caption(images, { beams: 1 });
    let error = null;
    try {
      await Blip.load('extra/shapes-caption/', { executionProvider: 'webgpu' });
    } catch (e) {
      error = e.message;
    }
    return { ep: auto.executionProvider, why: auto.executionProviderReason, tokens: c.tokens, error };
  });
  assert.equal(wasmOnly.ep, 'wasm');
  assert.match(wasmOnly.why, /^WebGPU failed, so wasm: loading graph \w+ \(.*\) on webgpu: .*backend/);
  assert.match(wasmOnly.error ?? '', /^loading graph \w+ \(.*\) on webgpu: .*backend/);
  const want = native(['caption', '-p', pkg('shapes-caption'), '--beams', '1', join(GALLERY, 'test_00000.png')]);
  assert.deepEqual(wasmOnly.tokens, want[0].tokens);
});

test('the web INT8 site serves the web flavour: QUInt8 on every graph, made for onnxruntime-web (and ORT mobile)', () => {
  const packages = readdirSync(join(WEB_SITE, 'packages'));
  assert.equal(packages.length, 3);
  for (const p of packages) {
    const m = JSON.parse(readFileSync(join(WEB_SITE, 'packages', p, 'blip.json'), 'utf8'));
    assert.deepEqual(m.runtimes, ['web', 'ort-mobile'], p);
    for (const [role, g] of Object.entries(m.graphs)) {
      assert.equal(g.precision, 'int8', `${p} ${role}`);
      assert.match(g.quantization, /QUInt8/, `${p} ${role}`);
    }
  }
});

// One option table for every door (the CLI, the server and Python read it too): each bad row is
// refused naming its option as JS spells it (topP), each good row gives the CLI's tokens.
test('the shared caption option table through the browser module', async () => {
  const table = JSON.parse(readFileSync(new URL('../../fixtures/requests/caption-options.json', import.meta.url), 'utf8'));
  const camel = (k) => k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  const js = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [camel(k), v]));
  const file = galleryFiles[0];
  const caption = (options) => page.evaluate(async ({ file, options }) => {
    const m = window.blipDemo.state.models.caption;
    const image = new Uint8Array(await (await fetch(`gallery/${file}`)).arrayBuffer());
    try {
      return { ok: await m.caption([image], options) };
    } catch (e) {
      return { error: String(e?.message ?? e) };
    }
  }, { file, options });
  for (const row of table.bad) {
    const got = await caption(js(row.options));
    assert.ok(got.error, `${JSON.stringify(row.options)} was taken`);
    assert.ok(got.error.includes(`${camel(row.field)}: `), `${JSON.stringify(row.options)}: ${got.error}`);
  }
  for (const options of table.good) {
    const flags = Object.entries(options).map(([k, v]) => (v === true ? `--${k.replaceAll('_', '-')}` : `--${k.replaceAll('_', '-')}=${v}`));
    const [want] = native(['caption', '-p', pkg('shapes-caption'), ...flags, join(GALLERY, file)]);
    const got = await caption(js(options));
    assert.ok(got.ok, `${JSON.stringify(options)}: ${got.error}`);
    assert.deepEqual(got.ok[0].tokens, want.tokens, JSON.stringify(options));
    assert.equal(got.ok[0].caption, want.caption);
  }
});

// `{"$list": [item, n]}` and `{"$string": [unit, n]}` of task-options.json written out.
const expand = (v) => {
  if (Array.isArray(v)) return v.map(expand);
  if (v && typeof v === 'object') {
    if ('$list' in v) return Array.from({ length: v.$list[1] }, () => expand(v.$list[0]));
    if ('$string' in v) return v.$string[0].repeat(v.$string[1]);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, expand(x)]));
  }
  return v;
};

test('the shared task table (VQA, ITM texts, search) through the browser module', async () => {
  const table = expand(JSON.parse(readFileSync(new URL('../../fixtures/requests/task-options.json', import.meta.url), 'utf8')));
  const camel = (k) => k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  const file = galleryFiles[1];
  // One call of the module as a table request asks it: answer / rankAnswers, itm, rankImages.
  const call = (task, request) => page.evaluate(async ({ task, request, file }) => {
    const { models, gallery, embeddings } = window.blipDemo.state;
    const image = new Uint8Array(await (await fetch(`gallery/${file}`)).arrayBuffer());
    try {
      if (task === 'vqa' && request.answers) return { ok: await models.vqa.rankAnswers(image, request.questions, request.answers, request.k === undefined ? {} : { k: request.k }) };
      if (task === 'vqa') return { ok: await models.vqa.answer(image, request.questions, { maskQuestionPadding: Boolean(request.mask_question_padding) }) };
      if (task === 'itm') return { ok: await models.retrieval.itm(image, request.texts) };
      const { text, ...options } = request;
      return { ok: await models.retrieval.rankImages(text, gallery.map((g) => g.bytes), { ...options, embeddings }) };
    } catch (e) {
      return { error: String(e?.message ?? e) };
    }
  }, { task, request, file });
  for (const task of ['vqa', 'itm', 'search']) {
    for (const row of table[task].bad) {
      const got = await call(task, row.request);
      const label = `${task} ${JSON.stringify(row.request).slice(0, 80)}`;
      assert.ok(got.error, `${label} was taken`);
      assert.ok(got.error.startsWith(`${camel(row.field)}: `), `${label}: ${got.error}`);
    }
  }
  const tmp = mkdtempSync(join(tmpdir(), 'blip-tasks-'));
  dirs.push(tmp);
  const close = (a, b) => Math.abs(a - b) < 1e-4 * Math.max(1, Math.abs(b));
  for (const request of table.vqa.good) {
    const flags = [];
    if (request.answers) {
      writeFileSync(join(tmp, 'answers.txt'), request.answers.join('\n') + '\n');
      flags.push('--answers', join(tmp, 'answers.txt'));
    }
    if (request.k !== undefined) flags.push('-k', String(request.k));
    if (request.mask_question_padding) flags.push('--mask-question-padding');
    const want = native(['vqa', '-p', pkg('shapes-vqa'), join(GALLERY, file), ...request.questions, ...flags]);
    const got = await call('vqa', request);
    const label = JSON.stringify(request);
    assert.ok(got.ok, `${label}: ${got.error}`);
    assert.equal(got.ok.length, want.length, label);
    for (const [i, w] of want.entries()) {
      assert.equal(got.ok[i].answer, w.answer, label);
      if (request.answers) {
        assert.deepEqual(got.ok[i].candidates.map((c) => c.answer), w.candidates.map((c) => c.answer), label);
        for (const [j, c] of w.candidates.entries()) assert.ok(close(got.ok[i].candidates[j].score, c.score), `${label} ${c.answer}: ${got.ok[i].candidates[j].score} vs ${c.score}`);
      } else {
        assert.deepEqual(got.ok[i].tokens, w.tokens, label);
      }
    }
  }
  const index = join(tmp, 'index.json');
  native(['index', '-p', pkg('shapes-retrieval'), GALLERY, '-o', index]);
  for (const request of table.search.good) {
    const flags = [...(request.k !== undefined ? ['-k', String(request.k)] : []), ...(request.rerank !== undefined ? ['--rerank', String(request.rerank)] : [])];
    const want = native(['search', '-p', pkg('shapes-retrieval'), index, request.text, ...flags]);
    const got = await call('search', request);
    const label = JSON.stringify(request);
    assert.ok(got.ok, `${label}: ${got.error}`);
    assert.deepEqual(got.ok.map((h) => galleryFiles[h.index]), want.map((h) => basename(h.image)), label);
    for (const [i, w] of want.entries()) assert.ok(close(got.ok[i].score, w.score), `${label} #${i + 1}: ${got.ok[i].score} vs ${w.score}`);
  }
});

test('VQA rank mode and ITM equal the native CLI\'s', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'blip-answers-'));
  dirs.push(tmp);
  // Answers of one to four tokens: the decoder scores them as rows of different lengths in one
  // batch (padded, masked), and every score is compared (k = all of them).
  const answers = ['one', 'two', 'three', 'triangle', 'circle', 'square', 'red', 'purple', 'yes', 'no', 'a red circle', 'two purple squares'];
  const list = join(tmp, 'answers.txt');
  writeFileSync(list, answers.join('\n') + '\n');
  const file = galleryFiles[1];
  const qs = ['how many shapes are there?', 'what color is the circle?'];
  const k = answers.length;
  const want = native(['vqa', '-p', pkg('shapes-vqa'), join(GALLERY, file), ...qs, '--answers', list, '-k', String(k)]);
  const texts = ['a red circle', 'a purple triangle'];
  const wantItm = native(['itm', '-p', pkg('shapes-retrieval'), join(GALLERY, file), ...texts]);
  const got = await page.evaluate(async ({ file, qs, answers, texts, k }) => {
    const { models } = window.blipDemo.state;
    const image = new Uint8Array(await (await fetch(`gallery/${file}`)).arrayBuffer());
    return { ranked: await models.vqa.rankAnswers(image, qs, answers, { k }), itm: await models.retrieval.itm(image, texts) };
  }, { file, qs, answers, texts, k });
  for (const [i, w] of want.entries()) {
    assert.equal(w.candidates.length, k, qs[i]);
    assert.equal(got.ranked[i].answer, w.answer, qs[i]);
    assert.deepEqual(got.ranked[i].candidates.map((c) => c.answer), w.candidates.map((c) => c.answer), qs[i]);
    for (const [j, c] of w.candidates.entries()) assert.ok(Math.abs(got.ranked[i].candidates[j].score - c.score) < 1e-3, `${qs[i]} ${c.answer}`);
  }
  for (const [i, w] of wantItm.entries()) {
    assert.ok(Math.abs(got.itm[i].matchProbability - w.match_probability) < 1e-4, texts[i]);
    assert.ok(Math.abs(got.itm[i].itcSimilarity - w.itc_similarity) < 1e-4, texts[i]);
  }
});

test('the page\'s own controls caption, answer and search as the native CLI does (screenshot)', async () => {
  // Presses a button and waits until its run has finished (the page disables it meanwhile); a
  // failed run shows its error, which fails here.
  const press = async (button) => {
    await page.click(button);
    await page.waitForFunction((b) => !document.querySelector(b).disabled, button);
    assert.equal(await page.isHidden('#error'), true, `${button}: ${await page.textContent('#error')}`);
  };
  const picked = await page.textContent('#picked-name');
  assert.ok(galleryFiles.includes(picked), picked);
  const image = join(GALLERY, picked);
  const want = native(['caption', '-p', pkg('shapes-caption'), image]);
  await press('#caption-run');
  assert.equal(await page.textContent('#caption-out'), want[0].caption);

  const question = 'what shape is the purple object?';
  const [wantAnswer] = native(['vqa', '-p', pkg('shapes-vqa'), image, question]);
  await page.fill('#question', question);
  await press('#vqa-run');
  assert.equal(await page.textContent('#vqa-out'), wantAnswer.answer);

  // The page shows its top five over the gallery it indexed itself; blip-onnx ranks the same files.
  const tmp = mkdtempSync(join(tmpdir(), 'blip-index-'));
  dirs.push(tmp);
  const index = join(tmp, 'index.json');
  const query = 'two blue squares';
  native(['index', '-p', pkg('shapes-retrieval'), GALLERY, '-o', index]);
  const wantHits = native(['search', '-p', pkg('shapes-retrieval'), index, query, '-k', '5']);
  await page.fill('#query', query);
  await press('#search-run');
  const hits = await page.$$eval('#search-out li', (lis) => lis.map((li) =>
    ({ image: li.dataset.image, score: Number(li.dataset.score), text: li.textContent })));
  assert.deepEqual(hits.map((h) => h.image), wantHits.map((h) => basename(h.image)), query);
  for (const [i, w] of wantHits.entries()) {
    assert.ok(Math.abs(hits[i].score - w.score) <= 1e-4, `${query} #${i + 1}: ${hits[i].score} vs ${w.score}`);
    assert.equal(hits[i].text, `${hits[i].image} ${hits[i].score.toFixed(3)}`);
  }
  if (SCREENSHOT) {
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  }
});

test('a reload is served from Cache Storage: no graph is downloaded again', async () => {
  const again = await open(context, site);
  assert.equal(await again.page.getAttribute('#status', 'data-state'), 'ready');
  assert.deepEqual(again.requests.filter((u) => u.endsWith('.onnx') || u.endsWith('tokenizer.json')), []);
  await again.page.close();
});

test('a corrupt graph on the server is a clear error on the page', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'blip-corrupt-'));
  dirs.push(tmp);
  const bad = join(tmp, 'site');
  cpSync(SITE, bad, { recursive: true });
  const decoder = join(bad, 'packages', 'shapes-caption', 'decoder.onnx');
  const bytes = readFileSync(decoder);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(decoder, bytes);
  const url = await serve(bad);
  const fresh = await browser();
  try {
    const { page: p } = await open(fresh, url);
    assert.equal(await p.getAttribute('#status', 'data-state'), 'error');
    const error = await p.textContent('#error');
    assert.match(error, /graph decoder .*decoder\.onnx.* is corrupt: its sha256 is [0-9a-f]{64}, the manifest says [0-9a-f]{64}/);
  } finally {
    await fresh.close();
  }
});
