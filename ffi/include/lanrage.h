/* LANrage's C ABI: a member of a LANrage party, run in-process. See ffi/README.md. */

#ifndef LANRAGE_H
#define LANRAGE_H

/* Generated from ffi/src by cbindgen: do not edit. Regenerate with
 * LANRAGE_UPDATE_HEADER=1 cargo test -p lanrage-ffi --test header */

#include <stdint.h>

/**
 * What a call came to. Anything but `LANRAGE_RESULT_OK` leaves a message for
 * `lanrage_last_error`.
 */
typedef enum LanrageResult {
  LANRAGE_RESULT_OK = 0,
  /**
   * A pointer the call needs was null.
   */
  LANRAGE_RESULT_NULL_ARGUMENT = 1,
  /**
   * A string was not UTF-8, the configuration not valid JSON or not valid settings, or a
   * party code malformed.
   */
  LANRAGE_RESULT_INVALID_ARGUMENT = 2,
  /**
   * The daemon is not running (never started, stopped, or stopped through its local API).
   */
  LANRAGE_RESULT_NOT_RUNNING = 3,
  LANRAGE_RESULT_ALREADY_RUNNING = 4,
  /**
   * The daemon or the control server said no: a party code nobody holds, too many
   * attempts, already in a party, the server unreachable.
   */
  LANRAGE_RESULT_REFUSED = 5,
  /**
   * The daemon could not start: the interface (root or CAP_NET_ADMIN is needed), a port in
   * use, the data directory.
   */
  LANRAGE_RESULT_START_FAILED = 6,
  /**
   * Called from inside the event callback, where stopping the daemon or changing the
   * callback would wait on the callback itself.
   */
  LANRAGE_RESULT_WRONG_THREAD = 7,
  /**
   * A fault inside the library, caught; the message says what. The handle stays usable.
   */
  LANRAGE_RESULT_INTERNAL = 8,
} LanrageResult;

/**
 * A daemon, running or not. Opaque: made by `lanrage_daemon_new`, freed by
 * `lanrage_daemon_free`.
 */
typedef struct LanrageDaemon LanrageDaemon;

/**
 * The caller's function: the event as a JSON object (valid only during the call) and the
 * pointer it gave with the function.
 */
typedef void (*LanrageEventCallback)(const char *event_json, void *user_data);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The library's version, e.g. "0.1.0". A static string: not to be freed.
 */
const char *lanrage_version(void);

/**
 * What went wrong in the last call on this thread, in words: empty after a call that
 * succeeded. Owned by the library and valid until the next call on this thread.
 */
const char *lanrage_last_error(void);

/**
 * Makes a handle from a JSON configuration, checked now but used only on start:
 * `{"data_dir": "/var/lib/lanrage", "api": "off", "settings": {"interface": "lanrage0"}}`.
 * `data_dir` is required; `api` is `HOST:PORT`, `"off"`, or absent for the local API on
 * 127.0.0.1; `settings` overrides the settings database for this handle's runs (the keys of
 * `lanrage config list`). On success `*out` is the handle; on failure it is NULL.
 *
 * # Safety
 * `config_json` is NULL or a NUL-terminated string; `out` is NULL or points to writable
 * memory for a pointer.
 */
enum LanrageResult lanrage_daemon_new(const char *config_json, struct LanrageDaemon **out);

/**
 * Starts the daemon: its interface (root or CAP_NET_ADMIN), engine, control thread and, unless
 * configured off, local API. It carries on in the party it was in when it last stopped.
 * `LANRAGE_RESULT_ALREADY_RUNNING` if it runs.
 *
 * # Safety
 * `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed.
 */
enum LanrageResult lanrage_daemon_start(const struct LanrageDaemon *daemon);

/**
 * Stops the daemon and waits until it has (its interface, routes and port mapping gone; its
 * key, settings and party kept for the next start). The callback gets every event up to
 * `stopped` before this returns. `LANRAGE_RESULT_NOT_RUNNING` if it was not started or is
 * already stopped; `LANRAGE_RESULT_WRONG_THREAD` from inside the callback.
 *
 * # Safety
 * `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed.
 */
enum LanrageResult lanrage_daemon_stop(const struct LanrageDaemon *daemon);

/**
 * Stops the daemon if it runs and frees the handle. NULL is ignored. Must be the handle's
 * last call, and not made from inside the event callback (there it is refused, and the
 * handle stays).
 *
 * # Safety
 * `daemon` is NULL or a handle from `lanrage_daemon_new` not yet freed, that no other thread
 * is using.
 */
void lanrage_daemon_free(struct LanrageDaemon *daemon);

/**
 * Registers `callback`, called with each event as a JSON object, e.g.
 * `{"event":"peer_joined","peer":"…","name":"bob","virtual_ip":"10.66.0.3"}`; the kinds are
 * party_joined, party_left, peer_joined, peer_left, path_changed, path_lost, game_detected,
 * game_stopped and stopped. It runs on a thread of the library's, one event at a time; the
 * string is valid only during the call. NULL unregisters. Once this returns, the previous
 * callback is not running and will not be called again. `user_data` is passed along as is.
 *
 * # Safety
 * `daemon` is NULL or a live handle; `callback`, if not NULL, may be called from another
 * thread with `user_data` until it is replaced or the handle freed.
 */
enum LanrageResult lanrage_set_event_callback(const struct LanrageDaemon *daemon,
                                              LanrageEventCallback callback,
                                              void *user_data);

/**
 * The daemon's status as JSON (what `lanrage status --json` prints): interface, key,
 * party, members, paths, NAT, drops. `*json_out` is a string to free with
 * `lanrage_string_free`, or NULL on failure.
 *
 * # Safety
 * `daemon` is NULL or a live handle; `json_out` is NULL or writable.
 */
enum LanrageResult lanrage_status(const struct LanrageDaemon *daemon, char **json_out);

/**
 * The other members as a JSON array (what `lanrage peers --json` prints). As
 * `lanrage_status` for the rest.
 *
 * # Safety
 * As `lanrage_status`.
 */
enum LanrageResult lanrage_peers(const struct LanrageDaemon *daemon, char **json_out);

/**
 * Creates a party called `name` and joins it. `*json_out` is the party as JSON, its `code`
 * the one friends join with.
 *
 * # Safety
 * As `lanrage_status`; `name` is NULL or NUL-terminated.
 */
enum LanrageResult lanrage_party_create(const struct LanrageDaemon *daemon,
                                        const char *name,
                                        char **json_out);

/**
 * Joins the party whose code is `code` (`XXXX-XXXX-XXXX-XXXX`). `*json_out` is the party
 * as JSON.
 *
 * # Safety
 * As `lanrage_party_create`, with `code` for `name`.
 */
enum LanrageResult lanrage_party_join(const struct LanrageDaemon *daemon,
                                      const char *code,
                                      char **json_out);

/**
 * Leaves the party. `LANRAGE_RESULT_REFUSED` when in none.
 *
 * # Safety
 * `daemon` is NULL or a live handle.
 */
enum LanrageResult lanrage_party_leave(const struct LanrageDaemon *daemon);

/**
 * Frees a string the library returned. NULL is ignored.
 *
 * # Safety
 * `s` is NULL or a string from this library, not yet freed.
 */
void lanrage_string_free(char *s);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* LANRAGE_H */
