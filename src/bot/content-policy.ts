import type { Client } from 'discord.js';
import { AGE_RESTRICTED_POLICY, type ContentPolicy, type Rating } from '../core/rating.ts';
import type { Dataset } from '../store/dataset-store.ts';
import type { GuildSettingsStore } from '../store/run-store.ts';

/**
 * Whether a channel is age-restricted (Discord's `nsfw` flag). Threads have no flag of their own:
 * they take their parent's. A channel we cannot read counts as not age-restricted.
 */
async function isAgeRestricted(client: Client, channelId: string): Promise<boolean> {
  const channel = await client.channels.fetch(channelId).catch(() => null);
  if (!channel) return false;
  if (channel.isThread()) {
    if (!channel.parentId) return false;
    return isAgeRestricted(client, channel.parentId);
  }
  return 'nsfw' in channel && channel.nsfw === true;
}

/** What may be posted in (and, for a dataset's own channel, taken into) a channel. */
export async function channelPolicy(
  client: Client,
  settings: GuildSettingsStore,
  guildId: string,
  channelId: string,
): Promise<ContentPolicy & { ageRestricted: boolean }> {
  if (await isAgeRestricted(client, channelId)) return { ...AGE_RESTRICTED_POLICY, ageRestricted: true };
  return { ...(await settings.get(guildId)).moderation, ageRestricted: false };
}

/** The highest rating a dataset takes: what its own channel accepts (as intake judges it). */
export async function acceptedIn(client: Client, settings: GuildSettingsStore, dataset: Dataset): Promise<Rating> {
  return (await channelPolicy(client, settings, dataset.guildId, dataset.channelId)).accepted;
}
