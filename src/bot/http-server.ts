import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger.ts';

export interface HttpServerHandle {
  server: Server;
  port: number;
  close(): Promise<void>;
}

/** The bot's HTTP side: health now; metrics and signed downloads join it later. */
export async function startHttpServer(opts: { host: string; port: number; redis: Redis; logger: Logger }): Promise<HttpServerHandle> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (req.method === 'GET' && url.pathname === '/healthz') {
      opts.redis
        .ping()
        .then(() => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ ok: true, redis: 'up' }));
        })
        .catch((err: unknown) => {
          opts.logger.warn({ err }, 'health check: redis unreachable');
          res.writeHead(503, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ ok: false, redis: 'down' }));
        });
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
