// concord(provider): a CodeMirror 6 extension that makes the editor a view of the provider's
// text, with peers' cursors and selections drawn in their colors.
//
//   import { EditorView } from '@codemirror/view';
//   import { concord } from 'concord-client/codemirror';
//   new EditorView({ parent, extensions: [concord(provider)] });

import { Annotation, ChangeSet, EditorState, StateEffect, StateField, Transaction } from '@codemirror/state';
import { Decoration, EditorView, ViewPlugin, WidgetType } from '@codemirror/view';
import { normalizeCursor, safeColor } from './text.js';

/** Marks transactions that carry changes from the provider (they are not sent back). */
export const remoteChange = Annotation.define();

const setCursors = StateEffect.define();
const setReady = StateEffect.define();
const setWritable = StateEffect.define();

/** Read-only until the provider is ready: typing before that would be overwritten. */
const readyField = StateField.define({
  create: () => false,
  update: (ready, tr) => ready || tr.effects.some((e) => e.is(setReady)),
});

/** Read-only while the provider's role is `read` (the server refuses a reader's edits). */
const writableField = StateField.define({
  create: () => true,
  update(writable, tr) {
    for (const e of tr.effects) if (e.is(setWritable)) writable = e.value;
    return writable;
  },
  provide: (field) => EditorView.contentAttributes.from(field, (writable) => (writable ? {} : { 'aria-readonly': 'true' })),
});

/** One value for the facet (it takes the first one given): read-only if either field says so. */
const readOnly = EditorState.readOnly.compute(
  [readyField, writableField],
  (state) => !state.field(readyField) || !state.field(writableField),
);

const cursorField = StateField.define({
  create: () => Decoration.none,
  update(decorations, tr) {
    for (const effect of tr.effects) if (effect.is(setCursors)) return effect.value;
    return decorations.map(tr.changes);
  },
  provide: (field) => EditorView.decorations.from(field),
});

class CaretWidget extends WidgetType {
  constructor(user, name, color) {
    super();
    this.user = user;
    this.name = name;
    this.color = color;
  }

  eq(other) {
    return other.user === this.user && other.name === this.name && other.color === this.color;
  }

  toDOM() {
    const caret = document.createElement('span');
    caret.className = 'cm-concord-caret';
    caret.dataset.user = this.user;
    caret.style.setProperty('--concord-color', this.color);
    caret.style.borderLeftColor = this.color;
    const label = document.createElement('span');
    label.className = 'cm-concord-label';
    label.textContent = this.name;
    label.style.backgroundColor = this.color;
    caret.appendChild(label);
    return caret;
  }

  ignoreEvent() {
    return true;
  }
}

const theme = EditorView.baseTheme({
  '.cm-concord-caret': {
    position: 'relative',
    borderLeft: '2px solid',
    marginLeft: '-1px',
    marginRight: '-1px',
    boxSizing: 'border-box',
    pointerEvents: 'none',
  },
  '.cm-concord-label': {
    position: 'absolute',
    bottom: '100%',
    left: '-2px',
    color: '#fff',
    font: '600 11px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif',
    padding: '0 5px',
    borderRadius: '4px 4px 4px 0',
    whiteSpace: 'nowrap',
    userSelect: 'none',
    zIndex: '10',
  },
  '.cm-concord-selection': { borderRadius: '2px' },
});

/**
 * Converts the engine's sequential changes (each index in the text after the previous
 * changes) into one CodeMirror change set over the document of length `length`.
 * @param {readonly {index: number, delete: number, insert: string}[]} changes
 * @param {number} length
 */
export function toChangeSet(changes, length) {
  const specs = [];
  let shift = 0;
  let lastEnd = 0;
  let ordered = true;
  for (const c of changes) {
    // In the original document, each change starts `shift` earlier than reported.
    const from = c.index - shift;
    if (from < lastEnd) {
      ordered = false;
      break;
    }
    specs.push({ from, to: from + c.delete, insert: c.insert });
    lastEnd = from + c.delete;
    shift += c.insert.length - c.delete;
  }
  if (ordered) return ChangeSet.of(specs, length);
  // Not sorted after all: compose them one by one.
  let set = ChangeSet.empty(length);
  let len = length;
  for (const c of changes) {
    const next = ChangeSet.of({ from: c.index, to: c.index + c.delete, insert: c.insert }, len);
    set = set.compose(next);
    len = next.newLength;
  }
  return set;
}

/**
 * The CodeMirror 6 extension binding an editor to `provider`.
 * @param {import('./index.js').ConcordProvider} provider
 * @param {{presence?: boolean}} [options] `presence` (default true): report this editor's
 *   selection as the replica's presence cursor.
 */
