// A Tiptap editor on Concord through the stock HocuspocusProvider, as a Tiptap app is written.
// Bundled by the browser suite with esbuild. ?url=ws://host/hocuspocus&room=…&name=…
import { Editor } from '@tiptap/core';
import StarterKit from '@tiptap/starter-kit';
import Collaboration from '@tiptap/extension-collaboration';
import CollaborationCaret from '@tiptap/extension-collaboration-caret';
import { HocuspocusProvider } from '@hocuspocus/provider';

const params = new URLSearchParams(location.search);
const provider = new HocuspocusProvider({ url: params.get('url'), name: params.get('room') });
const editor = new Editor({
  element: document.querySelector('#editor'),
  extensions: [
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: provider.document }),
    CollaborationCaret.configure({ provider, user: { name: params.get('name'), color: params.get('color') ?? '#e11d48' } }),
  ],
});
window.app = { editor, provider };
