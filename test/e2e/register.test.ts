import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allCommandData } from '../../commands/all.ts';
import { registerCommands } from '../../commands/register.ts';
import { FakeDiscord } from '../harness/fake-discord.ts';

let discord: FakeDiscord;

beforeAll(async () => {
  discord = await FakeDiscord.start();
});
afterAll(async () => {
  await discord.close();
});

describe('npm run register', () => {
  it('overwrites the global commands in one request, with every definition', async () => {
    const done = await registerCommands({ token: 't', appId: discord.applicationId, apiUrl: discord.apiUrl });
    expect(done).toHaveLength(allCommandData.length);
    const puts = discord.callsTo('PUT', new RegExp(`^/applications/${discord.applicationId}/commands$`));
    expect(puts).toHaveLength(1);
    expect(puts[0]!.headers.authorization).toBe('Bot t');
    expect((puts[0]!.json as { name: string }[]).map((c) => c.name)).toEqual([
      'dataset',
      'tags',
      'caption',
      'concept',
      'train',
      'settings',
      'lora',
      'worker',
      'moderation',
    ]);
    expect(
      discord
        .commands()
        .map((c) => c.name)
        .sort(),
    ).toEqual(['caption', 'concept', 'dataset', 'lora', 'moderation', 'settings', 'tags', 'train', 'worker']);
  });

  it('shows /moderation only to members with Manage Messages (the bot checks it again on every use)', () => {
    const moderation = allCommandData.find((c) => c.name === 'moderation')!;
    expect(moderation.default_member_permissions).toBe(String(1n << 13n));
  });

  it('registers for one guild when asked, leaving the global ones alone', async () => {
    await registerCommands({ token: 't', appId: discord.applicationId, apiUrl: discord.apiUrl, guildId: discord.guildId });
    expect(discord.callsTo('PUT', new RegExp(`^/applications/${discord.applicationId}/guilds/${discord.guildId}/commands$`))).toHaveLength(1);
    expect(discord.commands(discord.guildId)).toHaveLength(allCommandData.length);
  });

  it('keeps every definition within Discord’s limits', () => {
    for (const command of allCommandData) {
      expect(command.name).toMatch(/^[a-z-]{1,32}$/);
      expect(command.description.length).toBeLessThanOrEqual(100);
      for (const sub of command.options ?? []) {
        expect(sub.description.length).toBeLessThanOrEqual(100);
        const options = 'options' in sub ? (sub.options ?? []) : [];
        expect(options.length).toBeLessThanOrEqual(25);
        for (const o of options) expect(o.description.length, `${command.name} ${sub.name} ${o.name}`).toBeLessThanOrEqual(100);
      }
    }
  });
});
