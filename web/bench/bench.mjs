// Browser benchmark (not a test; scripts/bench-web.sh runs it): for each caption package of an
// exported site, in headless Chromium (cold cache: a fresh profile per run) the time to first
// caption and the per-caption latency at 1 and 2 wasm threads, against the native CLI on the same
// package in the same run (`blip-onnx caption` wall time to first caption, `blip-onnx
// bench-runtime`'s per-caption median), with each package's download size. The work is fixed:
// beam 3, no prompt, exactly 20 new tokens. Writes OUT.json, OUT.md and the README's table.
// --sizes DIR,DIR,... adds the download size of other package flavours (not run in the browser).
//   node web/bench/bench.mjs --cli BIN --site SITE --image FILE [--threads 1,2] [--reps 5]
//        [--sizes DIRS] -o OUT [--readme README.md]
//   node web/bench/bench.mjs --render -o OUT [--readme README.md]   (OUT.md again from OUT.json)
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  (a === '--render' ? [...pairs, ['render', true]] : a.startsWith('-') ? [...pairs, [a.replace(/^-+/, ''), all[i + 1]]] : pairs), []));
const need = (k) => { if (!args[k]) throw new Error(`--${k} is required`); return args[k]; };
const CLI = args.cli;
const SITE = args.site;
const IMAGE = args.image;
const OUT = need('o');
const THREADS = (args.threads ?? '1,2').split(',').map(Number);
const REPS = Number(args.reps ?? 5);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const FIXED = ['--prompt', '', '--beams', '3', '--max-length', '21', '--min-length', '21'];
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const mb = (bytes) => bytes / 1e6;

function packageBytes(dir) {
  return readdirSync(dir).reduce((sum, f) => sum + statSync(join(dir, f)).size, 0);
}

function serve(dir) {
  const child = spawn(CLI, ['serve-static', dir, '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) resolve({ url: m[1], child });
    });
    child.on('exit', (code) => reject(new Error(`serve-static exited with ${code}: ${out}`)));
  });
}

// The native CLI: wall time of one `caption` process (load + first caption) and bench-runtime's median.
function native(pkg, threads) {
  const t = process.hrtime.bigint();
  const run = spawnSync(CLI, ['caption', '-p', pkg, IMAGE, ...FIXED, '--threads', String(threads), '--format', 'json', '--quiet'], { encoding: 'utf8' });
  const firstMs = Number(process.hrtime.bigint() - t) / 1e6;
  if (run.status !== 0) throw new Error(`blip-onnx caption: ${run.stderr}`);
  const [caption] = JSON.parse(run.stdout);
  const bench = spawnSync(CLI, ['bench-runtime', pkg, '--image', IMAGE, '--reps', String(REPS * 2), '--threads', String(threads)], { encoding: 'utf8' });
  if (bench.status !== 0) throw new Error(`blip-onnx bench-runtime: ${bench.stderr}`);
  const rows = JSON.parse(bench.stdout);
  const row = (Array.isArray(rows) ? rows : rows.rows).find((r) => r.case === 'caption beam 3, 20 tokens');
  return { firstMs, captionMs: row.median_ms, tokens: caption.tokens };
}

