/**
 * Screenshots of preview pages with headless Chromium from Debian's packages: installed with
 * apt-get when missing (through sudo when not root). Two runs per page: one reads the page's full
 * height (the page writes it on <body> once loaded), one shoots a window that tall. Arguments go
 * to the program as a list, never through a shell.
 */
import { execFile, spawn } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
/** Taller windows fail or come out blank in the software compositor; longer pages are cut there. */
export const MAX_HEIGHT = 16_000;

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--hide-scrollbars',
  '--virtual-time-budget=5000',
];

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function firstExisting(): Promise<string | null> {
  for (const path of CANDIDATES) if (await exists(path)) return path;
  return null;
}

function inherit(command: string, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    child.on('error', () => resolve(127));
    child.on('exit', (code) => resolve(code ?? 1));
  });
}

/** Members' messages are full of emoji; without a colour emoji font they show as empty boxes. */
const EMOJI_FONT = '/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf';

/**
 * The Chromium to use, installing Debian's packages (chromium, the emoji font) when missing; null
 * when there is no Chromium and installing it failed.
 */
export async function ensureChromium(say: (line: string) => void): Promise<string | null> {
  const missing = [...((await firstExisting()) ? [] : ['chromium']), ...((await exists(EMOJI_FONT)) ? [] : ['fonts-noto-color-emoji'])];
  if (missing.length === 0) return firstExisting();
  const root = process.getuid?.() === 0;
  if (!root && !(await exists('/usr/bin/sudo'))) {
    say(`missing ${missing.join(' and ')}, and this user is neither root nor has sudo: cannot install.`);
    return firstExisting();
  }
  const install = ['install', '-y', '--no-install-recommends', ...missing];
  say(`missing ${missing.join(' and ')}: installing Debian's package (${[...(root ? [] : ['sudo']), 'apt-get', ...install].join(' ')})…`);
  const apt = (...args: string[]) => (root ? inherit('apt-get', args) : inherit('sudo', ['apt-get', ...args]));
  if ((await apt(...install)) !== 0) {
    say('apt-get install failed; updating the package lists and trying once more…');
    if ((await apt('update')) !== 0 || (await apt(...install)) !== 0) say(`installing ${missing.join(' and ')} failed.`);
  }
  return firstExisting();
}

export interface Shot {
  png: string;
  height: number;
  /** True when the page was taller than MAX_HEIGHT and the picture stops there. */
  cut: boolean;
}

/** Screenshots `html` into `png` at `width` px, as tall as the page. */
export async function screenshot(chromium: string, html: string, png: string, width = 1000): Promise<Shot> {
  const profile = await mkdtemp(join(tmpdir(), 'lora-guild-chromium-'));
  try {
    const url = pathToFileURL(html).href;
    const flags = [...FLAGS, `--user-data-dir=${profile}`];
    const { stdout } = await run(chromium, [...flags, `--window-size=${width},800`, '--dump-dom', url], { timeout: 90_000, maxBuffer: 64 * 1024 * 1024 });
    const measured = Number(/<body[^>]*data-height="(\d+)"/.exec(stdout)?.[1] ?? '0');
    const full = measured > 0 ? measured : MAX_HEIGHT;
    const height = Math.min(full, MAX_HEIGHT);
    await run(chromium, [...flags, `--window-size=${width},${height}`, `--screenshot=${png}`, url], { timeout: 90_000 });
    if (!(await exists(png))) throw new Error(`Chromium wrote no screenshot of ${html}`);
    return { png, height, cut: full > MAX_HEIGHT };
  } finally {
    await rm(profile, { recursive: true, force: true });
  }
}
