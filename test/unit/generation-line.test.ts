import { describe, expect, it } from 'vitest';
import { gpusFor, lineText, type GenerationRequest } from '../../src/bot/generation.ts';
import type { WorkerView } from '../../src/bot/workers.ts';
import type { WorkerInfo } from '../../src/queues/contract.ts';

const tried: GenerationRequest = {
  id: 'req1',
  kind: 'try',
  guildId: 'g',
  runId: 'run1',
  userId: 'u',
  channelId: 'c',
  prompt: 'ohwx_hero reading',
  negative: '',
  seed: 5,
  width: 512,
  height: 512,
  epochs: [2],
  weights: [1],
  epochLabel: 'epoch 2, the community’s pick',
  createdAt: 0,
};
const compared: GenerationRequest = { ...tried, kind: 'compare', epochs: [3, 1], weights: [0.5, 1], epochLabel: '' };
const url = 'https://discord.com/channels/g/c/m1';
const second = (r: GenerationRequest, state: Parameters<typeof lineText>[1]) => lineText(r, state).split('\n')[1];

describe('a generation’s acknowledgement', () => {
  it('names what was asked, then where it stands', () => {
    expect(lineText(tried, { kind: 'drawing' })).toBe(
      '🎨 Drawing **ohwx_hero reading** with run `run1`, epoch 2, the community’s pick, weight 1, seed 5.\n🎨 Drawing now…',
    );
    expect(lineText(compared, { kind: 'drawing' }).split('\n')[0]).toBe(
      '🧪 Drawing epochs 3, 1 × weights 0.5, 1 of run `run1` (seed 5); the grid goes to the run’s thread.',
    );
  });

  it('counts the place in line with English ordinals, naming the run a busy GPU trains', () => {
    const waiting = (position: number, waitingForRun: string | null = null) => second(tried, { kind: 'waiting', position, waitingForRun });
    expect(waiting(1)).toBe('⏳ 1st in line for a GPU.');
    expect(waiting(2)).toBe('⏳ 2nd in line for a GPU.');
    expect(waiting(3)).toBe('⏳ 3rd in line for a GPU.');
    expect(waiting(11)).toBe('⏳ 11th in line for a GPU.');
    expect(waiting(22)).toBe('⏳ 22nd in line for a GPU.');
    expect(waiting(113)).toBe('⏳ 113th in line for a GPU.');
    expect(waiting(1, 'abc')).toBe('⏳ 1st in line: the GPU is training run `abc`; your image comes as soon as it finishes.');
    expect(second(tried, { kind: 'cached' })).toBe('Found in the cache: posting it now.');
  });

  it('says where the result went: below for a try, the run’s thread for a comparison, and a failure as such', () => {
    expect(second(tried, { kind: 'posted', url, ok: true })).toBe(`✅ Posted below: ${url}`);
    expect(second(compared, { kind: 'posted', url, ok: true })).toBe(`✅ Posted in the run’s thread: ${url}`);
    expect(second(tried, { kind: 'posted', url, ok: false })).toBe(`⚠️ It could not be drawn: ${url}`);
  });
});

describe('the GPUs that can draw a generation', () => {
  const info = (id: string, busyWith: string | null, models: string[]): WorkerInfo => ({
    id,
    host: id,
    gpu: null,
    models: models.map((file) => ({ file, base: 'sd15' })),
    busyWith,
    startedAt: 0,
    at: 0,
  });
  const view = (i: WorkerInfo, online = true): WorkerView => ({ id: i.id, online, info: i, lent: null });

  it('counts only online GPUs with every file, and names a run only when all of them train', () => {
    const busy = view(info('a', 'run9', ['base.safetensors']));
    const free = view(info('b', null, ['base.safetensors']));
    const other = view(info('c', null, ['other.safetensors']));
    const offline = view(info('d', null, ['base.safetensors']), false);
    expect(gpusFor([busy, other, offline], ['base.safetensors'])).toEqual({ online: 1, busyWith: 'run9' });
    expect(gpusFor([busy, free], ['base.safetensors'])).toEqual({ online: 2, busyWith: null });
    expect(gpusFor([busy, free], ['base.safetensors', 't5.safetensors'])).toEqual({ online: 0, busyWith: null });
  });
});
