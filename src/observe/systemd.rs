//! systemd over D-Bus (zbus), with proxies written here for exactly the
//! methods, properties and signals macha uses.
//!
//! `Systemd` is the read handle: failed units and their state (observe),
//! does a named unit exist and what are all its names (gate lookups), unit
//! status for the probes (investigate, the model's tools). It has no method
//! that changes anything: restarting, resetting and starting helpers are
//! methods of `act::Control`, which only `act` can make from this handle
//! (it wraps the same connection). Nothing here decides anything.
//!
//! ```compile_fail
//! # async fn f(systemd: &macha::observe::systemd::Systemd, unit: &macha::unit::UnitName) {
//! // A read handle cannot restart a unit: only `act` holds that capability.
//! systemd.restart(unit, std::time::Duration::from_secs(1)).await;
//! # }
//! ```
//!
//! ```compile_fail
//! # async fn f(systemd: &macha::observe::systemd::Systemd) {
//! // Nor can code outside `act` turn it into the handle that can.
//! let control = macha::act::Control::new(systemd);
//! # }
//! ```

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

use crate::unit::UnitName;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    #[allow(clippy::type_complexity)]
    fn list_units_filtered(
        &self,
        states: &[&str],
    ) -> zbus::Result<
        Vec<(String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath)>,
    >;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn names(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property)]
    fn inactive_enter_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn wanted_by(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn required_by(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn triggered_by(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
    #[zbus(property)]
    fn refuse_manual_stop(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn success_action(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn failure_action(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Service", default_service = "org.freedesktop.systemd1")]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    #[zbus(property, name = "Type")]
    fn service_type(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn remain_after_exit(&self) -> zbus::Result<bool>;
}

/// The state of one unit as systemd reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitState {
    /// The unit's primary name (`Id`); an alias given by the caller resolves to it.
    pub id: String,
    /// Every name of the unit, aliases included.
    pub names: Vec<String>,
    pub description: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// `Result` of the unit's type-specific interface (`exit-code`, `signal`, ...).
    pub result: Option<String>,
    pub n_restarts: Option<u32>,
    pub exec_main_status: Option<i32>,
    pub inactive_enter_timestamp: Option<DateTime<Utc>>,
    /// When it last became active; `None` if it never was (since systemd started).
    pub active_enter_timestamp: Option<DateTime<Utc>>,
    pub invocation_id: String,
    /// A service's `Type` (`simple`, `oneshot`, ...); `None` for other units.
    pub service_type: Option<String>,
    /// A service's `RemainAfterExit`.
    pub remain_after_exit: bool,
    /// The units that want or require this one (`WantedBy`, `RequiredBy`).
    pub wanted_by: Vec<String>,
    /// The units that start this one on demand (`TriggeredBy`: timers,
    /// sockets, paths).
    pub triggered_by: Vec<String>,
    /// Whether systemd has a job queued or running for the unit (`Job`).
    pub has_job: bool,
    pub refuse_manual_stop: bool,
    /// `SuccessAction` / `FailureAction`: what the unit's end does to the
    /// whole machine (`none`, `exit`, `poweroff`, `reboot`, ...).
    pub success_action: String,
    pub failure_action: String,
}

impl UnitState {
    pub fn is_failed(&self) -> bool {
        self.active_state == "failed"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to D-Bus at {address}: {source}")]
    Connect { address: String, source: zbus::Error },
    #[error("systemd D-Bus call {call} failed: {source}")]
    Call { call: String, source: zbus::Error },
    #[error("systemd did not finish the {verb} job for {unit} within {secs} s")]
    JobTimeout { verb: &'static str, unit: String, secs: u64 },
}

pub(crate) fn call_err(call: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let call = call.into();
    move |source| SystemdError::Call { call, source }
}

/// What can be read about units: the read side of the host, implemented
/// by `Systemd` and by `act::Control`, and by a fake host in tests.
pub trait ReadUnits {
    /// Every unit whose `ActiveState` is `failed`, with its state.
    fn failed_units(&self) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send;
    /// The state of `unit`, or `None` when systemd has no such unit.
    fn unit_state(&self, unit: &UnitName) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send;
}

impl ReadUnits for Systemd {
    fn failed_units(&self) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send {
        Systemd::failed_units(self)
    }
    fn unit_state(&self, unit: &UnitName) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send {
        Systemd::unit_state(self, unit)
    }
}

/// The systemd connection as a stage gets it: connected, or why not. A
/// stage that needs systemd says the reason when it is down; one that does
/// not (the host probes) runs either way.
#[derive(Clone)]
pub enum SystemdLink<'a> {
    Up(&'a Systemd),
    Down(String),
}

impl<'a> SystemdLink<'a> {
    /// The handle, or why there is none.
    pub fn get(&self) -> Result<&'a Systemd, &str> {
        match self {
            Self::Up(s) => Ok(s),
            Self::Down(why) => Err(why),
        }
    }
}

impl<'a> From<Result<&'a Systemd, SystemdError>> for SystemdLink<'a> {
    fn from(r: Result<&'a Systemd, SystemdError>) -> Self {
        r.map_or_else(|e| Self::Down(e.to_string()), Self::Up)
    }
}

/// A read handle on one systemd manager's connection.
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    address: String,
}

impl Systemd {
    /// Connects to `address`, or to the system bus when it is `None`.
    pub async fn connect(address: Option<&str>) -> Result<Self, SystemdError> {
        let shown = address.unwrap_or("the system bus").to_owned();
        let connect_err = |source| SystemdError::Connect { address: shown.clone(), source };
        let conn = match address {
            Some(a) => zbus::connection::Builder::address(a).map_err(connect_err)?.build().await,
            None => Connection::system().await,
        }
        .map_err(connect_err)?;
        Ok(Self { conn, address: shown })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The connection itself, for `act::Control`, which declares the calls
    /// that change units on it (`tests/invariants.rs` checks that no other
    /// module declares them).
    pub(crate) fn bus(&self) -> &Connection {
        &self.conn
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        ManagerProxy::new(&self.conn).await.map_err(call_err("Manager proxy"))
    }

    /// Every unit whose `ActiveState` is `failed`, with its state.
    pub async fn failed_units(&self) -> Result<Vec<UnitState>, SystemdError> {
        let listed =
            self.manager().await?.list_units_filtered(&["failed"]).await.map_err(call_err("ListUnitsFiltered"))?;
        let mut states = Vec::with_capacity(listed.len());
        for (name, .., path, _, _, _) in listed {
            states.push(self.read_state(&name, path).await?);
        }
        Ok(states)
    }

    /// The state of `unit`, or `None` when systemd has no such unit.
    pub async fn unit_state(&self, unit: &UnitName) -> Result<Option<UnitState>, SystemdError> {
        let manager = self.manager().await?;
        let path = match manager.get_unit(unit.as_str()).await {
            Ok(p) => p,
            // Not loaded means not there for macha. LoadUnit would create
            // template instances on demand (`foo@anything.service`).
            Err(zbus::Error::MethodError(name, ..)) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => {
                return Ok(None)
            }
            Err(e) => return Err(call_err(format!("GetUnit({unit})"))(e)),
        };
        let state = self.read_state(unit.as_str(), path).await?;
        Ok((state.load_state != "not-found").then_some(state))
    }

    async fn read_state(&self, name: &str, path: OwnedObjectPath) -> Result<UnitState, SystemdError> {
        let err = |what: &str| call_err(format!("read {what} of {name}"));
        let unit = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(err("path"))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err("Unit proxy"))?;
        let id = unit.id().await.map_err(err("Id"))?;
        let (mut result, mut n_restarts, mut exec_main_status) = (None, None, None);
        let (mut service_type, mut remain_after_exit) = (None, false);
        if id.ends_with(".service") {
            let service = ServiceProxy::builder(&self.conn)
                .path(path)
                .map_err(err("path"))?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(err("Service proxy"))?;
            result = Some(service.result().await.map_err(err("Result"))?);
            n_restarts = Some(service.n_restarts().await.map_err(err("NRestarts"))?);
            exec_main_status = Some(service.exec_main_status().await.map_err(err("ExecMainStatus"))?);
            service_type = Some(service.service_type().await.map_err(err("Type"))?);
            remain_after_exit = service.remain_after_exit().await.map_err(err("RemainAfterExit"))?;
        } else if let Some(iface) = result_interface(&id) {
            let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
                .destination("org.freedesktop.systemd1")
                .map_err(err("destination"))?
                .path(path)
                .map_err(err("path"))?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(err("Properties proxy"))?;
            let iface = zbus::names::InterfaceName::try_from(iface).map_err(|e| err("interface")(e.into()))?;
            if let Ok(value) = props.get(iface, "Result").await {
                result = String::try_from(value).ok();
            }
        }
        let usec = unit.inactive_enter_timestamp().await.map_err(err("InactiveEnterTimestamp"))?;
        let active_usec = unit.active_enter_timestamp().await.map_err(err("ActiveEnterTimestamp"))?;
        let mut wanted_by = unit.wanted_by().await.map_err(err("WantedBy"))?;
        wanted_by.extend(unit.required_by().await.map_err(err("RequiredBy"))?);
        Ok(UnitState {
            names: unit.names().await.map_err(err("Names"))?,
            description: unit.description().await.map_err(err("Description"))?,
            load_state: unit.load_state().await.map_err(err("LoadState"))?,
            active_state: unit.active_state().await.map_err(err("ActiveState"))?,
            sub_state: unit.sub_state().await.map_err(err("SubState"))?,
            result,
            n_restarts,
            exec_main_status,
            inactive_enter_timestamp: timestamp(usec),
            active_enter_timestamp: timestamp(active_usec),
            invocation_id: unit
                .invocation_id()
                .await
                .map_err(err("InvocationID"))?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            service_type,
            remain_after_exit,
            wanted_by,
            triggered_by: unit.triggered_by().await.map_err(err("TriggeredBy"))?,
            has_job: unit.job().await.map_err(err("Job"))?.0 != 0,
            refuse_manual_stop: unit.refuse_manual_stop().await.map_err(err("RefuseManualStop"))?,
            success_action: unit.success_action().await.map_err(err("SuccessAction"))?,
            failure_action: unit.failure_action().await.map_err(err("FailureAction"))?,
            id,
        })
    }
}

/// A systemd timestamp (microseconds since the epoch, 0 for never).
fn timestamp(usec: u64) -> Option<DateTime<Utc>> {
    (usec > 0).then(|| i64::try_from(usec).ok().and_then(DateTime::from_timestamp_micros)).flatten()
}

/// The type-specific interface that carries `Result` for non-service units.
fn result_interface(id: &str) -> Option<&'static str> {
    Some(match id.rsplit_once('.')?.1 {
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "automount" => "org.freedesktop.systemd1.Automount",
        "swap" => "org.freedesktop.systemd1.Swap",
        "timer" => "org.freedesktop.systemd1.Timer",
        "path" => "org.freedesktop.systemd1.Path",
        "scope" => "org.freedesktop.systemd1.Scope",
        _ => return None,
    })
}
