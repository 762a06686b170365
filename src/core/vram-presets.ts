/**
 * GPU memory presets for FLUX.1 and Chroma (docs/flux_train_network.md §6.1, reference §3): what
 * each size of GPU trains with, and which preset a GPU fits.
 */

export const VRAM_PRESETS = ['12gb', '16gb', '24gb', '48gb'] as const;
export type VramPreset = (typeof VRAM_PRESETS)[number];

export interface VramPresetInfo {
  label: string;
  /** Smallest GPU memory (MiB, as nvidia-smi reports it) the preset is made for. */
  minMiB: number;
  fp8Base: boolean;
  blocksToSwap: number | null;
  /** Batch size the preset trains with (the member may go lower, not higher). */
  batchSize: number;
  /** The docs' 12 GB advice: 8-bit AdamW. */
  eightBitAdam: boolean;
}

export const VRAM_PRESET_INFO: Record<VramPreset, VramPresetInfo> = {
  // docs: "12GB VRAM: --blocks_to_swap 16 and 8bit AdamW" (with --fp8_base)
  '12gb': { label: '12 GB', minMiB: 11_000, fp8Base: true, blocksToSwap: 16, batchSize: 1, eightBitAdam: true },
  // docs: "16GB VRAM: batch size 1 and --blocks_to_swap"; 8 blocks is our pick between 24 GB's none and 12 GB's 16.
  '16gb': { label: '16 GB', minMiB: 15_000, fp8Base: true, blocksToSwap: 8, batchSize: 1, eightBitAdam: false },
  // docs: "24GB VRAM: basic settings work fine (batch size 2)" (with --fp8_base)
  '24gb': { label: '24 GB', minMiB: 22_000, fp8Base: true, blocksToSwap: null, batchSize: 2, eightBitAdam: false },
  // 40 GB and more hold the bf16 transformer (about 24 GB) with room for batch 2.
  '48gb': { label: '40 GB+', minMiB: 39_000, fp8Base: false, blocksToSwap: null, batchSize: 2, eightBitAdam: false },
};

/** The largest preset a GPU with `memoryMiB` can run; null below the smallest. */
export function presetForVram(memoryMiB: number): VramPreset | null {
  let best: VramPreset | null = null;
  for (const p of VRAM_PRESETS) if (memoryMiB >= VRAM_PRESET_INFO[p].minMiB) best = p;
  return best;
}

/** The preset used when no worker says how much memory it has. */
export const FALLBACK_PRESET: VramPreset = '16gb';
