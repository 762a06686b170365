import { loadProcessConfig } from '../core/config.ts';
import { createLogger } from '../core/logger.ts';
import { startBot } from './app.ts';

const config = loadProcessConfig();

const logger = createLogger(config.LOG_LEVEL);
try {
  const bot = await startBot(config, logger);
  const shutdown = (signal: string) => {
    logger.info({ signal }, 'shutting down');
    bot.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));
} catch (err) {
  logger.fatal({ err }, 'the bot could not start');
  process.exit(1);
}
