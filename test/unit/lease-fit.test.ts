import { describe, expect, it } from 'vitest';
import { generationFits, runFits } from '../../src/bot/leases.ts';
import type { BaseFamily } from '../../src/core/model-family.ts';
import { pickCompanions, resolveRecipe } from '../../src/core/recipes.ts';
import type { GeneratePayload, TrainRunPayload, WorkerInfo } from '../../src/queues/contract.ts';

const COMPANIONS = [
  { file: 'clip_l.safetensors', kind: 'clip_l' as const },
  { file: 't5xxl_fp16.safetensors', kind: 't5xxl' as const },
  { file: 'ae.safetensors', kind: 'ae' as const },
];

function payload(base: BaseFamily, opts: { vramMiB?: number; guildId?: string } = {}): TrainRunPayload {
  const resolved = resolveRecipe('character', base, {}, { vramMiB: opts.vramMiB ?? 24_564 });
  const recipe = { ...resolved, companions: pickCompanions(base, COMPANIONS, 'the worker') };
  // Only what runFits reads matters here; the rest of a payload is checked elsewhere.
  return { runId: 'r1', guildId: opts.guildId ?? 'g1', baseModel: 'base.safetensors', recipe } as unknown as TrainRunPayload;
}

function info(over: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    id: 'w1',
    host: 'h',
    gpu: { name: 'RTX 4090', memoryMiB: 24_564 },
    models: [{ file: 'base.safetensors', base: 'flux1' }],
    companions: COMPANIONS,
    busyWith: null,
    startedAt: 0,
    at: 0,
    ...over,
  };
}

describe('which waiting run a lent GPU may take', () => {
  it('takes a run of its own guild whose base model, text encoders and memory preset it has', () => {
    expect(runFits(payload('flux1'), { guildId: 'g1' }, info())).toBe(true);
    expect(runFits(payload('sd15'), { guildId: 'g1' }, info({ companions: [] }))).toBe(true);
  });

  it('never takes another guild’s run', () => {
    expect(runFits(payload('flux1', { guildId: 'g2' }), { guildId: 'g1' }, info())).toBe(false);
  });

  it('leaves a run whose base model it lacks, or whose FLUX companions it lacks', () => {
    expect(runFits(payload('flux1'), { guildId: 'g1' }, info({ models: [{ file: 'other.safetensors', base: 'flux1' }] }))).toBe(false);
    expect(runFits(payload('flux1'), { guildId: 'g1' }, info({ companions: COMPANIONS.filter((c) => c.kind !== 't5xxl') }))).toBe(false);
  });

  it('leaves a run planned for more GPU memory than it has, and trusts a worker that could not read its GPU', () => {
    const big = payload('flux1', { vramMiB: 24_564 });
    expect(runFits(big, { guildId: 'g1' }, info({ gpu: { name: 'RTX 3060', memoryMiB: 12_288 } }))).toBe(false);
    expect(runFits(big, { guildId: 'g1' }, info({ gpu: null }))).toBe(true);
  });

  it('takes nothing before its first heartbeat', () => {
    expect(runFits(payload('sd15'), { guildId: 'g1' }, null)).toBe(false);
  });
});

describe('which waiting generation a lent GPU may draw', () => {
  const flux = { clipL: 'clip_l.safetensors', t5xxl: 't5xxl_fp16.safetensors', ae: 'ae.safetensors', applyT5AttnMask: false, fp8: false };
  const gen = (over: Partial<GeneratePayload> = {}) => ({ guildId: 'g1', baseModel: 'base.safetensors', ...over }) as GeneratePayload;
  const worker = { id: 'w1', guildId: 'g1' } as Parameters<typeof generationFits>[1];

  it('draws what its own guild asked with a base model it has, and for FLUX.1 the text encoders and autoencoder too', () => {
    expect(generationFits(gen(), worker, info())).toBe(true);
    expect(generationFits(gen({ flux }), worker, info())).toBe(true);
    expect(generationFits(gen({ flux }), worker, info({ companions: COMPANIONS.slice(1) }))).toBe(false);
    expect(generationFits(gen({ flux: { ...flux, clipL: null } }), worker, info({ companions: COMPANIONS.slice(1) }))).toBe(true);
    expect(generationFits(gen({ baseModel: 'other.safetensors' }), worker, info())).toBe(false);
    expect(generationFits(gen({ guildId: 'g2' }), worker, info())).toBe(false);
    expect(generationFits(gen(), worker, null)).toBe(false);
  });
});
