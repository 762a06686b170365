/**
 * Registers the slash commands (bulk overwrite). The bot never does this at start-up.
 *   npm run register               → global commands (may take a while to appear everywhere)
 *   npm run register -- --guild ID → one guild's commands (immediate; for testing)
 */
import { REST, Routes } from 'discord.js';
import { loadProcessConfig, requireBotCredentials } from '../src/core/config.ts';
import { allCommandData } from './all.ts';

export async function registerCommands(opts: { token: string; appId: string; apiUrl: string; guildId?: string | undefined }) {
  const rest = new REST({ api: opts.apiUrl }).setToken(opts.token);
  const route = opts.guildId ? Routes.applicationGuildCommands(opts.appId, opts.guildId) : Routes.applicationCommands(opts.appId);
  return (await rest.put(route, { body: allCommandData })) as unknown[];
}

function parseGuild(argv: string[]): string | undefined {
  const i = argv.indexOf('--guild');
  if (i < 0) return undefined;
  const id = argv[i + 1];
  if (!id || !/^\d{1,25}$/.test(id)) throw new Error('--guild needs a guild id (a number)');
  return id;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const config = loadProcessConfig();
  const { token, appId } = requireBotCredentials(config);
  const guildId = parseGuild(process.argv.slice(2));
  const done = await registerCommands({ token, appId, apiUrl: config.DISCORD_API_URL, guildId });
  console.log(`Registered ${done.length} command(s) ${guildId ? `in guild ${guildId}` : 'globally'}.`);
}
