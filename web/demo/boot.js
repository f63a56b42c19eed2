// Picks onnxruntime-web's build before any module loads (an import map cannot change later): the
// WebGPU build when the site carries it (a package is made for WebGPU) and the browser offers an
// adapter; else the wasm-only build, whose wasm kernels are faster.
(async () => {
  let webgpu = false;
  try {
    const site = await (await fetch('site.json')).json();
    webgpu = Boolean(site.webgpu && globalThis.navigator?.gpu && (await navigator.gpu.requestAdapter()));
  } catch {
    // demo.js reports a missing site.json in words; the wasm build is the safe default.
  }
  const map = document.createElement('script');
  map.type = 'importmap';
  const build = webgpu ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
  map.textContent = JSON.stringify({ imports: { 'onnxruntime-web': `./blip/dist/ort/${build}` } });
  document.head.append(map);
  const main = document.createElement('script');
  main.type = 'module';
  main.src = 'demo.js';
  document.head.append(main);
})();
