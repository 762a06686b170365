import { z } from 'zod';
import { NEAR_DUPLICATE_DISTANCE } from './phash.ts';

/**
 * The configuration contract (design.md). Parsed once at boot; no other module reads
 * `process.env`. Every bad variable is reported in one error.
 */

const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const hostList = z
  .string()
  .transform((s) =>
    s
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h.length > 0),
  )
  .pipe(z.array(z.string().regex(/^(https?:\/\/)?[a-z0-9.-]+(:\d{1,5})?$/i, 'a host name, optionally http(s):// and :port')).min(1));

const colour = z.string().regex(/^#[0-9a-f]{6}$/i, 'a colour like #ffffff');

const MiB = 1024 * 1024;

export const configSchema = z.object({
  DISCORD_TOKEN: z.string().min(1).optional(),
  DISCORD_APP_ID: z
    .string()
    .regex(/^\d{1,25}$/, 'a Discord snowflake')
    .optional(),
  DISCORD_API_URL: z.url().default('https://discord.com/api'),
  /** Receive messages in dataset threads (needs the privileged Message Content intent). */
  DISCORD_MESSAGE_CONTENT: bool.default(false),
  ATTACHMENT_HOSTS: hostList.default(['cdn.discordapp.com', 'media.discordapp.net']),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'a redis:// or rediss:// URL')
    .default('redis://127.0.0.1:6379'),
  /** Prefix for every Redis key and queue, so several deployments (or tests) can share one Redis. */
  REDIS_PREFIX: z
    .string()
    .regex(/^[a-z0-9_-]{1,32}$/i)
    .default('lg'),
  DATA_DIR: z.string().min(1).default('./data'),
  PUBLIC_URL: z.url().optional(),
  HTTP_PORT: int(0, 65535).default(8080),
  HTTP_HOST: z.string().default('0.0.0.0'),
  DOWNLOAD_SECRET: z.string().min(32, 'at least 32 characters').optional(),
  /** Signed downloads one client may start back to back, then at DOWNLOAD_RATE_PER_MINUTE. */
  DOWNLOAD_RATE_BURST: int(1, 10_000).default(20),
  DOWNLOAD_RATE_PER_MINUTE: int(1, 100_000).default(30),
  /** Downloads one client may have in flight at once (download managers open several). */
  DOWNLOAD_MAX_PER_CLIENT: int(1, 1000).default(4),
  /** Downloads in flight at once, all clients together. */
  DOWNLOAD_MAX_CONCURRENT: int(1, 100_000).default(64),
  /**
   * Reverse proxies in front of the HTTP server that append the client to X-Forwarded-For; the
   * download limits count clients by it. 0: the header is ignored (anyone can write it).
   */
  HTTP_TRUST_PROXY_HOPS: int(0, 10).default(0),
  TAGGER_MODEL_DIR: z.string().min(1).optional(),
  TAGGER_MODEL_URL: z.url().default('https://huggingface.co/SmilingWolf/wd-vit-tagger-v3/resolve/main'),
  /** A folder holding a Florence-2 ONNX export (config, tokenizer, onnx/*.onnx); nothing is downloaded then. */
  CAPTIONER_MODEL_DIR: z.string().min(1).optional(),
  /** Where the Florence-2 export is fetched from once, into DATA_DIR/models/captioner/. */
  CAPTIONER_MODEL_URL: z.url().default('https://huggingface.co/onnx-community/Florence-2-base-ft/resolve/main'),
  /** Images captioned per model call. */
  CAPTIONER_BATCH: int(1, 64).default(4),
  /** Cap on the words of one machine caption, in tokens. */
  CAPTIONER_MAX_TOKENS: int(16, 1024).default(256),
  /** A member's first contribution to a server waits until they confirm (a button) their right to share it. */
  ATTESTATION_REQUIRED: bool.default(true),
  /** Rate every contributed image with a photo classifier at intake (off: only the tagger rates, when it tags). */
  IMAGE_RATING: bool.default(true),
  /** A folder holding the photo classifier (model_quantized.onnx, config.json, preprocessor_config.json). */
  RATER_MODEL_DIR: z.string().min(1).optional(),
  /** Where the classifier is fetched from once, into DATA_DIR/models/rater/ (its hash recorded). */
  RATER_MODEL_URL: z.url().default('https://huggingface.co/AdamCodd/vit-base-nsfw-detector/resolve/main/onnx'),
  TRAINER_CMD: z.string().min(1).optional(),
  /** The trainer's Python (the one `accelerate launch` runs): the worker checks at start-up which optimizers it can import. */
  TRAINER_PYTHON: z.string().min(1).default('python3'),
  /** Keep a run's folder (checkpoints, training states, staged dataset) after it ended, for debugging. */
  KEEP_RUN_FOLDERS: bool.default(false),
  SD_SCRIPTS_DIR: z.string().min(1).default('./sd-scripts'),
  MODELS_DIR: z.string().min(1).default('./models'),
  /** All-in-one mode: the bot process also runs the tagging worker. */
  TAGGER_IN_BOT: bool.default(true),
  TAGGER_GENERAL_THRESHOLD: z.coerce.number().min(0).max(1).default(0.35),
  TAGGER_CHARACTER_THRESHOLD: z.coerce.number().min(0).max(1).default(0.85),
  /** While the tagger model is unavailable, tagging jobs wait and are retried this often. */
  TAGGER_RETRY_SECONDS: int(1, 3600).default(60),
  /** A training worker's name in /train status (default: the host name). */
  WORKER_ID: z
    .string()
    .regex(/^[a-zA-Z0-9._-]{1,64}$/)
    .optional(),
  /** How often a worker beats; it counts as gone after three missed beats. */
  WORKER_HEARTBEAT_SECONDS: int(1, 300).default(10),
  /** How long a bot process that died keeps holding a dataset's lock (its uploads, removals) before another takes it. */
  LOCK_TTL_SECONDS: int(1, 600).default(30),
  /** How soon a run held by a dead worker is handed to the next worker (BullMQ lock + stall check). */
  TRAINING_STALLED_SECONDS: int(1, 3600).default(60),
  /** How often a run reports its progress at most. */
  PROGRESS_INTERVAL_SECONDS: int(1, 3600).default(60),
  /** How often an epoch post's vote counts are edited at most (votes in between are batched). */
  VOTE_EDIT_SECONDS: int(1, 600).default(10),
  /** How often a server's moderation channel gets a notice of what arrived for review, at most (arrivals in between are listed together). */
  MODERATION_NOTICE_SECONDS: int(1, 3600).default(60),
  /** How often a waiting image's acknowledgement (its place in line) is edited at most. */
  LINE_EDIT_SECONDS: int(1, 600).default(5),
  /** Which queues a worker process (`npm run worker`) consumes. */
  WORKER_QUEUES: z
    .string()
    .transform((s) =>
      s
        .split(',')
        .map((q) => q.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.enum(['tagging', 'training'])).min(1))
    .default(['tagging']),
  /** A remote training worker: the bot's public base URL (https) and the token `/worker add` gave. */
  LORA_GUILD_URL: z.url().optional(),
  WORKER_TOKEN: z
    .string()
    .regex(/^lgw_w[a-z0-9]{10}_[A-Za-z0-9_-]{43}$/, 'the token /worker add showed (lgw_…)')
    .optional(),
  /** A remote worker's local cache of images, run folders and artifacts, bounded in size. */
  WORKER_CACHE_DIR: z.string().min(1).default('./worker-cache'),
  WORKER_CACHE_MAX_GB: z.coerce.number().min(0.1).max(100_000).default(50),
  /** Plain-http remote workers (PUBLIC_URL / LORA_GUILD_URL not https): for tests and local networks only. */
  ALLOW_INSECURE_WORKER_HTTP: bool.default(false),
  /** A remote worker's lease on a run lapses when its heartbeats stop for this long. */
  LEASE_SECONDS: int(2, 3600).default(90),
  /** The largest file a remote worker may upload (checkpoints, states). */
  WORKER_UPLOAD_MAX_BYTES: int(1024, 64 * 1024 * MiB).default(4096 * MiB),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  // Intake limits (all optional; the defaults suit a community server).
  MAX_IMAGE_BYTES: int(1024, 1024 * MiB).default(50 * MiB),
  MAX_ZIP_BYTES: int(1024, 8192 * MiB).default(512 * MiB),
  ZIP_MAX_ENTRIES: int(1, 100_000).default(2000),
  ZIP_MAX_UNCOMPRESSED_BYTES: int(1024, 64 * 1024 * MiB).default(4096 * MiB),
  MAX_INPUT_PIXELS: int(1_000_000, 1_000_000_000).default(100_000_000),
  MASTER_MAX_PIXELS: int(262_144, 100_000_000).default(4_194_304),
  MIN_SHORT_SIDE: int(64, 4096).default(256),
  FLATTEN_BACKGROUND: colour.default('#ffffff'),
  NEAR_DUPLICATE_DISTANCE: int(0, 32).default(NEAR_DUPLICATE_DISTANCE),
});

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Parses the environment. Empty strings count as unset, as in most .env files. */
export function loadConfig(env: NodeJS.ProcessEnv | Record<string, string | undefined>): Config {
  const cleaned: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && v !== '') cleaned[k] = v;
  }
  const parsed = configSchema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`));
  }
  return parsed.data;
}

/** The bot needs credentials that a worker does not. */
export function requireBotCredentials(config: Config): { token: string; appId: string } {
  const problems: string[] = [];
  if (!config.DISCORD_TOKEN) problems.push('DISCORD_TOKEN: required to run the bot');
  if (!config.DISCORD_APP_ID) problems.push('DISCORD_APP_ID: required to run the bot');
  if (problems.length > 0 || !config.DISCORD_TOKEN || !config.DISCORD_APP_ID) throw new ConfigError(problems);
  return { token: config.DISCORD_TOKEN, appId: config.DISCORD_APP_ID };
}

/**
 * For an entry point: reads `.env` when there is one (the environment wins over it), parses the
 * configuration, and on a bad one prints every problem and exits with status 2.
 */
export function loadProcessConfig(): Config {
  try {
    process.loadEnvFile('.env');
  } catch {
    // No .env file: the environment is used as it is.
  }
  try {
    return loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}
