import { ApplicationCommandOptionType } from 'discord.js';
import { describe, expect, it } from 'vitest';
import { allCommandData } from '../../commands/all.ts';
import { attestButton } from '../../src/bot/attestation.ts';
import { captionEditModal, captionSentenceModal } from '../../src/bot/commands/caption.ts';
import { showPageButtons } from '../../src/bot/commands/dataset.ts';
import { pruneButton, topPageButtons } from '../../src/bot/commands/tags.ts';
import { removePromptButton } from '../../src/bot/commands/sample-prompts.ts';
import { tryButtonHandler } from '../../src/bot/commands/lora.ts';
import { startButton } from '../../src/bot/commands/train.ts';
import { componentHandlers, slashCommands } from '../../src/bot/handlers.ts';
import { acknowledged, COUNT_PART, customIdCodec, ID_PART, subcommandTable, type ComponentHandler, type ComponentKind } from '../../src/bot/interactions.ts';
import { voteButtonHandler, voteSelectHandler } from '../../src/bot/votes.ts';
import { pageButton, removeButton, removeModal, reviewButton } from '../../src/bot/commands/moderation.ts';
import { reportButton, reportModal } from '../../src/bot/moderation-report.ts';

/** One customId payload per family, typed by its handler. */
function sample<T, K extends ComponentKind>(handler: ComponentHandler<T, K>, data: T) {
  return { handler: handler as ComponentHandler<unknown>, data: data as unknown };
}

const samples = [
  sample(showPageButtons, { datasetId: 'ds01abc', page: 12 }),
  sample(pruneButton, { suggestionId: 'p9x2kq' }),
  sample(topPageButtons, { datasetId: 'ds01abc', concept: '-', page: 2 }),
  sample(captionEditModal, { datasetId: 'ds01abc', imageNo: 40, version: 0 }),
  sample(captionSentenceModal, { datasetId: 'ds01abc', imageNo: 40, version: 7 }),
  sample(startButton, { planId: 'pl4n01' }),
  sample(voteButtonHandler, { runId: 'r0n1x', epoch: 3 }),
  sample(voteSelectHandler, { runId: 'r0n1x' }),
  sample(tryButtonHandler, { action: 'down', requestId: 'g3n0r1x9qa' }),
  sample(attestButton, { userId: '100000000000000001' }),
  sample(reviewButton, { action: 'dismiss', datasetId: 'ds01abc', no: 0 }),
  sample(removeButton, { datasetId: 'ds01abc', no: 12 }),
  sample(removeModal, { datasetId: 'ds01abc', no: 0 }),
  sample(pageButton, { view: 'log', page: 3 }),
  sample(reportButton, { datasetId: 'ds01abc' }),
  sample(reportModal, { datasetId: 'ds01abc' }),
  sample(removePromptButton, { datasetId: 'ds01abc', index: 2, print: '0a1b2c3d4e' }),
];

describe('slash command table', () => {
  it('answers exactly the registered commands, in the registered order', () => {
    expect(slashCommands.map((c) => c.data.name)).toEqual(allCommandData.map((d) => d.name));
    for (const [i, command] of slashCommands.entries()) expect(command.data).toBe(allCommandData[i]);
  });

  it('has one entry per registered subcommand, and none that is not registered', () => {
    for (const command of slashCommands) {
      const registered = (command.data.options ?? []).map((o) => {
        expect(o.type, `/${command.data.name} ${o.name}`).toBe(ApplicationCommandOptionType.Subcommand);
        return o.name;
      });
      expect(Object.keys(command.subcommands).sort(), `/${command.data.name}`).toEqual(registered.sort());
    }
  });

  it('refuses a subcommand given twice, in two groups of acknowledgement', () => {
    const show = () => Promise.resolve();
    expect(Object.keys(subcommandTable(acknowledged('public', { show }), acknowledged('ephemeral', { hide: show })))).toEqual(['show', 'hide']);
    expect(() => subcommandTable(acknowledged('public', { show }), acknowledged('ephemeral', { show }))).toThrow('subcommand show is in the table twice');
  });
});

describe('component codecs', () => {
  it('cover every family once', () => {
    const families = componentHandlers.map((h) => h.family);
    expect(new Set(families).size).toBe(families.length);
    expect(samples.map((s) => s.handler.family).sort()).toEqual([...families].sort());
  });

  it('read back what they write, as `family:…` within Discord’s 100 characters', () => {
    for (const { handler, data } of samples) {
      const id = handler.encode(data);
      expect(id.startsWith(`${handler.family}:`), id).toBe(true);
      expect(id.length).toBeLessThanOrEqual(100);
      expect(handler.parse(id)).toEqual(data);
    }
  });

  it('refuse every other family’s ids', () => {
    for (const { handler } of samples) {
      for (const other of samples.filter((s) => s.handler !== handler)) {
        expect(handler.parse(other.handler.encode(other.data)), `${handler.family} ← ${other.handler.family}`).toBeNull();
      }
    }
  });

  it('refuse ids with parts missing, extra, or out of shape', () => {
    for (const { handler, data } of samples) {
      const id = handler.encode(data);
      expect(handler.parse(`${id}:1`), id).toBeNull();
      expect(handler.parse(id.slice(0, id.lastIndexOf(':'))), id).toBeNull();
      expect(handler.parse(id.toUpperCase()), id).toBeNull();
      expect(handler.parse(`${id.slice(0, id.lastIndexOf(':'))}:-1`), id).toBeNull();
    }
    expect(showPageButtons.parse('dsshow:abc:1.5')).toBeNull();
    expect(showPageButtons.parse('dsshow:abc:99999999')).toBeNull();
    expect(voteButtonHandler.parse('vote:r0n1x:')).toBeNull();
  });

  it('refuse to write an id that would not read back', () => {
    const codec = customIdCodec('demo', { id: ID_PART, n: COUNT_PART });
    expect(codec.encode({ id: 'abc', n: 7 })).toBe('demo:abc:7');
    expect(() => codec.encode({ id: 'a:b', n: 1 })).toThrow(/bad customId/);
    expect(() => codec.encode({ id: 'ABC', n: 1 })).toThrow(/bad customId/);
    expect(() => codec.encode({ id: 'abc', n: -1 })).toThrow(/bad customId/);
    expect(() => codec.encode({ id: 'abc', n: 1.5 })).toThrow(/bad customId/);
    expect(() => customIdCodec('x'.repeat(90), { id: ID_PART }).encode({ id: 'a'.repeat(16) })).toThrow(/bad customId/);
  });

  it('write the fields in the order they are declared, and read them back typed', () => {
    const codec = customIdCodec('demo', { n: COUNT_PART, id: ID_PART });
    expect(codec.encode({ id: 'abc', n: 7 })).toBe('demo:7:abc');
    expect(codec.parse('demo:7:abc')).toEqual({ n: 7, id: 'abc' });
    expect(codec.parse('demo:abc:7')).toBeNull();
  });
});
