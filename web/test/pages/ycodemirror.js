// CodeMirror 6 on Concord through y-codemirror.next and the stock y-websocket provider.
// Bundled by the browser suite with esbuild. ?url=ws://host/yjs&room=…&name=…
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import { yCollab } from 'y-codemirror.next';
import { EditorState } from '@codemirror/state';
import { EditorView } from '@codemirror/view';

const params = new URLSearchParams(location.search);
const doc = new Y.Doc();
const provider = new WebsocketProvider(params.get('url'), params.get('room'), doc, { disableBc: true });
const ytext = doc.getText('body');
provider.awareness.setLocalStateField('user', { name: params.get('name'), color: params.get('color') ?? '#30bced' });
const view = new EditorView({
  state: EditorState.create({ doc: ytext.toString(), extensions: [yCollab(ytext, provider.awareness)] }),
  parent: document.querySelector('#editor'),
});
window.app = { view, provider, ytext, doc };
