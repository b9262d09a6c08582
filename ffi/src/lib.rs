//! LANrage's C ABI: a member of a party run in-process by a GUI shell or another language.
//!
//! A handle (`LanrageDaemon`, opaque) is made from a JSON configuration, then started and
//! stopped, as often as wanted; party calls and status go to the running daemon, answers come
//! back as JSON strings the caller frees with `lanrage_string_free`, and events reach a
//! callback on a thread of the library's. Every call returns a `LanrageResult` and leaves a
//! message for `lanrage_last_error` on the calling thread; no panic crosses the boundary.
//! Handles may be used from any thread at once, except that `lanrage_daemon_free` must be
//! the last call on a handle. The header, `include/lanrage.h`, is generated from this file.

mod error;
mod events;

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use lanrage::daemon::{Daemon, DaemonConfig};

pub use error::LanrageResult;
use error::{Error, guard};
pub use events::LanrageEventCallback;
use events::{Callback, Registered, in_callback};

/// A daemon, running or not. Opaque: made by `lanrage_daemon_new`, freed by
/// `lanrage_daemon_free`.
pub struct LanrageDaemon {
    config: DaemonConfig,
    /// The running daemon. Calls read it; start and stop replace it.
    daemon: RwLock<Option<Daemon>>,
    /// Start and stop one at a time, with the event thread they start and end.
    lifecycle: Mutex<Option<JoinHandle<()>>>,
    callback: Registered,
}

// Handles are shared between the caller's threads: everything in one must be.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<LanrageDaemon>();
};

/// The library's version, e.g. "0.1.0". A static string: not to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn lanrage_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(version) => version,
            Err(_) => panic!("the version has a NUL in it"),
        };
    VERSION.as_ptr()
}

/// What went wrong in the last call on this thread, in words: empty after a call that
/// succeeded. Owned by the library and valid until the next call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn lanrage_last_error() -> *const c_char {
    error::last_error()
}

