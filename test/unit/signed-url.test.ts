import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  downloadFileName,
  EXPORT_PATH_PREFIX,
  isDownloadFileName,
  makeDownloadUrl,
  parseDownloadPath,
  signDownload,
  signExport,
  verifyDownload,
  verifyExport,
} from '../../src/core/signed-url.ts';

const SECRET = 'a-download-secret-of-at-least-32-characters';
const BLOB = createHash('sha256').update('lora bytes').digest('hex');
const OTHER_BLOB = createHash('sha256').update('other bytes').digest('hex');
const NAME = 'aria-r3k9-e04.safetensors';
const NOW = new Date('2026-03-01T12:00:00Z');
const IN_AN_HOUR = new Date(NOW.getTime() + 3600_000);

/** The parts of a signed path, as the server would read them off the request. */
function partsOf(pathAndQuery: string) {
  const url = new URL(pathAndQuery, 'http://x');
  const path = parseDownloadPath(url.pathname);
  if (!path) throw new Error(`not a download path: ${url.pathname}`);
  return { ...path, exp: url.searchParams.get('exp'), sig: url.searchParams.get('sig') };
}

function flipChar(s: string, i: number): string {
  const c = s[i]!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const next = alphabet[(alphabet.indexOf(c) + 1) % alphabet.length]!;
  return s.slice(0, i) + next + s.slice(i + 1);
}

