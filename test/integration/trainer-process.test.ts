/**
 * The trainer as a process: no shell, its own process group, its console parsed, the whole group
 * stopped (SIGTERM, then SIGKILL), and an orphan of a crashed worker found by its run marker.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KohyaEvent } from '../../src/core/kohya-progress.ts';
import {
  DEFAULT_TRAINER_CMD,
  findTrainerGroups,
  killStaleTrainers,
  processGroupAlive,
  RUN_MARKER,
  TrainerProcess,
  trainerCommand,
  trainerEnv,
} from '../../src/worker/trainer-process.ts';
import { alive } from '../fixtures/process.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lg-trainer-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const python = (code: string, env: NodeJS.ProcessEnv = trainerEnv(process.env, join(root, 'no-run'))) =>
  ({ command: 'python3', args: ['-c', code], cwd: root, env }) as const;

async function waitFor(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('trainer command and environment', () => {
  it('splits TRAINER_CMD on whitespace and puts the script and its arguments after it', () => {
    expect(trainerCommand(undefined, '/sd/train_network.py', ['--config_file', '/r/c.toml'])).toEqual({
      command: 'accelerate',
      args: ['launch', '--num_cpu_threads_per_process', '1', '/sd/train_network.py', '--config_file', '/r/c.toml'],
    });
    expect(DEFAULT_TRAINER_CMD.startsWith('accelerate launch')).toBe(true);
    expect(trainerCommand('  python3   -u ', '/sd/x.py', ['a b'])).toEqual({ command: 'python3', args: ['-u', '/sd/x.py', 'a b'] });
    expect(() => trainerCommand('   ', '/sd/x.py', [])).toThrow(/empty/);
  });

  it('drops secrets from the environment and asks for unbuffered UTF-8 output at 200 columns', () => {
    const env = trainerEnv(
      {
        PATH: '/usr/bin',
        DISCORD_TOKEN: 't',
        DOWNLOAD_SECRET: 's',
        REDIS_URL: 'redis://:pw@h',
        HF_TOKEN: 'h',
        AWS_SECRET_ACCESS_KEY: 'k',
        CUDA_VISIBLE_DEVICES: '0',
      },
      '/data/runs/r1',
    );
    expect(env).toEqual({
      PATH: '/usr/bin',
      CUDA_VISIBLE_DEVICES: '0',
      AWS_SECRET_ACCESS_KEY: 'k',
      PYTHONUNBUFFERED: '1',
      PYTHONIOENCODING: 'utf-8',
      COLUMNS: '200',
      [RUN_MARKER]: '/data/runs/r1',
    });
  });
});

describe('TrainerProcess', () => {
  it('parses the console of both streams, tqdm redraws included, and reports the exit code', async () => {
    const events: KohyaEvent[] = [];
    const code = String.raw`
import sys, time
print("running training / 学習開始", flush=True)
print("  num batches per epoch / 1epochのバッチ数: 4", flush=True)
print("\nepoch 1/2\n", flush=True)
for n in range(1, 3):
    sys.stderr.write(f"\rsteps:  {n*25}%|##        | {n}/8 [00:0{n}<00:06,  1.00it/s, avr_loss=0.1{n}]")
    sys.stderr.flush()
    time.sleep(0.05)
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "train_network.py", line 1, in <module>', file=sys.stderr)
print("torch.OutOfMemoryError: CUDA out of memory", file=sys.stderr)
sys.exit(3)
`;
    const trainer = await TrainerProcess.start({ ...python(code), onEvent: (e) => events.push(e) });
    const exit = await trainer.exited;
    expect(exit).toEqual({ code: 3, signal: null });
    expect(events.filter((e) => e.type === 'progress').map((e) => (e.type === 'progress' ? [e.step, e.loss] : null))).toEqual([
      [1, 0.11],
      [2, 0.12],
    ]);
    expect(events).toContainEqual({ type: 'epoch', epoch: 1, total: 2 });
    expect(events).toContainEqual({ type: 'totals', stepsPerEpoch: 4 });
    expect(events).toContainEqual({ type: 'error', exception: 'torch.OutOfMemoryError', message: 'CUDA out of memory' });
    expect(trainer.tail().at(-1)).toBe('torch.OutOfMemoryError: CUDA out of memory');
    expect(trainer.groupAlive()).toBe(false);
  });

  it('passes arguments to the program as they are: no shell ever sees them', async () => {
    const marker = join(root, 'pwned');
    const evil = `$(touch ${marker}); echo "hi" > ${marker}; \`touch ${marker}\``;
    let out = '';
    const trainer = await TrainerProcess.start({
      command: 'python3',
      args: ['-c', 'import sys; print(sys.argv[1])', evil],
      cwd: root,
      env: trainerEnv(process.env, root),
      onOutput: (chunk) => (out += chunk.toString('utf8')),
    });
    expect(await trainer.exited).toEqual({ code: 0, signal: null });
    expect(out).toBe(`${evil}\n`);
    await expect(readFile(marker)).rejects.toThrow();
  });

  it('starts in its own process group and stop() ends the whole group, escalating to SIGKILL', async () => {
    // A launcher like accelerate's (it does not forward signals) whose child ignores SIGTERM.
    const code = String.raw`
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"], stdout=sys.stdout)
print(f"child {child.pid}", flush=True)
time.sleep(60)
`;
    let out = '';
    const trainer = await TrainerProcess.start({ ...python(code), onOutput: (c) => (out += c.toString('utf8')) });
    await waitFor(() => /child (\d+)/.test(out) && out.includes('ready'));
    const childPid = Number(/child (\d+)/.exec(out)![1]);
    expect(trainer.pgid).toBe(trainer.pid);
    expect(trainer.pgid).not.toBe(process.pid);
    expect(alive(childPid)).toBe(true);

    const started = Date.now();
    const exit = await trainer.stop(400);
    expect(exit.signal).toBe('SIGTERM'); // the launcher obeys SIGTERM…
    expect(Date.now() - started).toBeGreaterThanOrEqual(350); // …its child needed SIGKILL after the grace period
    expect(alive(childPid)).toBe(false);
    expect(processGroupAlive(trainer.pgid)).toBe(false);
    // Stopping again is harmless.
    await expect(trainer.stop(400)).resolves.toEqual(exit);
  });

  it('refuses to start what is not there', async () => {
    await expect(TrainerProcess.start({ command: 'no-such-trainer-here', args: [], cwd: root, env: {} })).rejects.toThrow(/ENOENT/);
  });
});

describe('orphaned trainers', () => {
  it('finds a trainer left running for a run folder by its marker and stops its group, and nothing else', async () => {
    const runDir = join(root, 'runs', 'r1');
    const otherDir = join(root, 'runs', 'r10'); // a prefix of the marker must not match
    const sleeper = "import time; print('ready', flush=True); time.sleep(60)";
    // Output is gathered whole: a pipe may hand 'ready' over in two pieces.
    const output = new Map<string, string>();
    const start = (dir: string) =>
      TrainerProcess.start({
        ...python(sleeper, trainerEnv(process.env, dir)),
        onOutput: (c) => void output.set(dir, (output.get(dir) ?? '') + c.toString('utf8')),
      });
    const orphan = await start(runDir);
    const other = await start(otherDir);
    try {
      await waitFor(() => [runDir, otherDir].every((dir) => output.get(dir)?.includes('ready')));
      expect(await findTrainerGroups(runDir)).toEqual([orphan.pgid]);
      expect(await killStaleTrainers(runDir, 1000)).toEqual([orphan.pgid]);
      expect(processGroupAlive(orphan.pgid)).toBe(false);
      expect(processGroupAlive(other.pgid)).toBe(true);
      expect(await killStaleTrainers(runDir, 1000)).toEqual([]);
    } finally {
      await other.stop(500);
      await orphan.stop(500);
    }
  });

  it('stops a frozen (SIGSTOPped) orphan too', async () => {
    const runDir = join(root, 'runs', 'frozen');
    let output = '';
    const orphan = await TrainerProcess.start({
      ...python("import time; print('ready', flush=True); time.sleep(60)", trainerEnv(process.env, runDir)),
      onOutput: (c) => (output += c.toString('utf8')),
    });
    await waitFor(() => output.includes('ready'));
    process.kill(-orphan.pgid, 'SIGSTOP');
    expect(await killStaleTrainers(runDir, 2000)).toEqual([orphan.pgid]);
    expect(processGroupAlive(orphan.pgid)).toBe(false);
    expect((await orphan.exited).signal).toBe('SIGTERM');
  });
});
