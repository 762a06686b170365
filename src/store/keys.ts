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
    /** A member's upload waiting for their first attestation in a guild (store/expiring-store.ts). */
    heldUpload: (guildId: string, userId: string) => `${p}:guild:${guildId}:held-upload:${userId}`,
    /** A delivered LoRA file of a run's epoch, as of one vote result (`winnerEpoch.votes` or `none`). */
    deliveredFile: (runId: string, epoch: number, steps: number, winner: string) => `${p}:run:${runId}:enriched:${epoch}:${steps}:${winner}`,
    /** Every delivered file of a run (see `deliveredFile`). */
    deliveredFilePattern: (runId: string) => `${p}:run:${runId}:enriched:*`,
    datasetKeyPattern: (id: string) => `${p}:ds:${id}:*`,
    captions: (id: string) => `${p}:ds:${id}:captions`,
    captionHistory: (id: string, no: number) => `${p}:ds:${id}:caphist:${no}`,
    captionBatches: (id: string) => `${p}:ds:${id}:capbatches`,
    /** A lock shared by every process of the deployment (store/redis-lock.ts). */
    lock: (name: string) => `${p}:lock:${name}`,
    /** A lent GPU's lease on a run or a generation (bot/leases.ts). */
    lease: (id: string) => `${p}:lease:${id}`,
    /** The lease a lent GPU holds now. */
    workerLease: (workerId: string) => `${p}:rworker:${workerId}:lease`,
    /** Every lease by when it lapses. */
    leaseExpiry: () => `${p}:leases`,
    /** Where a run on a lent GPU stands (its resume state, the GPU it is on). */
    remoteRun: (runId: string) => `${p}:run:${runId}:remote`,
    /** Which process handles a Discord event that every connected bot process receives. */
    eventClaim: (kind: string, id: string) => `${p}:claim:${kind}:${id}`,
    sentences: (id: string) => `${p}:ds:${id}:sentences`,
    sentenceHistory: (id: string, no: number) => `${p}:ds:${id}:senthist:${no}`,
    sentenceBatches: (id: string) => `${p}:ds:${id}:sentbatches`,
    /** Members' reports of one target (an image or a dataset): reporter id → report. */
    modReports: (guildId: string, target: string) => `${p}:guild:${guildId}:mod:reports:${target}`,
    /** Targets with open reports in a guild, by the time of their first report. */
    modReported: (guildId: string) => `${p}:guild:${guildId}:mod:reported`,
    /** Images a moderator kept despite their rating: image number → the rating they approved. */
    modApproved: (datasetId: string) => `${p}:ds:${datasetId}:mod:approved`,
    /** The moderation audit log of a guild (append-only, newest first). */
    modLog: (guildId: string) => `${p}:guild:${guildId}:mod:log`,
    /** What arrived for the moderators of a guild since their last notice (JSON notes, oldest first). */
    modArrived: (guildId: string) => `${p}:guild:${guildId}:mod:arrived`,
    /** Guilds with notes in `modArrived`. */
    modArrivedGuilds: () => `${p}:mod:arrived-guilds`,
    /** Set while a guild's last moderation notice is younger than the notice interval. */
    modNoticeGate: (guildId: string) => `${p}:guild:${guildId}:mod:notice-gate`,
    /** Why a run's files are withheld (a moderator removed its dataset). */
    runWithheld: (runId: string) => `${p}:run:${runId}:withheld`,
    /** Blob ids of withheld runs' files: signed links to them are refused. */
    withheldBlobs: () => `${p}:withheld-blobs`,
    /** Where a waiting image's request was acknowledged, to keep it up to date (bot/generation-line.ts). */
    generationAck: (requestId: string) => `${p}:gen:${requestId}:ack`,
    /** Set while a request's acknowledgement was edited less than an interval ago. */
    generationAckEdited: (requestId: string) => `${p}:gen:${requestId}:ack-edited`,
    /** The followed requests, scored by when their acknowledgement can no longer be edited. */
    generationAcks: () => `${p}:gen:acks`,
  };
}

export type Keys = ReturnType<typeof keys>;
