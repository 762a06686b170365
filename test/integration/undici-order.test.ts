/**
 * discord.js and our HTTP clients must work whichever is loaded first. They once shared undici's
 * process-wide dispatcher, so loading ours first broke every discord.js upload ("action is not a
 * function"). Each order runs in a fresh process, the only place where nothing is loaded yet.
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const tsxCli = createRequire(import.meta.url).resolve('tsx/cli');
const fixture = fileURLToPath(new URL('../fixtures/undici-order.ts', import.meta.url));

function runInFreshProcess(order: 'ours-first' | 'discord-first'): Promise<unknown> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [tsxCli, fixture, order], { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${order}: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout.trim().split('\n').at(-1) ?? 'null'));
    });
  });
}

describe('discord.js uploads and our downloads, whichever loads first', () => {
  it.each(['ours-first', 'discord-first'] as const)('%s: a discord.js file upload and an attachment download both succeed', async (order) => {
    expect(await runInFreshProcess(order)).toEqual({
      order,
      loaded: 3,
      upload: { ok: true, value: { multipart: true, carriedFile: true } },
      download: { ok: true, value: { bytes: 200_000, sha256Matches: true } },
    });
  });
});
