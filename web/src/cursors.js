// Remote cursors over a <textarea>: a transparent overlay holds one caret (with a name label)
// and selection highlight per peer. Where a text offset is on screen comes from a hidden
// "mirror" div that copies the textarea's box and font and lays the text out the same way.

import { normalizeCursor, safeColor } from './text.js';

const COPIED = [
  'direction', 'fontStyle', 'fontVariant', 'fontWeight', 'fontStretch', 'fontSize',
  'fontSizeAdjust', 'lineHeight', 'fontFamily', 'fontFeatureSettings', 'fontKerning',
  'textAlign', 'textTransform', 'textIndent', 'textDecoration', 'letterSpacing', 'wordSpacing',
  'tabSize', 'paddingTop', 'paddingRight', 'paddingBottom', 'paddingLeft', 'whiteSpace',
  'wordBreak', 'overflowWrap',
];

/** @type {WeakMap<Document, HTMLDivElement>} */
const mirrors = new WeakMap();

function mirrorFor(doc) {
  let mirror = mirrors.get(doc);
  if (!mirror || !mirror.isConnected) {
    mirror = doc.createElement('div');
    mirror.setAttribute('aria-hidden', 'true');
    mirror.className = 'concord-mirror';
    doc.body.appendChild(mirror);
    mirrors.set(doc, mirror);
  }
  return mirror;
}

/**
 * Where UTF-16 offset `index` of a textarea's value is drawn: `{top, left, height}` in CSS
 * pixels from the textarea's border-box corner, as if it were not scrolled.
 * @param {HTMLTextAreaElement} textarea
 * @param {number} index
 */
export function caretCoordinates(textarea, index) {
  const doc = textarea.ownerDocument;
  const view = doc.defaultView ?? window;
  const style = view.getComputedStyle(textarea);
  const mirror = mirrorFor(doc);
  const s = mirror.style;
  for (const prop of COPIED) s[prop] = style[prop];
  s.position = 'absolute';
  s.visibility = 'hidden';
  s.top = '0';
  s.left = '-99999px';
  s.overflow = 'hidden';
  s.border = '0';
  s.boxSizing = 'content-box';
  const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
  // clientWidth excludes borders and the scrollbar: lay out in exactly the textarea's text box.
  s.width = `${Math.max(0, textarea.clientWidth - padX)}px`;
  s.height = 'auto';
  if (textarea.nodeName === 'TEXTAREA') {
    if (style.whiteSpace === 'normal' || !style.whiteSpace) s.whiteSpace = 'pre-wrap';
    if (style.overflowWrap === 'normal') s.overflowWrap = 'break-word';
  } else {
    s.whiteSpace = 'pre';
  }
  const value = textarea.value;
  const at = Math.max(0, Math.min(value.length, index));
  mirror.textContent = value.slice(0, at);
  const marker = doc.createElement('span');
  // A non-empty marker so it has a line box; the rest of the text keeps wrapping identical.
  marker.textContent = value.slice(at) || '.';
  mirror.appendChild(marker);
  const lineHeight = parseFloat(style.lineHeight);
  const height = Number.isFinite(lineHeight) ? lineHeight : parseFloat(style.fontSize) * 1.2;
  return {
    top: marker.offsetTop + parseFloat(style.borderTopWidth),
    left: marker.offsetLeft + parseFloat(style.borderLeftWidth),
    height,
  };
}

/**
 * Draws every peer's cursor and selection over `textarea`. The textarea's offset parent must
 * be positioned (e.g. `position: relative` on a wrapper); the overlay is inserted right after
 * the textarea.
 * @param {import('./index.js').ConcordProvider} provider
 * @param {HTMLTextAreaElement} textarea
 * @param {{labels?: boolean}} [options]
 * @returns {() => void} removes the overlay
 */
