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

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
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

/// A unit as `ListUnits` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
}

/// Every unit systemd has loaded, with its state, in one call (`ListUnits`).
pub(crate) async fn list_units(conn: &Connection) -> Result<Vec<Listed>, SystemdError> {
    type Row = (String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath);
    let reply = conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "ListUnits",
            &(),
        )
        .await
        .map_err(call_err("ListUnits"))?;
    let rows: Vec<Row> = reply.body().deserialize().map_err(call_err("ListUnits"))?;
    Ok(rows
        .into_iter()
        .map(|(unit, _, _, active_state, sub_state, ..)| Listed { unit, active_state, sub_state })
        .collect())
}

/// The state of one unit as systemd reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
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
    Connect { address: String, source: Box<zbus::Error> },
    #[error("systemd D-Bus call {call} failed: {source}")]
    Call { call: String, source: Box<zbus::Error> },
    #[error("systemd's property {name} cannot be read: {why}")]
    Property { name: String, why: String },
    #[error("systemd did not finish the {verb} job for {unit} within {secs} s")]
    JobTimeout { verb: &'static str, unit: String, secs: u64 },
}

pub(crate) fn call_err(call: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let call = call.into();
    move |source| SystemdError::Call { call, source: Box::new(source) }
}

/// What can be read about units: the read side of the host, implemented
/// by `Systemd` and by `act::Control`, and by a fake host in tests.
pub trait ReadUnits {
    /// Every unit whose `ActiveState` is `failed`, with its state.
    fn failed_units(&self) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send;
    /// The state of `unit`, or `None` when systemd has no such unit.
    fn unit_state(&self, unit: &UnitName) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send;
    /// Every unit systemd has loaded, with its active and sub state (one call).
    fn list_units(&self) -> impl Future<Output = Result<Vec<Listed>, SystemdError>> + Send;
}

impl ReadUnits for Systemd {
    fn failed_units(&self) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send {
        Systemd::failed_units(self)
    }
    fn unit_state(&self, unit: &UnitName) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send {
        Systemd::unit_state(self, unit)
    }
    fn list_units(&self) -> impl Future<Output = Result<Vec<Listed>, SystemdError>> + Send {
        list_units(&self.conn)
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

/// A connection of its own to `address` (the system bus when `None`), and
/// how to name that address in a message.
pub(crate) async fn connect(address: Option<&str>) -> Result<(Connection, String), SystemdError> {
    let shown = address.unwrap_or("the system bus").to_owned();
    let connect_err = |source| SystemdError::Connect { address: shown.clone(), source: Box::new(source) };
    let conn = match address {
        Some(a) => zbus::connection::Builder::address(a).map_err(connect_err)?.build().await,
        None => Connection::system().await,
    }
    .map_err(connect_err)?;
    Ok((conn, shown))
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
        let (conn, address) = connect(address).await?;
        Ok(Self { conn, address })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the bus closed this connection (dbus-daemon restarted, or
    /// went away): then it must be made again.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
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

    /// Reads `name`'s state at `path`: one `GetAll` of the unit's
    /// interface and one of its type's (a service's, or the one that
    /// carries `Result` for the other types).
    async fn read_state(&self, name: &str, path: OwnedObjectPath) -> Result<UnitState, SystemdError> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .and_then(|b| b.path(path))
            .map_err(call_err(format!("Properties proxy of {name}")))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(call_err(format!("Properties proxy of {name}")))?;
        let get_all = |iface: &'static str| {
            let props = &props;
            async move {
                let interface = zbus::names::InterfaceName::from_static_str_unchecked(iface);
                props
                    .get_all(interface)
                    .await
                    .map(Props)
                    .map_err(|e| call_err(format!("GetAll({iface}) of {name}"))(e.into()))
            }
        };
        let unit = get_all(UNIT_IFACE).await?;
        let id: String = unit.get("Id")?;
        let typed = match type_interface(&id) {
            Some(SERVICE_IFACE) => Some(get_all(SERVICE_IFACE).await?),
            // Another type's `Result` is only shown; a unit without it is still read.
            Some(iface) => get_all(iface).await.ok(),
            None => None,
        };
        state_of(id, &unit, typed.as_ref())
    }
}

const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

/// One interface's properties as `GetAll` or `PropertiesChanged` gives
/// them, read by name and type.
#[derive(Debug, Default)]
pub struct Props(pub(crate) HashMap<String, OwnedValue>);

impl Props {
    /// The property `name`, which must be there and of type `T`.
    pub fn get<T>(&self, name: &str) -> Result<T, SystemdError>
    where
        T: TryFrom<OwnedValue>,
        T::Error: Into<zbus::Error>,
    {
        self.maybe(name)?.ok_or_else(|| SystemdError::Property { name: name.into(), why: "missing".into() })
    }

