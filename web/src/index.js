// concord-client: the browser (and Node) side of Concord.
//
// `ConcordProvider` moves bytes between Concord's engine (compiled to WebAssembly, the same
// Rust code the server runs) and one WebSocket. It decides nothing about the document: what a
// frame means, what to resend after a reconnect and when an edit is durable are the engine's
// (`ClientSession`). The provider owns the socket, the timers (flush once per animation frame,
// reconnect with backoff, presence throttle, save debounce) and IndexedDB.

import init, { initSync, ClientSession } from '../pkg/concord_wasm.js';
import { openSessionStore, hasIndexedDB, saveEmergency, loadEmergency, removeEmergency } from './persistence.js';
import { mapCursor } from './text.js';

export { bindTextarea } from './textarea.js';
export { remoteCursors, caretCoordinates } from './cursors.js';
export {
  diffText,
  mapPosition,
  mapPositionThrough,
  rebaseChange,
  applyChanges,
  normalizeCursor,
} from './text.js';
export { ClientSession };

/** @type {Promise<void> | undefined} */
let engineReady;

/**
 * Loads the WebAssembly engine once per page (or process). Browsers fetch it next to this
 * module; Node reads the file. Pass `source` (bytes, a `WebAssembly.Module`, a URL or a
 * `Response`) when a bundler moved the file elsewhere.
 * @param {any} [source]
 * @returns {Promise<void>}
 */
export function loadEngine(source) {
  engineReady ??= (async () => {
    if (source !== undefined) {
      if (source instanceof Uint8Array || source instanceof ArrayBuffer || source instanceof WebAssembly.Module) {
        initSync({ module: source });
      } else {
        await init({ module_or_path: source });
      }
      return;
    }
    const url = new URL('../pkg/concord_wasm_bg.wasm', import.meta.url);
    if (url.protocol === 'file:') {
      const { readFile } = await import('node:fs/promises');
      initSync({ module: await readFile(url) });
    } else {
      await init({ module_or_path: url });
    }
  })().catch((e) => {
    engineReady = undefined;
    throw e;
  });
  return engineReady;
}

/** A random integer in [0, 2^53): a Yjs client id. */
export function randomClientId() {
  const [hi, lo] = crypto.getRandomValues(new Uint32Array(2));
  return (hi & 0x1fffff) * 0x100000000 + lo;
}

function randomId(length = 10) {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => 'abcdefghijklmnopqrstuvwxyz0123456789'[b % 36]).join('');
}

const ROOM_ID = /^[A-Za-z0-9_.-]{1,128}$/;

/** How the server starts an `op` frame (its field order is pinned by the wire golden tests). */
const OP_FRAME = '{"t":"op",';

/** Turns `http(s)://host/base`, `ws(s)://host/base` or a path into a `ws(s)://` base URL. */
function socketBase(url) {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const u = new URL(url === '' ? '/' : url, base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new TypeError(`Concord: unsupported server URL ${url}`);
  }
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}

const DEFAULTS = {
  connect: true,
  persistence: true,
  databaseName: 'concord',
  minReconnectDelay: 250,
  maxReconnectDelay: 10_000,
  connectTimeout: 10_000,
  presenceThrottle: 50,
  saveDelay: 250,
};

const OPEN = 1;

/** Close codes of access control: the token expired (mint a fresh one), the room was revoked. */
const CLOSE_TOKEN_EXPIRED = 4401;
const CLOSE_ACCESS_REVOKED = 4403;
/** The room was deleted (`DELETE /api/rooms/{id}`): reconnecting would write it back. */
const CLOSE_ROOM_DELETED = 4404;

