//! [`ClientSession`]: the browser side's state machine, without I/O.
//!
//! # Call order
//! - Local edits: [`ClientSession::insert`] / [`ClientSession::delete`] /
//!   [`ClientSession::replace`] apply at once (the editor shows them) and are collected until
//!   [`ClientSession::flush`] (call it once per tick or animation frame) turns them into one op.
//! - Connecting: [`ClientSession::connect`] returns the `?sv=` to put in the URL. Feed every
//!   frame to [`ClientSession::handle_message`]. On close, call [`ClientSession::disconnect`].
//! - After every call, drain [`ClientSession::poll_transmit`] (frames to send) and
//!   [`ClientSession::poll_event`] (what the UI may want to know).
//!
//! Access: a connection is a writer unless the server's `access` frame says `read` (right
//! after its `sync`, or when a grant changes live). While [`ClientSession::role`] is
//! [`Role::Read`] local edits are refused with [`EngineError::ReadOnly`] and nothing is queued;
//! every change of role is a [`ClientEvent::Access`].
//!
//! Pending ops stay until acked. While offline they are merged into one update, so a long
//! offline session replays as one message; on `sync` the session sends exactly what the
//! server's state vector says it lacks (which covers every pending op) as one op, and the ack of
//! that op retires everything.

use std::collections::VecDeque;

use yrs::encoding::write::Write as _;

use crate::changes::TextChange;
use crate::doc::{merge_updates, Document};
use crate::error::{EngineError, Result};
use crate::wire::{encode_b64, ClientMessage, Presence, ServerMessage};

/// Where the session is in its connection lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// No socket; edits queue up.
    Offline,
    /// Socket open, waiting for the server's `sync`.
    Connecting,
    /// Synced; ops go out as they are flushed.
    Online,
}

/// What this replica may do in its room, as the server says (`access` frames). Without access
/// control every connection is a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Edits are accepted.
    #[default]
    Write,
    /// The room's updates arrive but local edits are refused (here, and by the server).
    Read,
}

impl Role {
    /// `"write"` or `"read"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
        }
    }

    /// Parses the wire's `"write"` / `"read"`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "write" => Some(Role::Write),
            "read" => Some(Role::Read),
            _ => None,
        }
    }
}

/// Things the UI may want to react to.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The first `sync` after connecting was applied.
    Synced {
        /// Room seq at the sync.
        seq: u64,
    },
    /// A remote update was applied.
    RemoteUpdate {
        /// It changed the text (false for duplicates).
        changed: bool,
        /// What it did to the text, when tracking ([`ClientSession::track_changes`]).
        changes: Vec<TextChange>,
    },
    /// An op is durable on the server.
    Acked {
        /// The op id.
        id: String,
        /// Room seq.
        seq: u64,
    },
    /// Someone's presence.
    Presence(Presence),
    /// What this replica may do changed: an editor binding goes read-only or writable again.
    Access {
        /// The new role.
        role: Role,
    },
    /// The server rejected something.
    ServerError {
        /// Stable code.
        code: String,
        /// Human-readable message.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingOp {
    id: String,
    update: Vec<u8>,
    /// Offline flushes appended to this unsent op and not yet folded into `update`, kept as a
    /// counter in base [`MERGE_FAN_IN`]: `(flushes covered, their merged update)`, counts never
    /// increasing; [`MERGE_FAN_IN`] runs of equal count are merged into one. Each flush is thus
    /// re-merged O(log n) times, instead of the whole op being re-merged on every flush (which
    /// made a long offline session quadratic). Folded into `update` before `update` is read.
    parts: Vec<(u64, Vec<u8>)>,
    /// Sent on the current connection (false: must go out on the next sync).
    sent: bool,
    /// The room seq this replica had seen when the op's first edit was made (unknown for ops
    /// restored from saved state, which does not keep it).
    base: Option<u64>,
}

/// Most updates merged by one yrs merge. yrs' merge re-sorts all of its inputs for every block
/// it writes, so it is quadratic in the number of inputs; many updates are merged as a tree.
const MERGE_FAN_IN: usize = 16;

/// Merges updates as a tree of merges of at most [`MERGE_FAN_IN`] inputs each.
fn merge_tree<B: AsRef<[u8]>>(updates: &[B]) -> Result<Vec<u8>> {
    match updates {
        [one] => Ok(one.as_ref().to_vec()),
        few if few.len() <= MERGE_FAN_IN => merge_updates(few),
        many => {
            let level = many
                .chunks(MERGE_FAN_IN)
                .map(merge_tree)
                .collect::<Result<Vec<_>>>()?;
            merge_tree(&level)
        }
    }
}

impl PendingOp {
    /// Adds an offline flush to this unsent op.
    fn append(&mut self, update: Vec<u8>) -> Result<()> {
        self.parts.push((1, update));
        while let Some(first) = self.parts.len().checked_sub(MERGE_FAN_IN) {
            let count = self.parts[first].0;
            if self.parts[first..].iter().any(|(c, _)| *c != count) {
                break;
            }
            let runs: Vec<&[u8]> = self.parts[first..]
                .iter()
                .map(|(_, u)| u.as_slice())
                .collect();
            let merged = merge_updates(&runs)?;
            self.parts.truncate(first);
            self.parts.push((count * MERGE_FAN_IN as u64, merged));
        }
        Ok(())
    }

