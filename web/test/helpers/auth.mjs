// Access control in tests: tokens as an integrator's backend mints them, a server with
// accounts, and the accounts REST API.
import { createHmac, randomBytes } from 'node:crypto';
import { startServer } from './server.mjs';

/** An HS256 JWT, as an integrator's backend mints it. */
export function jwt(secret, claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Seconds since the epoch, `ahead` seconds from now. */
export function expiresIn(ahead) {
  return Math.floor(Date.now() / 1000) + ahead;
}

/**
 * A `concord` with `CONCORD_AUTH=accounts` and a fresh random secret (`server.secret`); login
 * limits lifted (every test signs up from 127.0.0.1).
 */
export async function startAccountsServer() {
  const secret = randomBytes(32).toString('hex');
  const server = await startServer({
    env: { CONCORD_AUTH: 'accounts', CONCORD_AUTH_SECRET: secret, LOGIN_BURST: '1000', LOGIN_PER_SEC: '1000' },
  });
  return Object.assign(server, { secret });
}

/** Calls the REST API; resolves to `{status, body}` (body parsed when JSON). */
export async function api(server, method, path, token, body) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${server.http}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Signs up a fresh account named `prefix` plus a random tail; resolves to `{token, user}`. */
export async function signup(server, prefix) {
  const name = `${prefix}-${randomBytes(4).toString('hex')}`;
  const { status, body } = await api(server, 'POST', '/api/signup', null, { name, password: 'correct horse battery' });
  if (status !== 201) throw new Error(`signup ${name}: ${status} ${JSON.stringify(body)}`);
  return body;
}
