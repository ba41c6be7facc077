// Types for concord-client.

import type { ClientSession } from '../pkg/concord_wasm.js';

export { ClientSession } from '../pkg/concord_wasm.js';

/** One change: at `index` (UTF-16 units, in the text after the previous changes of the same
 * list) delete `delete` units, then insert `insert`. */
export interface TextChange {
  index: number;
  delete: number;
  insert: string;
}

/** A caret or selection, in UTF-16 offsets. */
export interface Cursor {
  anchor: number;
  head: number;
}

/** A peer's presence as relayed by the server. */
export interface Presence {
  user: string;
  cursor?: Cursor | number | unknown;
  name?: string;
  color?: string;
  left?: boolean;
}

/** `denied`: the server shut this provider out (access revoked, or a fixed token expired);
 * it stays offline until `connect()`. */
export type Status = 'offline' | 'connecting' | 'online' | 'denied';

/** What the server lets this replica do in the room. */
export type Role = 'write' | 'read';

/** A token for `?token=`, or how to get a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

export interface ConcordProviderOptions {
  /**
   * The access token (a JWT) for servers with access control, sent as `?token=`. A function is
   * called before every connect and reconnect, so it can mint or fetch a fresh token; after
   * the server closes with 4401 (token expired) it is called again at once.
   */
  token?: TokenSource;
  /** WebSocket implementation (default: `globalThis.WebSocket`); in Node pass the `ws` package. */
  WebSocket?: { new (url: string): WebSocket } | any;
  /** Connect at once (default true). With false, call `connect()` later. */
  connect?: boolean;
  /** Save to IndexedDB and restore on start (default true; ignored where IndexedDB is missing). */
  persistence?: boolean;
  /** IndexedDB database name (default `concord`). */
  databaseName?: string;
  /** A presence id to use until the server assigns this connection its own (default: random). */
  user?: string;
  /** Where the WebAssembly module is, when a bundler moved it: bytes, a Module, a URL or a Response. */
  wasm?: BufferSource | WebAssembly.Module | URL | string | Response;
  /** Reconnect backoff bounds in ms (default 250 and 10000), with jitter. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Give up on a socket that has not synced after this many ms (default 10000). */
  connectTimeout?: number;
  /** At most one presence frame per this many ms (default 50). */
  presenceThrottle?: number;
  /** Save this many ms after the last edit or ack (default 250). */
  saveDelay?: number;
}

export interface ConcordEventMap {
  ready: {};
  status: { status: Status };
  synced: { seq: number };
  pending: { count: number };
  /** `remote`: from the server; otherwise a local edit made with `origin`. */
  change: { changes: TextChange[]; remote: boolean; origin: unknown };
  ack: { id: string; seq: number };
  /** `presence` is null when the peer left (or the connection dropped). */
  presence: { user: string; presence: Presence | null; presences: Map<string, Presence> };
  /** The role changed: `read` (local edits now throw) or `write` again. */
  access: { role: Role };
  /** The server shut this provider out: `access_revoked` (close 4403), `room_deleted`
   * (close 4404) or `token_expired` (close 4401 with a fixed string token). No more reconnects
   * until `connect()`. */
  denied: { code: 'access_revoked' | 'room_deleted' | 'token_expired'; reason: string };
  error: { code: string; message: string; error?: unknown };
  saved: { bytes: number };
  destroy: {};
}

export declare class ConcordProvider extends EventTarget {
  constructor(url: string, room: string, options?: ConcordProviderOptions);
  /** `ws(s)://` base URL of the server. */
  readonly url: string;
  readonly room: string;
  /** IndexedDB key of this document: server URL + room. */
  readonly documentKey: string;
  /** The engine replica's 53-bit client id. */
  readonly clientId: number;
  /** This connection's presence id, as peers see it: assigned by the server on each connect. */
  readonly user: string;
  /** The engine session (null until ready, and after destroy). */
  readonly session: ClientSession | null;
  readonly status: Status;
  /**
   * `write`, or `read` while the server says this replica may only read (an `access` frame
   * after the sync, or a live downgrade). While `read`, `insert` / `delete` / `replace` throw an
   * Error with `code` `'read_only'` and nothing is applied or queued; the textarea and
   * CodeMirror bindings are read-only meanwhile. Kept while offline; every connection starts
   * as `write` until the server says otherwise.
   */
  readonly role: Role;
  /** Why the server shut this provider out (`status` is `denied`), until `connect()`. */
  readonly denied: ConcordEventMap['denied'] | null;
  /** True between a `synced` and the next disconnect. */
  readonly synced: boolean;
  /** Edits not yet acknowledged as durable by the server. */
  readonly pendingCount: number;
  readonly destroyed: boolean;
  /** With persistence: true while changes are not yet written to IndexedDB. */
  readonly unsaved: boolean;
  /** Peers' presence by user id. */
  readonly presences: Map<string, Presence>;
  /** This replica's presence fields as last set. */
  readonly localPresence: Record<string, unknown>;
  /** Resolves when the engine is loaded and saved state is restored; edits are allowed then. */
  readonly ready: Promise<void>;
  /** The current text ('' until ready). */
  readonly text: string;
  /** Length of the text in UTF-16 units. */
  readonly length: number;

  /** Throws (`code` `'read_only'`) while `role` is `read`. */
  insert(index: number, text: string, origin?: unknown): void;
  delete(index: number, length: number, origin?: unknown): void;
  replace(index: number, length: number, text?: string, origin?: unknown): void;
  /** Sends pending local edits now (otherwise once per animation frame). */
  flush(): void;
  setPresence(presence: { cursor?: Cursor | number | null; name?: string; color?: string }): void;
  /** Connects (again), also after `denied`. */
  connect(): void;
  disconnect(): void;
  destroy(): Promise<void>;
  /** Writes the session to IndexedDB now. */
  save(): Promise<void>;
  /** Forgets this document's saved state in IndexedDB. */
  clearSaved(): Promise<void>;
  whenSynced(): Promise<void>;
  on<K extends keyof ConcordEventMap>(type: K, handler: (detail: ConcordEventMap[K]) => void): () => void;
}

export declare function createProvider(url: string, room: string, options?: ConcordProviderOptions): Promise<ConcordProvider>;
export declare function loadEngine(source?: ConcordProviderOptions['wasm']): Promise<void>;
export declare function randomClientId(): number;

/** Binds a textarea (or text input) to the provider; returns unbind. */
export declare function bindTextarea(
  provider: ConcordProvider,
  textarea: HTMLTextAreaElement | HTMLInputElement,
  options?: { presence?: boolean },
): () => void;

/** Draws peers' cursors over a textarea; returns a function removing them. */
export declare function remoteCursors(
  provider: ConcordProvider,
  textarea: HTMLTextAreaElement,
  options?: { labels?: boolean },
): () => void;

/** Where offset `index` is drawn, from the textarea's border-box corner, unscrolled. */
export declare function caretCoordinates(
  textarea: HTMLTextAreaElement,
  index: number,
): { top: number; left: number; height: number };

export declare function diffText(before: string, after: string, cursor?: number): TextChange | null;
export declare function mapPosition(pos: number, change: TextChange, assoc?: -1 | 1): number;
export declare function mapPositionThrough(pos: number, changes: readonly TextChange[], assoc?: -1 | 1): number;
export declare function rebaseChange(local: TextChange, changes: readonly TextChange[]): TextChange;
export declare function applyChanges(text: string, changes: readonly TextChange[]): string;
export declare function normalizeCursor(cursor: unknown, length: number): Cursor | null;
