/**
 * Signed, expiring download links for artifacts too large to attach in Discord (design.md, data
 * flow step 8): `/dl/<blobId>/<fileName>?exp=<unix seconds>&sig=<base64url HMAC-SHA256>`.
 *
 * The signature covers the blob id, the file name and the expiry, so none of them can be changed
 * without the secret. File names are restricted to `[A-Za-z0-9._-]` with a known extension: they
 * end up in a Content-Disposition header and in a user's download folder, and never come from
 * user text unchecked (use `downloadFileName` to build one from a base name).
 *
 * Signed URLs are secrets while they live: never log them (logger.ts redacts `signedUrl`).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { isBlobId } from './blob-store.ts';

export const DOWNLOAD_PATH_PREFIX = '/dl/';
export const MAX_DOWNLOAD_FILE_NAME = 120;
export const DOWNLOAD_EXTENSIONS = ['.safetensors', '.png', '.jpg', '.zip'] as const;
export type DownloadExtension = (typeof DOWNLOAD_EXTENSIONS)[number];
/** The shortest secret accepted (config.ts asks the same of DOWNLOAD_SECRET). */
export const MIN_SECRET_LENGTH = 32;

const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const EXP = /^[0-9]{1,12}$/;
/** 32 bytes of HMAC-SHA256 in unpadded base64url. */
const SIG = /^[A-Za-z0-9_-]{43}$/;
const SIGNATURE_VERSION = 'lg-dl-v1';

export interface SignDownloadInput {
  secret: string;
  blobId: string;
  fileName: string;
  expiresAt: Date;
}

export type VerifyResult = { ok: true } | { ok: false; reason: 'expired' | 'bad-signature' | 'malformed' };

export interface VerifyDownloadInput {
  secret: string;
  blobId: string;
  fileName: string;
  /** As found in the query string (null when absent). */
  exp: string | number | null | undefined;
  sig: string | null | undefined;
  now?: Date;
}

/** Whether `name` may be offered as a download's file name. */
export function isDownloadFileName(name: unknown): name is string {
  return (
    typeof name === 'string' &&
    name.length <= MAX_DOWNLOAD_FILE_NAME &&
    FILE_NAME.test(name) &&
    DOWNLOAD_EXTENSIONS.some((ext) => name.endsWith(ext) && name.length > ext.length)
  );
}

/**
 * A valid download file name from any base text (a dataset or output name): characters outside
 * `[A-Za-z0-9._-]` become `-`, leading dots and dashes go, the whole is cut to fit, and `ext` is
 * appended. Falls back to `lora` when nothing is left.
 */
export function downloadFileName(base: string, ext: DownloadExtension): string {
  let stem = base
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .replace(/^[._-]+/, '')
    .replace(/[.-]+$/, '');
  stem = stem.slice(0, MAX_DOWNLOAD_FILE_NAME - ext.length).replace(/[.-]+$/, '');
  if (stem.length === 0) stem = 'lora';
  return `${stem}${ext}`;
}

function assertSecret(secret: string): void {
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw new TypeError(`the download secret must have at least ${MIN_SECRET_LENGTH} characters`);
  }
}

function mac(secret: string, blobId: string, fileName: string, exp: number, version = SIGNATURE_VERSION): Buffer {
  // The parts cannot contain a newline (validated), so the message is unambiguous; the version
  // tells a blob link from a dataset export link, so one can never be turned into the other.
  return createHmac('sha256', secret).update(`${version}\n${blobId}\n${fileName}\n${exp}`, 'utf8').digest();
}

/** The path and query of a signed link, e.g. `/dl/<blob>/<name>?exp=1767225600&sig=…`. */
export function signDownload(input: SignDownloadInput): string {
  assertSecret(input.secret);
  if (!isBlobId(input.blobId)) throw new TypeError('invalid blob id');
  if (!isDownloadFileName(input.fileName)) throw new TypeError('invalid download file name');
  const ms = input.expiresAt.getTime();
  if (!Number.isFinite(ms) || ms <= 0) throw new TypeError('invalid expiry');
  const exp = Math.floor(ms / 1000);
  const sig = mac(input.secret, input.blobId, input.fileName, exp).toString('base64url');
  return `${DOWNLOAD_PATH_PREFIX}${input.blobId}/${encodeURIComponent(input.fileName)}?exp=${exp}&sig=${sig}`;
}

