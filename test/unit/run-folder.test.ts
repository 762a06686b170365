import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearEndedRun, readRunEnd, sweepEndedRuns } from '../../src/worker/run-folder.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'run-folder-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function runFolder(name: string): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, 'output', 'zk-000001-state'), { recursive: true });
  await mkdir(join(dir, 'dataset', '10_zk'), { recursive: true });
  await writeFile(join(dir, 'output', 'zk-000001.safetensors'), 'x');
  await writeFile(join(dir, 'output', 'zk-000001-state', 'optimizer.bin'), 'x');
  await writeFile(join(dir, 'dataset', '10_zk', '1.png'), 'x');
  await writeFile(join(dir, 'run-state.json'), '{}');
  await writeFile(join(dir, 'trainer.log'), 'log');
  await writeFile(join(dir, 'trainer.json'), '{}');
  return dir;
}

describe('an ended run folder', () => {
  it('keeps only the bookkeeping and how the run ended', async () => {
    const dir = await runFolder('finished');
    expect(await readRunEnd(dir)).toBeNull();
    expect(await clearEndedRun(dir, { outcome: 'finished' })).toEqual(['dataset', 'output', 'trainer.json', 'trainer.log']);
    expect((await readdir(dir)).sort()).toEqual(['ended.json', 'run-state.json']);
    expect(await readRunEnd(dir)).toMatchObject({ outcome: 'finished' });
    // again (a retried job): nothing left to remove
    expect(await clearEndedRun(dir, { outcome: 'finished' })).toEqual([]);
  });

  it('records a failure with its reason and log tail; stops where a crash would, the end already recorded', async () => {
    const dir = await runFolder('failed');
    const crash = new Error('crash');
    await expect(
      clearEndedRun(
        dir,
        { outcome: 'failed', reason: 'the trainer exited with code 1', logTail: ['a', 'b'] },
        {
          beforeRemove: (entry) => {
            if (entry === 'output') throw crash;
          },
        },
      ),
    ).rejects.toBe(crash);
    expect((await readdir(dir)).sort()).toEqual(['ended.json', 'output', 'run-state.json', 'trainer.json', 'trainer.log']);
    expect(await readRunEnd(dir)).toMatchObject({ outcome: 'failed', reason: 'the trainer exited with code 1', logTail: ['a', 'b'] });
  });

  it('sweeps runs that ended long ago, and nothing that may still resume', async () => {
    const old = await runFolder('old');
    await clearEndedRun(old, { outcome: 'cancelled' });
    const running = await runFolder('running');
    const later = Date.now() + 8 * 24 * 3600 * 1000;
    expect(await sweepEndedRuns(root, 7 * 24 * 3600 * 1000, Date.now())).toEqual([]);
    expect((await sweepEndedRuns(root, 7 * 24 * 3600 * 1000, later)).sort()).toEqual(['failed', 'finished', 'old']);
    expect(await readdir(root)).toEqual(['running']);
    expect((await readdir(running)).sort()).toEqual(['dataset', 'output', 'run-state.json', 'trainer.json', 'trainer.log']);
  });
});