/**
 * A shared text in one room of a Concord server.
 *
 * Events (`provider.on(type, fn)` passes `event.detail`; `addEventListener` works too):
 * `status` {status}, `synced` {seq}, `pending` {count}, `change` {changes, remote, origin},
 * `ack` {id, seq}, `presence` {user, presence, presences}, `access` {role},
 * `denied` {code, reason}, `error` {code, message}, `ready` {}, `saved` {bytes}, `destroy` {}.
 *
 * With access control on, `options.token` (a string, or a function returning one or a Promise
 * of one, called before every connect) goes on the URL as `?token=`. `role` is `'write'`, or
 * `'read'` while the server says so: local edits then throw (`code` `read_only`) and nothing is
 * queued. A token that expired while connected (close 4401) is asked for again before
 * reconnecting; a revoked room (close 4403) or a deleted one (close 4404) stops reconnecting
 * with status `denied`.
 */
export class ConcordProvider extends EventTarget {
  /**
   * @param {string} url server base URL (`ws://`, `http://`, or a path in the browser)
   * @param {string} room room id: 1-128 of `A-Z a-z 0-9 _ - .`
   * @param {import('./index.js').ConcordProviderOptions} [options]
   */
  constructor(url, room, options = {}) {
    super();
    if (typeof room !== 'string' || !ROOM_ID.test(room) || room === '.' || room === '..') {
      throw new TypeError('Concord: room ids are 1-128 characters of A-Z a-z 0-9 _ - .');
    }
    this.options = { ...DEFAULTS, ...options };
    this.url = socketBase(url);
    this.room = room;
    /** Key of this document in IndexedDB. */
    this.documentKey = `${this.url}|${room}`;
    this.clientId = randomClientId();
    /** This connection's presence id: the server assigns it after each connect (peers see
     * this id, whatever a client claims); `options.user` only names it until then. */
    this.user = options.user ?? `u-${randomId(12)}`;
    this.tabId = randomId(16);
    /** @type {ClientSession | null} */
    this.session = null;
    /** @type {'offline' | 'connecting' | 'online' | 'denied'} */
    this.status = 'offline';
    /** @type {'write' | 'read'} what the server lets this replica do */
    this.role = 'write';
    /** Why the server shut this provider out (`status` `denied`), until `connect()`. */
    this.denied = null;
    this.synced = false;
    this.pendingCount = 0;
    this.destroyed = false;
    /** @type {Map<string, any>} peers' presence by user */
    this.presences = new Map();
    /** @type {Record<string, unknown>} */
    this.localPresence = {};

    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('Concord: no WebSocket here; pass options.WebSocket (e.g. the `ws` package in Node)');
    }
    this._wantOnline = this.options.connect !== false;
    /** @type {WebSocket | null} */
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = undefined;
    this._connectTimer = undefined;
    this._flushRaf = undefined;
    this._flushTimer = undefined;
    this._pumping = false;
    this._presenceTimer = undefined;
    this._presenceDirty = false;
    this._saveTimer = undefined;
    this._saving = null;
    this._saveAgain = false;
    this._store = null;
    this._staleTabs = [];
    this._staleEmergency = [];
    this._exportGen = 0;
    this._changeGen = 0;
    /** True while edits are not yet written to IndexedDB (with persistence). */
    this.unsaved = false;
    this._emergencyGen = undefined;
    this._listeners = [];
    /** Bumped by every `_open`/`_drop`: an open waiting for its token checks it is still wanted. */
    this._openGen = 0;
    this._opening = false;
    this._batching = false;

    /** Resolves once the engine is loaded and any saved state restored (edits allowed). */
    this.ready = this._start();
    // A failed start is reported through `error` and `ready`; never an unhandled rejection.
    this.ready.catch(() => {});
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async _start() {
    try {
      await loadEngine(this.options.wasm);
      if (this.destroyed) return;
      const restored = await this._restore();
      if (this.destroyed) return;
      this.session = restored ?? new ClientSession(this.clientId, this.tabId);
      this._pump();
      this._installPageListeners();
      this._emit('ready', {});
      if (restored) this._scheduleSave(0);
      if (this._wantOnline) this._open();
    } catch (e) {
      this._emitError(e, 'start_failed');
      throw e;
    }
  }

