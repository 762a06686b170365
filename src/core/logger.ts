import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/** Paths that must never reach a log line. */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'DISCORD_TOKEN',
  '*.DISCORD_TOKEN',
  'DOWNLOAD_SECRET',
  '*.DOWNLOAD_SECRET',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'signedUrl',
  '*.signedUrl',
];

/** The one root logger; everything else uses `logger.child({...})`. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    destination,
  );
}
