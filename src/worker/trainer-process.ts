/**
 * The trainer as a child process (reference/kohya-contract.md §1, §6): sd-scripts started in its
 * own process group without a shell, its console fed to KohyaProgressParser, and stopped by
 * signalling the whole group (accelerate's parent does not forward signals to the training child).
 *
 * Every trainer carries a marker in its environment (`LORA_GUILD_RUN_DIR=<run dir>`), inherited by
 * everything it starts. A worker that crashed leaves its trainer running (it has its own group); the
 * next worker taking the run finds such orphans by that marker in /proc and stops them before it
 * resumes, so two trainers never write into the same output folder.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { KohyaProgressParser, type KohyaEvent, type KohyaStream } from '../core/kohya-progress.ts';
import { codeOf } from '../core/fs-errors.ts';

/** The trainer command when TRAINER_CMD is not set (sd-scripts' usual launcher). */
export const DEFAULT_TRAINER_CMD = 'accelerate launch --num_cpu_threads_per_process 1';

/** Environment variable naming the run folder in every trainer process (and its children). */
export const RUN_MARKER = 'LORA_GUILD_RUN_DIR';

/** Variables a trainer never needs: the bot's secrets and anything that looks like one. */
const SECRET_NAMES = new Set(['DISCORD_TOKEN', 'DOWNLOAD_SECRET', 'REDIS_URL']);
const SECRET_PATTERN = /(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIALS?)$/i;

/** `TRAINER_CMD` (admin configuration, split on whitespace), then the script and its arguments. */
export function trainerCommand(trainerCmd: string | undefined, scriptPath: string, scriptArgs: readonly string[]): { command: string; args: string[] } {
  const words = (trainerCmd ?? DEFAULT_TRAINER_CMD).split(/\s+/).filter((w) => w.length > 0);
  const [command, ...prefix] = words;
  if (command === undefined) throw new Error('TRAINER_CMD is empty');
  return { command, args: [...prefix, scriptPath, ...scriptArgs] };
}

/** The trainer's environment: the worker's, minus secrets, plus unbuffered UTF-8 output at 200 columns. */
export function trainerEnv(base: NodeJS.ProcessEnv, runDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(base)) {
    if (value === undefined || SECRET_NAMES.has(key) || SECRET_PATTERN.test(key)) continue;
    env[key] = value;
  }
  return { ...env, PYTHONUNBUFFERED: '1', PYTHONIOENCODING: 'utf-8', COLUMNS: '200', [RUN_MARKER]: runDir };
}

export interface TrainerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface StartTrainerOptions {
  command: string;
  args: readonly string[];
  cwd: string;
  /** The complete environment (see `trainerEnv`). */
  env: NodeJS.ProcessEnv;
  /** Parsed console events, in order. Called synchronously; must not throw. */
  onEvent?: (event: KohyaEvent) => void;
  /** Raw console output, for a log file. */
  onOutput?: (chunk: Buffer, stream: KohyaStream) => void;
}

/** What a worker records about its trainer in the run folder (for logs and post-mortems). */
export interface TrainerRecord {
  pid: number;
  pgid: number;
  host: string;
  startedAt: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Whether any process of group `pgid` exists (zombies included until reaped). */
export function processGroupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return codeOf(err) === 'EPERM';
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if (codeOf(err) !== 'ESRCH') throw err;
  }
}

/** Waits until group `pgid` is empty or `ms` passed; true when it is empty. */
async function groupGone(pgid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processGroupAlive(pgid)) {
    if (Date.now() >= deadline) return false;
    await sleep(25);
  }
  return true;
}

/**
 * Stops a whole process group: SIGTERM (and SIGCONT, so a stopped process gets it), then SIGKILL
 * after `graceMs`. Resolves once the group is empty (or 5 s after SIGKILL, which only a process in
 * uninterruptible sleep survives).
 */
export async function killProcessGroup(pgid: number, graceMs: number): Promise<void> {
  if (!(pgid > 1) || pgid === ownProcessGroup()) throw new Error(`refusing to signal process group ${pgid}`);
  if (!processGroupAlive(pgid)) return;
  signalGroup(pgid, 'SIGTERM');
  signalGroup(pgid, 'SIGCONT');
  if (await groupGone(pgid, graceMs)) return;
  signalGroup(pgid, 'SIGKILL');
  await groupGone(pgid, 5_000);
}

let ownGroup: number | null | undefined;
/** This process's group id (Linux: from /proc), so we never signal ourselves. */
function ownProcessGroup(): number | null {
  if (ownGroup === undefined) {
    try {
      // Synchronous on purpose: read once, tiny, and needed before any kill.
      ownGroup = parseStat(readFileSync('/proc/self/stat', 'utf8'))?.pgrp ?? null;
    } catch {
      ownGroup = null;
    }
  }
  return ownGroup;
}

/** `/proc/<pid>/stat`: the fields after the command name (which may hold spaces and parentheses). */
function parseStat(text: string): { pgrp: number; ppid: number } | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const fields = text.slice(close + 2).split(' ');
  const ppid = Number(fields[1]);
  const pgrp = Number(fields[2]);
  return Number.isSafeInteger(pgrp) && Number.isSafeInteger(ppid) ? { pgrp, ppid } : null;
}

