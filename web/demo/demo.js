// The demo page: every package the site lists is loaded in the browser (blip-onnx over
// onnxruntime-web); caption, VQA and search run here, nothing runs on the server.
// `window.blipDemo` exposes the loaded models (the tests drive the same objects).
import { Blip, init } from './blip/index.js';

const $ = (id) => document.getElementById(id);
const state = { models: {}, gallery: [], picked: null, embeddings: null };

function fail(e) {
  const message = e instanceof Error ? e.message : String(e);
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'Failed';
  $('status').dataset.state = 'error';
  throw e;
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function pick(name, bytes, url) {
  state.picked = { name, bytes };
  $('picked-img').src = url;
  $('picked-name').textContent = name;
  for (const img of $('gallery').children) img.classList.toggle('picked', img.dataset.name === name);
}

async function run(button, output, f) {
  button.disabled = true;
  output.textContent = '…';
  try {
    await f();
  } catch (e) {
    output.textContent = '';
    fail(e);
  } finally {
    button.disabled = false;
  }
}

function captionOptions() {
  const num = (id) => Number($(id).value);
  return {
    prompt: $('prompt').value, beams: num('beams'), sample: $('sample').checked,
    temperature: num('temperature'), topK: num('top-k'), topP: num('top-p'), seed: num('seed'),
    maxLength: num('max-length'), minLength: num('min-length'), repetitionPenalty: num('repetition-penalty'),
  };
}

async function main() {
  const site = await (await fetch('site.json')).json();
  const runtime = await init();
  const threads = `${runtime.numThreads} thread(s)` +
    (runtime.crossOriginIsolated ? ' (cross-origin isolated)' : ' (not cross-origin isolated: one thread)');
  $('runtime').textContent = `onnxruntime-web, ${threads}`;
  state.gallery = await Promise.all(site.gallery.map(async (url) => ({ url, name: url.split('/').pop(), bytes: await fetchBytes(url) })));
  for (const g of state.gallery) {
    const img = document.createElement('img');
    img.src = g.url;
    img.alt = img.dataset.name = g.name;
    img.onclick = () => pick(g.name, g.bytes, g.url);
    $('gallery').append(img);
  }
  if (state.gallery.length) pick(state.gallery[0].name, state.gallery[0].bytes, state.gallery[0].url);
  $('file').onchange = async () => {
    const f = $('file').files[0];
    if (f) pick(f.name, new Uint8Array(await f.arrayBuffer()), URL.createObjectURL(f));
  };
  const total = new Map();
  const loaded = new Map();
  for (const p of site.packages) {
    $('status').textContent = `Loading ${p.name}…`;
    state.models[p.head] = await Blip.load(p.url, {
      onProgress: ({ file, loaded: l, total: t }) => {
        loaded.set(p.name + file, l);
        total.set(p.name + file, Math.max(t, l));
        const sum = (m) => [...m.values()].reduce((a, b) => a + b, 0);
        $('progress').value = sum(loaded) / Math.max(1, sum(total));
      },
    });
  }
  // Which execution provider runs each package, and why (hover).
  const models = Object.entries(state.models);
  $('runtime').textContent = `onnxruntime-web, ${threads}; ` + models.map(([head, m]) => `${head} on ${m.executionProvider}`).join(', ');
  $('runtime').title = models.map(([head, m]) => `${head}: ${m.executionProviderReason}`).join('\n');
  const { caption, vqa, retrieval } = state.models;
  if (caption) {
    $('caption-section').hidden = false;
    $('caption-run').onclick = () => run($('caption-run'), $('caption-out'), async () => {
      const [r] = await caption.caption(state.picked.bytes, captionOptions());
      if (r.error) throw new Error(r.error);
      $('caption-out').textContent = r.caption;
    });
  }
  if (vqa) {
    $('vqa-section').hidden = false;
    $('vqa-run').onclick = () => run($('vqa-run'), $('vqa-out'), async () => {
      const [a] = await vqa.answer(state.picked.bytes, $('question').value);
      $('vqa-out').textContent = a.answer;
    });
  }
  if (retrieval && state.gallery.length) {
    $('search-section').hidden = false;
    $('status').textContent = 'Embedding the gallery…';
    // The page indexes its gallery itself, in the browser.
    state.embeddings = await retrieval.embedImages(state.gallery.map((g) => g.bytes));
    $('search-run').onclick = () => run($('search-run'), $('search-out'), async () => {
      const hits = await retrieval.rankImages($('query').value, state.gallery.map((g) => g.bytes), { embeddings: state.embeddings });
      $('search-out').replaceChildren(...hits.slice(0, 5).map((h) => {
        const li = document.createElement('li');
        // The unrounded hit, for the tests (the text shows three decimals).
        li.dataset.image = state.gallery[h.index].name;
        li.dataset.score = String(h.score);
        const img = document.createElement('img');
        img.src = state.gallery[h.index].url;
        li.append(img, document.createElement('br'), `${state.gallery[h.index].name} ${h.score.toFixed(3)}`);
        return li;
      }));
    });
  }
  $('progress').value = 1;
  $('status').textContent = `Ready: ${site.packages.map((p) => p.name).join(', ')}`;
  $('status').dataset.state = 'ready';
}

window.blipDemo = { state, ready: main().catch(fail) };
