import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { GatewayCloseCodes, GatewayDispatchEvents, GatewayOpcodes } from 'discord.js';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import type { GatewayFrame } from './fake-discord-types.ts';
import { WaitableLog, isRecord } from './fake-discord-util.ts';

/**
 * The gateway half of the fake Discord: HELLO, IDENTIFY → READY + GUILD_CREATE, heartbeats,
 * dispatches with sequence numbers, RESUME with replay, and op 7 RECONNECT on demand.
 */

export interface GatewayHooks {
  /** READY's data for a new session (without session_id and resume_gateway_url). */
  ready(): Record<string, unknown>;
  /** The GUILD_CREATE payloads sent after READY. */
  guildCreates(): unknown[];
  heartbeatIntervalMs: number;
}

interface Dispatch {
  s: number;
  t: string;
  d: unknown;
}

interface Session {
  id: string;
  intents: number;
  seq: number;
  /** Every dispatch of the session, for RESUME replays. */
  sent: Dispatch[];
  /** The live socket, or null between a drop and the RESUME. */
  socket: WebSocket | null;
  /** Resumes that finished on this session. */
  resumes: number;
  /** The fake told its client to reconnect (or dropped it): a RESUME is on its way. */
  resumePending: boolean;
}

interface Connection {
  number: number;
  socket: WebSocket;
  session: Session | null;
  /** Told to reconnect or being dropped: send nothing more on it. */
  retiring: boolean;
}

export class FakeGateway {
  readonly frames: WaitableLog<GatewayFrame>;
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Connection>();
  private readonly resumed = new WaitableLog<{ sessionId: string; at: number }>(() => '');
  private connectionCount = 0;
  private sessionCount = 0;
  private dispatchCount = 0;
  private url = '';

  constructor(private readonly hooks: GatewayHooks) {
    this.frames = new WaitableLog((items) => {
      const recent = items.slice(-10).map((f) => `  #${f.connection} op ${f.op} ${JSON.stringify(f.d)?.slice(0, 120)}`);
      return recent.length ? `Last gateway frames received:\n${recent.join('\n')}` : 'No gateway frames received.';
    });
  }