export function concord(provider, options = {}) {
  const reportPresence = options.presence !== false;

  const plugin = ViewPlugin.fromClass(
    class {
      constructor(view) {
        this.view = view;
        this.ready = false;
        this.destroyed = false;
        this.lastCursor = '';
        this.offs = [
          provider.on('change', (detail) => this.remote(detail)),
          provider.on('presence', () => this.scheduleCursors()),
          provider.on('access', () => this.paintRole()),
        ];
        if (provider.session) queueMicrotask(() => this.start());
        else provider.ready.then(() => this.start(), () => {});
      }

      /** The editor follows the provider's role (outside any update of this view). */
      paintRole() {
        queueMicrotask(() => {
          if (this.destroyed) return;
          const writable = provider.role !== 'read';
          if (this.view.state.field(writableField) !== writable) this.view.dispatch({ effects: setWritable.of(writable) });
        });
      }

      start() {
        if (this.destroyed || this.ready) return;
        this.ready = true;
        this.paintRole();
        this.resync();
        this.sendCursor();
        this.scheduleCursors();
      }

      /** Replaces the whole document by the provider's text, when they differ. */
      resync() {
        const text = provider.text;
        const state = this.view.state;
        const doc = state.doc;
        const same = doc.length === text.length && doc.toString() === text;
        const effects = state.field(readyField) ? [] : [setReady.of(true)];
        if (same && !effects.length) return;
        this.view.dispatch({
          changes: same ? [] : { from: 0, to: doc.length, insert: text },
          effects,
          annotations: [remoteChange.of(true), Transaction.addToHistory.of(false)],
        });
      }

      remote({ changes, origin }) {
        if (!this.ready || origin === this) return;
        let changeSet;
        try {
          changeSet = toChangeSet(changes, this.view.state.doc.length);
        } catch {
          this.resync();
          return;
        }
        this.view.dispatch({
          changes: changeSet,
          annotations: [remoteChange.of(true), Transaction.addToHistory.of(false)],
        });
        // Cheap check first; on any doubt, the provider's text wins.
        if (this.view.state.doc.length !== provider.length) this.resync();
      }

      update(update) {
        if (!this.ready) return;
        for (const tr of update.transactions) {
          if (!tr.docChanged || tr.annotation(remoteChange)) continue;
          // iterChanges reports positions in the document before the transaction; the
          // running offset turns them into positions in the text as edited so far.
          let offset = 0;
          try {
            tr.changes.iterChanges((fromA, toA, fromB, toB, inserted) => {
              provider.replace(fromA + offset, toA - fromA, inserted.toString(), this);
              offset += toB - fromB - (toA - fromA);
            });
          } catch {
            // Refused (read-only, made by code past the readOnly facet): the provider's text wins.
            queueMicrotask(() => {
              if (!this.destroyed) this.resync();
            });
            break;
          }
        }
        if (update.selectionSet || update.docChanged || update.focusChanged) this.sendCursor();
      }

      sendCursor() {
        if (!reportPresence || !this.ready) return;
        const { anchor, head } = this.view.state.selection.main;
        const key = `${anchor}:${head}`;
        if (key === this.lastCursor) return;
        this.lastCursor = key;
        provider.setPresence({ cursor: { anchor, head } });
      }

      scheduleCursors() {
        if (this.cursorsQueued) return;
        this.cursorsQueued = true;
        // Never dispatch from inside another update of this view.
        queueMicrotask(() => {
          this.cursorsQueued = false;
          if (this.destroyed || !this.ready) return;
          this.view.dispatch({ effects: setCursors.of(this.decorations()) });
        });
      }

      decorations() {
        const length = this.view.state.doc.length;
        const ranges = [];
        for (const [user, p] of provider.presences) {
          const cursor = normalizeCursor(p.cursor, length);
          if (!cursor) continue;
          const color = safeColor(p.color);
          const name = typeof p.name === 'string' && p.name ? p.name : user;
          const from = Math.min(cursor.anchor, cursor.head);
          const to = Math.max(cursor.anchor, cursor.head);
          if (from !== to) {
            ranges.push(
              Decoration.mark({
                class: 'cm-concord-selection',
                attributes: { style: `background-color: color-mix(in srgb, ${color} 25%, transparent)` },
              }).range(from, to),
            );
          }
          ranges.push(
            Decoration.widget({ widget: new CaretWidget(user, name, color), side: 1 }).range(cursor.head),
          );
        }
        return Decoration.set(ranges, true);
      }

      destroy() {
        this.destroyed = true;
        for (const off of this.offs.splice(0)) off();
      }
    },
  );

  return [readyField, writableField, readOnly, plugin, cursorField, theme];
}
