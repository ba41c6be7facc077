// Hocuspocus, as its README starts it: the peer for /hocuspocus runs. In memory, or with
// DATABASE=<file> on its SQLite extension (what bench/peers/coldjoin.sh loads rooms from).
import { Server } from '@hocuspocus/server';

const port = Number(process.env.PORT ?? 1234);
const extensions = [];
if (process.env.DATABASE) {
  const { SQLite } = await import('@hocuspocus/extension-sqlite');
  extensions.push(new SQLite({ database: process.env.DATABASE }));
}
const server = new Server({ port, address: '127.0.0.1', quiet: true, extensions });
await server.listen();
console.log(`hocuspocus on 127.0.0.1:${port}${process.env.DATABASE ? ` (SQLite ${process.env.DATABASE})` : ''}`);