  setUrl(url: string): void {
    this.url = url;
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws));
  }

  /**
   * Sessions a dispatch can reach: with an open socket, or reconnecting because the fake asked.
   * A client that vanished without closing (a killed process) leaves a session that counts no more.
   */
  get liveSessions(): number {
    return [...this.sessions.values()].filter((s) => s.socket !== null || s.resumePending).length;
  }

  /** The intents of the newest session, or null before any IDENTIFY. */
  get intents(): number | null {
    const last = [...this.sessions.values()].pop();
    return last ? last.intents : null;
  }

  /**
   * Sends a dispatch to every session, or only to those whose intents `accepts` (which may also
   * shape the data per session, as Discord strips message content without its intent). A session
   * between sockets keeps it for the RESUME replay. Returns how many sessions took it.
   *
   * Discord promises no order between sessions: which one hears of an event first rotates from
   * one dispatch to the next, so no session is always first.
   */
  dispatch(t: string, d: unknown, accepts?: (intents: number) => { data: unknown } | false): number {
    let taken = 0;
    const sessions = [...this.sessions.values()];
    const first = sessions.length > 0 ? this.dispatchCount++ % sessions.length : 0;
    for (const session of [...sessions.slice(first), ...sessions.slice(0, first)]) {
      const shaped = accepts ? accepts(session.intents) : { data: d };
      if (shaped === false) continue;
      this.sendDispatch(session, t, shaped.data);
      taken++;
    }
    return taken;
  }

  /** Sends op 7 RECONNECT on every socket; resolves when every session has resumed. */
  async reconnect(timeoutMs: number): Promise<void> {
    await this.retireAll(timeoutMs, (conn) => conn.socket.send(JSON.stringify({ op: GatewayOpcodes.Reconnect, d: null })));
  }

  /** Drops every socket without a close frame; resolves when every session has resumed. */
  async dropConnection(timeoutMs: number): Promise<void> {
    await this.retireAll(timeoutMs, (conn) => conn.socket.terminate());
  }

  /** Resolves once a RESUME has completed after `since` on any session. */
  waitForResume(since: number, timeoutMs: number): Promise<unknown> {
    return this.resumed.waitFor((r) => r.at >= since, timeoutMs, 'the client to RESUME');
  }

  private async retireAll(timeoutMs: number, retire: (conn: Connection) => void): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const conn of this.connections) {
      if (conn.retiring || !conn.session) continue;
      conn.retiring = true;
      const session = conn.session;
      const before = session.resumes;
      session.resumePending = true;
      waits.push(this.resumed.waitFor((r) => r.sessionId === session.id && session.resumes > before, timeoutMs, `session ${session.id} to RESUME`));
      retire(conn);
    }
    if (waits.length === 0) throw new Error('FakeDiscord: no identified gateway session to reconnect');
    await Promise.all(waits);
  }

  close(): void {
    this.frames.abort('FakeDiscord closed');
    this.resumed.abort('FakeDiscord closed');
    for (const conn of this.connections) conn.socket.terminate();
    this.connections.clear();
    this.sessions.clear();
    this.wss.close();
  }

  private accept(socket: WebSocket): void {
    const conn: Connection = { number: ++this.connectionCount, socket, session: null, retiring: false };
    this.connections.add(conn);
    socket.on('message', (raw: RawData, isBinary: boolean) => this.onFrame(conn, raw, isBinary));
    socket.on('close', (code: number) => this.onClose(conn, code));
    socket.on('error', () => undefined);
    this.send(conn, { op: GatewayOpcodes.Hello, d: { heartbeat_interval: this.hooks.heartbeatIntervalMs } });
  }

  private onFrame(conn: Connection, raw: RawData, isBinary: boolean): void {
    if (isBinary) {
      conn.socket.close(GatewayCloseCodes.DecodeError, 'Error while decoding payload.');
      return;
    }
    let frame: unknown;
    try {
      frame = JSON.parse(rawText(raw));
    } catch {
      conn.socket.close(GatewayCloseCodes.DecodeError, 'Error while decoding payload.');
      return;
    }
    if (!isRecord(frame) || typeof frame.op !== 'number') {
      conn.socket.close(GatewayCloseCodes.DecodeError, 'Error while decoding payload.');
      return;
    }
    const op = frame.op as GatewayOpcodes;
    this.frames.push({ at: Date.now(), connection: conn.number, op, d: frame.d });
    switch (op) {
      case GatewayOpcodes.Heartbeat:
        this.send(conn, { op: GatewayOpcodes.HeartbeatAck });
        return;
      case GatewayOpcodes.Identify:
        this.identify(conn, frame.d);
        return;
      case GatewayOpcodes.Resume:
        this.resume(conn, frame.d);
        return;
      case GatewayOpcodes.PresenceUpdate:
      case GatewayOpcodes.RequestGuildMembers:
        return;
      default:
        conn.socket.close(GatewayCloseCodes.UnknownOpcode, 'Unknown opcode.');
    }
  }

  private identify(conn: Connection, d: unknown): void {
    if (conn.session) {
      conn.socket.close(GatewayCloseCodes.AlreadyAuthenticated, 'Already authenticated.');
      return;
    }
    const intents = isRecord(d) && typeof d.intents === 'number' ? d.intents : 0;
    const session: Session = {
      id: `session-${++this.sessionCount}`,
      intents,
      seq: 0,
      sent: [],
      socket: conn.socket,
      resumes: 0,
      resumePending: false,
    };
    this.sessions.set(session.id, session);
    conn.session = session;
    this.sendDispatch(session, GatewayDispatchEvents.Ready, {
      v: 10,
      ...this.hooks.ready(),
      session_type: 'normal',
      session_id: session.id,
      resume_gateway_url: this.url,
      shard: [0, 1],
    });
    for (const guild of this.hooks.guildCreates()) this.sendDispatch(session, GatewayDispatchEvents.GuildCreate, guild);
  }

  private resume(conn: Connection, d: unknown): void {
    const sessionId = isRecord(d) && typeof d.session_id === 'string' ? d.session_id : '';
    const seq = isRecord(d) && typeof d.seq === 'number' ? d.seq : 0;
    const session = this.sessions.get(sessionId);
    if (!session) {
      // Not resumable: the client must identify afresh.
      this.send(conn, { op: GatewayOpcodes.InvalidSession, d: false });
      return;
    }
    for (const other of this.connections) {
      if (other !== conn && other.session === session) {
        other.session = null;
        other.socket.terminate();
      }
    }
    conn.session = session;
    session.socket = conn.socket;
    for (const missed of session.sent.filter((e) => e.s > seq)) {
      this.send(conn, { op: GatewayOpcodes.Dispatch, ...missed });
    }
    session.resumes++;
    session.resumePending = false;
    this.sendDispatch(session, GatewayDispatchEvents.Resumed, null);
    this.resumed.push({ sessionId: session.id, at: Date.now() });
  }

  private onClose(conn: Connection, code: number): void {
    this.connections.delete(conn);
    const session = conn.session;
    if (!session || session.socket !== conn.socket) return;
    session.socket = null;
    // A normal close ends the session (the client logged out); anything else may resume.
    if (code === 1000 || code === 1001) this.sessions.delete(session.id);
  }

  private sendDispatch(session: Session, t: string, d: unknown): void {
    const dispatch: Dispatch = { s: ++session.seq, t, d };
    session.sent.push(dispatch);
    const conn = [...this.connections].find((c) => c.session === session && c.socket === session.socket);
    if (conn && !conn.retiring) this.send(conn, { op: GatewayOpcodes.Dispatch, ...dispatch });
  }

  private send(conn: Connection, payload: Record<string, unknown>): void {
    if (conn.socket.readyState === conn.socket.OPEN) conn.socket.send(JSON.stringify(payload));
  }
}

function rawText(raw: RawData): string {
  if (Buffer.isBuffer(raw)) return raw.toString('utf8');
  if (Array.isArray(raw)) return Buffer.concat(raw).toString('utf8');
  return Buffer.from(raw).toString('utf8');
}
