import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { allCommandData } from '../../commands/all.ts';
import { startBot, type BotHandle } from '../../src/bot/app.ts';
import { loadConfig, type Config } from '../../src/core/config.ts';
import { createLogger } from '../../src/core/logger.ts';
import { newId } from '../../src/store/dataset-store.ts';
import { FakeDiscord } from '../harness/fake-discord.ts';
import type { FakeDiscordOptions } from '../harness/fake-discord-types.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

export const TEST_TOKEN = 'test-token-never-logged-7f3a9c';

/** Log lines a bot wrote, parsed. */
export class LogSink extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  readonly raw: string[] = [];
  private partial = '';

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void) {
    this.take(chunk.toString('utf8'));
    done();
  }

  take(text: string) {
    const parts = (this.partial + text).split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) {
      if (!line.trim()) continue;
      this.raw.push(line);
      try {
        this.lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        this.lines.push({ msg: line });
      }
    }
  }

  errors() {
    return this.lines.filter((l) => typeof l.level === 'number' && l.level >= 50);
  }
}

export interface WorldOptions {
  discord?: FakeDiscordOptions;
  env?: Record<string, string>;
}

export interface BotProcess {
  process: ChildProcess;
  log: LogSink;
  exited: Promise<number | null>;
}

/** Redis + fake Discord + a data dir, and the real bot started against them (in-process or as a child). */
export class World {
  bot: BotHandle | null = null;
  child: BotProcess | null = null;
  readonly log = new LogSink();
  readonly redis: Redis;

  private constructor(
    readonly redisServer: RedisHandle,
    readonly discord: FakeDiscord,
    readonly dataDir: string,
    readonly env: Record<string, string>,
  ) {
    this.redis = new Redis(redisServer.url);
  }

  static async start(opts: WorldOptions = {}): Promise<World> {
    const [redisServer, discord, dataDir] = await Promise.all([
      startRedis(),
      FakeDiscord.start(opts.discord ?? {}),
      mkdtemp(join(tmpdir(), 'lora-guild-data-')),
    ]);
    // The fake then checks every command a test sends against our real definitions.
    discord.registerCommands(allCommandData);
    const env: Record<string, string> = {
      DISCORD_TOKEN: TEST_TOKEN,
      DISCORD_APP_ID: discord.applicationId,
      DISCORD_API_URL: discord.apiUrl,
      ATTACHMENT_HOSTS: discord.cdnHost,
      REDIS_URL: redisServer.url,
      REDIS_PREFIX: `e2e${newId(3)}`,
      DATA_DIR: dataDir,
      HTTP_HOST: '127.0.0.1',
      HTTP_PORT: '0',
      LOG_LEVEL: 'info',
      // No network in tests: the tagger runs only where a test provides a local model.
      TAGGER_IN_BOT: opts.env?.TAGGER_MODEL_DIR ? 'true' : 'false',
      IMAGE_RATING: opts.env?.RATER_MODEL_DIR ? 'true' : 'false',
      // Tests about contributing attest where they need to (content-ratings.test.ts).
      ATTESTATION_REQUIRED: 'false',
      // A bot killed mid-upload frees its dataset's lock after this, not production's 30 s.
      LOCK_TTL_SECONDS: '3',
      RATER_MODEL_URL: 'http://127.0.0.1:9/no-network-in-tests',
      TAGGER_MODEL_URL: 'http://127.0.0.1:9/no-network-in-tests',
      CAPTIONER_MODEL_URL: 'http://127.0.0.1:9/no-network-in-tests',
      ...opts.env,
    };
    return new World(redisServer, discord, dataDir, env);
  }

  get config(): Config {
    return loadConfig(this.env);
  }

  async startBot(): Promise<BotHandle> {
    if (this.bot) return this.bot;
    this.bot = await startBot(this.config, createLogger(this.env.LOG_LEVEL ?? 'info', this.log));
    return this.bot;
  }

  async stopBot(): Promise<void> {
    await this.bot?.stop();
    this.bot = null;
  }

  /** Every bot process running now (`child` is the first of them). */
  readonly children: BotProcess[] = [];

  /**
   * Runs the bot as its own process (`npm start`'s entry point), for restart and kill tests; call
   * it again for another process of the same deployment (same Redis, data folder and token).
   */
  async spawnBot(timeoutMs = 30_000): Promise<BotProcess> {
    const log = new LogSink();
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/bot/main.ts'], {
      cwd: process.cwd(),
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (d: Buffer) => log.take(d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => log.take(d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const bot: BotProcess = { process: child, log, exited };
    this.children.push(bot);
    this.child ??= bot;
    const deadline = Date.now() + timeoutMs;
    while (!log.lines.some((l) => l.msg === 'bot ready')) {
      if (child.exitCode !== null) throw new Error(`bot exited early (${child.exitCode}):\n${log.raw.slice(-20).join('\n')}`);
      if (Date.now() > deadline) throw new Error(`bot did not become ready:\n${log.raw.slice(-20).join('\n')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return bot;
  }

  worker: { process: ChildProcess; log: LogSink; exited: Promise<number | null> } | null = null;

  /**
   * Runs a training worker (`npm run worker`'s entry point) as its own process group. A remote one
   * gets only `env` (no Redis URL, no data dir of the bot's), as on a member's own machine.
   */
  async spawnWorker(env: Record<string, string>, timeoutMs = 30_000, opts: { remote?: boolean } = {}): Promise<void> {
    const log = new LogSink();
    const base = opts.remote ? { LOG_LEVEL: this.env.LOG_LEVEL ?? 'info' } : this.env;
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/worker/main.ts'], {
      cwd: process.cwd(),
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...base, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    child.stdout.on('data', (d: Buffer) => log.take(d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => log.take(d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    this.worker = { process: child, log, exited };
    const deadline = Date.now() + timeoutMs;
    const ready = opts.remote ? 'remote worker ready: waiting for runs' : 'worker ready';
    while (!log.lines.some((l) => l.msg === ready)) {
      if (child.exitCode !== null) throw new Error(`worker exited early (${child.exitCode}):\n${log.raw.slice(-20).join('\n')}`);
      if (Date.now() > deadline) throw new Error(`worker did not become ready:\n${log.raw.slice(-20).join('\n')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Kills the worker's whole process group (its trainer too, as a machine crash would). */
  async killWorker(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.worker) return;
    const pid = this.worker.process.pid;
    if (pid !== undefined) {
      try {
        process.kill(-pid, signal);
      } catch {
        // already gone
      }
    }
    await this.worker.exited;
    this.worker = null;
  }

  /** Stops the first bot process (or `which`). */
  async killChild(signal: NodeJS.Signals = 'SIGKILL', which: BotProcess | null = this.child): Promise<void> {
    if (!which) return;
    which.process.kill(signal);
    await which.exited;
    this.children.splice(this.children.indexOf(which), 1);
    if (this.child === which) this.child = this.children[0] ?? null;
  }

  async close(): Promise<void> {
    await this.stopBot().catch(() => undefined);
    for (const bot of [...this.children]) await this.killChild('SIGKILL', bot).catch(() => undefined);
    await this.killWorker().catch(() => undefined);
    this.redis.disconnect();
    await this.discord.close();
    await this.redisServer.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
