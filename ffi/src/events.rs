//! The event callback: a thread per running daemon that hands each event, as JSON, to the
//! function the caller registered.

use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Mutex, PoisonError};

use lanrage::daemon::DaemonEvent;

/// The caller's function: the event as a JSON object (valid only during the call) and the
/// pointer it gave with the function.
pub type LanrageEventCallback =
    Option<unsafe extern "C" fn(event_json: *const c_char, user_data: *mut c_void)>;

/// A registered callback and its pointer.
#[derive(Clone, Copy)]
pub struct Callback {
    function: unsafe extern "C" fn(*const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the caller registers `user_data` knowing it is passed to the callback on the
// library's event thread (the header says so); the library itself never dereferences it.
unsafe impl Send for Callback {}

impl Callback {
    pub fn new(function: LanrageEventCallback, user_data: *mut c_void) -> Option<Callback> {
        function.map(|function| Callback {
            function,
            user_data,
        })
    }
}

/// The callback now registered, shared with the event thread. Held while the callback runs,
/// so that once a new one is registered the old one is no longer running.
pub type Registered = Arc<Mutex<Option<Callback>>>;

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the event callback.
pub fn in_callback() -> bool {
    IN_CALLBACK.with(Cell::get)
}

/// Calls the registered callback with each event until the daemon stops (its last event is
/// `stopped`).
pub fn spawn(
    events: crossbeam_channel::Receiver<DaemonEvent>,
    registered: Registered,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lanrage-events".into())
        .spawn(move || {
            IN_CALLBACK.with(|c| c.set(true));
            for event in events.iter() {
                let Ok(json) = serde_json::to_string(&event) else {
                    continue;
                };
                // serde_json escapes NUL in strings, so this holds for every event.
                let Ok(json) = CString::new(json) else {
                    continue;
                };
                let callback = registered.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(callback) = *callback {
                    // SAFETY: the function and pointer are the caller's, registered for this;
                    // the string lives until the call returns, as the header promises.
                    unsafe { (callback.function)(json.as_ptr(), callback.user_data) };
                }
            }
        })
}
