/*
 * Opens crashwatch's landing page in a real headless Chromium (driven by the npm package
 * playwright-core) at a desktop and at a phone viewport, and prints one JSON object on stdout with
 * what the browser made of it: the rendered table, the page's geometry, every console message and
 * every request, and the screenshots it took, decoded again by the browser itself. The Rust test
 * (tests/integration/landing.rs) judges the report; this script only looks.
 *
 *     node landing_page.js PLAYWRIGHT_CORE_DIR CHROMIUM PAGE_URL API_URL OUT_DIR
 *
 * The daemon's units change while the test looks (the looping unit restarts every few seconds),
 * so each visit reads the status API just before and just after loading the page, and loads it
 * again until the two agree: the page then shows exactly that document, which is reported with
 * the visit.
 */
'use strict';

const path = require('path');

const [playwrightDir, chromiumPath, pageUrl, apiUrl, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: landing_page.js PLAYWRIGHT_CORE_DIR CHROMIUM PAGE_URL API_URL OUT_DIR');
  process.exit(2);
}
const { chromium } = require(playwrightDir);

const VIEWPORTS = [
  { name: 'desktop', viewport: { width: 1280, height: 800 }, isMobile: false, hasTouch: false },
  // An iPhone 12 to 15's CSS pixels; isMobile makes Chromium honour (or miss) the viewport meta.
  { name: 'phone', viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true },
];
const ATTEMPTS = 8;

/* The status API's document without its generation time, as a string to compare. */
async function apiDocument() {
  const response = await fetch(apiUrl);
  if (!response.ok) throw new Error(`GET ${apiUrl}: ${response.status}`);
  const document = await response.json();
  delete document.generated_at;
  return { document, text: JSON.stringify(document) };
}

/* What the page rendered, read in the page. */
function readPage() {
  const box = (element) => {
    if (!element) return null;
    const r = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    return {
      left: r.left, right: r.right, width: r.width, height: r.height,
      display: style.display, visibility: style.visibility,
    };
  };
  const text = (selector) => {
    const element = document.querySelector(selector);
    return element ? element.textContent : null;
  };
  return {
    title: document.title,
    h1: text('h1'),
    description: text('.description'),
    summary: text('.summary'),
    empty: text('.empty'),
    links: [...document.querySelectorAll('a')].map((a) => a.getAttribute('href')),
    headings: [...document.querySelectorAll('thead th')].map((th) => th.textContent),
    rows: [...document.querySelectorAll('tbody tr')].map((tr) => ({
      class: tr.className,
      cells: [...tr.cells].map((td) => td.textContent),
      background: getComputedStyle(tr.cells[0]).backgroundColor,
      box: box(tr),
    })),
    table: box(document.querySelector('table')),
    scripts: document.scripts.length,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  };
}

async function visit(browser, spec) {
  const context = await browser.newContext({
    viewport: spec.viewport,
    deviceScaleFactor: 1,
    isMobile: spec.isMobile,
    hasTouch: spec.hasTouch,
  });
  const page = await context.newPage();
  const consoleMessages = [];
  const pageErrors = [];
  const requests = [];
  page.on('console', (m) => consoleMessages.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // On the context, so a request from anything the page opens is seen too.
  context.on('request', (r) => requests.push(r.url()));

  let attempts = 0;
  let found = null;
  while (!found && attempts < ATTEMPTS) {
    attempts += 1;
    requests.length = 0;
    const before = await apiDocument();
    const response = await page.goto(pageUrl, { waitUntil: 'load' });
    const dom = await page.evaluate(readPage);
    const after = await apiDocument();
    if (before.text === after.text) {
      found = {
        status: response.status(),
        contentType: response.headers()['content-type'],
        dom,
        document: before.document,
      };
    }
  }
  if (!found) throw new Error(`the units changed during each of ${ATTEMPTS} loads of the page`);

  const screenshot = path.join(outDir, `landing-${spec.name}.png`);
  const tableScreenshot = path.join(outDir, `landing-${spec.name}-table.png`);
  await page.screenshot({ path: screenshot });
  // A table with nothing drawn (no rows, or hidden) is no picture: the report says so instead.
  const table = await page.$('table');
  const box = table && (await table.boundingBox());
  const drawn = box !== null && box.width > 0 && box.height > 0;
  if (drawn) await table.screenshot({ path: tableScreenshot, timeout: 10000 });
  await context.close();
  return {
    name: spec.name,
    viewport: spec.viewport,
    attempts,
    ...found,
    console: consoleMessages,
    pageErrors,
    requests: [...requests],
    screenshots: drawn ? [screenshot, tableScreenshot] : [screenshot],
  };
}

/* Decodes a PNG with the browser's own decoder: its size and how many colours it holds. */
async function decode(browser, file) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const base64 = require('fs').readFileSync(file).toString('base64');
  const image = await page.evaluate(async (data) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const pixels = new Uint32Array(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data.buffer);
    const colours = new Set();
    for (const pixel of pixels) {
      colours.add(pixel);
      if (colours.size >= 1000) break;
    }
    return { width: bitmap.width, height: bitmap.height, colours: colours.size };
  }, base64);
  await context.close();
  return { file, ...image };
}

(async () => {
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Playwright gives each launch a fresh profile directory of its own. The rest keeps Chromium
    // from calling home (updates, sync, field trials) on a machine without a way out, where each
    // attempt would cost a timeout.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const visits = [];
    for (const spec of VIEWPORTS) visits.push(await visit(browser, spec));
    const images = [];
    for (const v of visits) for (const file of v.screenshots) images.push(await decode(browser, file));
    process.stdout.write(JSON.stringify({ browser: browser.version(), visits, images }) + '\n');
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
