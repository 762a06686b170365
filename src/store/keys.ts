/** Every Redis key the product uses, in one place. `p` is the deployment's REDIS_PREFIX. */
export function keys(p: string) {
  return {
    dataset: (id: string) => `${p}:ds:${id}`,
    guildDatasets: (guildId: string) => `${p}:guild:${guildId}:datasets`,
    thread: (threadId: string) => `${p}:thread:${threadId}`,
    imageSeq: (id: string) => `${p}:ds:${id}:seq`,
    images: (id: string) => `${p}:ds:${id}:images`,
    imagePrefix: (id: string) => `${p}:ds:${id}:img:`,
    image: (id: string, no: number) => `${p}:ds:${id}:img:${no}`,
    pixelIndex: (id: string) => `${p}:ds:${id}:pix`,
    phashIndex: (id: string) => `${p}:ds:${id}:phash`,
    concepts: (id: string) => `${p}:ds:${id}:concepts`,
    blobRefs: () => `${p}:blobrefs`,
    pruneSuggestion: (id: string) => `${p}:prune:${id}`,
    pendingPlan: (id: string) => `${p}:plan:${id}`,
    /** A delivered LoRA file of a run's epoch, as of one vote result (`winnerEpoch.votes` or `none`). */
    deliveredFile: (runId: string, epoch: number, steps: number, winner: string) => `${p}:run:${runId}:enriched:${epoch}:${steps}:${winner}`,
    datasetKeyPattern: (id: string) => `${p}:ds:${id}:*`,
    captions: (id: string) => `${p}:ds:${id}:captions`,
    captionHistory: (id: string, no: number) => `${p}:ds:${id}:caphist:${no}`,
    captionBatches: (id: string) => `${p}:ds:${id}:capbatches`,
    /** A lock shared by every process of the deployment (store/redis-lock.ts). */
    lock: (name: string) => `${p}:lock:${name}`,
    /** Which process handles a Discord event that every connected bot process receives. */
    eventClaim: (kind: string, id: string) => `${p}:claim:${kind}:${id}`,
    sentences: (id: string) => `${p}:ds:${id}:sentences`,
    sentenceHistory: (id: string, no: number) => `${p}:ds:${id}:senthist:${no}`,
    sentenceBatches: (id: string) => `${p}:ds:${id}:sentbatches`,
  };
}

export type Keys = ReturnType<typeof keys>;