  /** Restores this document's saved sessions from IndexedDB (newest one, others merged in). */
  async _restore() {
    if (!this.options.persistence || !hasIndexedDB()) return null;
    try {
      this._store = await openSessionStore(this.options.databaseName);
    } catch (e) {
      this._emitError(e, 'persistence_unavailable');
      return null;
    }
    let records;
    try {
      records = await this._store.load(this.documentKey);
    } catch (e) {
      this._emitError(e, 'persistence_unavailable');
      return null;
    }
    // What a closing tab wrote synchronously; usually newer than its IndexedDB record.
    records = [...records, ...loadEmergency(this.documentKey)].sort((a, b) => b.savedAt - a.savedAt);
    /** @type {ClientSession | null} */
    let session = null;
    for (const record of records) {
      try {
        if (!session) {
          session = ClientSession.importState(this.clientId, this.tabId, record.bytes);
        } else {
          // Another tab's record: the engine folds its text in and queues its unsent edits.
          session.mergeSaved(record.bytes);
          // Nothing is bound yet: the editor starts from the merged text.
          while (session.pollEvent() != null);
        }
        if (record.emergency) this._staleEmergency.push(record.tab);
        else this._staleTabs.push(record.tab);
      } catch (e) {
        this._emitError(e, 'corrupt_saved_state');
      }
    }
    return session;
  }

  _installPageListeners() {
    const on = (target, type, fn) => {
      target.addEventListener(type, fn);
      this._listeners.push(() => target.removeEventListener(type, fn));
    };
    if (typeof window !== 'undefined' && typeof window.addEventListener === 'function') {
      on(window, 'pagehide', () => this._saveOnExit());
      on(window, 'online', () => {
        if (this._wantOnline && !this._ws) this._open();
      });
    }
    if (typeof document !== 'undefined' && typeof document.addEventListener === 'function') {
      on(document, 'visibilitychange', () => {
        if (document.visibilityState === 'hidden') this.save().catch(() => {});
      });
    }
  }

  /** Opens the connection (again) after `disconnect()`. */
  connect() {
    if (this.destroyed) return;
    this._wantOnline = true;
    this._attempt = 0;
    this.denied = null;
    if (this.session && !this._ws) this._open();
    this._refresh();
  }

  /** Closes the connection and stays offline until `connect()`; edits keep queueing. */
  disconnect() {
    this._wantOnline = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = undefined;
    this._openGen++;
    this._opening = false;
    this._drop();
    this._refresh();
  }

  /** Saves, disconnects and releases the engine. The provider is unusable afterwards. */
  async destroy() {
    if (this.destroyed) return;
    try {
      await this.ready;
    } catch {}
    if (this.destroyed) return;
    this.disconnect();
    await this.save().catch(() => {});
    this.destroyed = true;
    for (const off of this._listeners.splice(0)) off();
    clearTimeout(this._flushTimer);
    clearTimeout(this._presenceTimer);
    clearTimeout(this._saveTimer);
    if (this._flushRaf !== undefined && typeof cancelAnimationFrame === 'function') cancelAnimationFrame(this._flushRaf);
    this._store?.close();
    this._store = null;
    this.session?.free();
    this.session = null;
    this._emit('destroy', {});
  }

  // ---- connection ------------------------------------------------------------------------

  _open() {
    if (this._ws || this._opening || this.destroyed || !this.session) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = undefined;
    const { token } = this.options;
    if (typeof token !== 'function') {
      this._openWith(token);
      return;
    }
    // A fresh token for every connection: the function may mint one (and may be async).
    const gen = ++this._openGen;
    this._opening = true;
    this._refresh();
    Promise.resolve()
      .then(() => token())
      .then(
        (value) => {
          if (gen !== this._openGen) return;
          this._opening = false;
          if (this._wantOnline && !this._ws && !this.destroyed) this._openWith(value);
        },
        (e) => {
          if (gen !== this._openGen) return;
          this._opening = false;
          this._emitError(e, 'token_failed');
          this._refresh();
          this._scheduleReconnect();
        },
      );
  }

