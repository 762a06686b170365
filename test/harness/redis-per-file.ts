import { Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { startRedis, type RedisHandle } from './redis-server.ts';

/**
 * A private redis-server and one client for the tests of a file: started before them, stopped
 * after. Read `redis` inside tests and hooks (it exists once `beforeAll` has run).
 */
export function redisForFile(): { readonly redis: Redis } {
  let server: RedisHandle | null = null;
  let client: Redis | null = null;
  beforeAll(async () => {
    server = await startRedis();
    client = new Redis(server.url);
  });
  afterAll(async () => {
    client?.disconnect();
    await server?.stop();
  });
  return {
    get redis(): Redis {
      if (!client) throw new Error('redis is started by beforeAll: read it inside a test or hook');
      return client;
    },
  };
}