async function browser(site, pkgName, threads) {
  const profile = mkdtempSync(join(tmpdir(), 'blip-bench-chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: ARGS });
  try {
    const page = await context.newPage();
    const url = `${site}bench.html?pkg=packages/${pkgName}/&image=bench-image/${basename(IMAGE)}&threads=${threads}&reps=${REPS}`;
    await page.goto(url);
    const r = await page.evaluate(() => window.benchResult);
    if (r.error) throw new Error(`${pkgName}, ${threads} thread(s): ${r.error}`);
    if (!r.isolated && threads > 1) throw new Error('the page is not cross-origin isolated: no threads');
    return { firstMs: r.firstCaptionMs, captionMs: median(r.times), times: r.times, tokens: r.tokens, downloaded: r.downloaded };
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

const here = dirname(fileURLToPath(import.meta.url));

// The CPU model and whether it has VNNI: native INT8 speed depends on it.
function machine() {
  const info = readFileSync('/proc/cpuinfo', 'utf8');
  const model = info.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? process.arch;
  const flags = new Set((info.match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(' '));
  const vnni = flags.has('avx512_vnni') || flags.has('avx_vnni') ? 'VNNI' : 'no VNNI';
  return `${model}, ${availableParallelism()} CPUs, ${vnni}`;
}

async function measure() {
  for (const k of ['cli', 'site', 'image']) need(k);
  copyFileSync(join(here, 'bench.html'), join(SITE, 'bench.html'));
  const imageDir = join(SITE, 'bench-image');
  rmSync(imageDir, { recursive: true, force: true });
  spawnSync('mkdir', ['-p', imageDir]);
  copyFileSync(IMAGE, join(imageDir, basename(IMAGE)));
  const { url: site, child: server } = await serve(SITE);
  const rows = [];
  try {
    for (const name of readdirSync(join(SITE, 'packages')).sort()) {
      const dir = join(SITE, 'packages', name);
      const manifest = JSON.parse(readFileSync(join(dir, 'blip.json'), 'utf8'));
      if (manifest.head !== 'caption') continue;
      for (const threads of THREADS) {
        const n = native(dir, threads);
        const b = await browser(site, name, threads);
        const row = {
          package: name, precision: manifest.precision, runtimes: manifest.runtimes ?? [], threads,
          download_mb: mb(packageBytes(dir)), downloaded_mb: mb(b.downloaded),
          native_first_ms: n.firstMs, browser_first_ms: b.firstMs,
          native_caption_ms: n.captionMs, browser_caption_ms: b.captionMs, browser_caption_samples_ms: b.times,
          ratio: b.captionMs / n.captionMs, tokens_equal: JSON.stringify(b.tokens) === JSON.stringify(n.tokens),
        };
        console.error(`${name} ${threads}t: native ${n.captionMs.toFixed(1)} ms, browser ${b.captionMs.toFixed(1)} ms (${row.ratio.toFixed(2)}x), first ${b.firstMs.toFixed(0)} ms, tokens equal ${row.tokens_equal}`);
        rows.push(row);
      }
    }
  } finally {
    server.kill();
  }

  const runtime = ['ort-wasm-simd-threaded.wasm', 'ort-wasm-simd-threaded.mjs', 'ort.wasm.min.mjs']
    .reduce((s, f) => s + statSync(join(SITE, 'blip', 'dist', 'ort', f)).size, 0)
    + readdirSync(join(SITE, 'blip', 'dist', 'pkg')).reduce((s, f) => s + statSync(join(SITE, 'blip', 'dist', 'pkg', f)).size, 0);
  const sizes = (args.sizes ? args.sizes.split(',') : []).map((dir) => {
    const m = JSON.parse(readFileSync(join(dir, 'blip.json'), 'utf8'));
    return { package: basename(dir), precision: m.precision, runtimes: m.runtimes ?? [], download_mb: mb(packageBytes(dir)) };
  });
  const ort = JSON.parse(readFileSync(join(here, '..', 'node_modules', 'onnxruntime-web', 'package.json'), 'utf8')).version;
  return { command: `scripts/bench-web.sh ${REPS}`, reps: REPS, machine: machine(), onnxruntime_web: ort, runtime_mb: mb(runtime), rows, sizes };
}

function markdown(r) {
  const f = (x, d = 0) => x.toFixed(d);
  let md = '| package | precision | download MB | threads | first caption: browser / native ms | caption beam 3, 20 tokens: browser / native ms | browser ÷ native | tokens equal |\n|---|---|---|---|---|---|---|---|\n';
  for (const row of r.rows) {
    md += `| ${row.package} | ${row.precision} | ${f(row.download_mb, 1)} | ${row.threads} | ${f(row.browser_first_ms)} / ${f(row.native_first_ms)} | ${f(row.browser_caption_ms, 1)} / ${f(row.native_caption_ms, 1)} | **${f(row.ratio, 2)}×** | ${row.tokens_equal ? 'yes' : 'no'} |\n`;
  }
  md += `\nHeadless Chromium (Debian) on onnxruntime-web ${r.onnxruntime_web ?? '1.30.0'} (wasm, SIMD; threads on the cross-origin-isolated page) against the native CLI (ONNX Runtime, the same thread count) on the same package${r.machine ? ` (${r.machine})` : ''}, one run of \`${r.command}\`, ${r.reps} captions per cell after the first (median; native: \`bench-runtime\`'s median of ${r.reps} after a warm-up). First caption: from navigation start with a cold cache (every file downloaded from a loopback server, sessions created) / one \`blip-onnx caption\` process. The page also downloads ${f(r.runtime_mb, 1)} MB of wasm and JS (onnxruntime-web + blip-onnx), cached by the browser like any static file. Tokens equal: the browser's caption against the native CLI's on the same package. The INT8 kernels of the two runtimes round differently (docs/runtimes.md); on the trained shapes models the tokens still agree (the Chromium tests assert it), and on random base weights, whose next-token scores are near ties, they do not.\n`;
  const base = r.rows.filter((row) => row.package.startsWith('base-') && row.runtimes.includes('web'));
  if (base.length) {
    md += `\nBase web INT8 (${base[0].package}): ${base.map((row) => `${f(row.ratio, 2)}× native at ${row.threads} thread(s)`).join(', ')} (target ≤ 3×); download ${f(base[0].download_mb, 1)} MB (target ≤ 270 MB; candle's smallest BLIP download, a captioner only, is 271 MB).\n`;
  }
  if (r.sizes?.length) {
    md += '\n| other flavours | precision | made for | download MB |\n|---|---|---|---|\n';
    for (const s of r.sizes) md += `| ${s.package} | ${s.precision} | ${s.runtimes.join(', ') || 'ort'} | ${f(s.download_mb, 1)} |\n`;
  }
  return md;
}

const report = args.render ? JSON.parse(readFileSync(`${OUT}.json`, 'utf8')) : await measure();
const md = markdown(report);
const tmp = (p) => `${p}.tmp`;
if (!args.render) {
  writeFileSync(tmp(`${OUT}.json`), JSON.stringify(report, null, 2) + '\n');
  renameSync(tmp(`${OUT}.json`), `${OUT}.json`);
}
writeFileSync(tmp(`${OUT}.md`), `# Browser benchmark\n\n${md}`);
renameSync(tmp(`${OUT}.md`), `${OUT}.md`);
if (args.readme) {
  const name = basename(OUT);
  const body = readFileSync(args.readme, 'utf8');
  const [start, end] = [`<!-- bench:${name} -->`, `<!-- /bench:${name} -->`];
  if (!body.includes(start) || !body.includes(end)) throw new Error(`${args.readme} has no ${start} block`);
  const [head, rest] = body.split(start);
  writeFileSync(tmp(args.readme), `${head}${start}\n${md}${end}${rest.split(end)[1]}`);
  renameSync(tmp(args.readme), args.readme);
}
console.error(`wrote ${OUT}.json, ${OUT}.md`);