/// Makes a handle from a JSON configuration, checked now but used only on start:
/// `{"data_dir": "/var/lib/lanrage", "api": "off", "settings": {"interface": "lanrage0"}}`.
/// `data_dir` is required; `api` is `HOST:PORT`, `"off"`, or absent for the local API on
/// 127.0.0.1; `settings` overrides the settings database for this handle's runs (the keys of
/// `lanrage config list`). On success `*out` is the handle; on failure it is NULL.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out` is NULL or points to writable
/// memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_daemon_new(
    config_json: *const c_char,
    out: *mut *mut LanrageDaemon,
) -> LanrageResult {
    guard(|| {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: `out` is not null and points to writable memory (the caller's promise).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or NUL-terminated, as the caller promises.
        let text = unsafe { text(config_json, "config_json") }?;
        let config = DaemonConfig::from_json(text)
            .map_err(|e| Error::new(LanrageResult::InvalidArgument, format!("{e:#}")))?;
        let handle = Box::new(LanrageDaemon {
            config,
            daemon: RwLock::new(None),
            lifecycle: Mutex::new(None),
            callback: Arc::new(Mutex::new(None)),
        });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Starts the daemon: its interface (root or CAP_NET_ADMIN), engine, control thread and, unless
/// configured off, local API. It carries on in the party it was in when it last stopped.
/// `LANRAGE_RESULT_ALREADY_RUNNING` if it runs.
///
/// # Safety
/// `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_daemon_start(daemon: *const LanrageDaemon) -> LanrageResult {
    guard(|| {
        // SAFETY: NULL or a live handle, as the caller promises.
        let handle = unsafe { handle(daemon) }?;
        let mut events = handle
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if handle.read().as_ref().is_some_and(Daemon::is_running) {
            return Err(Error::new(
                LanrageResult::AlreadyRunning,
                "the daemon is already running",
            ));
        }
        // One that stopped through its local API is cleaned up first.
        handle.take_down(&mut events);
        let running = Daemon::start(&handle.config)
            .map_err(|e| Error::new(LanrageResult::StartFailed, format!("{e:#}")))?;
        *events = Some(
            events::spawn(running.events(), handle.callback.clone()).map_err(|e| {
                Error::new(
                    LanrageResult::StartFailed,
                    format!("cannot start the event thread: {e}"),
                )
            })?,
        );
        *handle
            .daemon
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(running);
        Ok(())
    })
}

/// Stops the daemon and waits until it has (its interface, routes and port mapping gone; its
/// key, settings and party kept for the next start). The callback gets every event up to
/// `stopped` before this returns. `LANRAGE_RESULT_NOT_RUNNING` if it was not started or is
/// already stopped; `LANRAGE_RESULT_WRONG_THREAD` from inside the callback.
///
/// # Safety
/// `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_daemon_stop(daemon: *const LanrageDaemon) -> LanrageResult {
    guard(|| {
        // SAFETY: NULL or a live handle, as the caller promises.
        let handle = unsafe { handle(daemon) }?;
        if in_callback() {
            return Err(Error::new(
                LanrageResult::WrongThread,
                "the daemon cannot be stopped from inside its event callback",
            ));
        }
        let mut events = handle
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if handle.take_down(&mut events) {
            Ok(())
        } else {
            Err(Error::new(
                LanrageResult::NotRunning,
                "the daemon is not running",
            ))
        }
    })
}

/// Stops the daemon if it runs and frees the handle. NULL is ignored. Must be the handle's
/// last call, and not made from inside the event callback (there it is refused, and the
/// handle stays).
///
/// # Safety
/// `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed, that no other thread
/// is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_daemon_free(daemon: *mut LanrageDaemon) {
    guard(|| {
        if daemon.is_null() {
            return Ok(());
        }
        if in_callback() {
            return Err(Error::new(
                LanrageResult::WrongThread,
                "the daemon cannot be freed from inside its event callback",
            ));
        }
        // SAFETY: a live handle from Box::into_raw, used by no one else (the caller's promise).
        let handle = unsafe { Box::from_raw(daemon) };
        let mut events = handle
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        handle.take_down(&mut events);
        Ok(())
    });
}

/// Registers `callback`, called with each event as a JSON object, e.g.
/// `{"event":"peer_joined","peer":"…","name":"bob","virtual_ip":"10.66.0.3"}`; the kinds are
/// party_joined, party_left, peer_joined, peer_left, path_changed, path_lost, game_detected,
/// game_stopped and stopped. It runs on a thread of the library's, one event at a time; the
/// string is valid only during the call. NULL unregisters. Once this returns, the previous
/// callback is not running and will not be called again. `user_data` is passed along as is.
///
/// # Safety
/// `daemon` is NULL or a live handle; `callback`, if not NULL, may be called from another
/// thread with `user_data` until it is replaced or the handle freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_set_event_callback(
    daemon: *const LanrageDaemon,
    callback: LanrageEventCallback,
    user_data: *mut c_void,
) -> LanrageResult {
    guard(|| {
        // SAFETY: NULL or a live handle, as the caller promises.
        let handle = unsafe { handle(daemon) }?;
        if in_callback() {
            return Err(Error::new(
                LanrageResult::WrongThread,
                "the callback cannot be changed from inside itself",
            ));
        }
        *handle
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Callback::new(callback, user_data);
        Ok(())
    })
}

/// The daemon's status as JSON (what `lanrage status --json` prints): interface, key,
/// party, members, paths, NAT, drops. `*json_out` is a string to free with
/// `lanrage_string_free`, or NULL on failure.
///
/// # Safety
/// `daemon` is NULL or a live handle; `json_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_status(
    daemon: *const LanrageDaemon,
    json_out: *mut *mut c_char,
) -> LanrageResult {
    // SAFETY: passed on with the caller's promises.
    unsafe { answer(daemon, json_out, |h| Ok(h.running(Daemon::status)??)) }
}

/// The other members as a JSON array (what `lanrage peers --json` prints). As
/// `lanrage_status` for the rest.
///
/// # Safety
/// As `lanrage_status`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_peers(
    daemon: *const LanrageDaemon,
    json_out: *mut *mut c_char,
) -> LanrageResult {
    // SAFETY: passed on with the caller's promises.
    unsafe { answer(daemon, json_out, |h| Ok(h.running(Daemon::peers)??)) }
}

/// Creates a party called `name` and joins it. `*json_out` is the party as JSON, its `code`
/// the one friends join with.
///
/// # Safety
/// As `lanrage_status`; `name` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_party_create(
    daemon: *const LanrageDaemon,
    name: *const c_char,
    json_out: *mut *mut c_char,
) -> LanrageResult {
    // SAFETY: passed on with the caller's promises.
    unsafe {
        answer(daemon, json_out, |h| {
            let name = text(name, "name")?;
            Ok(h.running(|d| d.create_party(name))??)
        })
    }
}