/**
 * Process groups (other than ours) holding a process whose environment marks it as a trainer of
 * `runDir`. Linux only (reads /proc); elsewhere, or for processes of other users, nothing is found.
 */
export async function findTrainerGroups(runDir: string): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const marker = Buffer.from(`${RUN_MARKER}=${runDir}\0`);
  const own = ownProcessGroup();
  const groups = new Set<number>();
  await Promise.all(
    entries
      .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
      .map(async (name) => {
        try {
          const environ = await readFile(join('/proc', name, 'environ'));
          // environ is NUL-separated; a leading NUL makes the match start at a variable boundary.
          if (!Buffer.concat([Buffer.from([0]), environ]).includes(Buffer.concat([Buffer.from([0]), marker]))) return;
          const stat = parseStat(await readFile(join('/proc', name, 'stat'), 'utf8'));
          if (stat && stat.pgrp > 1 && stat.pgrp !== own) groups.add(stat.pgrp);
        } catch {
          // Gone meanwhile, or not ours to read.
        }
      }),
  );
  return [...groups].sort((a, b) => a - b);
}

/** Stops every trainer of `runDir` still running (an orphan of a crashed worker). Returns the groups stopped. */
export async function killStaleTrainers(runDir: string, graceMs: number): Promise<number[]> {
  // Two looks a moment apart: a process caught in the middle of an exec() can't be read for an instant.
  const groups = new Set(await findTrainerGroups(runDir));
  await sleep(50);
  for (const g of await findTrainerGroups(runDir)) groups.add(g);
  const found = [...groups].sort((a, b) => a - b);
  await Promise.all(found.map((g) => killProcessGroup(g, graceMs)));
  return found;
}

/** One running trainer. */
export class TrainerProcess {
  readonly pid: number;
  /** Its process group (= pid: it leads its own group). */
  readonly pgid: number;
  /** Resolves when the trainer's main process exited and its output was read to the end. */
  readonly exited: Promise<TrainerExit>;
  readonly startedAt = Date.now();
  #parser: KohyaProgressParser;
  #exit: TrainerExit | null = null;
  #stopping: Promise<TrainerExit> | null = null;

  private constructor(child: ChildProcess & { pid: number }, parser: KohyaProgressParser, exited: Promise<TrainerExit>) {
    this.pid = child.pid;
    this.pgid = child.pid;
    this.#parser = parser;
    this.exited = exited.then((exit) => {
      this.#exit = exit;
      return exit;
    });
  }

  /**
   * Starts the trainer in its own process group (no shell: arguments go to the program as they
   * are). Resolves once the process runs; rejects when it cannot be started (e.g. ENOENT).
   */
  static async start(opts: StartTrainerOptions): Promise<TrainerProcess> {
    const child = spawn(opts.command, [...opts.args], {
      cwd: opts.cwd,
      env: opts.env,
      detached: true,
      shell: false,
      stdio: ['ignore', 'pipe', 'pipe'],
      windowsHide: true,
    });
    const parser = new KohyaProgressParser();
    const emit = (events: KohyaEvent[]) => {
      for (const event of events) opts.onEvent?.(event);
    };
    const feed = (stream: KohyaStream) => (chunk: Buffer) => {
      opts.onOutput?.(chunk, stream);
      emit(parser.push(chunk, stream));
    };
    child.stdout?.on('data', feed('stdout'));
    child.stderr?.on('data', feed('stderr'));

    const exited = new Promise<TrainerExit>((resolve) => {
      // 'close' rather than 'exit': the output has been read to the end by then.
      child.once('close', (code, signal) => {
        emit(parser.end());
        resolve({ code, signal });
      });
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', reject);
    });
    if (child.pid === undefined) throw new Error('the trainer started without a process id');
    return new TrainerProcess(child as ChildProcess & { pid: number }, parser, exited);
  }

  /** The last 30 console lines (progress redraws collapsed). */
  tail(): string[] {
    return this.#parser.tail();
  }

  get exit(): TrainerExit | null {
    return this.#exit;
  }

  record(): TrainerRecord {
    return { pid: this.pid, pgid: this.pgid, host: hostname(), startedAt: this.startedAt };
  }

  /** Whether any process of the trainer's group is still alive. */
  groupAlive(): boolean {
    return processGroupAlive(this.pgid);
  }

  /**
   * Stops the whole group: SIGTERM, then SIGKILL after `graceMs`. Resolves with the main process's
   * exit once every process of the group is gone. Safe to call more than once.
   */
  stop(graceMs: number): Promise<TrainerExit> {
    this.#stopping ??= (async () => {
      await killProcessGroup(this.pgid, graceMs);
      return this.exited;
    })();
    return this.#stopping;
  }

  /** After a natural exit: stops what the trainer left behind in its group (data loader workers). */
  async reap(graceMs: number): Promise<void> {
    await this.exited;
    if (this.groupAlive()) await killProcessGroup(this.pgid, graceMs);
  }
}
