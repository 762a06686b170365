import { mkdir, mkdtemp, rm, statfs, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bytesUnder, diskShortfall, estimateRunDisk, freeBytes } from '../../src/worker/disk-space.ts';

const MiB = 1024 * 1024;
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'disk-space-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the disk a run needs', () => {
  it('adds a checkpoint per epoch, the training states kept at once, the dataset and the samples', () => {
    const e = estimateRunDisk({ base: 'sd15', epochs: 10, networkDim: 32, convDim: null, prompts: 4, datasetBytes: 50 * MiB });
    expect(e.checkpointBytes).toBe(Math.ceil(1.2 * MiB * 32));
    expect(e.checkpoints).toBe(10);
    expect(e.stateBytes).toBe(e.checkpointBytes * 6);
    expect(e.states).toBe(4);
    expect(e.sampleBytes).toBe(10 * 4 * 2 * MiB);
    expect(e.total).toBe(e.checkpointBytes * 10 + e.stateBytes * 4 + 50 * MiB + e.sampleBytes);
    // bigger families and conv layers weigh more; a one-epoch run keeps at most two states
    const xl = estimateRunDisk({ base: 'sdxl', epochs: 1, networkDim: 32, convDim: 8, prompts: 0, datasetBytes: 0 });
    expect(xl.checkpointBytes).toBe(Math.ceil(6.8 * MiB * 40));
    expect(xl.states).toBe(2);
  });

  it('refuses with the numbers when the run does not fit, counting what an earlier attempt wrote', () => {
    const e = estimateRunDisk({ base: 'sdxl', epochs: 10, networkDim: 32, convDim: null, prompts: 2, datasetBytes: 120 * MiB });
    expect(diskShortfall(e, e.total)).toBeNull();
    expect(diskShortfall(e, e.total - 1)).toBe(
      'the worker does not have enough free disk space for this run: it needs about 7.4 GB more ' +
        '(10 checkpoints of 218 MB, training states 5.1 GB, dataset 120 MB, samples 40 MB) and 7.4 GB is free',
    );
    // A resumed run already wrote part of it.
    expect(diskShortfall(e, e.total - 3 * 1024 * MiB, 3 * 1024 * MiB)).toBeNull();
    expect(diskShortfall(e, 1024 * MiB, 3 * 1024 * MiB)).toMatch(/needs about 4\.4 GB more \(.*, 3 GB of it already written\) and 1 GB is free$/);
  });

  it('measures a folder (links not followed) and the free space of its disk', async () => {
    await mkdir(join(dir, 'a', 'b'), { recursive: true });
    await writeFile(join(dir, 'a', 'x'), Buffer.alloc(1000));
    await writeFile(join(dir, 'a', 'b', 'y'), Buffer.alloc(234));
    await symlink('/usr', join(dir, 'a', 'link'));
    expect(await bytesUnder(join(dir, 'a'))).toBe(1234);
    expect(await bytesUnder(join(dir, 'missing'))).toBe(0);
    // What an unprivileged process may still write (bavail), not the root-reserved blocks too
    // (bfree). Other tests write and delete on the same disk meanwhile, so the two reads may
    // differ by what they did in between: a few MiB at most.
    const fs = await statfs(dir);
    const free = await freeBytes(dir);
    expect(Math.abs(free - fs.bavail * fs.bsize)).toBeLessThan(64 * MiB);
    if (fs.bfree - fs.bavail > 1024) expect(Math.abs(free - fs.bfree * fs.bsize)).toBeGreaterThan(Math.abs(free - fs.bavail * fs.bsize));
  });
});