export function remoteCursors(provider, textarea, options = {}) {
  const doc = textarea.ownerDocument;
  const view = doc.defaultView ?? window;
  const labels = options.labels !== false;
  const overlay = doc.createElement('div');
  overlay.className = 'concord-cursors';
  overlay.setAttribute('aria-hidden', 'true');
  Object.assign(overlay.style, { position: 'absolute', pointerEvents: 'none', overflow: 'hidden', zIndex: '1' });
  const layer = doc.createElement('div');
  Object.assign(layer.style, { position: 'absolute', left: '0', top: '0', width: '100%', height: '100%' });
  overlay.appendChild(layer);
  textarea.insertAdjacentElement('afterend', overlay);

  let frame = 0;
  const schedule = () => {
    if (frame) return;
    frame = view.requestAnimationFrame(() => {
      frame = 0;
      render();
    });
  };

  function box(cls, color, css) {
    const el = doc.createElement('div');
    el.className = cls;
    Object.assign(el.style, { position: 'absolute', ...css });
    if (color) el.style.setProperty('--concord-color', color);
    return el;
  }

  function render() {
    // Cover the textarea's padding box (inside its borders).
    const style = view.getComputedStyle(textarea);
    const bl = parseFloat(style.borderLeftWidth);
    const bt = parseFloat(style.borderTopWidth);
    Object.assign(overlay.style, {
      left: `${textarea.offsetLeft + bl}px`,
      top: `${textarea.offsetTop + bt}px`,
      width: `${textarea.clientWidth}px`,
      height: `${textarea.clientHeight}px`,
    });
    layer.style.transform = `translate(${-textarea.scrollLeft - bl}px, ${-textarea.scrollTop - bt}px)`;
    layer.replaceChildren();
    const length = textarea.value.length;
    const padL = parseFloat(style.paddingLeft);
    const contentLeft = bl + padL;
    const contentRight = bl + textarea.clientWidth - parseFloat(style.paddingRight);
    for (const [user, p] of provider.presences) {
      const cursor = normalizeCursor(p.cursor, length);
      if (!cursor) continue;
      const color = safeColor(p.color);
      const from = Math.min(cursor.anchor, cursor.head);
      const to = Math.max(cursor.anchor, cursor.head);
      if (from !== to) {
        const a = caretCoordinates(textarea, from);
        const b = caretCoordinates(textarea, to);
        const sel = { background: color, opacity: '0.22', borderRadius: '2px' };
        if (a.top === b.top) {
          layer.appendChild(box('concord-selection', color, { ...sel, left: `${a.left}px`, top: `${a.top}px`, width: `${b.left - a.left}px`, height: `${a.height}px` }));
        } else {
          layer.appendChild(box('concord-selection', color, { ...sel, left: `${a.left}px`, top: `${a.top}px`, width: `${Math.max(0, contentRight - a.left)}px`, height: `${a.height}px` }));
          if (b.top > a.top + a.height) {
            layer.appendChild(box('concord-selection', color, { ...sel, left: `${contentLeft}px`, top: `${a.top + a.height}px`, width: `${contentRight - contentLeft}px`, height: `${b.top - a.top - a.height}px` }));
          }
          layer.appendChild(box('concord-selection', color, { ...sel, left: `${contentLeft}px`, top: `${b.top}px`, width: `${Math.max(0, b.left - contentLeft)}px`, height: `${b.height}px` }));
        }
      }
      const at = caretCoordinates(textarea, cursor.head);
      const caret = box('concord-caret', color, { left: `${at.left - 1}px`, top: `${at.top}px`, width: '2px', height: `${at.height}px`, background: color, borderRadius: '1px' });
      caret.dataset.user = user;
      if (labels) {
        const label = doc.createElement('div');
        label.className = 'concord-caret-label';
        label.textContent = typeof p.name === 'string' && p.name ? p.name : user;
        const below = at.top - textarea.scrollTop < 18;
        Object.assign(label.style, {
          position: 'absolute', left: '-1px', [below ? 'top' : 'bottom']: '100%', background: color,
          color: '#fff', font: '600 11px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif',
          padding: '0 5px', borderRadius: below ? '0 4px 4px 4px' : '4px 4px 4px 0',
          whiteSpace: 'nowrap', boxShadow: '0 1px 2px rgb(0 0 0 / 0.2)',
        });
        caret.appendChild(label);
      }
      layer.appendChild(caret);
    }
  }

  const offs = [
    provider.on('presence', schedule),
    provider.on('change', schedule),
  ];
  const listen = (target, type) => {
    target.addEventListener(type, schedule);
    offs.push(() => target.removeEventListener(type, schedule));
  };
  listen(textarea, 'scroll');
  listen(textarea, 'input');
  listen(view, 'resize');
  if (typeof view.ResizeObserver === 'function') {
    const ro = new view.ResizeObserver(schedule);
    ro.observe(textarea);
    offs.push(() => ro.disconnect());
  }
  schedule();

  return function remove() {
    for (const off of offs.splice(0)) off();
    if (frame) view.cancelAnimationFrame(frame);
    overlay.remove();
  };
}
