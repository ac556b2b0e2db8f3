//! Drives one incident through its persisted states. Every step persists before and
//! after its upstream write, and a step resumed in a `*_creating` state looks up before
//! creating, so a crash at any point resumes without duplicates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, ContainmentPolicy};
use crate::detection;
use crate::incident::{ContainmentRecord, IncidentRecord, State};
use crate::payload::{self, EventTypeNames};
use crate::report::TickReport;
use crate::store::{self, Index, StoreError};
use crate::upstream::{CallError, ErrorKind, Upstream, XdrRead};

/// Optional steps (observables, containment) are abandoned after this many failed ticks.
const MAX_OPTIONAL_ATTEMPTS: u32 = 3;
/// A host stuck in `pending_start` is waited for this many ticks before giving up.
const MAX_PENDING_ISOLATION_TICKS: u32 = 20;
/// Refresh the cached event type names once a day.
const EVENT_TYPES_TTL_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedEventTypes {
    fetched_at_ms: i64,
    names: Vec<(u64, String)>,
}

/// The `group_guid` of a computer answer.
fn group_of(computer: &Value) -> Option<String> {
    computer
        .get("group_guid")
        .and_then(Value::as_str)
        .map(String::from)
}

/// How far one `drive` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing left to do until ServiceNow closes it (or it is closed).
    Settled,
    /// Waiting for something outside (a pending isolation); retried next tick.
    Waiting,
    /// A step failed; recorded in the audit trail, retried next tick.
    Failed,
    /// The tick's time budget ran out.
    OutOfBudget,
}

enum StepError {
    Store(StoreError),
    Call(CallError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

impl From<CallError> for StepError {
    fn from(e: CallError) -> Self {
        StepError::Call(e)
    }
}

enum Step {
    /// Moved on; run the next step.
    Next,
    Settled,
    Waiting,
}

/// One invocation's working set: upstream access, the active index, the report.
pub struct Worker<'a, 'p> {
    pub up: Upstream<'a, 'p>,
    pub index: Index,
    pub report: TickReport,
    /// Incidents that reached `open` in this invocation (nothing to reconcile yet).
    pub opened_now: Vec<String>,
    names: Option<EventTypeNames>,
    lease_owner: String,
    /// XDR incidents read in this invocation (short id → what XDR holds), filled by
    /// the pipeline's batched read (`pipeline::xdr_batch`).
    pub xdr_read: BTreeMap<String, XdrRead>,
    /// Incidents whose XDR write (close or follow-up update) waits for that read.
    pub xdr_due: Vec<String>,
}

impl<'a, 'p> Worker<'a, 'p> {
    pub fn new(
        up: Upstream<'a, 'p>,
        index: Index,
        report: TickReport,
        lease_owner: String,
    ) -> Self {
        Worker {
            up,
            index,
            report,
            opened_now: Vec::new(),
            names: None,
            lease_owner,
            xdr_read: BTreeMap::new(),
            xdr_due: Vec::new(),
        }
    }

    fn cfg(&self) -> &'a Config {
        self.up.cfg
    }

    fn now(&self) -> i64 {
        self.up.now_ms()
    }

    /// Writes the active index if it changed.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.index.flush(self.up.ports.kv)
    }

    pub fn save(&mut self, rec: &mut IncidentRecord) -> Result<(), StoreError> {
        rec.updated_at = self.now();
        store::save_incident(self.up.ports.kv, &mut self.index, rec)
    }

    /// Persists, then traps if `debug_crash_after` names this point (once per incident
    /// and point, so the resumed tick gets past it).
    pub fn checkpoint(&mut self, rec: &mut IncidentRecord, point: &str) -> Result<(), StoreError> {
        self.save(rec)?;
        self.crash_point(point, &rec.key)
    }

    fn crash_point(&mut self, point: &str, key: &str) -> Result<(), StoreError> {
        if self.cfg().debug_crash_after.as_deref() != Some(point) {
            return Ok(());
        }
        let marker = store::crash_marker_key(point, key);
        if self.up.ports.kv.get(&marker)?.is_some() {
            return Ok(());
        }
        self.up.ports.kv.set(&marker, b"1")?;
        self.flush()?;
        self.up.finish();
        // A real trap would leave the lease to expire; releasing it lets a test's next
        // tick resume at once.
        store::release_lease(self.up.ports.kv, &self.lease_owner)?;
        panic!("debug_crash_after={point}: simulated crash for incident {key}");
    }

