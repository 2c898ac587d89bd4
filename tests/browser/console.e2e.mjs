// End-to-end check of the operator console in headless Chromium (playwright-core, no bundled browser).
// Run by a Rust test as `node tests/browser/console.e2e.mjs` against a running consumer.
//
// Environment:
//   CONSOLE_URL   the consumer, e.g. http://127.0.0.1:18123             (required)
//   ADMIN_TOKEN   the admin token                                         (required)
//   CONTROL_URL   the Rust test's control server for the fake Cloud API  (required)
//   SCREENSHOT    PNG to write at the end (default: console-e2e.png in the temp dir)
//   CHROMIUM      the browser binary (default /usr/bin/chromium)
//   WEBHOOK_SECRET  optional app secret: signs the webhook posts (X-Hub-Signature-256)
//
// One line per step with timings; the first failure exits 1 with the reason (and a
// screenshot next to SCREENSHOT, suffixed -failure). Everything must be done within 90 s.

import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] || fallback;
  if (!value) { console.error(`FAIL: environment variable ${name} is required`); process.exit(2); }
  return value;
};
const CONSOLE_URL = env('CONSOLE_URL').replace(/\/+$/, '');
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const CONTROL_URL = env('CONTROL_URL').replace(/\/+$/, '');
const SCREENSHOT = env('SCREENSHOT', path.join(os.tmpdir(), 'console-e2e.png'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET || '';

const GLOBAL_TIMEOUT_MS = 90_000;
const FEED_DEADLINE_MS = 1_000; // webhook answered -> its conversation on screen
const PHONE = '+15550001111';
const TEXT = 'Hi, I want to order 2 tacos';
const OTHER_PHONES = ['+15550002222', '+15550003333', '+15550004444'];
// Without the background-networking flags Chromium hangs on a closed network.
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const started = performance.now();
const since = (t) => Math.round(performance.now() - t);
let browser;
let page;
let current = 'start';
const pageErrors = [];

// ------------------------------------------------------------------ helpers

class StepFailure extends Error {}
const check = (condition, message) => { if (!condition) throw new StepFailure(message); };
const digits = (phone) => String(phone).replace(/\D/g, '');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function step(label, fn) {
  current = label;
  const t = performance.now();
  const detail = await fn();
  console.log(`ok   ${label.padEnd(44)} ${String(since(t)).padStart(6)} ms   (t=${(since(started) / 1000).toFixed(1)} s)${detail ? `   ${detail}` : ''}`);
}

/** Polls `probe` until it returns a truthy value; fails with `what` after `timeout` ms. */
async function poll(what, probe, { timeout, interval = 250 }) {
  const deadline = performance.now() + timeout;
  let lastError;
  for (;;) {
    const value = await probe().catch((e) => { lastError = e; });
    if (value) return value;
    if (performance.now() > deadline) {
      throw new StepFailure(`timed out after ${timeout} ms waiting for ${what}${lastError ? ` (last error: ${lastError.message})` : ''}`);
    }
    await sleep(interval);
  }
}

async function http(method, url, { body, headers = {} } = {}) {
  try {
    return await fetch(url, { method, body, headers, redirect: 'manual', signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    throw new StepFailure(`${method} ${url}: ${e.cause?.code ?? e.cause?.message ?? e.message}`);
  }
}

async function control(action) {
  const res = await http('POST', `${CONTROL_URL}/fake/${action}`);
  check(res.ok, `POST /fake/${action} answered ${res.status}`);
}

async function acceptedSendsTo(phone) {
  const res = await http('GET', `${CONTROL_URL}/fake/accepted`);
  check(res.ok, `GET /fake/accepted answered ${res.status}`);
  const sends = await res.json();
  return sends.filter((s) => digits(s.to) === digits(phone));
}

/** A WhatsApp Cloud API notification with one text message (the shape of tests/fixtures/webhook/text.json). */
function textNotification(phone, text) {
  const from = digits(phone);
  return {
    object: 'whatsapp_business_account',
    entry: [{
      id: '102290129340398',
      changes: [{
        field: 'messages',
        value: {
          messaging_product: 'whatsapp',
          metadata: { display_phone_number: '15550783881', phone_number_id: '106540352242922' },
          contacts: [{ profile: { name: 'E2E Customer' }, wa_id: from }],
          messages: [{
            from,
            id: `wamid.E2E${crypto.randomUUID().replaceAll('-', '')}`, // unique: the pipeline drops duplicates
            timestamp: String(Math.floor(Date.now() / 1000)),
            type: 'text',
            text: { body: text },
          }],
        },
      }],
    }],
  };
}

async function postWebhook(phone, text) {
  const body = JSON.stringify(textNotification(phone, text));
  const headers = { 'content-type': 'application/json' };
  if (WEBHOOK_SECRET) headers['x-hub-signature-256'] = `sha256=${crypto.createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')}`;
  const res = await http('POST', `${CONSOLE_URL}/webhook`, { body, headers });
  check(res.status === 200, `POST /webhook for ${phone} answered ${res.status}: ${await res.text()}`);
}

let failing = false;
async function fail(error) {
  if (failing) return; // the global timeout and the scenario may both get here
  failing = true;
  // Playwright's messages carry a call log after the first line; the first line says what failed.
  const reason = error instanceof StepFailure ? error.message : String(error?.message ?? error).split('\n')[0];
  console.error(`FAIL ${current}: ${reason}`);
  if (page) {
    const toast = await page.locator('#toast:visible').textContent({ timeout: 500 }).catch(() => null);
    if (toast) console.error(`     console status line: ${toast}`);
    const shot = SCREENSHOT.replace(/(\.png)?$/i, '-failure.png');
    await page.screenshot({ path: shot, timeout: 3000 }).then(() => console.error(`     screenshot: ${shot}`), () => {});
  }
  if (pageErrors.length) console.error(`     page errors: ${pageErrors.join(' | ')}`);
  await Promise.race([browser?.close(), sleep(3000)]).catch(() => {});
  process.exit(1);
}

// ------------------------------------------------------------------ the scenario

async function main() {
  await step('1. unauthenticated requests answer 401', async () => {
    const page1 = await http('GET', `${CONSOLE_URL}/console`);
    check(page1.status === 401, `GET /console without a cookie answered ${page1.status}, expected 401`);
    const stream = await http('GET', `${CONSOLE_URL}/api/v1/stream`);
    check(stream.status === 401, `GET /api/v1/stream without Authorization answered ${stream.status}, expected 401`);
    await stream.body?.cancel();

    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(10_000);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('dialog', (d) => d.accept()); // discard/bulk confirm() dialogs
    const response = await page.goto(`${CONSOLE_URL}/console`);
    check(response?.status() === 401, `the browser got ${response?.status()} for /console without a session, expected 401`);
    return `chromium ${browser.version()}`;
  });

  await step('2. sign in; stream is live', async () => {
    await page.goto(`${CONSOLE_URL}/console/login`);
    await page.fill('#token', ADMIN_TOKEN);
    await page.click('#login');
    const outcome = await Promise.race([
      page.waitForURL(`${CONSOLE_URL}/console`).then(() => 'in'),
      page.locator('#login-error', { hasText: /\S/ }).waitFor().then(() => 'refused'),
    ].map((p) => p.catch(() => 'timeout')));
    if (outcome === 'refused') throw new StepFailure(`login refused: "${await page.textContent('#login-error')}"`);
    check(outcome === 'in', 'the login page did not go to /console within 10 s');
    await page.locator('#stream-state', { hasText: /^live$/ }).waitFor({ timeout: 15_000 }).catch(async () => {
      throw new StepFailure(`#stream-state is "${await page.textContent('#stream-state')}" after 15 s, expected "live"`);
    });
  });

  const row = page.locator(`.conversation[data-phone="${PHONE}"]`);
  await step('3. webhook -> conversation in the live feed', async () => {
    const seen = await row.count();
    await control('script-permanent'); // the reply to this message fails permanently: straight to the DLQ
    await postWebhook(PHONE, TEXT);
    const t = performance.now();
    await row.waitFor({ state: 'visible', timeout: FEED_DEADLINE_MS }).catch(() => {
      throw new StepFailure(`${PHONE} not in the feed within ${FEED_DEADLINE_MS} ms of the webhook's 200`);
    });
    return `visible ${since(t)} ms after the webhook's 200${seen ? ' (WARNING: the row was there before)' : ''}`;
  });

  await step('4. thread shows the message and its reply', async () => {
    await row.click();
    await page.locator('#thread .message.inbound', { hasText: TEXT }).first().waitFor({ timeout: 10_000 });
    // The reply was written with the message's completion: the history has it even though WhatsApp refused it.
    await page.locator('#thread .message.outbound').first().waitFor({ timeout: 10_000 });
  });

  await step('5. DLQ row of the failed reply; replay it', async () => {
    await page.click('#tab-dlq');
    const failed = page.locator('tr.dlq-row').filter({ hasText: digits(PHONE) }).filter({ hasText: 'conversation.responses' });
    const id = await poll('the failed reply in the DLQ table', async () => {
      if (await failed.count()) return failed.first().getAttribute('data-id');
      await page.click('#dlq-refresh');
      return null;
    }, { timeout: 20_000, interval: 1_000 });
    const before = (await acceptedSendsTo(PHONE)).length;

    const entry = page.locator(`tr.dlq-row[data-id="${id}"]`);
    await entry.locator('button.replay').click();
    await page.waitForFunction(
      (rowId) => document.querySelector(`tr.dlq-row[data-id="${rowId}"] .dlq-status`)?.textContent.trim() === 'replayed',
      id, { timeout: 10_000 },
    ).catch(async () => {
      const status = await entry.locator('.dlq-status').textContent({ timeout: 500 }).catch(() => 'gone');
      throw new StepFailure(`DLQ #${id} status is "${status?.trim()}", expected "replayed"`);
    });
    const t = performance.now();
    await poll(`a send to ${PHONE} accepted by the fake Cloud API after the replay`,
      async () => (await acceptedSendsTo(PHONE)).length > before, { timeout: 15_000, interval: 300 });
    return `DLQ #${id} replayed; reply accepted ${since(t)} ms later`;
  });

  await step('6. bulk replay dry run (not confirmed)', async () => {
    await page.click('#bulk-dry-run');
    const result = page.locator('#bulk-result', { hasText: /\d+\s+(entry|entries)\s+match/ });
    await result.waitFor({ timeout: 10_000 }).catch(async () => {
      throw new StepFailure(`#bulk-result shows "${await page.textContent('#bulk-result')}", expected a match count`);
    });
    const text = (await result.textContent()).trim();
    return `"${text}"`;
  });

  await step('7. Cloud API down -> breaker open', async () => {
    await control('down');
    for (const phone of OTHER_PHONES) await postWebhook(phone, `Hello from ${phone}, is the shop open?`);
    await page.locator('.breaker[data-name="whatsapp_cloud_api"][data-state="open"]')
      .waitFor({ state: 'attached', timeout: 30_000 })
      .catch(async () => {
        const state = await page.getAttribute('.breaker[data-name="whatsapp_cloud_api"]', 'data-state', { timeout: 500 }).catch(() => 'absent');
        throw new StepFailure(`whatsapp_cloud_api breaker is "${state}" after 30 s, expected "open"`);
      });
  });

  await step('8. feed shows the conversations; screenshot', async () => {
    for (const phone of [PHONE, ...OTHER_PHONES]) {
      await page.locator(`.conversation[data-phone="${phone}"]`).waitFor({ state: 'visible', timeout: 10_000 });
    }
    // The README picture: the first conversation's thread, with the open breaker beside it.
    await row.click();
    await page.locator('#thread .message.inbound', { hasText: TEXT }).first().waitFor();
    await page.screenshot({ path: SCREENSHOT });
    check(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(' | ')}`);
    return SCREENSHOT;
  });

  await browser.close();
  console.log(`PASS in ${(since(started) / 1000).toFixed(1)} s`);
  process.exit(0);
}

setTimeout(() => fail(new StepFailure(`global timeout: not done within ${GLOBAL_TIMEOUT_MS / 1000} s`)), GLOBAL_TIMEOUT_MS);
main().catch(fail);