  /** @param {unknown} token */
  _openWith(token) {
    if (this._ws || this.destroyed || !this.session) return;
    this.flush();
    const sv = this.session.connect();
    this.synced = false;
    let target = `${this.url}/rooms/${encodeURIComponent(this.room)}/ws?sv=${encodeURIComponent(sv)}`;
    if (token !== undefined && token !== null && token !== '') target += `&token=${encodeURIComponent(String(token))}`;
    let ws;
    try {
      ws = new this._WebSocket(target);
    } catch (e) {
      this.session.disconnect();
      this._emitError(e, 'connect_failed');
      this._pump();
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    // Frames that arrive together are handed to the engine together (one task later): a burst
    // of ops becomes one merged apply and one `change` event instead of one per op.
    const inbox = [];
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      if (typeof event.data !== 'string') return;
      inbox.push(event.data);
      if (inbox.length === 1) {
        setTimeout(() => {
          const frames = inbox.splice(0);
          if (ws === this._ws && frames.length > 0) this._receive(frames);
        }, 0);
      }
    };
    ws.onclose = (event) => {
      if (ws === this._ws) this._closed(event?.code, event?.reason);
    };
    ws.onerror = () => {
      // A close event follows; reconnecting happens there.
    };
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (ws === this._ws && this.status !== 'online') {
        this._drop();
        this._scheduleReconnect();
      }
    }, this.options.connectTimeout);
    this._pump();
  }

  /**
   * Feeds frames that arrived together. Runs of `op` frames go to the engine in one call (one
   * merged apply, one `change` event); any other frame goes alone. Events are pumped after
   * every call, so each `change` reaches the bindings while the provider's text is exactly the
   * text that change produced.
   * @param {string[]} frames
   */
  _receive(frames) {
    // A reader's `sync` makes it a writer until the `access` frame after it: the role is read
    // once the whole burst is in, so a reader is never writable in between.
    this._batching = true;
    try {
      this._receiveFrames(frames);
    } finally {
      this._batching = false;
      this._refreshRole();
    }
  }

  /** @param {string[]} frames */
  _receiveFrames(frames) {
    for (let i = 0; i < frames.length; ) {
      let end = i;
      while (end < frames.length && frames[end].startsWith(OP_FRAME)) end += 1;
      if (end === i) end = i + 1;
      try {
        this.session.handleFrames(frames.slice(i, end));
      } catch (e) {
        // A frame the engine could not use: resync on a fresh connection rather than drift.
        this._emitError(e, 'bad_frame');
        this._pump();
        this._drop();
        this._scheduleReconnect();
        return;
      }
      this._pump();
      i = end;
    }
  }

  /** Forgets the socket (closing it) and tells the engine. */
  _drop() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    ws.onmessage = ws.onclose = null;
    // Closing a socket that is still connecting makes some implementations (Node's `ws`)
    // emit an error, which must find a listener.
    ws.onerror = () => {};
    try {
      ws.close(1000, 'client closing');
    } catch {}
    this._closedSession();
  }

  /**
   * The socket closed by itself. 4401: the token expired, so reconnect at once (a token
   * function is asked for a fresh one; a fixed token cannot get better: denied). 4403: this
   * room is no longer ours, 4404: it was deleted (reconnecting would write our copy back):
   * stay offline (status `denied`) until `connect()`.
   * @param {number} [code]
   * @param {string} [reason]
   */
  _closed(code, reason) {
    this._ws = null;
    this._closedSession();
    const renewable = typeof this.options.token === 'function';
    if (code === CLOSE_ROOM_DELETED) {
      this._deny('room_deleted', reason || 'room deleted');
      return;
    }
    if (code === CLOSE_ACCESS_REVOKED || (code === CLOSE_TOKEN_EXPIRED && !renewable)) {
      this._deny(code === CLOSE_ACCESS_REVOKED ? 'access_revoked' : 'token_expired', reason);
      return;
    }
    if (code === CLOSE_TOKEN_EXPIRED) this._attempt = 0;
    this._scheduleReconnect();
  }

  /** Stops reconnecting: the server shut this provider out. */
  _deny(code, reason) {
    this._wantOnline = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = undefined;
    this.denied = { code, reason: reason || (code === 'access_revoked' ? 'access revoked' : 'token expired') };
    this._refresh();
    this._emit('denied', this.denied);
  }

  _closedSession() {
    clearTimeout(this._connectTimer);
    if (!this.session) return;
    this.session.disconnect();
    this.synced = false;
    if (this.presences.size) {
      const gone = [...this.presences.keys()];
      this.presences.clear();
      for (const user of gone) this._emit('presence', { user, presence: null, presences: this.presences });
    }
    this._pump();
  }

  _scheduleReconnect() {
    if (!this._wantOnline || this.destroyed || this._retryTimer !== undefined) return;
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const ceiling = Math.min(max, min * 2 ** this._attempt);
    // "Equal jitter": half fixed, half random, so a server restart is not met by a stampede.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt++;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = undefined;
      if (this._wantOnline && !this._ws) this._open();
    }, delay);
  }

  // ---- engine plumbing -------------------------------------------------------------------

  /** Sends what the engine wants sent and delivers its events; runs after every engine call. */
  _pump() {
    if (this._pumping || !this.session) return;
    this._pumping = true;
    try {
      const session = this.session;
      for (let frame; (frame = session.pollTransmit()) != null; ) {
        const ws = this._ws;
        if (ws && ws.readyState === OPEN) ws.send(frame);
      }
      for (let event; (event = session.pollEvent()) != null; ) {
        this._onEngineEvent(event);
        if (!this.session) return;
      }
    } finally {
      this._pumping = false;
    }
    this._refresh();
  }

  _onEngineEvent(event) {
    switch (event.type) {
      case 'synced':
        this.synced = true;
        this._attempt = 0;
        clearTimeout(this._connectTimer);
        this._refresh();
        this._emit('synced', { seq: event.seq });
        break;
      case 'remote':
        if (event.changes && event.changes.length) {
          this._emit('change', { changes: event.changes, remote: true, origin: null });
          this._scheduleSave();
        }
        break;
      case 'acked':
        this._emit('ack', { id: event.id, seq: event.seq });
        this._scheduleSave();
        break;
      case 'presence': {
        const p = event.presence;
        if (!p || typeof p.user !== 'string') break;
        if (p.you) {
          // The server names this connection in presence frames; the id is the server's to set.
          this.user = p.user;
          break;
        }
        if (p.user === this.user) break;
        if (p.left) this.presences.delete(p.user);
        else this.presences.set(p.user, p);
        this._emit('presence', { user: p.user, presence: p.left ? null : p, presences: this.presences });
        break;
      }
      case 'access':
        this._refreshRole();
        break;
      case 'error':
        this._emit('error', { code: event.code, message: event.message });
        break;
      default:
        break;
    }
  }

  /** Emits `status` / `pending` when they changed. */
  _refresh() {
    if (!this.session) return;
    // Between a socket opening and its sync the engine says `connecting`; with no socket at all
    // it says `offline`.
    let status = this.session.status;
    if (this.denied) status = 'denied';
    else if (status === 'offline' && this._opening) status = 'connecting';
    if (status !== this.status) {
      this.status = status;
      this._emit('status', { status });
    }
    const pending = this.session.pendingCount;
    if (pending !== this.pendingCount) {
      this.pendingCount = pending;
      this._emit('pending', { count: pending });
    }
  }

  /** Emits `access` when the engine's role changed (once per burst of frames). */
  _refreshRole() {
    if (this._batching || !this.session) return;
    const role = this.session.role;
    if (role !== this.role) {
      this.role = role;
      this._emit('access', { role });
    }
  }

  // ---- text ------------------------------------------------------------------------------

  /** The current text ('' until `ready`). */
  get text() {
    return this.session ? this.session.text() : '';
  }

  /** Length of the text in UTF-16 units. */
  get length() {
    return this.session ? this.session.length : 0;
  }

  _requireSession() {
    if (!this.session) {
      const e = new Error(this.destroyed ? 'Concord: the provider was destroyed' : 'Concord: not ready yet; await provider.ready');
      /** @type {any} */ (e).code = this.destroyed ? 'destroyed' : 'not_ready';
      throw e;
    }
    return this.session;
  }

  /**
   * Inserts `text` at UTF-16 offset `index`.
   * @param {number} index
   * @param {string} text
   * @param {unknown} [origin] passed back in the `change` event (bindings skip their own)
   */
  insert(index, text, origin) {
    this.replace(index, 0, text, origin);
  }

  /**
   * Deletes `length` UTF-16 units at `index`.
   * @param {number} index
   * @param {number} length
   * @param {unknown} [origin]
   */
  delete(index, length, origin) {
    this.replace(index, length, '', origin);
  }

  /**
   * Replaces `length` UTF-16 units at `index` by `text`. Applied locally at once, sent with the
   * other edits of this animation frame as one update.
   * @param {number} index
   * @param {number} length
   * @param {string} [text]
   * @param {unknown} [origin]
   */
  replace(index, length, text = '', origin) {
    const session = this._requireSession();
    if (length === 0 && text === '') return;
    session.replace(index, length, text);
    const changes = [{ index, delete: length, insert: text }];
    // Peers' cursors were reported against the text before this edit.
    for (const [user, p] of this.presences) {
      if (p.cursor !== undefined) this.presences.set(user, { ...p, cursor: mapCursor(p.cursor, changes) });
    }
    this._emit('change', { changes, remote: false, origin: origin ?? null });
    this._scheduleFlush();
    this._scheduleSave();
    this._refresh();
  }

  /** Sends the edits made since the last flush as one update (normally automatic). */
  flush() {
    if (!this.session) return;
    this._cancelFlush();
    try {
      this.session.flush();
    } catch (e) {
      this._emitError(e, 'flush_failed');
    }
    this._pump();
  }

  _scheduleFlush() {
    if (this._flushTimer !== undefined || this._flushRaf !== undefined) return;
    const run = () => this.flush();
    const visible = typeof document === 'undefined' || document.visibilityState !== 'hidden';
    if (typeof requestAnimationFrame === 'function' && visible) {
      this._flushRaf = requestAnimationFrame(run);
      // Background tabs get no animation frames: a timer backs it up.
      this._flushTimer = setTimeout(run, 100);
    } else {
      this._flushTimer = setTimeout(run, typeof window === 'undefined' ? 0 : 16);
    }
  }

  _cancelFlush() {
    if (this._flushRaf !== undefined && typeof cancelAnimationFrame === 'function') cancelAnimationFrame(this._flushRaf);
    clearTimeout(this._flushTimer);
    this._flushRaf = undefined;
    this._flushTimer = undefined;
  }

  // ---- presence --------------------------------------------------------------------------

  /**
   * Updates this replica's presence (merged with what was set before) and sends it, at most
   * once per `presenceThrottle` ms. Peers see it as `{user, cursor, name, color}`.
   * @param {{cursor?: unknown, name?: string, color?: string}} presence
   */
  setPresence(presence) {
    for (const [key, value] of Object.entries(presence)) {
      if (value === undefined) delete this.localPresence[key];
      else this.localPresence[key] = value;
    }
    this._presenceDirty = true;
    if (this._presenceTimer === undefined) this._sendPresence();
  }

  _sendPresence() {
    if (!this._presenceDirty || !this.session) return;
    this._presenceDirty = false;
    const { cursor, name, color } = this.localPresence;
    const p = { user: this.user };
    if (cursor !== undefined) p.cursor = cursor;
    if (typeof name === 'string') p.name = name;
    if (typeof color === 'string') p.color = color;
    try {
      this.session.setPresence(p);
    } catch (e) {
      this._emitError(e, 'bad_presence');
    }
    this._pump();
    this._presenceTimer = setTimeout(() => {
      this._presenceTimer = undefined;
      this._sendPresence();
    }, this.options.presenceThrottle);
  }

  // ---- persistence -----------------------------------------------------------------------

  _scheduleSave(delay = this.options.saveDelay) {
    if (!this._store || this.destroyed) return;
    this._changeGen++;
    this.unsaved = true;
    clearTimeout(this._saveTimer);
    this._saveTimer = setTimeout(() => {
      this._saveTimer = undefined;
      this.save().catch(() => {});
    }, delay);
  }

  /**
   * Writes the document and its unsent edits to IndexedDB now (no-op without persistence).
   * Called on its own after edits and acks, and when the page is hidden or closed.
   */
  async save() {
    if (!this._store || !this.session) return;
    clearTimeout(this._saveTimer);
    this._saveTimer = undefined;
    if (this._saving) {
      this._saveAgain = true;
      return this._saving;
    }
    let bytes;
    try {
      bytes = this.session.exportState();
    } catch (e) {
      this._emitError(e, 'save_failed');
      return;
    }
    const gen = ++this._exportGen;
    const changeGen = this._changeGen;
    // exportState flushes: send what that produced.
    this._pump();
    const remove = this._staleTabs.splice(0);
    const store = this._store;
    this._saving = store
      .save(this.documentKey, this.tabId, bytes, remove)
      .then(
        () => {
          // Everything in those localStorage records is in this save now.
          for (const tab of this._staleEmergency.splice(0)) removeEmergency(tab);
          // Our own pagehide record is covered only by a save exported after it.
          if (this._emergencyGen !== undefined && this._emergencyGen < gen) {
            removeEmergency(this.tabId);
            this._emergencyGen = undefined;
          }
          if (changeGen === this._changeGen) this.unsaved = false;
          this._emit('saved', { bytes: bytes.length });
        },
        (e) => {
          this._staleTabs.push(...remove);
          this._emitError(e, 'save_failed');
        },
      )
      .finally(() => {
        this._saving = null;
        if (this._saveAgain) {
          this._saveAgain = false;
          this.save().catch(() => {});
        }
      });
    return this._saving;
  }

  /**
   * The page is going away: an IndexedDB write may not commit any more, so write the session
   * synchronously to localStorage too (read back at the next start, then folded into IndexedDB).
   */
  _saveOnExit() {
    // Nothing newer than what IndexedDB already holds: no emergency record needed.
    if (!this._store || !this.session || !this.unsaved) return;
    try {
      const bytes = this.session.exportState();
      this._pump();
      if (saveEmergency(this.documentKey, this.tabId, bytes)) this._emergencyGen = ++this._exportGen;
    } catch (e) {
      this._emitError(e, 'save_failed');
    }
    this.save().catch(() => {});
  }

  /** Removes this document's saved state from IndexedDB (e.g. on sign-out). */
  async clearSaved() {
    if (!this._store) return;
    const records = await this._store.load(this.documentKey);
    for (const r of records) await this._store.remove(this.documentKey, r.tab);
    for (const r of loadEmergency(this.documentKey)) removeEmergency(r.tab);
  }

  // ---- events ----------------------------------------------------------------------------

  /**
   * Listens to an event; the handler receives its `detail`. Returns the function that stops
   * listening.
   * @param {string} type
   * @param {(detail: any) => void} handler
   */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * Resolves at the next `synced` (at once when online).
   * @returns {Promise<void>}
   */
  whenSynced() {
    if (this.status === 'online' && this.synced) return Promise.resolve();
    return new Promise((resolve) => {
      const off = this.on('synced', () => {
        off();
        resolve();
      });
    });
  }

  _emit(type, detail) {
    let event;
    if (typeof CustomEvent === 'function') {
      event = new CustomEvent(type, { detail });
    } else {
      event = new Event(type);
      Object.defineProperty(event, 'detail', { value: detail });
    }
    this.dispatchEvent(event);
  }

  _emitError(e, fallbackCode) {
    const code = (e && typeof e === 'object' && typeof e.code === 'string' && e.code) || fallbackCode;
    const message = e instanceof Error ? e.message : String(e);
    this._emit('error', { code, message, error: e });
  }
}

/**
 * Creates a provider and waits until it is ready (engine loaded, saved state restored).
 * @param {string} url
 * @param {string} room
 * @param {import('./index.js').ConcordProviderOptions} [options]
 */
export async function createProvider(url, room, options) {
  const provider = new ConcordProvider(url, room, options);
  await provider.ready;
  return provider;
}
