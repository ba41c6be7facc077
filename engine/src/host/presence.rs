//! The room host's presence: who is here and where their cursor is, for every protocol.
//!
//! Presence is relayed, never stored. A member's changes are rate-limited (the latest held
//! back wins), coalesced per short tick ([`Coalescer`]) and rendered once per protocol per
//! flush; other instances hear them through the hub and their users expire unless refreshed.
//! Cursors are mapped between a Concord client's offsets and a Yjs client's relative positions
//! where members of the other kind are present, which needs the document.

use std::collections::HashMap;

use crate::awareness::{self, Pending};
use crate::doc::Document;
use crate::room::ConnId;
use crate::wire::{Presence, ServerMessage};
use crate::yjs;
use yrs::sync::awareness::AwarenessUpdate;

use super::protocol::{self, yjs_frame, Frame, Protocol};
use super::{Frames, Output, RoomHost};

/// A presence entry lives this long unless refreshed (a vanished instance's users expire, and a
/// Yjs client that stopped renewing its awareness is gone, as y-protocols' own timeout says).
pub const PRESENCE_TTL_MS: u64 = 30_000;
/// Local presences are re-announced to other instances this often, well inside the TTL.
pub const PRESENCE_HEARTBEAT_MS: u64 = 10_000;
/// Presences of other instances' clients a room keeps (beyond this, newcomers are not shown).
const MAX_REMOTE_PRESENCE: usize = 4096;
/// Presence frames a member may send in a burst, and per second after it. Frames beyond are
/// held: the latest is relayed once the member has tokens again, so a flood slows only it.
pub(super) const PRESENCE_BURST: f64 = 20.0;
pub(super) const PRESENCE_PER_SEC: f64 = 20.0;
/// Cursors mapped between offsets and relative positions per flush at most (each walks the
/// text); beyond, entries go out with the cursor their sender gave.
const MAX_MAPPED_CURSORS: usize = 256;

impl RoomHost {
    /// A JSON member's presence frame: who it is from and its clock are the server's to say.
    pub(super) fn json_presence(&mut self, conn: ConnId, mut p: Presence, now: u64) {
        let Some(m) = self.members.get(&conn) else {
            return;
        };
        p.user = m.user.clone();
        p.yjs = None;
        p.you = false;
        p.left = false;
        self.presence_clock = self.presence_clock.wrapping_add(1).max(1);
        p.clock = self.presence_clock;
        self.presence_from(conn, p, now);
    }

    /// A Yjs member's awareness update. A connection speaks for one awareness client: the first
    /// it names that no one else in the room speaks for (so no one can move, hide or rename
    /// another's cursor by naming its id, which every member sees).
    pub(super) fn yjs_awareness(&mut self, conn: ConnId, update: AwarenessUpdate, now: u64) {
        let Some(m) = self.members.get(&conn) else {
            return;
        };
        let claimed = m.awareness_client;
        let entry = update.clients.iter().find(|(id, _)| match claimed {
            Some(c) => c == id.get(),
            None => !self.awareness_id_taken(conn, id.get()),
        });
        let Some((client, entry)) = entry else {
            return;
        };
        let client = client.get();
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        m.awareness_client = Some(client);
        let Some(p) = yjs::presence_of(&m.user, client, entry, m.name.as_deref()) else {
            return;
        };
        if p.left {
            m.presence_held = None;
            if let Some(old) = m.presence.take() {
                self.presence_left(old, now);
            }
            return;
        }
        self.presence_from(conn, p, now);
    }

    /// Whether awareness client `id` already stands for someone else in this room: another
    /// local connection's Yjs client, or any presence (local or from another instance) that
    /// Yjs clients see under that id.
    fn awareness_id_taken(&self, conn: ConnId, id: u64) -> bool {
        let shown_as = |p: &Presence| {
            p.yjs
                .as_ref()
                .map_or_else(|| yjs::presence_client_id(&p.user), |y| y.client)
        };
        self.members.iter().any(|(c, m)| {
            *c != conn
                && (m.awareness_client == Some(id)
                    || m.presence.as_ref().is_some_and(|p| shown_as(p) == id))
        }) || self
            .remote_presence
            .values()
            .any(|(p, _)| !p.left && shown_as(p) == id)
    }

