// The demo page: search the index, caption an image, ask about it, add it to the index.
// Everything goes through the public API (/v1/*); no external assets.
'use strict';
const $ = (id) => document.getElementById(id);
let picked = null; // { file: File, name: string }
let heads = new Set();

function headers() {
  const key = $('apikey').value.trim();
  return key ? { Authorization: 'Bearer ' + key } : {};
}

function showError(message) {
  $('error').textContent = message || '';
}

// Calls the API; returns the JSON body, or throws an Error with the server's words.
async function call(method, path, body, latencyId) {
  const start = performance.now();
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new Error('The server cannot be reached (' + e.message + ').');
  }
  const ms = performance.now() - start;
  if (latencyId) $(latencyId).textContent = `${method} ${path}: ${res.status} in ${ms.toFixed(0)} ms`;
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const why = json && json.error ? json.error : text || res.statusText;
    throw new Error(`${res.status}: ${why}`);
  }
  return json;
}

async function imageUrl(path) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw new Error(`image ${path}: ${res.status}`);
  return URL.createObjectURL(await res.blob());
}

async function loadInfo() {
  try {
    const info = await call('GET', '/info');
    heads = new Set(info.packages.map((p) => p.head));
    const idx = info.index ? `, index of ${info.index.images} images` : ', no index';
    $('status').textContent = 'Serving ' + info.packages.map((p) => `${p.head} (${p.precision})`).join(', ') + idx;
    $('caption-button').disabled = !heads.has('caption');
    $('vqa-button').disabled = !heads.has('vqa');
    $('add-button').disabled = !(heads.has('retrieval') && info.index);
    for (const el of $('search-form').elements) el.disabled = !(heads.has('retrieval') && info.index);
  } catch (e) {
    $('status').textContent = 'Not connected: ' + e.message;
  }
}

async function search(ev) {
  ev.preventDefault();
  showError('');
  const list = $('hits');
  try {
    const body = await call('POST', '/v1/search',
      { text: $('query').value, k: 8, rerank: Number($('rerank').value) }, 'search-latency');
    list.replaceChildren();
    if (!body.hits.length) list.textContent = 'The index is empty.';
    for (const h of body.hits) {
      const li = document.createElement('li');
      const img = document.createElement('img');
      img.alt = h.id;
      imageUrl(h.image_url).then((u) => { img.src = u; }).catch((e) => showError(e.message));
      const itm = h.itm === null ? 'not reranked' : `ITM ${h.itm.toFixed(3)}`;
      const cap = document.createElement('div');
      cap.className = 'hit';
      // Ids of folder-indexed images are paths: show the file name, the full id on hover.
      cap.title = h.id;
      cap.textContent = `${h.rank}. ${h.id.split('/').pop()} — ITC ${h.itc.toFixed(3)}, ${itm}`;
      li.append(img, cap);
      list.append(li);
    }
  } catch (e) {
    showError('Search failed: ' + e.message);
  }
}

function pick(file) {
  if (!file) return;
  if (!file.type.startsWith('image/')) {
    showError(`${file.name} is not an image.`);
    return;
  }
  showError('');
  picked = { file, name: file.name };
  const img = $('preview');
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  img.hidden = false;
  $('image-id').value = file.name;
  $('caption').textContent = '';
  $('answer').textContent = '';
}

function form(extra) {
  const f = new FormData();
  f.append(extra.imageField || 'images', picked.file, picked.name);
  for (const [k, v] of Object.entries(extra)) if (k !== 'imageField') f.append(k, String(v));
  return f;
}

async function caption(ev) {
  ev.preventDefault();
  showError('');
  if (!picked) return showError('Pick or drop an image first.');
  const mode = document.querySelector('input[name=mode]:checked').value;
  const opts = mode === 'greedy' ? { beams: 1 } : mode === 'sample' ? { sample: true, seed: Date.now() % 100000 } : {};
  try {
    const body = await call('POST', '/v1/caption', form(opts), 'caption-latency');
    const r = body.results[0];
    $('caption').textContent = r.caption !== undefined ? r.caption : 'Error: ' + r.error;
  } catch (e) {
    showError('Caption failed: ' + e.message);
  }
}

async function ask(ev) {
  ev.preventDefault();
  showError('');
  if (!picked) return showError('Pick or drop an image first.');
  const q = $('question').value.trim();
  if (!q) return showError('Type a question first.');
  try {
    const body = await call('POST', '/v1/vqa', form({ imageField: 'image', questions: q }), 'vqa-latency');
    $('answer').textContent = body.results[0].answer;
  } catch (e) {
    showError('Question failed: ' + e.message);
  }
}

async function add(ev) {
  ev.preventDefault();
  showError('');
  if (!picked) return showError('Pick or drop an image first.');
  try {
    const f = form({});
    const id = $('image-id').value.trim();
    if (id) f.append('id', id);
    const body = await call('POST', '/v1/index', f, 'add-latency');
    const r = body.results[0];
    $('added').textContent = r.added ? `Added ${r.id}; the index holds ${body.images} images.` : `Not added: ${r.error.error}`;
  } catch (e) {
    showError('Adding failed: ' + e.message);
  }
}

const drop = $('drop');
drop.addEventListener('click', () => $('file').click());
drop.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file').click(); }
});
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  pick(e.dataTransfer.files[0]);
});
$('file').addEventListener('change', (e) => pick(e.target.files[0]));
$('search-form').addEventListener('submit', search);
$('caption-form').addEventListener('submit', caption);
$('vqa-form').addEventListener('submit', ask);
$('add-form').addEventListener('submit', add);
loadInfo();
