/**
 * `npm run preview`: plays the scripted scenario against the fake Discord and writes what members
 * saw to .tmp/preview/ (or the folder given as the first argument): index.html, one page per
 * phase with its attachments under files/, and a PNG screenshot per phase when Chromium is there
 * or can be installed. A development tool for whoever changes a message; CI does not run it.
 * `--render-only` renders the pages and screenshots again from the last run's transcript.json.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { PreviewTranscript } from './transcript.ts';
import { renderIndexPage, renderPhasePage, type IndexShot } from './render.ts';
import { runScenario } from './scenario.ts';
import { ensureChromium, MAX_HEIGHT, screenshot } from './screenshot.ts';

const say = (line: string) => console.log(`preview: ${line}`);

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const renderOnly = args.includes('--render-only');
  const outDir = resolve(args.find((a) => !a.startsWith('--')) ?? '.tmp/preview');
  const started = Date.now();
  let transcript: PreviewTranscript;
  if (renderOnly) {
    transcript = JSON.parse(await readFile(join(outDir, 'transcript.json'), 'utf8')) as PreviewTranscript;
  } else {
    await rm(outDir, { recursive: true, force: true });
    await mkdir(outDir, { recursive: true });
    transcript = await runScenario({ outDir, say });
    await writeFile(join(outDir, 'transcript.json'), JSON.stringify(transcript, null, 1));
    say(`scenario played in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }
  const pages: string[] = [];
  for (const phase of transcript.phases) {
    const page = join(outDir, `${phase.slug}.html`);
    await writeFile(page, renderPhasePage(transcript, phase));
    pages.push(page);
  }

  const shots: IndexShot[] = transcript.phases.map((p) => ({ slug: p.slug, png: null }));
  // No picture from an earlier run may pass for this one's.
  for (const shot of shots) await rm(join(outDir, `${shot.slug}.png`), { force: true });
  let note: string | null = null;
  const chromium = await ensureChromium(say);
  if (!chromium) {
    note = 'Screenshots were skipped: Chromium is not installed and could not be installed (apt-get install chromium).';
  } else {
    const failed: string[] = [];
    for (const shot of shots) {
      try {
        const taken = await screenshot(chromium, join(outDir, `${shot.slug}.html`), join(outDir, `${shot.slug}.png`));
        shot.png = `${shot.slug}.png`;
        say(`${taken.png} (${taken.height} px${taken.cut ? `, cut at ${MAX_HEIGHT} px: the page is longer` : ''})`);
      } catch (err) {
        failed.push(shot.slug);
        say(`no screenshot of ${shot.slug}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (failed.length > 0) note = `Chromium failed to screenshot ${failed.join(', ')}; the HTML pages are complete.`;
  }
  await writeFile(join(outDir, 'index.html'), renderIndexPage(transcript, shots, note));
  say(`open ${join(outDir, 'index.html')}`);
  if (note) say(note.toUpperCase());
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