    /// Folds `parts` into `update`.
    fn settle(&mut self) -> Result<()> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let mut all: Vec<&[u8]> = Vec::with_capacity(self.parts.len() + 1);
        all.push(&self.update);
        all.extend(self.parts.iter().map(|(_, part)| part.as_slice()));
        self.update = merge_tree(&all)?;
        self.parts.clear();
        Ok(())
    }
}

/// One replica on the client side: a document, its pending ops and its connection state.
pub struct ClientSession {
    doc: Document,
    session: String,
    next_op: u64,
    unflushed: Vec<Vec<u8>>,
    pending: VecDeque<PendingOp>,
    status: SessionStatus,
    server_seq: u64,
    outbox: VecDeque<ClientMessage>,
    events: VecDeque<ClientEvent>,
    presence: Option<Presence>,
    role: Role,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("session", &self.session)
            .field("status", &self.status)
            .field("pending", &self.pending.len())
            .field("unflushed", &self.unflushed.len())
            .finish()
    }
}

/// Magic and version of [`ClientSession::export_state`] bytes.
const SAVED_MAGIC: &[u8; 4] = b"CCS1";

impl ClientSession {
    /// A new session. `client_id` must be unique per replica (the caller draws it at random);
    /// `session` prefixes op ids (`{session}-{n}`), and must be unique per session too.
    pub fn new(client_id: u64, session: impl Into<String>) -> Self {
        ClientSession {
            doc: Document::new(client_id),
            session: session.into(),
            next_op: 1,
            unflushed: Vec::new(),
            pending: VecDeque::new(),
            status: SessionStatus::Offline,
            server_seq: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            presence: None,
            role: Role::Write,
        }
    }

    /// Reports, with every [`ClientEvent::RemoteUpdate`], the ranges of text it changed, so an
    /// editor binding can patch its view instead of replacing all of it.
    pub fn track_changes(&mut self) {
        self.doc.track_changes();
    }

    /// Sets this client's presence (cursor, name, color). Sent now when online, and again after
    /// every reconnect; never stored in the document.
    pub fn set_presence(&mut self, presence: Presence) {
        if self.status == SessionStatus::Online {
            self.outbox
                .push_back(ClientMessage::Presence(presence.clone()));
        }
        self.presence = Some(presence);
    }

    /// The document (read-only).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// The current text.
    pub fn text(&self) -> String {
        self.doc.text()
    }

    /// Connection status.
    pub fn status(&self) -> SessionStatus {
        self.status
    }

    /// What this replica may do: [`Role::Read`] after the server said so (an `access` frame),
    /// until it says otherwise or a later connection syncs as a writer.
    pub fn role(&self) -> Role {
        self.role
    }

    fn set_role(&mut self, role: Role) {
        if role != self.role {
            self.role = role;
            self.events.push_back(ClientEvent::Access { role });
        }
    }

    /// Ops not yet acked, counting unflushed edits as one.
    pub fn pending_count(&self) -> usize {
        self.pending.len() + usize::from(!self.unflushed.is_empty())
    }

    /// The last room seq seen.
    pub fn server_seq(&self) -> u64 {
        self.server_seq
    }

    /// Inserts at a UTF-16 offset.
    pub fn insert(&mut self, index: u32, text: &str) -> Result<()> {
        self.replace(index, 0, text)
    }

    /// Deletes at a UTF-16 offset.
    pub fn delete(&mut self, index: u32, len: u32) -> Result<()> {
        self.replace(index, len, "")
    }

    /// Replaces a UTF-16 range; queued until the next [`ClientSession::flush`]. Refused with
    /// [`EngineError::ReadOnly`] (nothing changes, nothing is queued) while the role is
    /// [`Role::Read`]: the server would refuse the op.
    pub fn replace(&mut self, index: u32, len: u32, text: &str) -> Result<()> {
        if len == 0 && text.is_empty() {
            return Ok(());
        }
        if self.role == Role::Read {
            return Err(EngineError::ReadOnly);
        }
        let update = self.doc.replace(index, len, text)?;
        self.unflushed.push(update);
        Ok(())
    }

