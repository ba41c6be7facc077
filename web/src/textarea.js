// bindTextarea: a <textarea> (or <input>) as a view of a provider's text.
//
// Local input is diffed against the last known value (common prefix/suffix) and sent as one
// replace. Remote changes are patched in with setRangeText(..., 'preserve') so the caret,
// the selection and the scroll position stay where the user left them. While an IME
// composition is open the element is not touched: remote changes queue up, and at
// compositionend the composed text is rebased onto them.
//
// The element is read-only until the provider is ready (typing would be overwritten) and
// while its role is `read` (the server refuses a reader's edits); its own readOnly comes back
// when neither holds, and when unbound.

import { diffText, rebaseChange, mapPositionThrough } from './text.js';

/**
 * @param {import('./index.js').ConcordProvider} provider
 * @param {HTMLTextAreaElement | HTMLInputElement} textarea
 * @param {{presence?: boolean}} [options] `presence` (default true): report the caret and the
 *   selection as this replica's presence cursor.
 * @returns {() => void} unbind
 */
export function bindTextarea(provider, textarea, options = {}) {
  const reportPresence = options.presence !== false;
  const origin = { binding: 'textarea' };
  let bound = false;
  let unbound = false;
  let last = textarea.value;
  let composing = false;
  let beforeComposition = '';
  /** @type {import('./text.js').TextChange[]} */
  let queued = [];
  let lastCursor = '';
  const offs = [];

  const listen = (target, type, fn) => {
    target.addEventListener(type, fn);
    offs.push(() => target.removeEventListener(type, fn));
  };

  function selection() {
    const start = textarea.selectionStart ?? 0;
    const end = textarea.selectionEnd ?? start;
    return textarea.selectionDirection === 'backward' ? { anchor: end, head: start } : { anchor: start, head: end };
  }

  function sendCursor() {
    if (!reportPresence || !bound) return;
    const cursor = selection();
    const key = `${cursor.anchor}:${cursor.head}`;
    if (key === lastCursor) return;
    lastCursor = key;
    provider.setPresence({ cursor });
  }

  /** The caret, when there is no selection: it tells where an ambiguous edit happened. */
  function caret() {
    const { selectionStart: s, selectionEnd: e } = textarea;
    return s !== null && s === e ? e : undefined;
  }

  /** Sends whatever the user did since `last`. */
  function commitLocal() {
    // Destroyed provider: the element is just a textarea again.
    if (!provider.session) return;
    const value = textarea.value;
    if (value === last) return;
    const change = diffText(last, value, caret());
    last = value;
    if (!change) return;
    try {
      provider.replace(change.index, change.delete, change.insert, origin);
    } catch {
      // The element no longer matches the provider (it was changed behind the binding's back):
      // show the provider's text again rather than drift.
      render(null);
    }
  }

  /**
   * Makes the element show exactly the provider's text (a full replace, only when patching
   * went wrong), with the selection `{start, end}` clamped into it.
   */
  function render(sel) {
    const text = provider.text;
    if (textarea.value !== text) {
      const { selectionDirection: dir, scrollTop, scrollLeft } = textarea;
      const start = Math.min(sel ? sel.start : (textarea.selectionStart ?? 0), text.length);
      const end = Math.min(sel ? sel.end : (textarea.selectionEnd ?? 0), text.length);
      textarea.value = text;
      textarea.setSelectionRange(start, Math.max(start, end), dir ?? 'none');
      textarea.scrollTop = scrollTop;
      textarea.scrollLeft = scrollLeft;
    }
    last = text;
  }

  function applyRemote(changes) {
    // Never lose a keystroke the element has but the provider has not seen.
    commitLocal();
    const sel = { start: textarea.selectionStart ?? 0, end: textarea.selectionEnd ?? 0 };
    try {
      for (const c of changes) textarea.setRangeText(c.insert, c.index, c.index + c.delete, 'preserve');
    } catch {
      // Out of range: the element drifted from the provider; the check below repairs it.
    }
    // The check: on any mismatch, replace everything and put the selection where it maps.
    render({ start: mapPositionThrough(sel.start, changes), end: mapPositionThrough(sel.end, changes) });
    sendCursor();
  }

  const onInput = () => {
    if (!bound || composing) return;
    commitLocal();
    sendCursor();
  };

  const onCompositionStart = () => {
    if (!bound) return;
    commitLocal();
    composing = true;
    beforeComposition = last;
    queued = [];
  };

  const onCompositionEnd = () => {
    if (!bound || !composing) return;
    composing = false;
    const value = textarea.value;
    const remote = queued;
    queued = [];
    const local = diffText(beforeComposition, value, caret());
    try {
      if (remote.length === 0) {
        last = value;
        if (local) provider.replace(local.index, local.delete, local.insert, origin);
      } else {
        // Peers edited meanwhile: apply the composed text where it belongs now, then show it all.
        let after = null;
        if (local) {
          const rebased = rebaseChange(local, remote);
          provider.replace(rebased.index, rebased.delete, rebased.insert, origin);
          after = rebased.index + rebased.insert.length;
        }
        const { scrollTop, scrollLeft } = textarea;
        const fallback = mapPositionThrough(textarea.selectionEnd ?? 0, remote);
        textarea.value = provider.text;
        const at = after ?? Math.min(fallback, textarea.value.length);
        textarea.setSelectionRange(at, at);
        textarea.scrollTop = scrollTop;
        textarea.scrollLeft = scrollLeft;
        last = textarea.value;
      }
    } catch {
      render(null);
    }
    sendCursor();
  };

  const onChange = (detail) => {
    if (!bound || detail.origin === origin) return;
    if (composing) {
      queued.push(...detail.changes);
      return;
    }
    applyRemote(detail.changes);
  };

  /** Read-only while the provider is not ready or may only read; otherwise as it was. */
  function paintReadOnly() {
    if (unbound) return;
    const locked = !bound || provider.role === 'read';
    if (locked) {
      if (textarea.dataset.concordReadonly === undefined) textarea.dataset.concordReadonly = String(textarea.readOnly);
      textarea.readOnly = true;
    } else if (textarea.dataset.concordReadonly !== undefined) {
      textarea.readOnly = textarea.dataset.concordReadonly === 'true';
      delete textarea.dataset.concordReadonly;
    }
  }

  function start() {
    if (unbound || !provider.session) return;
    bound = true;
    paintReadOnly();
    render(null);
    sendCursor();
  }

  offs.push(provider.on('change', onChange));
  offs.push(provider.on('access', () => {
    // Something typed but not yet read by the binding is refused now: show the provider's text.
    if (bound && !composing) commitLocal();
    paintReadOnly();
  }));
  listen(textarea, 'input', onInput);
  listen(textarea, 'compositionstart', onCompositionStart);
  listen(textarea, 'compositionend', onCompositionEnd);
  for (const type of ['select', 'selectionchange', 'keyup', 'mouseup', 'focus']) {
    listen(textarea, type, () => {
      if (!composing) sendCursor();
    });
  }
  if (typeof document !== 'undefined') {
    listen(document, 'selectionchange', () => {
      if (document.activeElement === textarea && !composing) sendCursor();
    });
  }

  if (provider.session) {
    start();
  } else {
    // Until the engine is loaded (and saved edits restored) typing would be lost.
    paintReadOnly();
    provider.ready.then(start, () => {});
  }

  return function unbind() {
    unbound = true;
    bound = false;
    for (const off of offs.splice(0)) off();
    if (textarea.dataset.concordReadonly !== undefined) {
      textarea.readOnly = textarea.dataset.concordReadonly === 'true';
      delete textarea.dataset.concordReadonly;
    }
  };
}