/** An absolute signed link under `publicUrl` (whose path, if any, is kept as a prefix). */
export function makeDownloadUrl(publicUrl: string, input: SignDownloadInput): string {
  const base = new URL(publicUrl);
  if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new TypeError('PUBLIC_URL must be http(s)');
  const prefix = base.pathname.replace(/\/+$/, '');
  return `${base.origin}${prefix}${signDownload(input)}`;
}

/**
 * Checks a link's parts. Order: malformed input, then the signature (constant-time), then the
 * expiry, so "expired" is only ever said of a link we really signed.
 */
export function verifyDownload(input: VerifyDownloadInput): VerifyResult {
  return verifyLink(input, isBlobId(input.blobId), SIGNATURE_VERSION);
}

function verifyLink(input: VerifyDownloadInput, idValid: boolean, version: string): VerifyResult {
  assertSecret(input.secret);
  const { blobId, fileName, sig } = input;
  const expText = typeof input.exp === 'number' ? String(input.exp) : input.exp;
  if (!idValid || !isDownloadFileName(fileName) || typeof expText !== 'string' || !EXP.test(expText) || typeof sig !== 'string' || !SIG.test(sig)) {
    return { ok: false, reason: 'malformed' };
  }
  const exp = Number(expText);
  // Compare the canonical text, not decoded bytes: base64url's last character carries two spare
  // bits, so decoding would accept four spellings of one signature. Both are 43 ASCII bytes here.
  const expected = Buffer.from(mac(input.secret, blobId, fileName, exp, version).toString('base64url'), 'ascii');
  const given = Buffer.from(sig, 'ascii');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad-signature' };
  const now = (input.now ?? new Date()).getTime();
  if (now >= exp * 1000) return { ok: false, reason: 'expired' };
  return { ok: true };
}

export interface DownloadPath {
  blobId: string;
  fileName: string;
}

/**
 * Splits `/dl/<blob>/<name>` (a request's path, without the query). Null when the path has another
 * shape; the parts are not validated here (verifyDownload does that).
 */
export function parseDownloadPath(pathname: string, prefix = DOWNLOAD_PATH_PREFIX): DownloadPath | null {
  if (!pathname.startsWith(prefix)) return null;
  const parts = pathname.slice(prefix.length).split('/');
  if (parts.length !== 2) return null;
  const [blobId, rawName] = parts as [string, string];
  let fileName: string;
  try {
    fileName = decodeURIComponent(rawName);
  } catch {
    return null;
  }
  return { blobId, fileName };
}

// ---------------------------------------------------------------------------------------------
// Dataset exports: `/export/<datasetId>/<fileName>.zip?exp=…&sig=…`, built when fetched.

export const EXPORT_PATH_PREFIX = '/export/';
const EXPORT_SIGNATURE_VERSION = 'lg-export-v1';
const DATASET_ID = /^[a-z0-9]{4,32}$/;

/** The path and query of a signed dataset export link. */
export function signExport(input: { secret: string; datasetId: string; fileName: string; expiresAt: Date }): string {
  assertSecret(input.secret);
  if (!DATASET_ID.test(input.datasetId)) throw new TypeError('invalid dataset id');
  if (!isDownloadFileName(input.fileName) || !input.fileName.endsWith('.zip')) throw new TypeError('invalid export file name');
  const exp = Math.floor(input.expiresAt.getTime() / 1000);
  if (!Number.isFinite(exp) || exp <= 0) throw new TypeError('invalid expiry');
  const sig = mac(input.secret, input.datasetId, input.fileName, exp, EXPORT_SIGNATURE_VERSION).toString('base64url');
  return `${EXPORT_PATH_PREFIX}${input.datasetId}/${encodeURIComponent(input.fileName)}?exp=${exp}&sig=${sig}`;
}

/** An absolute signed export link under `publicUrl`. */
export function makeExportUrl(publicUrl: string, input: Parameters<typeof signExport>[0]): string {
  const base = new URL(publicUrl);
  if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new TypeError('PUBLIC_URL must be http(s)');
  return `${base.origin}${base.pathname.replace(/\/+$/, '')}${signExport(input)}`;
}

/** Checks an export link's parts, as verifyDownload does a blob link's (`blobId` is the dataset id). */
export function verifyExport(input: VerifyDownloadInput): VerifyResult {
  return verifyLink(input, DATASET_ID.test(input.blobId) && input.fileName.endsWith('.zip'), EXPORT_SIGNATURE_VERSION);
}
