import { describe, expect, it } from 'vitest';
import { duration } from '../../src/bot/reports.ts';

describe('duration', () => {
  it('speaks in seconds, then minutes, then hours with one decimal', () => {
    expect(duration(0)).toBe('0 s');
    expect(duration(89.4)).toBe('89 s');
    expect(duration(90)).toBe('2 min');
    expect(duration(5399)).toBe('90 min');
    expect(duration(5400)).toBe('1.5 h');
    expect(duration(36_000)).toBe('10.0 h');
  });
});
