//! The control listener: faults, inspection and analyst actions over JSON HTTP, under `/_sim`.
//! It is never faulted, rate limited or counted. See the crate README for the route table.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::amp::{AmpSim, Event};
use crate::faults::Fault;
use crate::server::{Delivery, Outcome, Reply, Req};
use crate::snow::{CallbackSpec, SnowSim};
use crate::xdr::XdrSim;
use crate::{DecoyHit, Inspect, Shared, SimError, lock};

fn ok(value: &Value) -> Reply {
    Reply::json(200, value)
}

fn fail(status: u16, message: impl std::fmt::Display) -> Reply {
    Reply::json(status, &json!({"error": message.to_string()}))
}

fn from_sim_error(e: &SimError) -> Reply {
    match e {
        SimError::NotFound(_) => fail(404, e),
        SimError::Invalid(_) => fail(400, e),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => ok(&v),
        Err(e) => fail(500, format!("serializing answer: {e}")),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, Reply> {
    serde_json::from_slice(&req.body).map_err(|e| fail(400, format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
struct Generate {
    seed: u64,
    count: usize,
}

#[derive(Deserialize)]
struct Close {
    state: u8,
    close_code: String,
    close_notes: String,
}

#[derive(Deserialize)]
struct CallbackBody {
    url: String,
    key_b64: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    timestamp_skew_secs: i64,
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Req) -> Outcome {
    let reply = route(&shared, &req).await;
    Outcome::Respond(reply, Delivery::Complete)
}

async fn route(shared: &Arc<Shared>, req: &Req) -> Reply {
    let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let amp = AmpSim {
        shared: Arc::clone(shared),
    };
    let xdr = XdrSim {
        shared: Arc::clone(shared),
    };
    let snow = SnowSim {
        shared: Arc::clone(shared),
    };
    let inspect = Inspect {
        shared: Arc::clone(shared),
    };
    let method = req.method.as_str();
    let result: Result<Reply, Reply> = match (method, segments.as_slice()) {
        ("GET", ["_sim", "health"]) => Ok(ok(&json!({"ok": true, "urls": shared.urls}))),
        ("GET", ["_sim", "faults"]) => Ok(to_json(&lock(&shared.faults).list())),
        ("POST", ["_sim", "faults"]) => parse::<Fault>(req).map(|f| {
            let id = lock(&shared.faults).add(f);
            Reply::json(201, &json!({"id": id}))
        }),
        ("DELETE", ["_sim", "faults"]) => {
            lock(&shared.faults).clear();
            Ok(Reply::empty(204))
        }
        ("DELETE", ["_sim", "faults", id]) => match id.parse::<u64>() {
            Ok(id) if lock(&shared.faults).remove(id) => Ok(Reply::empty(204)),
            _ => Err(fail(404, format!("no fault {id}"))),
        },
        ("GET", ["_sim", "requests"]) => Ok(to_json(&inspect.request_counts())),
        ("DELETE", ["_sim", "requests"]) => {
            inspect.reset_request_counts();
            Ok(Reply::empty(204))
        }
        ("GET", ["_sim", "amp", "orgs"]) => Ok(to_json(&amp.org_ids())),
        ("GET", ["_sim", "amp", "orgs", org, "computers"]) => amp
            .computers(org)
            .map(|c| to_json(&c))
            .map_err(|e| from_sim_error(&e)),
        ("GET", ["_sim", "amp", "orgs", org, "computers", guid]) => amp
            .computer(org, guid)
            .map(|c| to_json(&c))
            .map_err(|e| from_sim_error(&e)),
        ("GET", ["_sim", "amp", "orgs", org, "events"]) => amp
            .events(org)
            .map(|e| to_json(&e))
            .map_err(|e| from_sim_error(&e)),
        ("POST", ["_sim", "amp", "orgs", org, "events"]) => {
            parse::<Vec<Event>>(req).and_then(|events| {
                let n = events.len();
                amp.push_events(org, events)
                    .map(|()| ok(&json!({"pushed": n})))
                    .map_err(|e| from_sim_error(&e))
            })
        }
        ("POST", ["_sim", "amp", "orgs", org, "generate"]) => {
            parse::<Generate>(req).and_then(|g| {
                let events = amp
                    .generate_events(org, g.seed, g.count)
                    .map_err(|e| from_sim_error(&e))?;
                amp.push_events(org, events.clone())
                    .map_err(|e| from_sim_error(&e))?;
                Ok(to_json(&events))
            })
        }
        ("GET", ["_sim", "xdr", "incidents"]) => Ok(ok(&Value::Array(xdr.incidents()))),
        ("GET", ["_sim", "xdr", "sightings"]) => Ok(ok(&Value::Array(xdr.sightings()))),
        ("GET", ["_sim", "xdr", "relationships"]) => Ok(ok(&Value::Array(xdr.relationships()))),
        ("POST", ["_sim", "xdr", "expire_tokens"]) => {
            xdr.expire_tokens();
            Ok(Reply::empty(204))
        }
        ("GET", ["_sim", "snow", "incidents"]) => Ok(to_json(&snow.incidents())),
        ("GET", ["_sim", "snow", "incidents", id]) => snow
            .incident(id)
            .map(|i| to_json(&i))
            .ok_or_else(|| fail(404, format!("no ServiceNow incident {id}"))),
        ("POST", ["_sim", "snow", "incidents", id, "close"]) => match parse::<Close>(req) {
            Ok(c) => snow
                .analyst_close(id, c.state, &c.close_code, &c.close_notes)
                .await
                .map(|o| to_json(&o))
                .map_err(|e| from_sim_error(&e)),
            Err(reply) => Err(reply),
        },
        ("POST", ["_sim", "snow", "incidents", id, "update"]) => match parse::<Value>(req) {
            Ok(changes) => snow
                .analyst_update(id, changes)
                .await
                .map(|o| to_json(&o))
                .map_err(|e| from_sim_error(&e)),
            Err(reply) => Err(reply),
        },
        ("GET", ["_sim", "snow", "callbacks"]) => Ok(to_json(&snow.callbacks())),
        ("PUT", ["_sim", "snow", "users", user, "callback"]) => {
            parse::<CallbackBody>(req).map(|c| {
                snow.set_callback(
                    user,
                    CallbackSpec {
                        url: c.url,
                        key_b64: c.key_b64,
                        headers: c.headers,
                        timestamp_skew_secs: c.timestamp_skew_secs,
                    },
                );
                Reply::empty(204)
            })
        }
        ("GET", ["_sim", "decoy_hits"]) => Ok(to_json(&inspect.decoy_hits())),
        (_, ["_sim", "decoy", ..]) => {
            lock(&shared.decoy).push(DecoyHit {
                method: method.to_string(),
                path: req.path_and_query(),
                authorization: req.header("authorization").map(str::to_string),
            });
            Ok(ok(&json!({"decoy": true})))
        }
        _ => Err(fail(404, format!("no control route {method} {}", req.path))),
    };
    result.unwrap_or_else(|reply| reply)
}
