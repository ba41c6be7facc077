// Offline persistence in IndexedDB: every provider saves its session (document + pending ops,
// from `ClientSession.exportState()`) under [document key, tab id]. Each tab writes its own
// record, so two tabs of one room never overwrite each other's unsent edits; a starting tab
// restores the newest record and merges the others into it, then removes them.
//
// IndexedDB is asynchronous, and a write started while the page unloads (pagehide on a reload
// or a closed tab) may never commit. So on pagehide the session is also written synchronously
// to localStorage ("emergency" records, same shape); they are read back with the IndexedDB
// records and removed once folded into an IndexedDB save.

const DB_NAME = 'concord';
const STORE = 'sessions';
const VERSION = 1;

/** @returns {boolean} */
export function hasIndexedDB() {
  return typeof indexedDB !== 'undefined' && indexedDB !== null;
}

function promisify(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

/**
 * Opens the store. Rejects where IndexedDB is missing or blocked (private modes, Node).
 * @param {string} [name]
 */
export async function openSessionStore(name = DB_NAME) {
  if (!hasIndexedDB()) throw new Error('IndexedDB is not available');
  const open = indexedDB.open(name, VERSION);
  open.onupgradeneeded = () => {
    const db = open.result;
    if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE, { keyPath: ['doc', 'tab'] });
  };
  /** @type {IDBDatabase} */
  const db = await promisify(open);
  // Another tab upgrading the schema: step aside rather than block it.
  db.onversionchange = () => db.close();
  return new SessionStore(db);
}

export class SessionStore {
  /** @param {IDBDatabase} db */
  constructor(db) {
    this.db = db;
  }

  /**
   * Every saved record of one document, newest first.
   * @param {string} doc
   * @returns {Promise<{doc: string, tab: string, bytes: Uint8Array, savedAt: number}[]>}
   */
  async load(doc) {
    const tx = this.db.transaction(STORE, 'readonly');
    const range = IDBKeyRange.bound([doc, ''], [doc, '\uffff']);
    const rows = await promisify(tx.objectStore(STORE).getAll(range));
    return rows
      .filter((r) => r && r.bytes instanceof Uint8Array)
      .sort((a, b) => b.savedAt - a.savedAt);
  }

  /**
   * Saves this tab's record and removes `remove` (records merged into it) in one transaction.
   * @param {string} doc
   * @param {string} tab
   * @param {Uint8Array} bytes
   * @param {string[]} [remove]
   */
  async save(doc, tab, bytes, remove = []) {
    const tx = this.db.transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    store.put({ doc, tab, bytes, savedAt: Date.now() });
    for (const other of remove) store.delete([doc, other]);
    await done(tx);
  }

  /**
   * @param {string} doc
   * @param {string} tab
   */
  async remove(doc, tab) {
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).delete([doc, tab]);
    await done(tx);
  }

  close() {
    this.db.close();
  }
}

const EMERGENCY_PREFIX = 'concord-unsaved:';

function local() {
  try {
    return typeof localStorage !== 'undefined' ? localStorage : null;
  } catch {
    return null;
  }
}

function b64encode(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function b64decode(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * Writes a record synchronously to localStorage (for pagehide). False when it does not fit.
 * @param {string} doc
 * @param {string} tab
 * @param {Uint8Array} bytes
 */
export function saveEmergency(doc, tab, bytes) {
  const storage = local();
  if (!storage) return false;
  try {
    storage.setItem(`${EMERGENCY_PREFIX}${tab}`, JSON.stringify({ doc, tab, savedAt: Date.now(), bytes: b64encode(bytes) }));
    return true;
  } catch {
    return false;
  }
}

/**
 * Every emergency record of one document.
 * @param {string} doc
 * @returns {{doc: string, tab: string, bytes: Uint8Array, savedAt: number, emergency: true}[]}
 */
export function loadEmergency(doc) {
  const storage = local();
  if (!storage) return [];
  const out = [];
  for (let i = 0; i < storage.length; i++) {
    const key = storage.key(i);
    if (!key || !key.startsWith(EMERGENCY_PREFIX)) continue;
    try {
      const r = JSON.parse(storage.getItem(key) ?? 'null');
      if (r && r.doc === doc) out.push({ doc, tab: r.tab, savedAt: r.savedAt, bytes: b64decode(r.bytes), emergency: true });
    } catch {
      // Not ours or damaged: leave it.
    }
  }
  return out;
}

/** @param {string} tab */
export function removeEmergency(tab) {
  try {
    local()?.removeItem(`${EMERGENCY_PREFIX}${tab}`);
  } catch {}
}
