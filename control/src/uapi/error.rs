use std::fmt;

use super::types::Operation;

/// `errno.h` numbers used on the UAPI socket.
///
/// `wg` prints `strerror` of the number it receives, so these are the values of the platform
/// the daemon runs on. The set is wireguard-go's (`ipc/uapi_unix.go`): `EIO` for I/O failures,
/// `EPROTO` for malformed protocol text, `EINVAL` for bad keys and values, `EADDRINUSE` when the
/// listen port or fwmark cannot be applied. `EMSGSIZE` is ours, for requests over the size
/// limit. wireguard-go on Windows also uses the Linux numbers (`ipc/uapi_windows.go`).
pub mod errno {
    /// Input/output error.
    pub const EIO: i32 = 5;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    pub use self::sys::{EADDRINUSE, EMSGSIZE, EPROTO};

    #[cfg(not(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "openbsd",
        target_os = "netbsd"
    )))]
    mod sys {
        pub const EPROTO: i32 = 71;
        pub const EADDRINUSE: i32 = 98;
        pub const EMSGSIZE: i32 = 90;
    }

    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "openbsd",
        target_os = "netbsd"
    ))]
    mod sys {
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        pub const EPROTO: i32 = 100;
        #[cfg(any(target_os = "freebsd", target_os = "dragonfly"))]
        pub const EPROTO: i32 = 92;
        #[cfg(target_os = "openbsd")]
        pub const EPROTO: i32 = 95;
        #[cfg(target_os = "netbsd")]
        pub const EPROTO: i32 = 96;
        pub const EADDRINUSE: i32 = 48;
        pub const EMSGSIZE: i32 = 40;
    }
}

/// A failed request: the `errno` the client will see plus a message for our own logs.
///
/// Messages never contain key material; values quoted from the request are truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UapiError {
    errno: i32,
    operation: Option<Operation>,
    message: String,
}

impl UapiError {
    /// `errno` is a positive `errno.h` value (a negative one is taken as its magnitude). Zero
    /// would read as success on the wire, so it becomes `EIO`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        let errno = match errno.saturating_abs() {
            0 => errno::EIO,
            n => n,
        };
        Self {
            errno,
            operation: None,
            message: message.into(),
        }
    }

    /// A key or value the daemon does not accept (`EINVAL`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(errno::EINVAL, message)
    }

    /// Text that does not follow the protocol's structure (`EPROTO`).
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(errno::EPROTO, message)
    }

    /// The daemon failed while carrying out a valid request (`EIO`).
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(errno::EIO, message)
    }

    /// The listen port or fwmark could not be applied (`EADDRINUSE`, as wireguard-go).
    pub fn address_in_use(message: impl Into<String>) -> Self {
        Self::new(errno::EADDRINUSE, message)
    }

    /// Records which operation failed; [`format_errno`](super::format_errno) needs it because
    /// `wg` reads the sign of `errno` differently for `get` and `set`.
    #[must_use]
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    /// The positive `errno.h` value.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The operation this error answers, when known.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The number to put after `errno=`.
    ///
    /// `wg set` expects it negative (`ipc-uapi.h` returns it as is, negated errno convention)
    /// and wireguard-go always writes it negative, while `wg show` only accepts digits and
    /// negates it itself. So: positive for `get`, negative otherwise.
    pub fn wire_errno(&self) -> i32 {
        match self.operation {
            Some(Operation::Get) => self.errno,
            Some(Operation::Set) | None => -self.errno,
        }
    }

    /// What went wrong, for logs.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for UapiError {}
