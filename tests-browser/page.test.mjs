// The demo page in headless Chromium, driven like a user (file picker, buttons, Enter key).
// Expected answers come from the CLI (scripts/page-test.sh sets them in the environment).
import { createRequire } from 'node:module';
import assert from 'node:assert/strict';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');
const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

const context = await chromium.launchPersistentContext(env('PROFILE'), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
  viewport: { width: 1280, height: 900 },
});
const failures = [];
try {
  const page = await context.newPage();
  // Offline: any request that leaves the server is a failure.
  page.on('request', (r) => {
    if (!r.url().startsWith(env('BASE')) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) {
      failures.push('external request: ' + r.url());
    }
  });
  await page.goto(env('BASE') + '/');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Serving'));

  await page.setInputFiles('#file', env('IMAGE'));
  await page.click('#caption-button');
  await page.waitForFunction(() => document.getElementById('caption').textContent.length > 0);
  assert.equal(await page.textContent('#caption'), env('EXPECT_CAPTION'));
  assert.match(await page.textContent('#caption-latency'), /200 in \d+ ms/);

  await page.fill('#question', env('QUESTION'));
  await page.click('#vqa-button');
  await page.waitForFunction(() => document.getElementById('answer').textContent.length > 0);
  assert.equal(await page.textContent('#answer'), env('EXPECT_ANSWER'));

  // Search by keyboard: type, Enter.
  await page.focus('#query');
  await page.keyboard.type(env('QUERY'));
  await page.keyboard.press('Enter');
  await page.waitForSelector('#hits li');
  const first = await page.textContent('#hits li:first-child .hit');
  assert.ok(first.includes('test_00001.png'), `first hit: ${first}`);
  assert.ok(env('EXPECT_FIRST').endsWith('test_00001.png'));
  assert.match(first, /ITC -?\d\.\d{3}, ITM -?\d+\.\d{3}/);
  await page.waitForFunction(() => [...document.querySelectorAll('#hits img')].every((i) => i.complete && i.naturalWidth > 0));

  // An error is shown in words.
  await page.fill('#question', '');
  await page.click('#vqa-button');
  assert.equal(await page.textContent('#error'), 'Type a question first.');
  await page.fill('#question', env('QUESTION'));
  await page.click('#vqa-button');
  await page.waitForFunction(() => document.getElementById('error').textContent === '');

  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });

  // The API document in Swagger UI, from the binary alone.
  await page.goto(env('BASE') + '/docs/');
  await page.waitForSelector('.opblock');
  assert.ok((await page.locator('.opblock').count()) >= 12);
  assert.deepEqual(failures, []);
  console.log('page test: caption, answer and search equal the CLI; /docs renders offline; screenshot at ' + env('SCREENSHOT'));
} finally {
  await context.close();
}