describe('signDownload / verifyDownload', () => {
  it('round-trips: a freshly signed link verifies', () => {
    const path = signDownload({ secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR });
    expect(path).toMatch(new RegExp(`^/dl/${BLOB}/${NAME.replace(/\./g, '\\.')}\\?exp=\\d+&sig=[A-Za-z0-9_-]{43}$`));
    const p = partsOf(path);
    expect(p.exp).toBe(String(Math.floor(IN_AN_HOUR.getTime() / 1000)));
    expect(verifyDownload({ secret: SECRET, ...p, now: NOW })).toEqual({ ok: true });
  });

  it('is deterministic for the same inputs and differs per secret', () => {
    const a = signDownload({ secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR });
    const b = signDownload({ secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR });
    const c = signDownload({ secret: `${SECRET}!`, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR });
    expect(a).toBe(b);
    expect(c).not.toBe(a);
    expect(verifyDownload({ secret: `${SECRET}!`, ...partsOf(a), now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
  });

  const good = () => partsOf(signDownload({ secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR }));

  it('refuses another blob id under the same signature', () => {
    expect(verifyDownload({ secret: SECRET, ...good(), blobId: OTHER_BLOB, now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
  });

  it('refuses another file name under the same signature', () => {
    expect(verifyDownload({ secret: SECRET, ...good(), fileName: 'aria-r3k9-e05.safetensors', now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
  });

  it('refuses a pushed-back expiry under the same signature', () => {
    const p = good();
    const later = String(Number(p.exp) + 86_400);
    expect(verifyDownload({ secret: SECRET, ...p, exp: later, now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
  });

  it('refuses a signature changed in any one character, the last one included', () => {
    const p = good();
    for (const i of [0, 10, 21, 41, 42]) {
      expect(verifyDownload({ secret: SECRET, ...p, sig: flipChar(p.sig!, i), now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
    }
  });

  it('refuses an expired link, and from the expiry second on', () => {
    const p = good();
    const expMs = Number(p.exp) * 1000;
    expect(verifyDownload({ secret: SECRET, ...p, now: new Date(expMs - 1) })).toEqual({ ok: true });
    expect(verifyDownload({ secret: SECRET, ...p, now: new Date(expMs) })).toEqual({ ok: false, reason: 'expired' });
    expect(verifyDownload({ secret: SECRET, ...p, now: new Date(expMs + 86_400_000) })).toEqual({ ok: false, reason: 'expired' });
  });

  it('calls a tampered expired link a bad signature, not expired', () => {
    const p = good();
    const late = new Date(Number(p.exp) * 1000 + 1000);
    expect(verifyDownload({ secret: SECRET, ...p, blobId: OTHER_BLOB, now: late })).toEqual({ ok: false, reason: 'bad-signature' });
  });

  it.each([
    ['no exp', { exp: null }],
    ['a non-numeric exp', { exp: '12e9' }],
    ['a negative exp', { exp: '-5' }],
    ['no sig', { sig: null }],
    ['a short sig', { sig: 'abc' }],
    ['a sig with padding', { sig: `${'A'.repeat(42)}=` }],
    ['a blob id that is not sha256 hex', { blobId: '../../etc/passwd' }],
    ['an upper-case blob id', { blobId: BLOB.toUpperCase() }],
    ['a file name with a slash', { fileName: 'a/b.safetensors' }],
    ['a file name with another extension', { fileName: 'aria.exe' }],
  ])('calls a link with %s malformed', (_label, change) => {
    expect(verifyDownload({ secret: SECRET, ...good(), ...change, now: NOW })).toEqual({ ok: false, reason: 'malformed' });
  });

  it('refuses to sign what it would not verify, and a short secret', () => {
    const base = { secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR };
    expect(() => signDownload({ ...base, blobId: 'nope' })).toThrow(/blob id/);
    expect(() => signDownload({ ...base, fileName: 'my lora.safetensors' })).toThrow(/file name/);
    expect(() => signDownload({ ...base, expiresAt: new Date(Number.NaN) })).toThrow(/expiry/);
    expect(() => signDownload({ ...base, secret: 'short' })).toThrow(/secret/);
  });
});

describe('download file names', () => {
  it.each([
    ['aria.safetensors', true],
    ['aria-r3k9_e04.safetensors', true],
    ['grid.png', true],
    ['grid.jpg', true],
    ['dataset.zip', true],
    ['.safetensors', false],
    ['.hidden.safetensors', false],
    ['-flag.zip', false],
    ['aria.SAFETENSORS', false],
    ['aria.txt', false],
    ['aria', false],
    ['ari a.png', false],
    ['ária.png', false],
    ['a"b.png', false],
    ['a;b.png', false],
    [`${'a'.repeat(116)}.png`, true],
    [`${'a'.repeat(117)}.png`, false],
  ])('%s valid: %s', (name, ok) => {
    expect(isDownloadFileName(name)).toBe(ok);
  });

  it('builds a valid name from any text', () => {
    expect(downloadFileName('Ária the "Great" / v2', '.safetensors')).toBe('Aria-the-Great-v2.safetensors');
    expect(downloadFileName('..', '.png')).toBe('lora.png');
    expect(downloadFileName('💥💥', '.zip')).toBe('lora.zip');
    const long = downloadFileName('x'.repeat(500), '.safetensors');
    expect(long.length).toBe(120);
    for (const raw of ['a b c', '../../etc', 'émoji 🎨 name', '-x-', 'x'.repeat(300)]) {
      expect(isDownloadFileName(downloadFileName(raw, '.safetensors'))).toBe(true);
    }
  });
});

describe('makeDownloadUrl and parseDownloadPath', () => {
  it('puts the signed path under PUBLIC_URL, keeping its path prefix', () => {
    const input = { secret: SECRET, blobId: BLOB, fileName: NAME, expiresAt: IN_AN_HOUR };
    const path = signDownload(input);
    expect(makeDownloadUrl('https://lora.example.org', input)).toBe(`https://lora.example.org${path}`);
    expect(makeDownloadUrl('https://lora.example.org/', input)).toBe(`https://lora.example.org${path}`);
    expect(makeDownloadUrl('https://example.org/guild/', input)).toBe(`https://example.org/guild${path}`);
    expect(() => makeDownloadUrl('ftp://example.org', input)).toThrow(/http/);
  });

  it('splits only /dl/<blob>/<name>', () => {
    expect(parseDownloadPath(`/dl/${BLOB}/${NAME}`)).toEqual({ blobId: BLOB, fileName: NAME });
    expect(parseDownloadPath('/dl/abc/a%2Fb.png')).toEqual({ blobId: 'abc', fileName: 'a/b.png' });
    expect(parseDownloadPath(`/dl/${BLOB}`)).toBeNull();
    expect(parseDownloadPath(`/dl/${BLOB}/a/b.png`)).toBeNull();
    expect(parseDownloadPath('/dl/x/%E0%A4%A.png')).toBeNull();
    expect(parseDownloadPath('/healthz')).toBeNull();
  });
});

describe('signExport / verifyExport', () => {
  const exportParts = (pathAndQuery: string) => {
    const url = new URL(pathAndQuery, 'http://x');
    const path = parseDownloadPath(url.pathname, EXPORT_PATH_PREFIX);
    if (!path) throw new Error(`not an export path: ${url.pathname}`);
    return { ...path, exp: url.searchParams.get('exp'), sig: url.searchParams.get('sig') };
  };

  it('round-trips, and an export link can never pass as a file link or the other way round', () => {
    const path = signExport({ secret: SECRET, datasetId: 'k3x9abcd', fileName: 'aria-dataset.zip', expiresAt: IN_AN_HOUR });
    expect(path).toMatch(/^\/export\/k3x9abcd\/aria-dataset\.zip\?exp=\d+&sig=[A-Za-z0-9_-]{43}$/);
    const parts = exportParts(path);
    expect(verifyExport({ secret: SECRET, ...parts, now: NOW })).toEqual({ ok: true });
    expect(verifyExport({ secret: SECRET, ...parts, blobId: 'k3x9abce', now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
    expect(verifyExport({ secret: SECRET, ...parts, now: new Date(IN_AN_HOUR.getTime() + 1000) })).toEqual({ ok: false, reason: 'expired' });

    // The same id, name and expiry signed as a file link does not open the export, nor vice versa.
    const zipBlob = createHash('sha256').update('a zip').digest('hex');
    const file = partsOf(signDownload({ secret: SECRET, blobId: zipBlob, fileName: 'aria-dataset.zip', expiresAt: IN_AN_HOUR }));
    expect(verifyExport({ secret: SECRET, ...parts, sig: file.sig, exp: file.exp, now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
    expect(verifyDownload({ secret: SECRET, ...file, sig: parts.sig, now: NOW })).toEqual({ ok: false, reason: 'bad-signature' });
    expect(verifyExport({ secret: SECRET, ...parts, fileName: 'aria-dataset.png', now: NOW })).toEqual({ ok: false, reason: 'malformed' });
    expect(() => signExport({ secret: SECRET, datasetId: '../x', fileName: 'a.zip', expiresAt: IN_AN_HOUR })).toThrow('invalid dataset id');
  });
});
