import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DownloadError, downloadToFile, formatBytes, isAllowedUrl } from '../../src/core/download.ts';
import { UserError } from '../../src/core/errors.ts';
import { rejectionOf } from '../fixtures/rejection.ts';

const MiB = 1024 * 1024;
const SECRET = 'hm=SECRETSIGNATURE';

type Route = (req: IncomingMessage, res: ServerResponse) => void;

/** A local HTTP server that records what it was asked and how many body bytes it managed to send. */
class TestServer {
  readonly requests: string[] = [];
  sentBytes = 0;
  /** Responses of writeForever that have seen their client go away. */
  closedResponses = 0;
  private readonly server: Server;
  private readonly routes = new Map<string, Route>();

  constructor() {
    this.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      this.requests.push(path);
      const route = this.routes.get(path);
      if (!route) {
        res.statusCode = 404;
        res.end('not found');
        return;
      }
      route(req, res);
    });
  }

  route(path: string, handler: Route): void {
    this.routes.set(path, handler);
  }

  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
  }

  get origin(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Writes `chunk` until the client goes away, counting what the socket accepted. */
function writeForever(res: ServerResponse, server: TestServer, chunk: Buffer): void {
  const pump = () => {
    while (!res.destroyed) {
      server.sentBytes += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
  };
  res.on('close', () => {
    res.removeAllListeners('drain');
    server.closedResponses++;
  });
  pump();
}

const payload = randomBytes(300 * 1024);
const payloadSha = createHash('sha256').update(payload).digest('hex');

let server: TestServer;
let other: TestServer;
let raw: NetServer;
let rawOrigin: string;
let dir: string;
let n = 0;
const dest = () => join(dir, `file-${++n}`);
const allowed = () => [server.origin, rawOrigin];

beforeAll(async () => {
  server = new TestServer();
  other = new TestServer();

  server.route('/ok.png', (_req, res) => {
    res.setHeader('content-length', payload.length);
    res.end(payload);
  });
  server.route('/chunked.png', (_req, res) => {
    // No Content-Length; streamed in pieces.
    let i = 0;
    const step = () => {
      if (i >= payload.length) return res.end();
      res.write(payload.subarray(i, i + 10_000));
      i += 10_000;
      setImmediate(step);
    };
    step();
  });
  server.route('/endless.png', (_req, res) => writeForever(res, server, Buffer.alloc(64 * 1024, 7)));
  server.route('/big-length.png', (_req, res) => {
    res.setHeader('content-length', 60 * MiB);
    writeForever(res, server, Buffer.alloc(64 * 1024, 1));
  });
  server.route('/no-headers.png', () => {
    /* never answers */
  });
  server.route('/stall.png', (_req, res) => {
    res.setHeader('content-length', 1000);
    res.write(Buffer.alloc(100, 1));
    // ...and nothing more.
  });
  server.route('/trickle.png', (_req, res) => {
    const timer = setInterval(() => res.write(Buffer.alloc(1, 1)), 20);
    res.on('close', () => clearInterval(timer));
  });
  server.route('/cut.png', (_req, res) => {
    res.setHeader('content-length', 5000);
    res.write(Buffer.alloc(100, 1), () => res.destroy());
  });
  server.route('/redirect.png', (_req, res) => {
    res.statusCode = 302;
    res.setHeader('location', `${other.origin}/x.png`);
    res.end();
  });
  server.route('/same-origin-redirect.png', (_req, res) => {
    res.statusCode = 301;
    res.setHeader('location', '/ok.png');
    res.end();
  });
  server.route('/error.png', (_req, res) => {
    res.statusCode = 503;
    res.end('busy');
  });
  other.route('/x.png', (_req, res) => res.end(payload));

  // A raw server that sends a Content-Length under the cap, then far more bytes than it declared.
  raw = createNetServer((socket: Socket) => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n');
      socket.write(Buffer.alloc(2 * MiB, 9));
      socket.end();
    });
    socket.on('error', () => {});
  });
  raw.listen(0, '127.0.0.1');
  await once(raw, 'listening');
  rawOrigin = `http://127.0.0.1:${(raw.address() as AddressInfo).port}`;

  await server.start();
  await other.start();
  dir = await mkdtemp(join(tmpdir(), 'lg-download-'));
});