    /// Event type names: the daily cache, refreshed from Secure Endpoint when stale.
    /// A failed refresh falls back to the stale cache and the names on the events.
    pub(crate) fn names(&mut self) -> EventTypeNames {
        if let Some(n) = &self.names {
            return n.clone();
        }
        let now = self.now();
        let cached: Option<CachedEventTypes> =
            store::get_json(self.up.ports.kv, store::EVENT_TYPES)
                .ok()
                .flatten();
        let list = match cached {
            Some(c) if now - c.fetched_at_ms < EVENT_TYPES_TTL_MS => c.names,
            stale => match self.up.amp_event_types() {
                Ok(names) => {
                    let fresh = CachedEventTypes {
                        fetched_at_ms: now,
                        names,
                    };
                    let _ = store::put_json(self.up.ports.kv, store::EVENT_TYPES, &fresh);
                    fresh.names
                }
                Err(e) => {
                    self.report.error(format!("event type names: {e}"));
                    stale.map(|c| c.names).unwrap_or_default()
                }
            },
        };
        let names: BTreeMap<u64, String> = list.into_iter().collect();
        self.names = Some(names.clone());
        names
    }

    /// Moves the incident as far as this tick allows. Only store failures are errors;
    /// upstream failures land in the incident's audit trail.
    pub fn drive(&mut self, rec: &mut IncidentRecord) -> Result<Progress, StoreError> {
        self.index.reindex(rec);
        // Retries before this incident's steps are not its own.
        self.up.take_retried();
        loop {
            let step_name = match rec.state {
                State::New | State::XdrCreating => "xdr_create",
                State::XdrCreated | State::Containing => "containment",
                State::Contained | State::SnowCreating => "snow_create",
                State::Open => "follow_up",
                State::Closing => "close",
                State::Closed => return Ok(Progress::Settled),
            };
            let result = self.step(rec);
            if result.is_ok() {
                self.note_retries(rec, step_name)?;
            }
            match result {
                Ok(Step::Next) => {}
                Ok(Step::Settled) => return Ok(Progress::Settled),
                Ok(Step::Waiting) => return Ok(Progress::Waiting),
                Err(StepError::Store(e)) => return Err(e),
                Err(StepError::Call(e)) if e.kind == ErrorKind::OutOfBudget => {
                    return Ok(Progress::OutOfBudget);
                }
                // The host held the service back (its shared account): not a failure of
                // the step; the tick report says so once per service.
                Err(StepError::Call(e)) if e.held_by_host => return Ok(Progress::Waiting),
                Err(StepError::Call(e)) => {
                    let now = self.now();
                    rec.failed(now, step_name, &e.to_string());
                    if e.kind == ErrorKind::RateLimited {
                        // Waiting out a rate limit is not a failure of the step.
                        rec.attempts -= 1;
                    }
                    self.save(rec)?;
                    self.report.error(format!("{}: {step_name}: {e}", rec.key));
                    return Ok(Progress::Failed);
                }
            }
        }
    }

    /// A step that got through only after failed attempts says so in the audit trail
    /// (a failure that outlives its retries is recorded by [`IncidentRecord::failed`]).
    fn note_retries(&mut self, rec: &mut IncidentRecord, step: &str) -> Result<(), StoreError> {
        let (n, last) = self.up.take_retried();
        let Some(last) = last else {
            return Ok(());
        };
        let now = self.now();
        rec.audit(
            now,
            step,
            &format!("done after {n} failed attempt(s), tried again; last: {last}"),
        );
        self.save(rec)
    }

    fn step(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        match rec.state {
            State::New | State::XdrCreating => self.create_xdr(rec),
            State::XdrCreated => self.decide_containment(rec),
            State::Containing => self.contain(rec),
            State::Contained | State::SnowCreating => self.create_snow(rec),
            State::Open => self.follow_up(rec),
            State::Closing => self.close(rec),
            State::Closed => Ok(Step::Settled),
        }
    }

    fn create_xdr(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        if rec.state != State::XdrCreating {
            rec.advance(State::XdrCreating, self.now(), "creating the XDR incident");
            self.checkpoint(rec, "xdr_creating")?;
        }
        let names = self.names();
        let bundle = payload::xdr_create_bundle(self.cfg(), rec, &names);
        // What this bundle writes is the bridge's own even if its answer is lost (a
        // resend then answers `exists` with whichever send got through).
        let sent = bundle.pointer("/incidents/0").cloned().unwrap_or_default();
        let mut written = rec.xdr_written.clone().unwrap_or_default();
        written.note(&sent);
        if rec.xdr_written.as_ref() != Some(&written) {
            rec.xdr_written = Some(written);
            self.save(rec)?;
        }
        let imported = self.up.xdr_import_incident(&bundle)?;
        if !imported.existed {
            self.crash_point("xdr_create_sent", &rec.key)?;
            rec.pending_xdr_update = false;
        }
        let xdr = imported.xdr;
        let outcome = if imported.existed {
            format!(
                "XDR incident {} already existed (found by external id; not created again)",
                xdr.short_id
            )
        } else {
            format!("XDR incident {} created", xdr.short_id)
        };
        let observables = match (&imported.refused, bundle.get("sightings")) {
            (Some(why), _) => format!("observables not attached: {why}"),
            (None, Some(_)) => "observables attached (sighting + member-of)".to_string(),
            (None, None) => "no observables to attach".to_string(),
        };
        rec.xdr = Some(xdr);
        if !imported.existed
            && let Some(w) = rec.xdr_written.as_mut()
        {
            w.confirm(&sent);
        }
        rec.advance(State::XdrCreated, self.now(), &outcome);
        let dropped = payload::dropped_observables_note(rec);
        rec.audit(
            self.now(),
            "observables",
            &format!("{observables}{dropped}"),
        );
        self.checkpoint(rec, "xdr_created")?;
        Ok(Step::Next)
    }

