import { describe, expect, it } from 'vitest';
import { lendingRefusal, workerInstructions } from '../../src/bot/commands/worker.ts';
import { shortGpuName, trainerLabel } from '../../src/bot/workers.ts';

const SECRET = 'a-download-secret-that-is-long-enough-0123456789';

describe('lending a GPU', () => {
  it('needs an https public address (or the explicit insecure setting) and the worker API switched on', () => {
    expect(lendingRefusal({ PUBLIC_URL: 'https://lora.example.org', ALLOW_INSECURE_WORKER_HTTP: false, DOWNLOAD_SECRET: SECRET })).toBeNull();
    expect(lendingRefusal({ PUBLIC_URL: undefined, ALLOW_INSECURE_WORKER_HTTP: true, DOWNLOAD_SECRET: SECRET })).toMatch(/PUBLIC_URL/);
    expect(lendingRefusal({ PUBLIC_URL: 'http://lora.example.org', ALLOW_INSECURE_WORKER_HTTP: false, DOWNLOAD_SECRET: SECRET })).toMatch(/not https/);
    expect(lendingRefusal({ PUBLIC_URL: 'http://10.0.0.2:8080', ALLOW_INSECURE_WORKER_HTTP: true, DOWNLOAD_SECRET: SECRET })).toBeNull();
    expect(lendingRefusal({ PUBLIC_URL: 'https://lora.example.org', ALLOW_INSECURE_WORKER_HTTP: false, DOWNLOAD_SECRET: undefined })).toMatch(
      /DOWNLOAD_SECRET/,
    );
  });

  it('gives the commands with the address as configured, without a doubled slash', () => {
    const text = workerInstructions('https://lora.example.org/', 'lgw_wabcdefghij_x');
    expect(text).toContain('LORA_GUILD_URL=https://lora.example.org WORKER_TOKEN=lgw_wabcdefghij_x WORKER_QUEUES=training');
    expect(text).toContain('-e LORA_GUILD_URL=https://lora.example.org -e WORKER_TOKEN=lgw_wabcdefghij_x');
    expect(text.length).toBeLessThan(1500);
    expect(text).not.toContain('ALLOW_INSECURE_WORKER_HTTP');
    // On a private network over plain http (the operator allowed it), the worker must allow it too.
    const lan = workerInstructions('http://10.0.0.2:8080', 'lgw_wabcdefghij_x');
    expect(lan).toContain('SD_SCRIPTS_DIR=~/sd-scripts ALLOW_INSECURE_WORKER_HTTP=true npm run worker');
    expect(lan).toContain('-e WORKER_QUEUES=training -e ALLOW_INSECURE_WORKER_HTTP=true -e WORKER_CACHE_DIR=/cache');
  });

  it('names a GPU the way members say it, and whose it is', () => {
    expect(shortGpuName('NVIDIA GeForce RTX 4090')).toBe('RTX 4090');
    expect(shortGpuName('NVIDIA A100-SXM4-80GB')).toBe('A100-SXM4-80GB');
    expect(shortGpuName('Tesla T4')).toBe('Tesla T4');
    const gpu = { name: 'NVIDIA GeForce RTX 3060', memoryMiB: 12288 };
    const info = { id: 'wabcdefghij', host: 'h', gpu, models: [], busyWith: null, startedAt: 0, at: 0 };
    expect(trainerLabel('wabcdefghij', info, { ownerId: '42' })).toBe("<@42>'s RTX 3060");
    expect(trainerLabel('wabcdefghij', null, { ownerId: '42' })).toBe("<@42>'s GPU");
    expect(trainerLabel('gpu-1', info, null)).toBe('`gpu-1` (RTX 3060)');
    expect(trainerLabel('gpu-1', null, null)).toBe('`gpu-1`');
  });
});
