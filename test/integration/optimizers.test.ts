/**
 * The worker's start-up optimizer check against a real Python: the test's empty packages stand in
 * for the optimizers' (test/fixtures/python-packages).
 */
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPTIMIZERS } from '../../src/core/recipe-table.ts';
import { OPTIMIZER_MODULES, probeOptimizers } from '../../src/worker/optimizers.ts';

const PACKAGES = fileURLToPath(new URL('../fixtures/python-packages/', import.meta.url));
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'optimizer-probe-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A PYTHONPATH folder with the test packages except `without`, and `extra` files. */
async function packages(name: string, without: string[], extra: Record<string, string> = {}): Promise<string> {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  for (const entry of await readdir(PACKAGES))
    if (!without.includes(entry) && entry !== 'README.md') await cp(join(PACKAGES, entry), join(dir, entry), { recursive: true });
  for (const [path, text] of Object.entries(extra)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  return dir;
}

describe('the optimizer check', () => {
  it('names every optimizer the recipes offer, each with a module', () => {
    expect(Object.keys(OPTIMIZER_MODULES).sort()).toEqual([...OPTIMIZERS].sort());
  });

  it('finds every optimizer when every package imports', async () => {
    const probe = await probeOptimizers({ python: 'python3', env: { ...process.env, PYTHONPATH: PACKAGES } });
    expect(probe).toEqual({ available: [...OPTIMIZERS], missing: [] });
  });

  it('leaves out an optimizer whose package is missing or fails to import', async () => {
    const dir = await packages('partial', ['dadaptation'], { 'lion_pytorch/__init__.py': 'raise RuntimeError("built for another CUDA")\n' });
    const probe = await probeOptimizers({ python: 'python3', env: { ...process.env, PYTHONPATH: dir } });
    expect(probe.missing).toEqual(['Lion', 'DAdaptAdam']);
    expect(probe.available).toEqual(OPTIMIZERS.filter((o) => o !== 'Lion' && o !== 'DAdaptAdam'));
    // Adafactor needs the submodule sd-scripts imports it from, not only the package.
    const noSubmodule = await packages('no-submodule', ['transformers'], { 'transformers/__init__.py': '' });
    expect((await probeOptimizers({ python: 'python3', env: { ...process.env, PYTHONPATH: noSubmodule } })).missing).toEqual(['Adafactor']);
  });

  it('fails, rather than vouching for anything, when the Python cannot run or hangs', async () => {
    await expect(probeOptimizers({ python: join(root, 'no-such-python') })).rejects.toThrow(/the optimizer check with .*no-such-python failed/);
    const dir = await packages('hangs', ['torch'], { 'torch/__init__.py': 'import time\ntime.sleep(60)\n' });
    await expect(probeOptimizers({ python: 'python3', env: { ...process.env, PYTHONPATH: dir }, timeoutMs: 300 })).rejects.toThrow(/timed out/);
  });
});