    fn decide_containment(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        let cfg = self.cfg();
        let guid = rec.events.iter().find_map(|e| e.connector_guid.clone());
        let why_not = match (&cfg.containment, &guid) {
            (ContainmentPolicy::None, _) => Some("containment policy is none".to_string()),
            (_, None) => Some(
                "the host could not be identified (no connector GUID on the events), so it was not contained"
                    .to_string(),
            ),
            _ if !cfg.containment_event_types.is_empty()
                && !rec
                    .events
                    .iter()
                    .any(|e| cfg.containment_event_types.contains(&e.event_type_id)) =>
            {
                Some("event types outside containment_event_types".to_string())
            }
            _ if !cfg.containment_severities.is_empty()
                && !rec
                    .severity
                    .is_some_and(|s| cfg.containment_severities.contains(&s)) =>
            {
                Some("severity outside containment_severities".to_string())
            }
            _ => None,
        };
        match (why_not, guid) {
            (None, Some(guid)) => {
                rec.containment = Some(ContainmentRecord {
                    policy: cfg.containment.name().to_string(),
                    connector_guid: guid,
                    ..ContainmentRecord::default()
                });
                let msg = format!("containing the host ({})", cfg.containment.name());
                rec.advance(State::Containing, self.now(), &msg);
                self.checkpoint(rec, "containing")?;
            }
            (why, _) => {
                rec.containment = None;
                let why = why.unwrap_or_default();
                // The ServiceNow note says why when the policy asked for containment.
                rec.containment_skipped =
                    (!matches!(cfg.containment, ContainmentPolicy::None)).then(|| why.clone());
                let msg = format!("no containment: {why}");
                rec.advance(State::Contained, self.now(), &msg);
                self.checkpoint(rec, "contained")?;
            }
        }
        Ok(Step::Next)
    }

    fn finish_containment(
        &mut self,
        rec: &mut IncidentRecord,
        mut c: ContainmentRecord,
        outcome: String,
    ) -> Result<Step, StepError> {
        c.outcome = Some(outcome.clone());
        rec.containment = Some(c);
        rec.advance(State::Contained, self.now(), &outcome);
        self.checkpoint(rec, "contained")?;
        Ok(Step::Next)
    }

    fn unlock_code(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut out = String::with_capacity(16);
        let mut bits = 0u64;
        for i in 0..16 {
            if i % 12 == 0 {
                bits = self.up.ports.clock.random_u64();
            }
            out.push(ALPHABET[(bits & 31) as usize] as char);
            bits >>= 5;
        }
        out
    }