    /// A member's presence: relayed now, or held back until its presence rate allows (the
    /// latest wins). An authenticated member's name replaces whatever name it claims.
    fn presence_from(&mut self, conn: ConnId, mut p: Presence, now: u64) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if let Some(name) = &m.name {
            p.name = Some(name.clone());
        }
        m.presence_seen = now;
        if m.presence_rate.try_take(now) {
            m.presence_held = None;
            self.relay_presence(conn, p, now);
        } else {
            m.presence_held = Some(p);
        }
    }

    /// A member's presence, for the next flush (to the others here and on other instances).
    fn relay_presence(&mut self, conn: ConnId, p: Presence, now: u64) {
        self.coalescer
            .handle_presence(p.clone(), Some(conn), true, now);
        if let Some(m) = self.members.get_mut(&conn) {
            m.presence = Some(p);
        }
    }

    /// Tells everyone (here and on other instances) that this presence left, at the next
    /// flush (it replaces any state of the same user still waiting, so it is never overtaken).
    pub(super) fn presence_left(&mut self, mut p: Presence, now: u64) {
        p.left = true;
        p.cursor = None;
        self.coalescer.handle_presence(p, None, true, now);
    }

    /// Every live presence in the room, local and remote.
    pub(super) fn all_presence(&self) -> Vec<Presence> {
        let local = self.members.values().filter_map(|m| m.presence.clone());
        let remote = self.remote_presence.values().map(|(p, _)| p.clone());
        local.chain(remote).collect()
    }

    /// A presence from another instance, held to the size a client's presence may have.
    pub(super) fn remote_presence_event(&mut self, p: Presence, now: u64) {
        let len = serde_json::to_vec(&p).map_or(usize::MAX, |v| v.len());
        if len > self.config.max_presence_bytes {
            return;
        }
        if p.left {
            self.remote_presence.remove(&p.user);
        } else if self.remote_presence.len() < MAX_REMOTE_PRESENCE
            || self.remote_presence.contains_key(&p.user)
        {
            self.remote_presence
                .insert(p.user.clone(), (p.clone(), now + PRESENCE_TTL_MS));
        } else {
            return;
        }
        self.coalescer.handle_presence(p, None, false, now);
    }

    /// The presence housekeeping of one tick: expiries, held frames, the heartbeat to other
    /// instances.
    pub(super) fn presence_tick(&mut self, now: u64) {
        // Users of a vanished instance stop being refreshed: local members are told they left.
        let expired: Vec<String> = self
            .remote_presence
            .iter()
            .filter(|(_, (_, expiry))| *expiry <= now)
            .map(|(user, _)| user.clone())
            .collect();
        for user in expired {
            if let Some((mut p, _)) = self.remote_presence.remove(&user) {
                p.left = true;
                p.cursor = None;
                self.coalescer.handle_presence(p, None, false, now);
            }
        }
        // A Yjs client that stopped renewing its awareness (y-protocols renews every 15 s).
        let stale: Vec<ConnId> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.protocol.is_yjs()
                    && m.presence.is_some()
                    && now.saturating_sub(m.presence_seen) >= PRESENCE_TTL_MS
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stale {
            if let Some(p) = self.members.get_mut(&conn).and_then(|m| m.presence.take()) {
                self.presence_left(p, now);
            }
        }
        // Frames held back by the rate limit go out once their sender has tokens again.
        let ready: Vec<(ConnId, Presence)> = self
            .members
            .iter_mut()
            .filter(|(_, m)| m.presence_held.is_some())
            .filter_map(|(conn, m)| {
                if m.presence_rate.try_take(now) {
                    m.presence_held.take().map(|p| (*conn, p))
                } else {
                    None
                }
            })
            .collect();
        for (conn, p) in ready {
            self.relay_presence(conn, p, now);
        }
        if now.saturating_sub(self.last_heartbeat) >= PRESENCE_HEARTBEAT_MS {
            self.last_heartbeat = now;
            let live: Vec<Presence> = self
                .members
                .values()
                .filter_map(|m| m.presence.clone())
                .collect();
            for p in live {
                self.out.push_back(Output::PublishPresence(p));
            }
        }
    }

    /// Whether the presence flush due at `now` has cursors to map between protocols, which
    /// walks the document (CPU work, for the pool).
    pub(super) fn flush_needs_document(&self, now: u64) -> bool {
        let [json, yjs, hp] = Protocol::ALL.map(|p| self.speakers[p.slot()] > 0);
        self.coalescer.poll_timeout().is_some_and(|due| due <= now)
            && self.coalescer.pending().iter().any(|e| {
                let p = &e.presence;
                !p.left
                    && match &p.yjs {
                        Some(y) => json && p.cursor.is_none() && y.state.contains("\"cursor\""),
                        None => (yjs || hp) && p.cursor.is_some(),
                    }
            })
    }

    /// The coalesced presence changes, if due at `now`: told to other instances, then rendered
    /// once per protocol present.
    pub(super) fn flush_presence(&mut self, now: u64) {
        let entries = self.coalescer.poll_flush(now);
        self.send_presence(entries);
    }

    /// Everything pending, due or not, told to other instances (the room is stopping).
    pub fn take_presence_publishes(&mut self) -> Vec<Presence> {
        let entries = self.coalescer.take_all();
        entries
            .into_iter()
            .filter(|e| e.publish)
            .map(|e| e.presence)
            .collect()
    }

    fn send_presence(&mut self, entries: Vec<Pending>) {
        if entries.is_empty() {
            return;
        }
        for e in entries.iter().filter(|e| e.publish) {
            self.out
                .push_back(Output::PublishPresence(e.presence.clone()));
        }
        let speaks = Protocol::ALL.map(|p| self.speakers[p.slot()] > 0);
        let members = &self.members;
        let outs = presence_frames(
            &self.id,
            &entries,
            speaks,
            |conn| members.get(&conn).map(|m| m.protocol),
            self.state.document(),
        );
        self.out.extend(outs);
    }
}

