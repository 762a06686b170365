// Runs before `npm start` and `npm run worker`: installs dependencies on a fresh clone and says
// clearly what is missing (a .env, a reachable Redis) before the process starts.
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';

if (!existsSync('node_modules/.package-lock.json')) {
  console.log('Installing dependencies (npm ci)…');
  execSync('npm ci --no-audit --no-fund', { stdio: 'inherit', env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' } });
}
// `npm run worker` runs this as `preworker`: a worker needs no Discord token, and a lent GPU
// (LORA_GUILD_URL and WORKER_TOKEN) talks to the bot over HTTPS only, with no Redis at all.
const isWorker = process.env.npm_lifecycle_event === 'preworker';
if (existsSync('.env')) {
  try {
    process.loadEnvFile('.env');
  } catch {
    // the app reports a malformed .env itself
  }
}
if (!isWorker && !process.env.DISCORD_TOKEN) {
  console.error(
    existsSync('.env')
      ? 'DISCORD_TOKEN is not set: fill it in (and DISCORD_APP_ID) in .env.'
      : 'No .env file: copy .env.example to .env and fill in DISCORD_TOKEN and DISCORD_APP_ID.',
  );
  process.exit(2);
}
if (isWorker && process.env.LORA_GUILD_URL) {
  if (!process.env.WORKER_TOKEN) {
    console.error('LORA_GUILD_URL is set but WORKER_TOKEN is not: paste the token /worker add gave you.');
    process.exit(2);
  }
  process.exit(0);
}

const redisUrl = process.env.REDIS_URL;
const url = new URL(redisUrl || 'redis://127.0.0.1:6379');
const port = Number(url.port || 6379);
await new Promise((resolve) => {
  const socket = connect({ host: url.hostname, port, timeout: 3000 });
  const fail = () => {
    console.error(
      `Redis is not reachable at ${url.hostname}:${port}. Start one (e.g. \`redis-server --appendonly yes\`, ` +
        'or `docker compose -f docker/compose.yaml up -d redis`) or set REDIS_URL.',
    );
    process.exit(2);
  };
  socket.once('connect', () => {
    socket.destroy();
    resolve();
  });
  socket.once('timeout', fail);
  socket.once('error', fail);
});
