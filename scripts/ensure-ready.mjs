// Runs before `npm start` and `npm run worker`: installs dependencies on a fresh clone and says
// clearly what is missing (a .env, a reachable Redis) before the process starts.
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';

if (!existsSync('node_modules/.package-lock.json')) {
  console.log('Installing dependencies (npm ci)…');
  execSync('npm ci --no-audit --no-fund', { stdio: 'inherit', env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' } });
}
if (!existsSync('.env') && !process.env.DISCORD_TOKEN) {
  console.error('No .env file: copy .env.example to .env and fill in DISCORD_TOKEN and DISCORD_APP_ID.');
  process.exit(2);
}

let redisUrl = process.env.REDIS_URL;
if (!redisUrl && existsSync('.env')) {
  try {
    process.loadEnvFile('.env');
    redisUrl = process.env.REDIS_URL;
  } catch {
    // the app reports a malformed .env itself
  }
}
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