/// Renders a presence flush once per protocol present (`speaks`, in [`Protocol::ALL`] order):
/// for JSON members one `presence` frame per entry, not sent to the member it came from; for
/// Yjs members one awareness message with every entry, and to a member that sent some of them
/// the message without its own. Cursors are mapped for the other side, at most
/// [`MAX_MAPPED_CURSORS`] each way: a Concord client's offsets become relative positions
/// (`cursor`) for Yjs members, a Yjs client's relative positions into `body` become
/// `{anchor, head}` offsets for JSON members. Positions into other types (Tiptap's) stay as
/// they came.
fn presence_frames(
    room: &str,
    entries: &[Pending],
    speaks: [bool; 3],
    protocol_of: impl Fn(ConnId) -> Option<Protocol>,
    doc: &Document,
) -> Vec<Output> {
    let [json, yjs_present, hp_present] = speaks;
    let mut out = Vec::new();
    if json {
        let mut budget = MAX_MAPPED_CURSORS;
        for e in entries {
            let p = &e.presence;
            let mut cursor = None;
            if let Some(y) = &p.yjs {
                if p.cursor.is_none() && !p.left && budget > 0 {
                    cursor = awareness::awareness_cursor(&y.state).and_then(|c| {
                        budget -= 1;
                        awareness::relative_to_offsets(doc, &c)
                    });
                }
            }
            let msg = match cursor {
                Some(cursor) => ServerMessage::Presence(Presence {
                    cursor: Some(cursor),
                    ..p.clone()
                }),
                None => ServerMessage::Presence(p.clone()),
            };
            out.push(Output::Broadcast {
                frames: Frames::only(Protocol::Json, protocol::json(&msg)),
                except: e.origin.into_iter().collect(),
                update: false,
            });
        }
    }
    if yjs_present || hp_present {
        let mut budget = MAX_MAPPED_CURSORS;
        let encoded: Vec<_> = entries
            .iter()
            .map(|e| {
                let p = &e.presence;
                let mut cursor = None;
                if let Some(c) = &p.cursor {
                    if p.yjs.is_none() && !p.left && budget > 0 {
                        budget -= 1;
                        cursor = awareness::offsets_to_relative(doc, c);
                    }
                }
                yjs::awareness_entry(p, cursor.as_ref())
            })
            .collect();
        // A member is not sent its own entries back.
        let mut origins: Vec<ConnId> = entries.iter().filter_map(|e| e.origin).collect();
        origins.sort_unstable();
        origins.dedup();
        let mut own = Vec::new();
        let mut except = Vec::new();
        for conn in origins {
            let Some(protocol) = protocol_of(conn).filter(|p| p.is_yjs()) else {
                continue;
            };
            except.push(conn);
            let rest: Vec<_> = entries
                .iter()
                .zip(&encoded)
                .filter(|(e, _)| e.origin != Some(conn))
                .map(|(_, entry)| entry)
                .collect();
            if !rest.is_empty() {
                let frame = yjs_frame(room, protocol, yjs::awareness_message(rest));
                own.push(Output::Send { to: conn, frame });
            }
        }
        let all = yjs::awareness_message(&encoded);
        let mut frames = Frames::default();
        if hp_present {
            frames.hocuspocus = Some(yjs_frame(room, Protocol::Hocuspocus, all.clone()));
        }
        if yjs_present {
            frames.yjs = Some(Frame::binary(all));
        }
        out.push(Output::Broadcast {
            frames,
            except,
            update: false,
        });
        out.extend(own);
    }
    out
}

/// Remote presence by user, with its expiry (ms).
pub(super) type RemotePresence = HashMap<String, (Presence, u64)>;
