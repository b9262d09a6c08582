//! Result codes and the calling thread's last error message: every call sets both, and no
//! panic crosses into the caller's code (it is caught and reported as `Internal`).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use lanrage::daemon::Refused;

/// What a call came to. Anything but `LANRAGE_RESULT_OK` leaves a message for
/// `lanrage_last_error`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanrageResult {
    Ok = 0,
    /// A pointer the call needs was null.
    NullArgument = 1,
    /// A string was not UTF-8, the configuration not valid JSON or not valid settings, or a
    /// party code malformed.
    InvalidArgument = 2,
    /// The daemon is not running (never started, stopped, or stopped through its local API).
    NotRunning = 3,
    AlreadyRunning = 4,
    /// The daemon or the control server said no: a party code nobody holds, too many
    /// attempts, already in a party, the server unreachable.
    Refused = 5,
    /// The daemon could not start: the interface (root or CAP_NET_ADMIN is needed), a port in
    /// use, the data directory.
    StartFailed = 6,
    /// Called from inside the event callback, where stopping the daemon or changing the
    /// callback would wait on the callback itself.
    WrongThread = 7,
    /// A fault inside the library, caught; the message says what. The handle stays usable.
    Internal = 8,
}

/// A failed call: its code and message.
#[derive(Debug)]
pub struct Error {
    pub code: LanrageResult,
    pub message: String,
}

impl Error {
    pub fn new(code: LanrageResult, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn null(what: &str) -> Error {
        Error::new(LanrageResult::NullArgument, format!("{what} is null"))
    }
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Error {
        let code = match refused.status {
            400 | 422 => LanrageResult::InvalidArgument,
            503 => LanrageResult::NotRunning,
            _ => LanrageResult::Refused,
        };
        Error::new(code, refused.message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with a NUL in it (from a name someone chose) is cut there, not lost.
    let cut = message.split('\0').next().unwrap_or_default();
    let text = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// This thread's last error message: empty after a call that succeeded. Valid until the next
/// call on this thread.
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Runs one call of the ABI: its result code, with the message kept for this thread, and a
/// panic turned into `Internal`.
pub fn guard(call: impl FnOnce() -> Result<(), Error>) -> LanrageResult {
    let outcome = catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(Error::new(
            LanrageResult::Internal,
            format!("internal error (a bug in LANrage, please report it): {what}"),
        ))
    });
    match outcome {
        Ok(()) => {
            set_last_error("");
            LanrageResult::Ok
        }
        Err(e) => {
            set_last_error(&e.message);
            e.code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: last_error points at this thread's message, alive until the next call.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_error_code_and_message() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, LanrageResult::Internal);
        assert!(last().contains("boom"), "{}", last());
        assert_eq!(guard(|| Ok(())), LanrageResult::Ok);
        assert_eq!(last(), "");
    }

    #[test]
    fn a_message_with_a_nul_is_cut_there() {
        let code = guard(|| Err(Error::new(LanrageResult::Refused, "party bo\0b")));
        assert_eq!(code, LanrageResult::Refused);
        assert_eq!(last(), "party bo");
    }

    #[test]
    fn refusals_map_to_codes_by_status() {
        let refused = |status| {
            Error::from(Refused {
                status,
                message: String::new(),
            })
            .code
        };
        assert_eq!(refused(400), LanrageResult::InvalidArgument);
        assert_eq!(refused(503), LanrageResult::NotRunning);
        assert_eq!(refused(404), LanrageResult::Refused);
        assert_eq!(refused(409), LanrageResult::Refused);
    }
}
