/**
 * The kinds of network a run trains (reference/model-families.md §7): plain LoRA, or LyCORIS' DoRA,
 * LoCon, LoHa and LoKr on the SD families, and the `network_module`/`network_args` sd-scripts gets.
 */
import { UserError } from './errors.ts';
import { familyLabel, isTransformerFamily, type BaseFamily } from './model-family.ts';

export const NETWORK_TYPES = ['lora', 'dora', 'locon', 'loha', 'lokr'] as const;
export type NetworkType = (typeof NETWORK_TYPES)[number];

export const NETWORK_LABELS: Record<NetworkType, string> = { lora: 'LoRA', dora: 'DoRA', locon: 'LoCon', loha: 'LoHa', lokr: 'LoKr' };

/** `network_module` values our runs use. */
export const NETWORK_MODULES = ['networks.lora', 'networks.lora_flux', 'lycoris.kohya'] as const;
export type NetworkModule = (typeof NETWORK_MODULES)[number];

/** LyCORIS' guideline: LoHa multiplies two low-rank pairs, so a dim above 32 only adds size. */
export const LOHA_MAX_USEFUL_DIM = 32;
/** Conv layers of LoCon/LoHa get at most this rank (LyCORIS keeps conv ranks well below linear ones). */
const LYCORIS_CONV_DIM = 16;

/** Why `type` can't train `family`, or null when it can. */
export function networkProblem(type: NetworkType, family: BaseFamily): string | null {
  if (type === 'lora' || !isTransformerFamily(family)) return null;
  // flux_train_network.py documents networks.lora_flux (and OFT) only; LyCORIS' kohya module targets the SD UNet.
  return `${NETWORK_LABELS[type]} can't be trained on ${familyLabel(family)} here: ${familyLabel(family)} runs use plain LoRA (networks.lora_flux). Pick \`network: lora\`, or an SD 1.5/SDXL dataset for ${NETWORK_LABELS[type]}.`;
}

/** `network_module` and `network_args` for a network type, as sd-scripts and LyCORIS read them. */
export function networkSettings(
  type: NetworkType,
  family: BaseFamily,
  dim: number,
  alpha: number,
  recipeConv: { dim: number | null; alpha: number | null },
): { module: NetworkModule; args: string[] } {
  const problem = networkProblem(type, family);
  if (problem) throw new UserError(problem);
  const convDim = Math.min(dim, LYCORIS_CONV_DIM);
  const convAlpha = formatArg(Math.max(1, Math.min(alpha, convDim)));
  switch (type) {
    case 'lora':
      if (isTransformerFamily(family)) return { module: 'networks.lora_flux', args: [] };
      return {
        module: 'networks.lora',
        args: recipeConv.dim !== null ? [`conv_dim=${recipeConv.dim}`, `conv_alpha=${formatArg(recipeConv.alpha ?? 1)}`] : [],
      };
    case 'dora':
      // DoRA: LyCORIS' LoRA with the weight decomposed into magnitude and direction.
      return { module: 'lycoris.kohya', args: ['algo=lora', 'dora_wd=True'] };
    case 'locon':
      return { module: 'lycoris.kohya', args: ['algo=locon', `conv_dim=${convDim}`, `conv_alpha=${convAlpha}`] };
    case 'loha':
      return { module: 'lycoris.kohya', args: ['algo=loha', `conv_dim=${convDim}`, `conv_alpha=${convAlpha}`] };
    case 'lokr':
      // factor=-1: LyCORIS picks the Kronecker split itself.
      return { module: 'lycoris.kohya', args: ['algo=lokr', 'factor=-1'] };
  }
}

function formatArg(n: number): string {
  return Number.isInteger(n) ? String(n) : String(Number(n.toFixed(4)));
}
