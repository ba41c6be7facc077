// Hocuspocus (in memory), as its README starts it: the peer for /hocuspocus runs.
import { Server } from '@hocuspocus/server';

const port = Number(process.env.PORT ?? 1234);
const server = new Server({ port, address: '127.0.0.1', quiet: true });
await server.listen();
console.log(`hocuspocus on 127.0.0.1:${port}`);