    /// Turns the edits since the last flush into one op. Online, it is queued for sending;
    /// offline, it is merged into the unsent op so the queue stays one message long.
    pub fn flush(&mut self) -> Result<()> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let update = merge_tree(&self.unflushed)?;
        self.unflushed.clear();
        if self.status == SessionStatus::Online {
            let op = self.new_op(update, true);
            self.outbox.push_back(ClientMessage::Op {
                id: Some(op.id.clone()),
                update: op.update.clone(),
                base: op.base,
            });
            self.pending.push_back(op);
        } else {
            match self.pending.back_mut() {
                Some(last) if !last.sent => last.append(update)?,
                _ => {
                    let op = self.new_op(update, false);
                    self.pending.push_back(op);
                }
            }
        }
        Ok(())
    }

    fn new_op(&mut self, update: Vec<u8>, sent: bool) -> PendingOp {
        let id = format!("{}-{}", self.session, self.next_op);
        self.next_op += 1;
        PendingOp {
            id,
            update,
            parts: Vec::new(),
            sent,
            base: Some(self.server_seq),
        }
    }

    /// A socket is opening: returns this replica's state vector (v1, base64) for `?sv=`, so the
    /// server's first `sync` carries only what this replica lacks.
    pub fn connect(&mut self) -> String {
        self.status = SessionStatus::Connecting;
        self.outbox.clear();
        encode_b64(&self.doc.state_vector())
    }

    /// The socket closed. Everything unacked stays pending and goes out after the next sync.
    pub fn disconnect(&mut self) {
        self.status = SessionStatus::Offline;
        self.outbox.clear();
        for op in &mut self.pending {
            op.sent = false;
        }
    }

    /// Feeds one frame from the server.
    pub fn handle_message(&mut self, msg: ServerMessage) -> Result<()> {
        match msg {
            ServerMessage::Sync { state, sv, seq } => self.handle_sync(&state, sv.as_deref(), seq),
            ServerMessage::Op { seq, update } => {
                let applied = self.doc.apply_update(&update)?;
                self.server_seq = self.server_seq.max(seq);
                self.events.push_back(ClientEvent::RemoteUpdate {
                    changed: applied.changed,
                    changes: self.doc.take_changes(),
                });
                Ok(())
            }
            ServerMessage::Ack { id, seq } => {
                self.server_seq = self.server_seq.max(seq);
                if let Some(pos) = self.pending.iter().position(|op| op.id == id) {
                    self.pending.remove(pos);
                    self.events.push_back(ClientEvent::Acked { id, seq });
                }
                Ok(())
            }
            ServerMessage::Presence(p) => {
                self.events.push_back(ClientEvent::Presence(p));
                Ok(())
            }
            ServerMessage::Error { code, message } => {
                if code == EngineError::MissingDependencies.code()
                    && self.status == SessionStatus::Online
                {
                    // An earlier frame never arrived: resend everything pending, in order, as one.
                    self.resend_pending(None)?;
                }
                self.events
                    .push_back(ClientEvent::ServerError { code, message });
                Ok(())
            }
            ServerMessage::Access { role } => {
                // An unknown role (a newer server) changes nothing rather than guessing.
                if let Some(role) = Role::parse(&role) {
                    self.set_role(role);
                }
                Ok(())
            }
        }
    }

    /// Parses and feeds one text frame; unknown message types are ignored.
    pub fn handle_frame(&mut self, text: &str) -> Result<()> {
        match ServerMessage::parse(text)? {
            Some(msg) => self.handle_message(msg),
            None => Ok(()),
        }
    }

    /// Feeds a burst of text frames, in order. Consecutive `op` frames are merged and applied
    /// in one transaction, with one [`ClientEvent::RemoteUpdate`] for all of them: yrs pays per
    /// transaction, and computing change ranges walks the text, so a backlog of ops costs one
    /// walk instead of one per op. Every frame is processed even if one fails; the first error
    /// is returned.
    pub fn handle_frames<S: AsRef<str>>(&mut self, frames: &[S]) -> Result<()> {
        let mut first_err = None;
        let mut ops: Vec<Vec<u8>> = Vec::new();
        let mut ops_seq = 0;
        for frame in frames {
            match ServerMessage::parse(frame.as_ref()) {
                Ok(Some(ServerMessage::Op { seq, update })) => {
                    ops.push(update);
                    ops_seq = ops_seq.max(seq);
                }
                Ok(Some(msg)) => {
                    if let Err(e) = self.apply_remote_ops(&mut ops, ops_seq) {
                        first_err.get_or_insert(e);
                    }
                    if let Err(e) = self.handle_message(msg) {
                        first_err.get_or_insert(e);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.apply_remote_ops(&mut ops, ops_seq) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Applies queued remote ops as one update (one by one if the merge fails, so one bad op
    /// does not cost the others) and reports them as one remote change.
    fn apply_remote_ops(&mut self, ops: &mut Vec<Vec<u8>>, seq: u64) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut first_err = None;
        let changed = match self.doc.apply_updates(ops) {
            Ok(applied) => applied.changed,
            Err(_) => {
                let mut changed = false;
                for update in ops.iter() {
                    match self.doc.apply_update(update) {
                        Ok(applied) => changed |= applied.changed,
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                changed
            }
        };
        ops.clear();
        self.server_seq = self.server_seq.max(seq);
        self.events.push_back(ClientEvent::RemoteUpdate {
            changed,
            changes: self.doc.take_changes(),
        });
        first_err.map_or(Ok(()), Err)
    }

    fn handle_sync(&mut self, state: &[u8], server_sv: Option<&[u8]>, seq: u64) -> Result<()> {
        // Checked first: a `sync` with a state vector that does not decode is rejected whole,
        // not applied and then reported as an error.
        if let Some(sv) = server_sv {
            crate::doc::decode_state_vector(sv)?;
        }
        let applied = self.doc.apply_update(state)?;
        if applied.changed {
            self.events.push_back(ClientEvent::RemoteUpdate {
                changed: true,
                changes: self.doc.take_changes(),
            });
        }
        self.server_seq = seq;
        self.status = SessionStatus::Online;
        // A connection is a writer unless the server says otherwise right after its `sync`
        // (readers get an `access` frame then), so a grant upgraded while offline is seen.
        self.set_role(Role::Write);
        // Presence first: the room names the authors of ops in history after it.
        if let Some(p) = &self.presence {
            self.outbox.push_back(ClientMessage::Presence(p.clone()));
        }
        self.flush()?;
        let server_lacks = match server_sv {
            Some(sv) => self.server_lacks_inserts(sv)?,
            None => false,
        };
        if !self.pending.is_empty() || server_lacks {
            self.resend_pending(server_sv)?;
        }
        self.events.push_back(ClientEvent::Synced { seq });
        Ok(())
    }

    /// Replaces every pending op by one op carrying the merge of the pending ops and, when the
    /// server's state vector is known, the diff against it (what else it lacks).
    ///
    /// The diff alone is not enough: the server's state vector counts ops it has accepted but
    /// not made durable yet, and a group commit can still fail. A pending op it counted would
    /// be left out, the ack of the resend would retire it, and a failed commit would lose it.
    fn resend_pending(&mut self, server_sv: Option<&[u8]>) -> Result<()> {
        for op in &mut self.pending {
            op.settle()?;
        }
        let diff = match server_sv {
            Some(sv) => Some(self.doc.encode_state_as_update(Some(sv))?),
            None => None,
        };
        let updates: Vec<&[u8]> = self
            .pending
            .iter()
            .map(|op| op.update.as_slice())
            .chain(diff.as_deref())
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        let update = merge_tree(&updates)?;
        // The merged op was made against the oldest state any of its parts was.
        let base = self.pending.iter().filter_map(|op| op.base).min();
        self.pending.clear();
        let mut op = self.new_op(update, true);
        op.base = base.or(op.base);
        self.outbox.push_back(ClientMessage::Op {
            id: Some(op.id.clone()),
            update: op.update.clone(),
            base: op.base,
        });
        self.pending.push_back(op);
        Ok(())
    }

    fn server_lacks_inserts(&self, server_sv: &[u8]) -> Result<bool> {
        let theirs = crate::doc::decode_state_vector(server_sv)?;
        let ours = crate::doc::decode_state_vector(&self.doc.state_vector())?;
        Ok(ours
            .iter()
            .any(|(client, &clock)| clock > theirs.get(client)))
    }

    /// Next frame to send on the socket.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.outbox.pop_front()
    }

    /// Next event for the UI.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The document and the pending ops as bytes, for IndexedDB. Unflushed edits are flushed
    /// into the pending queue first so nothing typed is left out.
    pub fn export_state(&mut self) -> Result<Vec<u8>> {
        self.flush()?;
        let mut out = Vec::new();
        out.extend_from_slice(SAVED_MAGIC);
        out.write_buf(self.doc.encode_state_as_update(None)?);
        out.write_var(self.pending.len() as u64);
        for op in &mut self.pending {
            op.settle()?;
            out.write_buf(op.id.as_bytes());
            out.write_buf(&op.update);
        }
        Ok(out)
    }

    /// Restores a session saved with [`ClientSession::export_state`].
    ///
    /// `client_id` must be fresh: the saved state may be older than edits this replica made
    /// after saving, and reusing its old id would mint ids that already mean something else.
    pub fn import_state(client_id: u64, session: impl Into<String>, saved: &[u8]) -> Result<Self> {
        let corrupt = |reason: &str| EngineError::CorruptSavedState {
            reason: reason.to_owned(),
        };
        let mut r = Reader { buf: saved };
        if r.take(4).ok_or_else(|| corrupt("too short"))? != SAVED_MAGIC {
            return Err(corrupt("unknown format"));
        }
        let state = r.bytes().ok_or_else(|| corrupt("document truncated"))?;
        let mut session = ClientSession::new(client_id, session);
        session
            .doc
            .apply_update(state)
            .map_err(|e| corrupt(&e.to_string()))?;
        let count = r.u64().ok_or_else(|| corrupt("pending count truncated"))?;
        for _ in 0..count {
            let id = r.bytes().ok_or_else(|| corrupt("op id truncated"))?;
            let id = std::str::from_utf8(id).map_err(|_| corrupt("op id is not UTF-8"))?;
            let update = r.bytes().ok_or_else(|| corrupt("op truncated"))?;
            // Pending ops are merged and resent later; one that does not decode would make
            // every later export and resend fail, so it is refused here, with the whole state.
            crate::doc::state_vector_of_update(update)
                .map_err(|e| corrupt(&format!("pending op: {e}")))?;
            session.pending.push_back(PendingOp {
                id: id.to_owned(),
                update: update.to_vec(),
                parts: Vec::new(),
                sent: false,
                base: None,
            });
        }
        if !r.buf.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(session)
    }

    /// Folds another saved session (e.g. a second tab's IndexedDB record of the same room) into
    /// this one: its document is merged in (reported as a remote change when tracking) and its
    /// unacked ops join this session's pending queue, so they are resent after the next sync,
    /// deletions included. Nothing changes if `saved` does not decode.
    pub fn merge_saved(&mut self, saved: &[u8]) -> Result<()> {
        // The other session is only read, never edited: its client id is never used.
        let other = ClientSession::import_state(self.doc.client_id(), "merged", saved)?;
        let state = other.doc.encode_state_as_update(None)?;
        let applied = self.doc.apply_update(&state)?;
        if applied.changed {
            self.events.push_back(ClientEvent::RemoteUpdate {
                changed: true,
                changes: self.doc.take_changes(),
            });
        }
        // Like offline flushes, unsent ops fold into one so the replay stays one message.
        for mut op in other.pending {
            op.settle()?;
            match self.pending.back_mut() {
                Some(last) if !last.sent => last.append(op.update)?,
                _ => {
                    op.sent = false;
                    self.pending.push_back(op);
                }
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Document;
    use crate::room::{ConnId, RoomEvent, RoomState};
    use crate::CompactionPolicy;

    /// Runs one client against one room over a perfect link until quiet.
    fn pump(client: &mut ClientSession, room: &mut RoomState, conn: ConnId) {
        loop {
            let mut progressed = false;
            while let Some(msg) = client.poll_transmit() {
                progressed = true;
                if let ClientMessage::Op { id, update, .. } = msg {
                    room.handle_op(conn, id, &update).unwrap();
                }
            }
            if let Some(batch) = room.take_batch() {
                progressed = true;
                let first = room.seq() + 1;
                let _ = batch;
                room.handle_committed(first).unwrap();
            }
            while let Some(ev) = room.poll_event() {
                if let RoomEvent::Ack { conn: c, id, seq } = ev {
                    if c == conn {
                        progressed = true;
                        client
                            .handle_message(ServerMessage::Ack { id, seq })
                            .unwrap();
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn connect(client: &mut ClientSession, room: &mut RoomState) {
        let sv = client.connect();
        let sv = crate::wire::decode_b64("sv", &sv).unwrap();
        let sync = room.sync_for(Some(&sv)).unwrap();
        client.handle_message(sync).unwrap();
    }

    #[test]
    fn online_edits_are_acked_and_retired() {
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        let mut c = ClientSession::new(7, "c");
        connect(&mut c, &mut room);
        c.insert(0, "hello").unwrap();
        c.insert(5, "!").unwrap();
        assert_eq!(c.pending_count(), 1);
        c.flush().unwrap();
        pump(&mut c, &mut room, ConnId(1));
        assert_eq!(c.pending_count(), 0);
        assert_eq!(room.text(), "hello!");
    }

    #[test]
    fn offline_queue_is_one_message() {
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        let mut c = ClientSession::new(7, "c");
        for i in 0..1000u32 {
            c.insert(i, "x").unwrap();
            c.flush().unwrap();
        }
        assert_eq!(c.pending_count(), 1);
        connect(&mut c, &mut room);
        let mut sent = 0;
        while let Some(ClientMessage::Op { id, update, .. }) = c.poll_transmit() {
            sent += 1;
            room.handle_op(ConnId(1), id, &update).unwrap();
        }
        assert_eq!(sent, 1);
        room.take_batch().unwrap();
        room.handle_committed(1).unwrap();
        while let Some(ev) = room.poll_event() {
            if let RoomEvent::Ack { id, seq, .. } = ev {
                c.handle_message(ServerMessage::Ack { id, seq }).unwrap();
            }
        }
        assert_eq!(c.pending_count(), 0);
        assert_eq!(room.text(), "x".repeat(1000));
    }

    #[test]
    fn a_resend_carries_ops_the_server_has_not_made_durable() {
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        let mut c = ClientSession::new(7, "c");
        connect(&mut c, &mut room);
        c.insert(0, "hello").unwrap();
        c.flush().unwrap();
        while let Some(ClientMessage::Op { id, update, .. }) = c.poll_transmit() {
            room.handle_op(ConnId(1), id, &update).unwrap();
        }
        room.take_batch().unwrap(); // the commit is in flight
        c.disconnect();
        connect(&mut c, &mut room); // the room's state vector counts "hello"
        let Some(ClientMessage::Op { update, .. }) = c.poll_transmit() else {
            panic!("the pending op is resent");
        };
        let resent = Document::from_update(9, &update).unwrap();
        assert_eq!(
            resent.text(),
            "hello",
            "the resend must carry what its ack retires"
        );
        // The commit fails; the resend brings the text back and its ack is then true.
        room.handle_commit_failed();
        room.handle_op(ConnId(2), Some("c-2".into()), &update)
            .unwrap();
        assert_eq!(room.text(), "hello");
    }

    #[test]
    fn a_sync_with_a_bad_state_vector_changes_nothing() {
        let mut a = Document::new(1);
        let state = a.insert(0, "from the server").unwrap();
        let mut c = ClientSession::new(7, "c");
        c.connect();
        let sync = ServerMessage::Sync {
            state,
            sv: Some(vec![0xff; 12]),
            seq: 3,
        };
        assert!(c.handle_message(sync).is_err());
        assert_eq!(c.text(), "");
        assert_eq!(c.status(), SessionStatus::Connecting);
        assert_eq!(c.server_seq(), 0);
    }

    #[test]
    fn a_reload_shows_what_the_session_showed() {
        // Peers 1 and 2 build on each other; this session gets their edits out of order, so
        // some of them wait for others (pending) while it types.
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        let base = a.insert(0, "x").unwrap();
        let a1 = a.insert(1, "y").unwrap();
        b.apply_update(&base).unwrap();
        b.apply_update(&a1).unwrap();
        let b0 = b.insert(1, "z").unwrap(); // waits for 1's "y"
        a.apply_update(&b0).unwrap();
        let a2 = a.insert(1, "w").unwrap(); // waits for 1's "y" and 2's "z"
        let mut c = ClientSession::new(7, "c");
        for (seq, update) in [(1, base), (3, b0), (4, a2)] {
            c.handle_message(ServerMessage::Op { seq, update }).unwrap();
        }
        c.insert(0, "me ").unwrap();
        assert_eq!(c.text(), "me x");
        assert!(c.document().has_pending());
        let saved = c.export_state().unwrap();
        let mut restored = ClientSession::import_state(8, "d", &saved).unwrap();
        assert_eq!(restored.text(), "me x", "a reload shows the same text");
        assert!(
            !restored.document().has_pending(),
            "what waited is not saved"
        );
        // The next sync brings what waited and what it waited for.
        restored.connect();
        let state = a
            .encode_state_as_update(Some(&restored.document().state_vector()))
            .unwrap();
        let sv = Some(a.state_vector());
        restored
            .handle_message(ServerMessage::Sync { state, sv, seq: 5 })
            .unwrap();
        assert_eq!(restored.text(), format!("me {}", a.text()));
        let _ = a1;
    }

    #[test]
    fn ops_say_which_seq_they_were_made_against() {
        let mut c = ClientSession::new(1, "s");
        c.connect();
        let sync = ServerMessage::Sync {
            state: Document::new(9).encode_state_as_update(None).unwrap(),
            sv: None,
            seq: 7,
        };
        c.handle_message(sync).unwrap();
        c.insert(0, "a").unwrap();
        c.flush().unwrap();
        let Some(ClientMessage::Op { base, .. }) = c.poll_transmit() else {
            panic!("an op");
        };
        assert_eq!(base, Some(7));
        // Offline edits keep the seq seen before going offline, through the resend.
        c.disconnect();
        c.insert(1, "b").unwrap();
        c.flush().unwrap();
        c.connect();
        let sync = ServerMessage::Sync {
            state: Document::new(9).encode_state_as_update(None).unwrap(),
            sv: None,
            seq: 40,
        };
        c.handle_message(sync).unwrap();
        let bases: Vec<Option<u64>> = std::iter::from_fn(|| c.poll_transmit())
            .filter_map(|m| match m {
                ClientMessage::Op { base, .. } => Some(base),
                _ => None,
            })
            .collect();
        assert_eq!(bases, vec![Some(7)]);
    }

    #[test]
    fn export_import_round_trip_keeps_pending() {
        let mut c = ClientSession::new(7, "c");
        c.insert(0, "offline 😀").unwrap();
        let saved = c.export_state().unwrap();
        let mut restored = ClientSession::import_state(8, "d", &saved).unwrap();
        assert_eq!(restored.text(), "offline 😀");
        assert_eq!(restored.pending_count(), 1);
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        connect(&mut restored, &mut room);
        pump(&mut restored, &mut room, ConnId(1));
        assert_eq!(room.text(), "offline 😀");
        assert_eq!(restored.pending_count(), 0);
    }

    #[test]
    fn saved_state_with_a_pending_op_that_does_not_decode_is_corrupt() {
        let mut c = ClientSession::new(7, "c");
        c.insert(0, "abc").unwrap();
        let mut saved = Vec::new();
        saved.extend_from_slice(SAVED_MAGIC);
        saved.write_buf(c.doc.encode_state_as_update(None).unwrap());
        saved.write_var(1);
        saved.write_buf(b"c-1");
        saved.write_buf(b"\x00\x01\x02garbage");
        assert!(matches!(
            ClientSession::import_state(8, "d", &saved),
            Err(EngineError::CorruptSavedState { .. })
        ));
    }

    #[test]
    fn corrupt_saved_state_is_an_error() {
        let mut c = ClientSession::new(7, "c");
        c.insert(0, "abc").unwrap();
        let saved = c.export_state().unwrap();
        for cut in 0..saved.len() {
            assert!(ClientSession::import_state(8, "d", &saved[..cut]).is_err());
        }
        assert!(ClientSession::import_state(8, "d", b"XXXX").is_err());
        let mut extra = saved.clone();
        extra.push(0);
        assert!(ClientSession::import_state(8, "d", &extra).is_err());
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;

    #[test]
    fn remote_updates_report_the_ranges_they_changed() {
        let mut a = ClientSession::new(1, "a");
        let mut b = ClientSession::new(2, "b");
        b.track_changes();
        let hello = a.doc.insert(0, "hello world").unwrap();
        b.handle_message(ServerMessage::Op {
            seq: 1,
            update: hello,
        })
        .unwrap();
        let edit = a.doc.replace(6, 5, "😀 there").unwrap();
        b.handle_message(ServerMessage::Op {
            seq: 2,
            update: edit,
        })
        .unwrap();
        // Local edits are not echoed back as changes.
        b.insert(0, ">").unwrap();
        let events: Vec<ClientEvent> = std::iter::from_fn(|| b.poll_event()).collect();
        let changes: Vec<Vec<TextChange>> = events
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::RemoteUpdate { changes, .. } => Some(changes),
                _ => None,
            })
            .collect();
        assert_eq!(
            changes,
            vec![
                vec![TextChange {
                    index: 0,
                    delete: 0,
                    insert: "hello world".into()
                }],
                vec![TextChange {
                    index: 6,
                    delete: 5,
                    insert: "😀 there".into()
                }],
            ]
        );
        assert_eq!(b.text(), ">hello 😀 there");
    }

    #[test]
    fn presence_goes_out_when_online_and_after_every_sync() {
        let mut c = ClientSession::new(1, "c");
        let p = Presence {
            user: "u".into(),
            cursor: Some(serde_json::json!(3)),
            color: None,
            name: None,
            left: false,
            you: false,
            ..Presence::default()
        };
        c.set_presence(p.clone());
        assert!(c.poll_transmit().is_none(), "offline: nothing sent yet");
        c.connect();
        let room = crate::RoomState::new(crate::CompactionPolicy::default(), 0);
        c.handle_message(room.sync_for(None).unwrap()).unwrap();
        assert_eq!(c.poll_transmit(), Some(ClientMessage::Presence(p)));
    }
}

#[cfg(test)]
mod merge_saved_tests {
    use super::*;
    use crate::room::{ConnId, RoomEvent, RoomState};
    use crate::CompactionPolicy;

    /// Two tabs of one room saved offline edits, one of them only a deletion. Merged into one
    /// session, both reach the room after a sync.
    #[test]
    fn merged_tabs_resend_their_edits_including_pure_deletions() {
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        let mut seed = ClientSession::new(1, "seed");
        let sv = seed.connect();
        let sv = crate::wire::decode_b64("sv", &sv).unwrap();
        seed.handle_message(room.sync_for(Some(&sv)).unwrap())
            .unwrap();
        seed.insert(0, "hello world").unwrap();
        seed.flush().unwrap();
        while let Some(ClientMessage::Op { id, update, .. }) = seed.poll_transmit() {
            room.handle_op(ConnId(1), id, &update).unwrap();
        }
        room.take_batch().unwrap();
        room.handle_committed(1).unwrap();
        while room.poll_event().is_some() {}
        let base = seed.export_state().unwrap();

        let mut tab_a = ClientSession::import_state(2, "a", &base).unwrap();
        tab_a.insert(11, "!").unwrap();
        let saved_a = tab_a.export_state().unwrap();
        let mut tab_b = ClientSession::import_state(3, "b", &base).unwrap();
        tab_b.delete(0, 6).unwrap();
        let saved_b = tab_b.export_state().unwrap();

        let mut merged = ClientSession::import_state(4, "m", &saved_a).unwrap();
        merged.track_changes();
        merged.merge_saved(&saved_b).unwrap();
        assert_eq!(merged.text(), "world!");
        assert_eq!(
            merged.pending_count(),
            1,
            "one merged op, as offline queues are"
        );
        assert!(matches!(
            merged.poll_event(),
            Some(ClientEvent::RemoteUpdate { changed: true, .. })
        ));
        assert!(merged.merge_saved(b"garbage").is_err());

        let sv = merged.connect();
        let sv = crate::wire::decode_b64("sv", &sv).unwrap();
        merged
            .handle_message(room.sync_for(Some(&sv)).unwrap())
            .unwrap();
        while let Some(msg) = merged.poll_transmit() {
            if let ClientMessage::Op { id, update, .. } = msg {
                room.handle_op(ConnId(2), id, &update).unwrap();
            }
        }
        room.take_batch().unwrap();
        room.handle_committed(room.seq() + 1).unwrap();
        while let Some(ev) = room.poll_event() {
            if let RoomEvent::Ack { id, seq, .. } = ev {
                merged
                    .handle_message(ServerMessage::Ack { id, seq })
                    .unwrap();
            }
        }
        assert_eq!(room.text(), "world!");
        assert_eq!(merged.pending_count(), 0);
    }
}

#[cfg(test)]
mod handle_frames_tests {
    use super::*;

    fn op_frame(seq: u64, update: Vec<u8>) -> String {
        ServerMessage::Op { seq, update }.to_json()
    }

    /// A burst of op frames is one remote change with the same result as frame by frame; other
    /// frames in the burst keep their order, and a bad frame does not stop the rest.
    #[test]
    fn a_burst_of_ops_is_one_change_with_the_same_result() {
        let mut writer = Document::new(1);
        let mut frames = Vec::new();
        for (i, word) in ["alpha ", "beta ", "gamma ", "delta "].iter().enumerate() {
            let len = writer.len();
            frames.push(op_frame(i as u64 + 1, writer.insert(len, word).unwrap()));
        }
        frames.push(op_frame(5, writer.delete(0, 6).unwrap()));

        let mut one_by_one = ClientSession::new(2, "a");
        for f in &frames {
            one_by_one.handle_frame(f).unwrap();
        }
        let mut burst = ClientSession::new(3, "b");
        burst.track_changes();
        let mut with_noise: Vec<String> = frames.clone();
        with_noise.insert(2, "not json".to_owned());
        with_noise.insert(3, r#"{"t":"ack","id":"nope","seq":3}"#.to_owned());
        assert!(
            burst.handle_frames(&with_noise).is_err(),
            "the bad frame is reported"
        );
        assert_eq!(burst.text(), one_by_one.text());
        assert_eq!(burst.text(), "beta gamma delta ");
        assert_eq!(burst.server_seq(), 5);
        let remote: Vec<Vec<TextChange>> = std::iter::from_fn(|| burst.poll_event())
            .filter_map(|e| match e {
                ClientEvent::RemoteUpdate { changes, .. } => Some(changes),
                _ => None,
            })
            .collect();
        // Ops before the ack frame, and ops after it: two remote changes.
        assert_eq!(remote.len(), 2);
        let mut text = String::new();
        for change in remote.iter().flatten() {
            let units: Vec<u16> = text.encode_utf16().collect();
            let start = change.index as usize;
            let end = start + change.delete as usize;
            text = String::from_utf16(&units[..start]).unwrap()
                + &change.insert
                + &String::from_utf16(&units[end..]).unwrap();
        }
        assert_eq!(text, burst.text(), "the change ranges rebuild the text");
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use crate::room::{ConnId, RoomState};
    use crate::CompactionPolicy;

    fn access(role: &str) -> String {
        ServerMessage::Access { role: role.into() }.to_json()
    }

    fn roles(c: &mut ClientSession) -> Vec<Role> {
        std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                ClientEvent::Access { role } => Some(role),
                _ => None,
            })
            .collect()
    }

    fn sync(c: &mut ClientSession, room: &RoomState) {
        let sv = crate::wire::decode_b64("sv", &c.connect()).unwrap();
        c.handle_message(room.sync_for(Some(&sv)).unwrap()).unwrap();
    }

    /// A reader is told after its sync; local edits are then refused and nothing is queued;
    /// an upgrade makes it a writer again, and the room's updates keep arriving meanwhile.
    #[test]
    fn a_reader_refuses_local_edits_until_upgraded() {
        let room = RoomState::new(CompactionPolicy::default(), 0);
        let mut c = ClientSession::new(7, "c");
        assert_eq!(c.role(), Role::Write, "writers unless told otherwise");
        sync(&mut c, &room);
        c.handle_frame(&access("read")).unwrap();
        assert_eq!(c.role(), Role::Read);
        assert_eq!(roles(&mut c), vec![Role::Read]);

        assert_eq!(c.insert(0, "no"), Err(EngineError::ReadOnly));
        assert_eq!(c.replace(0, 0, "x").unwrap_err().code(), "read_only");
        c.flush().unwrap();
        assert_eq!(c.text(), "");
        assert_eq!(
            c.pending_count(),
            0,
            "nothing queued that the server refuses"
        );
        assert!(c.poll_transmit().is_none());

        let mut peer = Document::new(9);
        let update = peer.insert(0, "from a writer").unwrap();
        c.handle_message(ServerMessage::Op { seq: 1, update })
            .unwrap();
        assert_eq!(c.text(), "from a writer");

        c.handle_frame(&access("read")).unwrap();
        assert_eq!(roles(&mut c), vec![], "no event without a change");
        c.handle_frame(&access("owner?")).unwrap();
        assert_eq!(c.role(), Role::Read, "an unknown role changes nothing");

        c.handle_frame(&access("write")).unwrap();
        assert_eq!(roles(&mut c), vec![Role::Write]);
        c.insert(0, "> ").unwrap();
        c.flush().unwrap();
        assert!(matches!(c.poll_transmit(), Some(ClientMessage::Op { .. })));
    }

    /// Offline, a reader stays a reader (nothing typed offline would be accepted); a later
    /// sync with no `access` frame after it means the grant was upgraded meanwhile.
    #[test]
    fn the_role_holds_offline_and_each_sync_starts_as_a_writer() {
        let mut room = RoomState::new(CompactionPolicy::default(), 0);
        let mut c = ClientSession::new(7, "c");
        sync(&mut c, &room);
        c.handle_frame(&access("read")).unwrap();
        c.disconnect();
        assert_eq!(c.role(), Role::Read);
        assert!(c.insert(0, "offline").is_err());
        assert_eq!(c.pending_count(), 0);
        roles(&mut c);

        sync(&mut c, &room);
        assert_eq!(c.role(), Role::Write);
        assert_eq!(roles(&mut c), vec![Role::Write]);
        c.insert(0, "now allowed").unwrap();
        c.flush().unwrap();
        while let Some(msg) = c.poll_transmit() {
            if let ClientMessage::Op { id, update, .. } = msg {
                room.handle_op(ConnId(1), id, &update).unwrap();
            }
        }
        assert_eq!(room.text(), "now allowed");
    }
}