afterAll(async () => {
  await server.stop();
  await other.stop();
  await new Promise<void>((resolve) => raw.close(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  server.requests.length = 0;
  other.requests.length = 0;
  server.sentBytes = 0;
});

async function refusal(promise: Promise<unknown>): Promise<DownloadError> {
  const err = await rejectionOf(promise, 'the download to fail');
  expect(err).toBeInstanceOf(DownloadError);
  expect(err).toBeInstanceOf(UserError);
  const message = (err as Error).message;
  expect(message).not.toContain('SECRET');
  expect(message).not.toContain('.png');
  return err as DownloadError;
}

async function filesLeft(): Promise<string[]> {
  return readdir(dir);
}

describe('isAllowedUrl', () => {
  const hosts = ['cdn.discordapp.com', 'media.discordapp.net', 'http://127.0.0.1:4567', 'files.example:8443'];
  const allowed = (url: string) => isAllowedUrl(url, hosts);

  it('allows https on the default port for an entry without a scheme', () => {
    expect(allowed('https://cdn.discordapp.com/attachments/1/2/a.png?ex=1&hm=2')).toBe(true);
    expect(allowed('https://CDN.DiscordApp.com:443/a.png')).toBe(true);
    expect(allowed('https://media.discordapp.net/a.png')).toBe(true);
  });

  it('refuses another scheme or port for an entry without a scheme', () => {
    const urls = ['http://cdn.discordapp.com/a.png', 'https://cdn.discordapp.com:8443/a.png', 'ftp://cdn.discordapp.com/a.png', 'file:///etc/passwd'];
    expect(urls.filter(allowed)).toEqual([]);
  });

  it('allows exactly the origin of an entry with a scheme and port', () => {
    const urls = [
      'http://127.0.0.1:4567/a.png',
      'https://127.0.0.1:4567/a.png',
      'http://127.0.0.1/a.png',
      'http://127.0.0.1:4568/a.png',
      'https://files.example:8443/a.png',
      'https://files.example/a.png',
    ];
    expect(urls.filter(allowed)).toEqual(['http://127.0.0.1:4567/a.png', 'https://files.example:8443/a.png']);
  });

  it('refuses look-alike hosts, user info, unlisted IP literals and junk', () => {
    const urls = [
      'https://cdn.discordapp.com.evil.example/a.png',
      'https://evilcdn.discordapp.com/a.png',
      'https://cdn.discordapp.com@evil.example/a.png',
      'https://user:pw@cdn.discordapp.com/a.png',
      'https://162.159.128.233/a.png',
      'http://[::1]:4567/a.png',
      'not a url',
      '',
    ];
    expect(urls.filter(allowed)).toEqual([]);
  });

  it('ignores malformed entries instead of widening the list', () => {
    expect(isAllowedUrl('https://evil.example/a.png', ['https://evil.example/path', 'user@evil.example', ''])).toBe(false);
  });
});

describe('formatBytes', () => {
  it('shows sizes as Discord users read them', () => {
    expect(formatBytes(60 * MiB)).toBe('60 MB');
    expect(formatBytes(50 * MiB)).toBe('50 MB');
    expect(formatBytes(1.5 * 1024 * MiB)).toBe('1.5 GB');
    expect(formatBytes(800 * 1024)).toBe('800 KB');
    expect(formatBytes(12)).toBe('12 bytes');
  });
});

describe('downloadToFile', () => {
  it('streams the exact bytes to dest and returns their size and SHA-256', async () => {
    const file = dest();
    const got = await downloadToFile(`${server.origin}/ok.png?${SECRET}`, file, { allowedHosts: allowed(), maxBytes: MiB });
    expect(got).toEqual({ bytes: payload.length, sha256: payloadSha });
    expect((await readFile(file)).equals(payload)).toBe(true);
  });

  it('accepts a chunked body without Content-Length under the cap', async () => {
    const file = dest();
    const got = await downloadToFile(`${server.origin}/chunked.png`, file, { allowedHosts: allowed(), maxBytes: payload.length });
    expect(got).toEqual({ bytes: payload.length, sha256: payloadSha });
  });

  it('refuses a host that is not allowed before connecting, naming the host', async () => {
    const before = await filesLeft();
    const err = await refusal(downloadToFile(`${other.origin}/x.png?${SECRET}`, dest(), { allowedHosts: [server.origin], maxBytes: MiB }));
    expect(err.failure).toBe('refused');
    expect(err.message).toBe(`${other.origin} is not an allowed host; downloads are only allowed from ${server.origin}`);
    expect(other.requests).toEqual([]);
    expect(await filesLeft()).toEqual(before);
  });

  it('names a disallowed https host plainly and lists the allowed ones', async () => {
    const err = await refusal(
      downloadToFile(`https://evil.example/a.png?${SECRET}`, dest(), {
        allowedHosts: ['cdn.discordapp.com', 'media.discordapp.net'],
        maxBytes: MiB,
      }),
    );
    expect(err.message).toBe('evil.example is not an allowed host; downloads are only allowed from cdn.discordapp.com, media.discordapp.net');
  });

  it('refuses a URL with a user name or password before connecting', async () => {
    const url = new URL(`${server.origin}/ok.png`);
    url.username = 'user';
    url.password = 'pw';
    const err = await refusal(downloadToFile(url.href, dest(), { allowedHosts: allowed(), maxBytes: MiB }));
    expect(err.message).toMatch(/user name or password/);
    expect(err.message).not.toContain('pw');
    expect(server.requests).toEqual([]);
  });

  it('refuses a declared size over the cap before connecting', async () => {
    const err = await refusal(downloadToFile(`${server.origin}/ok.png`, dest(), { allowedHosts: allowed(), maxBytes: 50 * MiB, declaredSize: 60 * MiB }));
    expect(err.message).toBe('attachment is 60 MB; the limit is 50 MB');
    expect(err.failure).toBe('too-large');
    expect(server.requests).toEqual([]);
  });

  it('refuses a Content-Length over the cap without reading the body', async () => {
    const before = await filesLeft();
    const err = await refusal(downloadToFile(`${server.origin}/big-length.png`, dest(), { allowedHosts: allowed(), maxBytes: 50 * MiB }));
    expect(err.message).toBe('attachment is 60 MB; the limit is 50 MB');
    expect(await filesLeft()).toEqual(before);
  });

  it('aborts a chunked body as soon as it passes the cap, and removes the partial file', async () => {
    const before = await filesLeft();
    const closedBefore = server.closedResponses;
    const err = await refusal(downloadToFile(`${server.origin}/endless.png`, dest(), { allowedHosts: allowed(), maxBytes: 2 * MiB }));
    expect(err.failure).toBe('too-large');
    expect(err.message).toBe('attachment is over the 2 MB limit');
    expect(await filesLeft()).toEqual(before);
    // The server sees the connection close (it never would if the client kept reading), having
    // sent not much more than the cap (socket buffers allow some slack).
    while (server.closedResponses === closedBefore) await new Promise((r) => setTimeout(r, 10));
    expect(server.sentBytes).toBeLessThan(2 * MiB + 16 * MiB);
  });

  it('never takes more than the declared Content-Length from a server that sends more', async () => {
    const file = dest();
    const got = await downloadToFile(`${rawOrigin}/lie.png`, file, { allowedHosts: allowed(), maxBytes: 10_000 });
    // HTTP framing ends the body at the declared length; the 2 MiB behind it are never read as body.
    expect(got.bytes).toBe(1000);
    expect((await readFile(file)).equals(Buffer.alloc(1000, 9))).toBe(true);
  });

  it('reports a body cut short of its Content-Length and removes the partial file', async () => {
    const before = await filesLeft();
    const err = await refusal(downloadToFile(`${server.origin}/cut.png`, dest(), { allowedHosts: allowed(), maxBytes: MiB }));
    expect(err.failure).toBe('truncated');
    expect(err.retryable).toBe(true);
    expect(await filesLeft()).toEqual(before);
  });

  it('times out waiting for headers', async () => {
    const err = await refusal(downloadToFile(`${server.origin}/no-headers.png?${SECRET}`, dest(), { allowedHosts: allowed(), maxBytes: MiB, timeoutMs: 300 }));
    expect(err.failure).toBe('timeout');
    expect(err.message).toBe(`the download from ${server.origin} timed out`);
  });

  it('times out a body that stalls, and removes the partial file', async () => {
    const before = await filesLeft();
    const err = await refusal(downloadToFile(`${server.origin}/stall.png`, dest(), { allowedHosts: allowed(), maxBytes: MiB, timeoutMs: 300 }));
    expect(err.failure).toBe('timeout');
    expect(await filesLeft()).toEqual(before);
  });

  it('times out a body that trickles forever within the idle timeout (overall deadline)', async () => {
    const before = await filesLeft();
    // A byte every 20 ms never trips the idle timeout and would take hours to reach the cap.
    const err = await refusal(downloadToFile(`${server.origin}/trickle.png`, dest(), { allowedHosts: allowed(), maxBytes: MiB, timeoutMs: 500 }));
    expect(err.failure).toBe('timeout');
    expect(await filesLeft()).toEqual(before);
  });

  it('reports a 404 with its status, without the path or query', async () => {
    const err = await refusal(downloadToFile(`${server.origin}/missing.png?${SECRET}`, dest(), { allowedHosts: allowed(), maxBytes: MiB }));
    expect(err.message).toBe(`could not download the file from ${server.origin} (HTTP 404)`);
    expect(err.status).toBe(404);
    expect(err.retryable).toBe(false);
  });

  it('marks a 503 as retryable', async () => {
    const err = await refusal(downloadToFile(`${server.origin}/error.png`, dest(), { allowedHosts: allowed(), maxBytes: MiB }));
    expect(err.status).toBe(503);
    expect(err.retryable).toBe(true);
  });

  it('does not follow a redirect to another host, which is never contacted', async () => {
    const before = await filesLeft();
    const err = await refusal(
      downloadToFile(`${server.origin}/redirect.png?${SECRET}`, dest(), { allowedHosts: [server.origin, other.origin], maxBytes: MiB }),
    );
    expect(err.failure).toBe('redirect');
    expect(err.message).toBe(`${server.origin} answered with a redirect, which is not followed`);
    expect(other.requests).toEqual([]);
    expect(await filesLeft()).toEqual(before);
  });

  it('does not follow a redirect within the same origin either', async () => {
    const err = await refusal(downloadToFile(`${server.origin}/same-origin-redirect.png`, dest(), { allowedHosts: allowed(), maxBytes: MiB }));
    expect(err.failure).toBe('redirect');
    expect(server.requests).toEqual(['/same-origin-redirect.png']);
  });

  it('refuses an existing dest and leaves that file alone', async () => {
    const file = dest();
    await writeFile(file, 'precious');
    await expect(downloadToFile(`${server.origin}/ok.png`, file, { allowedHosts: allowed(), maxBytes: MiB })).rejects.toMatchObject({
      code: 'EEXIST',
    });
    expect(await readFile(file, 'utf8')).toBe('precious');
  });

  it("rethrows the caller's abort reason and removes the partial file", async () => {
    const before = await filesLeft();
    const controller = new AbortController();
    const reason = new Error('cancelled by the test');
    setTimeout(() => controller.abort(reason), 100);
    await expect(
      downloadToFile(`${server.origin}/trickle.png`, dest(), {
        allowedHosts: allowed(),
        maxBytes: MiB,
        signal: controller.signal,
        timeoutMs: 10_000,
      }),
    ).rejects.toBe(reason);
    expect(await filesLeft()).toEqual(before);
  });

  it('reports an unreachable allowed host as a network failure', async () => {
    const closed = new TestServer();
    await closed.start();
    const origin = closed.origin;
    await closed.stop();
    const err = await refusal(downloadToFile(`${origin}/a.png?${SECRET}`, dest(), { allowedHosts: [origin], maxBytes: MiB }));
    expect(err.failure).toBe('network');
    expect(err.retryable).toBe(true);
  });
});
