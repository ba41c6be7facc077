// Test support: a real `concord` server on a free 127.0.0.1 port with a temporary SQLite
// database, and waiting on conditions with deadlines (never sleeping for state).

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const repoDir = resolve(webDir, '..');
export const serverBin = process.env.CONCORD_BIN ?? join(repoDir, 'target/release/concord');

/** A free TCP port on 127.0.0.1. */
export async function freePort() {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = /** @type {import('node:net').AddressInfo} */ (srv.address());
  srv.close();
  await once(srv, 'close');
  return port;
}

/**
 * Polls `condition` until it returns a truthy value (returned) or `timeout` ms pass (throws,
 * with `message` and the last value seen).
 * @template T
 * @param {() => T | Promise<T>} condition
 * @param {{timeout?: number, interval?: number, message?: string | (() => string)}} [options]
 * @returns {Promise<T>}
 */
export async function waitFor(condition, { timeout = 10_000, interval = 10, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await condition();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const what = typeof message === 'function' ? message() : message;
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.stack : JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Starts `concord`. `restart()` stops and starts it again on the same port and database.
 * @param {{env?: Record<string, string>}} [options]
 */
export async function startServer(options = {}) {
  if (!existsSync(serverBin)) {
    throw new Error(`${serverBin} is missing: run \`cargo build --release -p concord-server\` first`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'concord-web-test-'));
  const port = await freePort();
  const http = `http://127.0.0.1:${port}`;
  let child;
  let log = '';

  async function launch() {
    log = '';
    child = spawn(serverBin, [], {
      env: {
        ...process.env,
        PORT: String(port),
        HOST: '127.0.0.1',
        DATABASE_URL: `sqlite://${dir}/db.sqlite`,
        CONCORD_WEB_DIR: webDir,
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
        ...options.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (d) => (log += d));
    child.stderr.on('data', (d) => (log += d));
    const exited = once(child, 'exit').then(([code]) => {
      throw new Error(`concord exited with ${code} before listening:\n${log}`);
    });
    exited.catch(() => {});
    await Promise.race([
      exited,
      waitFor(
        async () => {
          const res = await fetch(`${http}/healthz`);
          return res.ok;
        },
        { timeout: 20_000, interval: 25, message: `concord on ${http}/healthz` },
      ),
    ]);
  }

  async function stop() {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exit = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exit;
    clearTimeout(timer);
  }

  await launch();
  return {
    port,
    http,
    url: `ws://127.0.0.1:${port}`,
    dir,
    log: () => log,
    /** Stops the server (SIGTERM, then SIGKILL after 5 s). */
    stop,
    async restart() {
      await stop();
      await launch();
    },
    /** Kills the server (SIGKILL: no shutdown, no flush) and starts it again on the same port and database. */
    async crash() {
      if (child && child.exitCode === null && child.signalCode === null) {
        const exit = once(child, 'exit');
        child.kill('SIGKILL');
        await exit;
      }
      await launch();
    },
    /** Stops the server and removes its database. */
    async close() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A unique room id for one test. */
export function roomName(prefix = 'room') {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
