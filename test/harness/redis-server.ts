import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A private redis-server for one test file: a free 127.0.0.1 port, a fresh temporary directory,
 * no RDB snapshots, and an append-only file only when asked for. Integration tests never mock Redis.
 */

export interface StartRedisOptions {
  /** Write an append-only file so that data survives `restart()`. Default false. */
  appendOnly?: boolean;
  /** The server binary; default `redis-server` from PATH. */
  binary?: string;
  /** How long to wait for the first PING to answer. Default 10 s. */
  startTimeoutMs?: number;
  /** Picks a candidate port; default asks the OS for a free one. (A seam for the port-race test.) */
  pickPort?: () => Promise<number>;
}

export interface RestartOptions {
  /** SIGTERM (default) shuts down cleanly; SIGKILL simulates a crash. */
  signal?: 'SIGTERM' | 'SIGKILL';
}

export interface RedisHandle {
  /** `redis://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
  /** The server's working directory (holds the append-only file when enabled). */
  readonly dir: string;
  /** Stops the server and removes its directory. Safe to call twice. */
  stop(): Promise<void>;
  /** Stops the server and starts it again on the same port and directory. */
  restart(opts?: RestartOptions): Promise<void>;
}

const MAX_PORT_ATTEMPTS = 5;
const STOP_GRACE_MS = 5_000;
const OUTPUT_TAIL_CHARS = 4_000;

export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisHandle> {
  const binary = opts.binary ?? 'redis-server';
  const appendOnly = opts.appendOnly ?? false;
  const startTimeoutMs = opts.startTimeoutMs ?? 10_000;
  const dir = await mkdtemp(join(tmpdir(), 'lora-guild-redis-'));

  let server: RunningServer | undefined;
  let lastError: unknown;
  try {
    for (let attempt = 1; attempt <= MAX_PORT_ATTEMPTS && !server; attempt++) {
      const port = await (opts.pickPort ?? freePort)();
      try {
        server = await launch({ binary, port, dir, appendOnly, startTimeoutMs });
      } catch (err) {
        lastError = err;
        // Another process took the port between our probe and the server's bind: try another one.
        if (!(err instanceof PortInUseError)) throw err;
      }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  if (!server) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`redis-server: no free port after ${MAX_PORT_ATTEMPTS} attempts`, { cause: lastError });
  }

  let current: RunningServer | null = server;
  const port = server.port;
  let stopped = false;

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    async stop() {
      if (stopped) return;
      stopped = true;
      const running = current;
      current = null;
      if (running) await running.stop('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
    async restart(restartOpts: RestartOptions = {}) {
      if (stopped) throw new Error('redis-server: restart() after stop()');
      const running = current;
      current = null;
      if (running) await running.stop(restartOpts.signal ?? 'SIGTERM');
      // The same port must come back: clients hold the URL. Retry briefly if the port lingers.
      let attempt = 0;
      for (;;) {
        try {
          current = await launch({ binary, port, dir, appendOnly, startTimeoutMs });
          return;
        } catch (err) {
          if (!(err instanceof PortInUseError) || ++attempt >= MAX_PORT_ATTEMPTS) throw err;
          await delay(100 * attempt);
        }
      }
    },
  };
}

class PortInUseError extends Error {}

/** Servers still running when the test process exits are killed with it, not left behind. */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

interface RunningServer {
  port: number;
  stop(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
}

interface LaunchOptions {
  binary: string;
  port: number;
  dir: string;
  appendOnly: boolean;
  startTimeoutMs: number;
}

async function launch(o: LaunchOptions): Promise<RunningServer> {
  const args = [
    '--port',
    String(o.port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    o.appendOnly ? 'yes' : 'no',
    '--appendfsync',
    'always',
    '--dir',
    o.dir,
    '--daemonize',
    'no',
    '--logfile',
    '',
    '--loglevel',
    'warning',
  ];
  const child = spawn(o.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  let output = '';
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_CHARS);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    // 'close' rather than 'exit': the output (which names a taken port) has been read by then.
    child.once('close', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
  });
  const spawnFailed = new Promise<Error>((resolve) => {
    child.once('error', (err: NodeJS.ErrnoException) => {
      liveChildren.delete(child);
      resolve(
        err.code === 'ENOENT'
          ? new Error(
              `redis-server not found (tried "${o.binary}"). Integration tests need a real Redis: ` +
                'install it (e.g. `apt-get install redis-server`) so that `redis-server` is on PATH.',
            )
          : new Error(`redis-server could not be started: ${err.message}`, { cause: err }),
      );
    });
  });

  const ready = waitForPing(o.port, child.pid, o.startTimeoutMs);
  let outcome;
  try {
    outcome = await Promise.race([
      ready.then(() => ({ kind: 'ready' as const })),
      exited.then((e) => ({ kind: 'exited' as const, ...e })),
      spawnFailed.then((error) => ({ kind: 'spawn-failed' as const, error })),
    ]);
  } catch (err) {
    // Start-up timed out: do not leave the process behind.
    child.kill('SIGKILL');
    await exited;
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${output}`, { cause: err });
  } finally {
    ready.cancel();
  }

  if (outcome.kind === 'spawn-failed') throw outcome.error;
  if (outcome.kind === 'exited') {
    if (/address already in use/i.test(output)) {
      throw new PortInUseError(`redis-server: port ${o.port} is already in use`);
    }
    throw new Error(`redis-server exited during start-up (code ${String(outcome.code)}, signal ${String(outcome.signal)}):\n${output}`);
  }

  return {
    port: o.port,
    async stop(signal) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      try {
        await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Asks the OS for a free port. Another process may take it before redis binds it; callers retry. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      if (address === null || typeof address === 'string') {
        probe.close();
        reject(new Error('could not read the probe address'));
        return;
      }
      probe.close(() => resolve(address.port));
    });
  });
}

interface Cancellable<T> extends Promise<T> {
  cancel(): void;
}

/**
 * Resolves once the server started as `pid` answers on the port: `PING` gives `+PONG` (not
 * `-LOADING`) and `INFO server` names that process. The identity check matters: when the port was
 * taken by another server meanwhile, that one would answer PING too.
 */
function waitForPing(port: number, pid: number | undefined, timeoutMs: number): Cancellable<void> {
  let cancelled = false;
  const run = async () => {
    const deadline = Date.now() + timeoutMs;
    while (!cancelled) {
      if (pid !== undefined && (await answeringPid(port)) === pid) return;
      if (Date.now() > deadline) {
        throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms`);
      }
      await delay(20);
    }
  };
  const promise = run() as Cancellable<void>;
  promise.cancel = () => {
    cancelled = true;
  };
  // The race in launch() observes the rejection; keep a late one from going unhandled.
  promise.catch(() => undefined);
  return promise;
}

/** The process id of the ready server on the port, or null (nothing there, or still loading). */
function answeringPid(port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let reply = '';
    const finish = (pid: number | null) => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(500, () => finish(null));
    socket.once('error', () => finish(null));
    socket.once('close', () => finish(null));
    socket.once('connect', () => socket.write('PING\r\nINFO server\r\n'));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('latin1');
      if (!reply.includes('\r\n')) return;
      if (!reply.startsWith('+PONG\r\n')) {
        finish(null);
        return;
      }
      const bulk = /^\+PONG\r\n\$(\d+)\r\n/.exec(reply);
      if (!bulk) return;
      const header = bulk[0].length;
      if (reply.length < header + Number(bulk[1])) return;
      const pid = /process_id:(\d+)/.exec(reply.slice(header));
      finish(pid ? Number(pid[1]) : null);
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