/// Joins the party whose code is `code` (`XXXX-XXXX-XXXX-XXXX`). `*json_out` is the party
/// as JSON.
///
/// # Safety
/// As `lanrage_party_create`, with `code` for `name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_party_join(
    daemon: *const LanrageDaemon,
    code: *const c_char,
    json_out: *mut *mut c_char,
) -> LanrageResult {
    // SAFETY: passed on with the caller's promises.
    unsafe {
        answer(daemon, json_out, |h| {
            let code = text(code, "code")?;
            Ok(h.running(|d| d.join_party(code))??)
        })
    }
}

/// Leaves the party. `LANRAGE_RESULT_REFUSED` when in none.
///
/// # Safety
/// `daemon` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_party_leave(daemon: *const LanrageDaemon) -> LanrageResult {
    guard(|| {
        // SAFETY: NULL or a live handle, as the caller promises.
        let handle = unsafe { handle(daemon) }?;
        Ok(handle.running(|d| d.leave_party())??)
    })
}

/// Frees a string the library returned. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lanrage_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in `answer` and not freed yet (the caller's
        // promise).
        drop(unsafe { CString::from_raw(s) });
    }
}

impl LanrageDaemon {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Daemon>> {
        self.daemon.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on the running daemon.
    fn running<T>(&self, call: impl FnOnce(&Daemon) -> T) -> Result<T, Error> {
        match &*self.read() {
            Some(daemon) => Ok(call(daemon)),
            None => Err(Error::new(
                LanrageResult::NotRunning,
                "the daemon is not running",
            )),
        }
    }

    /// Stops the daemon, if there is one, and waits for its event thread, which delivers its
    /// last events first. The caller holds the lifecycle lock (`events`). Whether there was one.
    fn take_down(&self, events: &mut Option<JoinHandle<()>>) -> bool {
        // Out of the lock first: the callback may be asking for the status meanwhile.
        let daemon = self
            .daemon
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let was = daemon.is_some();
        if let Some(daemon) = daemon {
            daemon.stop();
        }
        if let Some(thread) = events.take() {
            let _ = thread.join();
        }
        was
    }
}

/// The handle behind `daemon`.
///
/// # Safety
/// `daemon` is NULL or a live handle.
unsafe fn handle<'a>(daemon: *const LanrageDaemon) -> Result<&'a LanrageDaemon, Error> {
    // SAFETY: NULL or a live handle, as the caller promises.
    unsafe { daemon.as_ref() }.ok_or_else(|| Error::null("daemon"))
}

/// A caller's string, checked for UTF-8.
///
/// # Safety
/// `s` is NULL or NUL-terminated, and outlives the call.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Error> {
    if s.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: not null, NUL-terminated (the caller's promise).
    unsafe { CStr::from_ptr(s) }.to_str().map_err(|_| {
        Error::new(
            LanrageResult::InvalidArgument,
            format!("{what} is not UTF-8"),
        )
    })
}

/// A call that answers with JSON: `*json_out` is set to the answer, or NULL on failure.
///
/// # Safety
/// `daemon` is NULL or a live handle; `json_out` is NULL or writable.
unsafe fn answer<T: serde::Serialize>(
    daemon: *const LanrageDaemon,
    json_out: *mut *mut c_char,
    call: impl FnOnce(&LanrageDaemon) -> Result<T, Error>,
) -> LanrageResult {
    guard(|| {
        if json_out.is_null() {
            return Err(Error::null("json_out"));
        }
        // SAFETY: not null and writable (the caller's promise).
        unsafe { json_out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live handle, as the caller promises.
        let handle = unsafe { handle(daemon) }?;
        let json = serde_json::to_string(&call(handle)?).map_err(|e| {
            Error::new(
                LanrageResult::Internal,
                format!("cannot write the answer as JSON: {e}"),
            )
        })?;
        let json = CString::new(json)
            .map_err(|_| Error::new(LanrageResult::Internal, "an answer with a NUL in it"))?;
        // SAFETY: as above.
        unsafe { json_out.write(json.into_raw()) };
        Ok(())
    })
}
