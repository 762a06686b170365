/**
 * 100 simultaneous `/dataset add` commands against the fake Discord and a real bot process:
 * acknowledgement latency (Discord allows 3 s), time until every report is posted, and the bot
 * process's peak RSS (VmHWM).
 */
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { normalJpeg } from '../test/fixtures/images.ts';
import { World } from '../test/e2e/world.ts';

const COMMANDS = 100;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

export async function benchIntakeLoad(): Promise<void> {
  const world = await World.start();
  try {
    await world.spawnBot();
    const pid = world.child!.process.pid!;
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'bench', trigger: 'ohwx_bench', class: 'woman', kind: 'character', base: 'sd15' },
    });
    await create.waitForEdit();

    const files = await Promise.all(Array.from({ length: COMMANDS }, (_, i) => normalJpeg(10_000 + i, 768, 576)));
    const attachments = files.map((f) => world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType }));
    const rssBefore = await peakRssMiB(pid);

    const started = Date.now();
    const handles = attachments.map((a) => world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'bench', image1: a } }));
    await Promise.all(handles.map((h) => h.callback(30_000)));
    const acks = handles.map((h) => h.ackLatencyMs()).sort((a, b) => a - b);
    await Promise.all(handles.map((h) => h.waitForEdit(undefined, 300_000)));
    const allDone = Date.now() - started;
    const peak = await peakRssMiB(pid);
    const accepted = handles.filter((h) => /1 added/.test(h.lastReply()?.content ?? '')).length;

    console.log(`intake load: ${COMMANDS} simultaneous /dataset add (1 image of 768×576 each), bot as its own process`);
    console.log(
      `  acknowledgement latency: p50 ${percentile(acks, 50).toFixed(0)} ms, p99 ${percentile(acks, 99).toFixed(0)} ms, max ${acks[acks.length - 1]!.toFixed(0)} ms (Discord allows 3000 ms)`,
    );
    console.log(`  all ${COMMANDS} reports posted after ${(allDone / 1000).toFixed(1)} s (${accepted} accepted)`);
    console.log(`  bot peak RSS: ${peak.toFixed(0)} MiB (after start-up: ${rssBefore.toFixed(0)} MiB)`);
  } finally {
    await world.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await benchIntakeLoad();
}