    /// The property `name` if it is there; of type `T` if so.
    pub fn maybe<T>(&self, name: &str) -> Result<Option<T>, SystemdError>
    where
        T: TryFrom<OwnedValue>,
        T::Error: Into<zbus::Error>,
    {
        let Some(value) = self.0.get(name) else { return Ok(None) };
        let value = value.try_clone().map_err(|e| SystemdError::Property { name: name.into(), why: e.to_string() })?;
        T::try_from(value)
            .map(Some)
            .map_err(|e| SystemdError::Property { name: name.into(), why: e.into().to_string() })
    }
}

/// A unit's state from its properties: `unit` those of
/// `org.freedesktop.systemd1.Unit`, `typed` those of its type's interface.
fn state_of(id: String, unit: &Props, typed: Option<&Props>) -> Result<UnitState, SystemdError> {
    let service = typed.filter(|_| id.ends_with(".service"));
    let mut wanted_by: Vec<String> = unit.get("WantedBy")?;
    wanted_by.extend(unit.get::<Vec<String>>("RequiredBy")?);
    let job: (u32, OwnedObjectPath) = unit.get("Job")?;
    let invocation: Vec<u8> = unit.get("InvocationID")?;
    Ok(UnitState {
        names: unit.get("Names")?,
        description: unit.get("Description")?,
        load_state: unit.get("LoadState")?,
        active_state: unit.get("ActiveState")?,
        sub_state: unit.get("SubState")?,
        result: typed.map(|t| t.maybe("Result")).transpose()?.flatten(),
        n_restarts: service.map(|s| s.get("NRestarts")).transpose()?,
        exec_main_status: service.map(|s| s.get("ExecMainStatus")).transpose()?,
        inactive_enter_timestamp: timestamp(unit.get("InactiveEnterTimestamp")?),
        active_enter_timestamp: timestamp(unit.get("ActiveEnterTimestamp")?),
        invocation_id: invocation.iter().map(|b| format!("{b:02x}")).collect(),
        service_type: service.map(|s| s.get("Type")).transpose()?,
        remain_after_exit: service.map(|s| s.get("RemainAfterExit")).transpose()?.unwrap_or(false),
        wanted_by,
        triggered_by: unit.get("TriggeredBy")?,
        has_job: job.0 != 0,
        refuse_manual_stop: unit.get("RefuseManualStop")?,
        success_action: unit.get("SuccessAction")?,
        failure_action: unit.get("FailureAction")?,
        id,
    })
}

/// A systemd timestamp (microseconds since the epoch, 0 for never).
fn timestamp(usec: u64) -> Option<DateTime<Utc>> {
    (usec > 0).then(|| i64::try_from(usec).ok().and_then(DateTime::from_timestamp_micros)).flatten()
}

/// The interface of a unit's type that carries its `Result` (and, for a
/// service, its restarts, exit status and type).
fn type_interface(id: &str) -> Option<&'static str> {
    Some(match id.rsplit_once('.')?.1 {
        "service" => SERVICE_IFACE,
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
