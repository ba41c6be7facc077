// Compiles only if the package's .d.ts files describe what a user writes (tsc --noEmit).
import { ConcordProvider, createProvider, bindTextarea, remoteCursors, diffText, type TextChange, type Presence } from '../../src/index.js';
import { concord, toChangeSet } from '../../src/codemirror.js';
import { EditorView } from '@codemirror/view';

async function main(textarea: HTMLTextAreaElement, parent: HTMLElement): Promise<string> {
  const provider = new ConcordProvider('wss://sync.example.com', 'doc', { persistence: true, maxReconnectDelay: 5000, token: async () => 'jwt' });
  const fixed = new ConcordProvider('wss://sync.example.com', 'doc', { token: 'jwt', connect: false });
  const role: 'write' | 'read' = fixed.role;
  fixed.on('access', ({ role }) => console.log(role === 'read'));
  fixed.on('denied', ({ code, reason }) => console.log(code === 'access_revoked', reason, fixed.denied?.code));
  await provider.ready;
  provider.setPresence({ name: 'Ada', color: '#e11d48', cursor: { anchor: 0, head: 2 } });
  const off = provider.on('change', ({ changes, remote }) => {
    const first: TextChange | undefined = changes[0];
    if (remote && first) console.log(first.index, first.delete, first.insert.length);
  });
  provider.on('status', ({ status }) => {
    const s: 'online' | 'offline' | 'connecting' | 'denied' = status;
    console.log(s);
  });
  provider.on('presence', ({ presences }) => {
    for (const [user, p] of presences) console.log(user, (p as Presence).name);
  });
  provider.on('pending', ({ count }) => console.log(count + 1));
  off();
  provider.insert(0, 'hi');
  provider.replace(0, 1, 'H', 'me');
  const unbind: () => void = bindTextarea(provider, textarea, { presence: true });
  const removeCursors = remoteCursors(provider, textarea);
  const view = new EditorView({ parent, extensions: [concord(provider)] });
  const set = toChangeSet([{ index: 0, delete: 0, insert: 'x' }], view.state.doc.length);
  console.log(role, set.length, diffText('a', 'b')?.insert, provider.session?.text(), provider.pendingCount);
  unbind();
  removeCursors();
  provider.disconnect();
  provider.connect();
  await provider.destroy();
  const other = await createProvider('http://localhost:8080', 'room');
  return other.text;
}
export { main };