    fn contain(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        let Some(mut c) = rec.containment.clone() else {
            return self.finish_containment(
                rec,
                ContainmentRecord::default(),
                "no containment record".into(),
            );
        };
        if rec.attempts >= MAX_OPTIONAL_ATTEMPTS {
            // An isolation that may have been requested is stopped on close to be safe.
            c.isolated |= c.action_sent && c.policy == "isolate";
            let last = rec.last_error.clone().unwrap_or_default();
            let outcome = format!(
                "containment abandoned after {} failed attempts: {last}",
                rec.attempts
            );
            return self.finish_containment(rec, c, outcome);
        }
        let guid = c.connector_guid.clone();
        let comment = format!("mssp-bridge: contained for incident {}", rec.key);
        // The policy recorded when containment started decides; a config change in
        // between abandons rather than mixes policies.
        match (c.policy.as_str(), &self.cfg().containment) {
            ("move", ContainmentPolicy::Move { triage_group_guid }) => {
                if c.original_group_guid.is_none() {
                    let computer = self.up.amp_computer(&guid)?;
                    c.original_group_guid = group_of(&computer);
                    rec.containment = Some(c.clone());
                    let msg = format!(
                        "original group {} recorded",
                        c.original_group_guid.as_deref().unwrap_or("unknown")
                    );
                    rec.audit(self.now(), "containment", &msg);
                    self.save(rec)?;
                }
                if c.original_group_guid.as_deref() == Some(triage_group_guid.as_str()) {
                    return self.finish_containment(
                        rec,
                        c,
                        "host already in the triage group; not moved".into(),
                    );
                }
                c.action_sent = true;
                c.triage_group_guid = Some(triage_group_guid.clone());
                match self.up.amp_move(&guid, triage_group_guid) {
                    Ok(()) => {
                        c.moved = true;
                        let outcome = format!(
                            "moved to triage group {triage_group_guid} (was {})",
                            c.original_group_guid.as_deref().unwrap_or("unknown")
                        );
                        self.finish_containment(rec, c, outcome)
                    }
                    Err(e) if e.status().is_some() => {
                        self.finish_containment(rec, c, format!("move failed: {e}"))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            ("isolate", ContainmentPolicy::Isolate) => {
                if c.action_sent {
                    // The request may have gone out before a crash: look first.
                    let iso = self.up.amp_isolation(&guid)?;
                    if matches!(iso.status.as_str(), "isolated" | "pending_start") {
                        c.isolated = true;
                        let outcome = format!("isolation requested (status {})", iso.status);
                        return self.finish_containment(rec, c, outcome);
                    }
                } else {
                    // A host the bridge isolated for another open incident can be
                    // isolated: no need to ask. Its actual state is still read below
                    // (an analyst may have released it since).
                    let holder = self.isolated_for_another(rec, &c)?;
                    // State before policy: an isolated host's OPTIONS lists no PUT (only
                    // a stop is possible), which is not "isolation unavailable".
                    let computer = self.up.amp_computer(&guid)?;
                    c.original_group_guid = group_of(&computer);
                    let status = computer
                        .pointer("/isolation/status")
                        .and_then(Value::as_str)
                        .unwrap_or("not_isolated")
                        .to_string();
                    if matches!(
                        status.as_str(),
                        "isolated" | "pending_start" | "pending_stop"
                    ) {
                        let outcome = match holder {
                            Some(other) => format!(
                                "host already isolated by the bridge for incident {other} (status {status}); \
                                 released when the last open incident of the host closes"
                            ),
                            // Handed over by a closed incident of the same host: the
                            // bridge's own isolation, now this incident's to release.
                            None if c.isolated => format!(
                                "host already isolated by the bridge (status {status}), handed over by a \
                                 closed incident; released when the last open incident of the host closes"
                            ),
                            None => format!(
                                "host already isolated, not by the bridge (status {status}); not stopped on close"
                            ),
                        };
                        return self.finish_containment(rec, c, outcome);
                    }
                    if holder.is_none() && !self.up.amp_isolation_options(&guid)?.can_start {
                        return self.finish_containment(
                            rec,
                            c,
                            "isolation not available for this host (policy or OS)".into(),
                        );
                    }
                    c.unlock_code = Some(self.unlock_code());
                    c.action_sent = true;
                    rec.containment = Some(c.clone());
                    let msg = format!(
                        "original group {} and unlock code recorded before isolating",
                        c.original_group_guid.as_deref().unwrap_or("unknown")
                    );
                    rec.audit(self.now(), "containment", &msg);
                    self.save(rec)?;
                }
                let code = c.unlock_code.clone().unwrap_or_default();
                let isolating = |status: &str| matches!(status, "isolated" | "pending_start");
                let result = self.up.create_once(
                    false,
                    &mut |u| Ok(u.amp_isolation(&guid)?.status).map(|s| isolating(&s).then_some(s)),
                    &mut |u| {
                        u.amp_isolate(&guid, &comment, &code)
                            .map(|()| "requested".to_string())
                    },
                );
                match result {
                    Ok((status, _)) => {
                        c.isolated = true;
                        let outcome =
                            format!("isolation {status}; unlock code recorded by the bridge");
                        self.finish_containment(rec, c, outcome)
                    }
                    Err(e) if e.status().is_some() => {
                        c.action_sent = false;
                        self.finish_containment(rec, c, format!("isolation failed: {e}"))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (recorded, now) => {
                // An isolation that may have been requested is stopped on close.
                c.isolated |= c.action_sent && recorded == "isolate";
                let outcome = format!(
                    "containment abandoned: policy changed from {recorded} to {}",
                    now.name()
                );
                self.finish_containment(rec, c, outcome)
            }
        }
    }

    fn create_snow(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        let resumed = rec.state == State::SnowCreating;
        if !resumed {
            // Not marked as maybe sent when the host already said it will not send it.
            self.up
                .held(crate::retry::Service::Snow, "POST /api/now/table/incident")?;
            rec.advance(
                State::SnowCreating,
                self.now(),
                "creating the ServiceNow incident",
            );
            self.checkpoint(rec, "snow_creating")?;
        }
        let names = self.names();
        let body = payload::snow_incident(self.cfg(), rec, &names, &payload::first_work_note(rec));
        let key = rec.key.clone();
        let created = self
            .up
            .create_once(resumed, &mut |u| u.snow_find(&key), &mut |u| {
                u.snow_create(&body)
            });
        let (snow, found) = match created {
            Err(e) if e.held_by_host && !resumed => {
                // Marked in this invocation and held back by the host: nothing reached
                // ServiceNow, so the mark is taken back and the next try creates without
                // a look-up first (a look-up and a create need two requests, which a
                // backlogged customer on a shared account may not get in one tick).
                rec.state = State::Contained;
                rec.audit(
                    self.now(),
                    "snow_creating",
                    "held back by the host before it was sent (nothing reached ServiceNow)",
                );
                self.save(rec)?;
                return Err(e.into());
            }
            other => other?,
        };
        if !found {
            self.crash_point("snow_create_sent", &rec.key)?;
            rec.pending_snow_notes.clear();
        }
        self.up
            .ports
            .kv
            .set(&store::snow_key(&snow.sys_id), rec.key.as_bytes())
            .map_err(StoreError::from)?;
        let outcome = format!(
            "ServiceNow incident {} ({}) {}, linked to XDR {}",
            snow.number,
            snow.sys_id,
            if found {
                "already existed (found by correlation_id; not created again)"
            } else {
                "created"
            },
            rec.xdr.as_ref().map_or("-", |x| x.short_id.as_str())
        );
        rec.snow = Some(snow);
        rec.advance(State::Open, self.now(), &outcome);
        self.checkpoint(rec, "open")?;
        self.report.incidents_opened += 1;
        self.opened_now.push(rec.key.clone());
        Ok(Step::Next)
    }

    fn follow_up(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        if !rec.pending_snow_notes.is_empty()
            && let Some(sys_id) = rec.snow.as_ref().map(|s| s.sys_id.clone())
        {
            let names = self.names();
            let note = payload::follow_up_note(rec, &names, &rec.pending_snow_notes);
            let n = rec.pending_snow_notes.len();
            let outcome = match self.up.snow_work_note(&sys_id, &note) {
                Ok(()) => format!("work note added for {n} later event(s)"),
                // Deleted in ServiceNow: the note can never land. Say so once
                // and go on (the XDR update below must not wait for it).
                Err(e) if e.status() == Some(404) => format!(
                    "ServiceNow ticket {} no longer exists ({e}); work note for {n} later event(s) dropped",
                    rec.snow.as_ref().map_or("", |s| s.number.as_str())
                ),
                Err(e) => return Err(e.into()),
            };
            rec.pending_snow_notes.clear();
            rec.audit(self.now(), "follow_up", &outcome);
            self.save(rec)?;
        }
        self.update_xdr(rec)?;
        Ok(Step::Settled)
    }

    /// Keys of the other incidents on this host that are not closing (by the index).
    fn others_on_host(&self, key: &str, connector_guid: &str) -> Vec<String> {
        self.index
            .entries
            .iter()
            .filter(|e| {
                e.key != key
                    && e.state < State::Closing
                    && e.connector_guid.as_deref() == Some(connector_guid)
            })
            .map(|e| e.key.clone())
            .collect()
    }

    /// Whether another incident, not closing, has this host isolated by the bridge.
    fn isolated_for_another(
        &mut self,
        rec: &IncidentRecord,
        c: &ContainmentRecord,
    ) -> Result<Option<String>, StoreError> {
        for key in self.others_on_host(&rec.key, &c.connector_guid) {
            if let Some(other) = store::load_incident(self.up.ports.kv, &key)?
                && other.state < State::Closing
                && other
                    .containment
                    .as_ref()
                    .is_some_and(|oc| oc.connector_guid == c.connector_guid && oc.isolated)
            {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Another open incident that contains the same host takes over the containment,
    /// so the host is released only when the last of its incidents closes.
    fn hand_over(
        &mut self,
        rec: &IncidentRecord,
        c: &ContainmentRecord,
    ) -> Result<Option<String>, StoreError> {
        for key in self.others_on_host(&rec.key, &c.connector_guid) {
            let Some(mut other) = store::load_incident(self.up.ports.kv, &key)? else {
                continue;
            };
            let Some(mut oc) = other.containment.clone() else {
                continue;
            };
            if other.state >= State::Closing || oc.connector_guid != c.connector_guid {
                continue;
            }
            oc.isolated |= c.isolated;
            if c.moved && !oc.moved {
                oc.moved = true;
                oc.original_group_guid = c.original_group_guid.clone();
                oc.triage_group_guid = c.triage_group_guid.clone();
            }
            if oc.unlock_code.is_none() {
                oc.unlock_code = c.unlock_code.clone();
            }
            other.containment = Some(oc);
            let msg = format!(
                "containment of the host handed over by closed incident {}",
                rec.key
            );
            other.audit(self.now(), "containment", &msg);
            self.save(&mut other)?;
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// A host still in `pending_start` cannot be released yet: one more tick of waiting
    /// (counted in `attempts`, at most [`MAX_PENDING_ISOLATION_TICKS`]).
    fn wait_for_isolation_start(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        rec.attempts += 1;
        rec.audit(
            self.now(),
            "close",
            "isolation still starting (pending_start); stop retried next tick",
        );
        self.save(rec)?;
        Ok(Step::Waiting)
    }

    fn close(&mut self, rec: &mut IncidentRecord) -> Result<Step, StepError> {
        let mut close = rec.close.clone().unwrap_or_default();
        let containment = rec.containment.clone().unwrap_or_default();
        let guid = containment.connector_guid.clone();
        let to_revert = (containment.isolated && !close.isolation_stopped)
            || (containment.moved && !close.moved_back);
        if to_revert && let Some(heir) = self.hand_over(rec, &containment)? {
            close.isolation_stopped = true;
            close.moved_back = true;
            rec.close = Some(close.clone());
            let msg =
                format!("host stays contained: incident {heir} is still open and now owns it");
            rec.audit(self.now(), "close", &msg);
            self.save(rec)?;
        }
        if containment.isolated && !close.isolation_stopped {
            let comment = format!("mssp-bridge: incident {} closed in ServiceNow", rec.key);
            // Read first: stop only an isolation that is still the bridge's own.
            // (A read that fails with an answer falls through to the stop, whose own
            // failure handling applies.)
            let (now_status, now_code) = match self.up.amp_isolation(&guid) {
                Ok(iso) => (iso.status, iso.unlock_code),
                Err(e) if e.status().is_some() => ("unknown".to_string(), None),
                Err(e) => return Err(e.into()),
            };
            let recorded = containment.unlock_code.as_deref();
            let foreign_code = matches!(now_status.as_str(), "isolated" | "pending_start")
                && matches!((now_code.as_deref(), recorded), (Some(a), Some(b)) if a != b);
            let outcome = match now_status.as_str() {
                "not_isolated" | "pending_stop" => Ok(format!(
                    "isolation already ended or ending (status {now_status}), stopped by someone else; nothing to stop"
                )),
                _ if foreign_code => Ok(
                    "host isolated again under another unlock code (re-isolated by someone else); left isolated"
                        .to_string(),
                ),
                "pending_start" if rec.attempts < MAX_PENDING_ISOLATION_TICKS => {
                    return self.wait_for_isolation_start(rec);
                }
                _ => Err(()),
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(()) => match self.up.amp_stop_isolation(&guid, &comment) {
                    Ok(()) => "isolation stopped".to_string(),
                    Err(e) if e.status().is_some() => {
                        let iso = self.up.amp_isolation(&guid)?;
                        match iso.status.as_str() {
                            "not_isolated" | "pending_stop" => {
                                format!("isolation already ending (status {})", iso.status)
                            }
                            "pending_start" if rec.attempts < MAX_PENDING_ISOLATION_TICKS => {
                                return self.wait_for_isolation_start(rec);
                            }
                            other => {
                                if rec.attempts >= MAX_PENDING_ISOLATION_TICKS {
                                    format!(
                                        "isolation could not be stopped (status {other}): {e}; manual action needed"
                                    )
                                } else {
                                    return Err(e.into());
                                }
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            close.isolation_stopped = true;
            rec.close = Some(close.clone());
            rec.attempts = 0;
            rec.audit(self.now(), "close", &outcome);
            self.save(rec)?;
        }
        if containment.moved
            && !close.moved_back
            && let Some(original) = containment.original_group_guid.clone()
        {
            // Read first: move back only a host still in the triage group the bridge
            // moved it to; a host an analyst moved elsewhere stays where they put it.
            let triage =
                containment
                    .triage_group_guid
                    .clone()
                    .or_else(|| match &self.cfg().containment {
                        ContainmentPolicy::Move { triage_group_guid } => {
                            Some(triage_group_guid.clone())
                        }
                        _ => None,
                    });
            let current = match self.up.amp_computer(&guid) {
                Ok(computer) => group_of(&computer),
                // Unreadable: the move's own failure handling applies.
                Err(e) if e.status().is_some() => None,
                Err(e) => return Err(e.into()),
            };
            let moved_by_someone = match (&current, &triage) {
                (Some(cur), _) if *cur == original => {
                    Some(format!("host already back in group {original}; not moved"))
                }
                (Some(cur), Some(t)) if cur != t => Some(format!(
                    "host was moved to group {cur} by someone else after the bridge moved it to {t}; left there, not moved back to {original}"
                )),
                _ => None,
            };
            let outcome = match moved_by_someone {
                Some(o) => Ok(o),
                None => self
                    .up
                    .amp_move(&guid, &original)
                    .map(|()| format!("host moved back to group {original}")),
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) if e.status().is_some() && rec.attempts + 1 >= MAX_OPTIONAL_ATTEMPTS => {
                    format!(
                        "host could not be moved back to group {original}: {e}; manual action needed"
                    )
                }
                Err(e) => return Err(e.into()),
            };
            close.moved_back = true;
            rec.close = Some(close.clone());
            rec.attempts = 0;
            rec.audit(self.now(), "close", &outcome);
            self.save(rec)?;
        }
        if !self.close_xdr(rec, &mut close)? {
            // Left for this tick's batched XDR read (`pipeline::xdr_batch`).
            return Ok(Step::Settled);
        }
        self.close_note(rec, &mut close)?;
        let summary = format!(
            "closed ({} from ServiceNow state {})",
            close.source, close.snow_state
        );
        rec.advance(State::Closed, self.now(), &summary);
        self.checkpoint(rec, "closed")?;
        self.report.incidents_closed += 1;
        Ok(Step::Settled)
    }

    /// The last close step: one ServiceNow work note (`PATCH …/incident/{sys_id}` with
    /// `work_notes`, an append-only journal) telling the analyst what the close did in
    /// XDR and to the host ([`payload::close_note`]). Once: `note_written` is set after
    /// ServiceNow answered, so a crash in between writes the note a second time (a
    /// duplicate journal line, never a missing one). A deleted ticket (404) or a refused
    /// note (another 4xx) skips it with an audit line; a failure or rate limit is
    /// retried next tick, a failure at most `MAX_OPTIONAL_ATTEMPTS` times.
    fn close_note(
        &mut self,
        rec: &mut IncidentRecord,
        close: &mut crate::incident::CloseRecord,
    ) -> Result<(), StepError> {
        if close.note_written {
            return Ok(());
        }
        let outcome = match rec.snow.as_ref().map(|s| s.sys_id.clone()) {
            None => "no ServiceNow ticket recorded; no closing work note".to_string(),
            Some(sys_id) => {
                let note = payload::close_note(rec);
                match self.up.snow_work_note(&sys_id, &note) {
                    Ok(()) => "closing work note written in ServiceNow (what was done in XDR and to the host)"
                        .to_string(),
                    Err(e) if e.status() == Some(404) => format!(
                        "ServiceNow ticket no longer exists; closing work note skipped ({e})"
                    ),
                    Err(e) if e.status().is_some() => {
                        format!("closing work note refused by ServiceNow, not retried: {e}")
                    }
                    Err(e)
                        if e.kind != ErrorKind::RateLimited
                            && rec.attempts + 1 >= MAX_OPTIONAL_ATTEMPTS =>
                    {
                        format!(
                            "closing work note given up after {} failed attempts: {e}",
                            rec.attempts + 1
                        )
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        close.note_written = true;
        rec.close = Some(close.clone());
        rec.audit(self.now(), "close", &outcome);
        self.save(rec)?;
        Ok(())
    }

    /// Takes the group's events into its incident record (creating it if needed).
    /// Returns whether the record was new.
    pub fn take_in(&mut self, group: &detection::DetectionGroup) -> Result<bool, StoreError> {
        let now = self.now();
        let existing = store::load_incident(self.up.ports.kv, &group.key)?;
        let is_new = existing.is_none();
        let mut rec = existing.unwrap_or_else(|| IncidentRecord::new(&group.key, now));
        let added = rec.add_events(&group.events, now);
        if added == 0 {
            self.index.reindex(&rec);
        } else {
            if is_new {
                rec.audit(now, "new", &format!("{added} event(s) taken in"));
            } else if rec.state == State::New {
                rec.audit(
                    now,
                    "event",
                    &format!("{added} more event(s) taken in before creation"),
                );
            }
            self.save(&mut rec)?;
            if is_new {
                self.crash_point("new", &rec.key)?;
            }
        }
        Ok(is_new)
    }
}

// XDR writes read first (issue 14): the stored incident comes from one batched
// `GET /ctia/bulk` per tick (`pipeline::xdr_batch`), and each write leaves alone
// what an analyst set (see `payload::xdr_close`, `payload::xdr_update`).
impl Worker<'_, '_> {
    /// The stored XDR incident read in this invocation: `Ok(Some(entity))`, `Ok(None)`
    /// when gone, or the read's failure; `Err(None)` when not read yet — the incident is
    /// then queued for the batched read (`xdr_due`).
    fn xdr_stored(
        &mut self,
        rec: &IncidentRecord,
        short_id: &str,
    ) -> Result<Option<Value>, Option<CallError>> {
        match self.xdr_read.get(short_id) {
            Some(XdrRead::Found(v)) => Ok(Some(v.clone())),
            Some(XdrRead::Gone) => Ok(None),
            Some(XdrRead::Unreadable(e)) => Err(Some(e.clone())),
            None => {
                if !self.xdr_due.contains(&rec.key) {
                    self.xdr_due.push(rec.key.clone());
                }
                Err(None)
            }
        }
    }

    /// An XDR read or write that failed: a definite refusal (4xx, e.g. an incident an
    /// analyst restricted) is given up after [`MAX_OPTIONAL_ATTEMPTS`] failed ticks —
    /// `Ok(outcome)` for the audit — anything else is the step's error, tried again next
    /// tick (rate limits are not counted as attempts).
    fn xdr_given_up(rec: &IncidentRecord, e: CallError, what: &str) -> Result<String, StepError> {
        if e.status().is_some() && rec.attempts + 1 >= MAX_OPTIONAL_ATTEMPTS {
            Ok(format!(
                "{what}: given up after {} failed attempts: {e}; do it in XDR by hand",
                rec.attempts + 1
            ))
        } else {
            Err(e.into())
        }
    }

    /// The XDR step of the close. Returns false when it waits for the batched read
    /// (nothing written; the incident stays `closing`), true when done (or nothing to
    /// do); `close` is updated and the record saved.
    fn close_xdr(
        &mut self,
        rec: &mut IncidentRecord,
        close: &mut crate::incident::CloseRecord,
    ) -> Result<bool, StepError> {
        let Some(xdr) = rec.xdr.clone().filter(|_| !close.xdr_closed) else {
            return Ok(true);
        };
        let stored = match self.xdr_stored(rec, &xdr.short_id) {
            Ok(stored) => Ok(stored),
            Err(None) => return Ok(false),
            Err(Some(e)) => Err(e),
        };
        let not_closed = format!("XDR incident {} not closed by the bridge", xdr.short_id);
        let outcome = match stored {
            Err(e) => Self::xdr_given_up(rec, e, &format!("{not_closed} (could not read it)"))?,
            Ok(None) => format!(
                "XDR incident {} no longer exists; nothing to close",
                xdr.short_id
            ),
            Ok(Some(stored)) => {
                let now = self.now();
                let write = payload::xdr_close(self.cfg(), rec, &stored, &xdr.short_id, now);
                match write.body {
                    None => write.outcome,
                    Some(body) => match self.up.xdr_patch_incident(&xdr, &body) {
                        Ok(()) => write.outcome,
                        Err(e) if e.status() == Some(404) => format!(
                            "XDR incident {} no longer exists; nothing to close",
                            xdr.short_id
                        ),
                        Err(e) => Self::xdr_given_up(rec, e, &not_closed)?,
                    },
                }
            }
        };
        close.xdr_closed = true;
        rec.attempts = 0;
        rec.close = Some(close.clone());
        rec.audit(self.now(), "close", &outcome);
        self.save(rec)?;
        Ok(true)
    }

    /// The XDR step of a follow-up (later events): waits for the batched read, then
    /// writes only what the bridge still owns.
    fn update_xdr(&mut self, rec: &mut IncidentRecord) -> Result<(), StepError> {
        let Some(xdr) = rec.xdr.clone().filter(|_| rec.pending_xdr_update) else {
            return Ok(());
        };
        let stored = match self.xdr_stored(rec, &xdr.short_id) {
            Ok(stored) => Ok(stored),
            Err(None) => return Ok(()),
            Err(Some(e)) => Err(e),
        };
        let dropped = format!(
            "XDR incident {} not updated with later events",
            xdr.short_id
        );
        let gone = || {
            format!(
                "XDR incident {} no longer exists; update with later events dropped",
                xdr.short_id
            )
        };
        let outcome = match stored {
            Err(e) => Self::xdr_given_up(rec, e, &format!("{dropped} (could not read it)"))?,
            Ok(None) => gone(),
            Ok(Some(stored)) => {
                let names = self.names();
                let write = payload::xdr_update(self.cfg(), rec, &names, &stored);
                let result = match &write.body {
                    None => Ok(()),
                    Some(body) => {
                        // Noted before it is sent: a PATCH whose answer is lost still
                        // wrote the bridge's own values.
                        rec.xdr_written = write.written.clone();
                        self.save(rec)?;
                        self.up.xdr_patch_incident(&xdr, body)
                    }
                };
                match result {
                    Ok(()) => {
                        if let (Some(w), Some(body)) = (rec.xdr_written.as_mut(), &write.body) {
                            w.confirm(body);
                        }
                        write.outcome
                    }
                    Err(e) if e.status() == Some(404) => gone(),
                    Err(e) => Self::xdr_given_up(rec, e, &dropped)?,
                }
            }
        };
        rec.pending_xdr_update = false;
        rec.attempts = 0;
        rec.audit(self.now(), "follow_up", &outcome);
        self.save(rec)?;
        Ok(())
    }
}
