/* A party member driven only through LANrage's C ABI, for ffi/tests/c_api.rs.
 *
 *   member misuse                           every misuse case; exits 0 if each is refused
 *                                           with the right code and a message
 *   member run DATA_DIR IFNAME NAME [CODE]  starts a daemon, creates a party (or joins CODE),
 *                                           prints what happens, and stops when stdin closes
 *
 * `run` prints lines the test reads: "code XXXX-...", "virtual_ip A.B.C.D", "event {json}",
 * "stopped". Any failed check prints "FAIL ..." and exits 1.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lanrage.h"

static int failures;

static void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("FAIL ", stdout);
    vfprintf(stdout, fmt, args);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(args);
    failures++;
}

/* `got` must be `want`, and a failure must leave a message (a success an empty one). */
static void expect(const char *what, LanrageResult got, LanrageResult want) {
    const char *message = lanrage_last_error();
    if (got != want) {
        fail("%s: result %d, expected %d (%s)", what, (int)got, (int)want, message);
    } else if (want != LANRAGE_RESULT_OK && (message == NULL || message[0] == '\0')) {
        fail("%s: failed without a message", what);
    } else if (want == LANRAGE_RESULT_OK && message[0] != '\0') {
        fail("%s: succeeded with a message: %s", what, message);
    } else {
        printf("ok %s%s%s\n", what, want == LANRAGE_RESULT_OK ? "" : ": ", message);
    }
}

static int misuse(void) {
    LanrageDaemon *daemon = (LanrageDaemon *)1;
    char *json = (char *)1;

    if (lanrage_version() == NULL || lanrage_version()[0] == '\0') fail("no version");
    expect("new with a NULL configuration", lanrage_daemon_new(NULL, &daemon), LANRAGE_RESULT_NULL_ARGUMENT);
    if (daemon != NULL) fail("a failed new left *out set");
    expect("new with NULL out", lanrage_daemon_new("{\"data_dir\": \"/tmp\"}", NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("new with bad JSON", lanrage_daemon_new("{\"data_dir\": ", &daemon), LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new without data_dir", lanrage_daemon_new("{}", &daemon), LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new with an unknown field", lanrage_daemon_new("{\"data_dir\": \"/tmp\", \"colour\": 1}", &daemon),
           LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new with an unknown setting",
           lanrage_daemon_new("{\"data_dir\": \"/tmp\", \"settings\": {\"warp_drive\": true}}", &daemon),
           LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new with a bad setting value",
           lanrage_daemon_new("{\"data_dir\": \"/tmp\", \"settings\": {\"listen_port\": \"many\"}}", &daemon),
           LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new with a bad API address", lanrage_daemon_new("{\"data_dir\": \"/tmp\", \"api\": \"nowhere\"}", &daemon),
           LANRAGE_RESULT_INVALID_ARGUMENT);
    expect("new with invalid UTF-8", lanrage_daemon_new("{\"data_dir\": \"\xff\"}", &daemon),
           LANRAGE_RESULT_INVALID_ARGUMENT);
    if (daemon != NULL) fail("a failed new left *out set");

    expect("start a NULL handle", lanrage_daemon_start(NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("stop a NULL handle", lanrage_daemon_stop(NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("status of a NULL handle", lanrage_status(NULL, &json), LANRAGE_RESULT_NULL_ARGUMENT);
    if (json != NULL) fail("a failed status left *json_out set");
    expect("join on a NULL handle", lanrage_party_join(NULL, "ABCD", &json), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("leave on a NULL handle", lanrage_party_leave(NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("callback on a NULL handle", lanrage_set_event_callback(NULL, NULL, NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    lanrage_daemon_free(NULL);
    lanrage_string_free(NULL);

    expect("new", lanrage_daemon_new("{\"data_dir\": \"/nonexistent/lanrage\", \"api\": \"off\"}", &daemon),
           LANRAGE_RESULT_OK);
    if (daemon == NULL) {
        fail("new succeeded without a handle");
        return 1;
    }
    expect("status before start", lanrage_status(daemon, &json), LANRAGE_RESULT_NOT_RUNNING);
    expect("peers before start", lanrage_peers(daemon, &json), LANRAGE_RESULT_NOT_RUNNING);
    expect("create before start", lanrage_party_create(daemon, "party", &json), LANRAGE_RESULT_NOT_RUNNING);
    expect("leave before start", lanrage_party_leave(daemon), LANRAGE_RESULT_NOT_RUNNING);
    expect("status with NULL out", lanrage_status(daemon, NULL), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("join with a NULL code", lanrage_party_join(daemon, NULL, &json), LANRAGE_RESULT_NULL_ARGUMENT);
    expect("stop before start", lanrage_daemon_stop(daemon), LANRAGE_RESULT_NOT_RUNNING);
    expect("unregister a callback never set", lanrage_set_event_callback(daemon, NULL, NULL), LANRAGE_RESULT_OK);
    lanrage_daemon_free(daemon);

    /* A data directory that cannot be made: start fails, says why, and can be retried. */
    daemon = NULL;
    expect("new", lanrage_daemon_new("{\"data_dir\": \"/dev/null/lanrage\", \"api\": \"off\"}", &daemon),
           LANRAGE_RESULT_OK);
    expect("start with an unusable data directory", lanrage_daemon_start(daemon), LANRAGE_RESULT_START_FAILED);
    expect("start it again", lanrage_daemon_start(daemon), LANRAGE_RESULT_START_FAILED);
    expect("stop what never started", lanrage_daemon_stop(daemon), LANRAGE_RESULT_NOT_RUNNING);
    lanrage_daemon_free(daemon);
    return failures == 0 ? 0 : 1;
}

/* ---------------------------------------------------------------------------------------- */

static LanrageDaemon *member;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int peers_joined;
static int callback_checked;

static void on_event(const char *event_json, void *user_data) {
    if (user_data != &peers_joined) fail("the callback got another user_data");
    pthread_mutex_lock(&lock);
    printf("event %s\n", event_json);
    fflush(stdout);
    if (strstr(event_json, "\"event\":\"peer_joined\"") != NULL) peers_joined++;
    pthread_mutex_unlock(&lock);
    /* From inside the callback: status works, stopping is refused. Checked once. */
    if (!callback_checked && strstr(event_json, "\"event\":\"stopped\"") == NULL) {
        char *json = NULL;
        callback_checked = 1;
        expect("status from the callback", lanrage_status(member, &json), LANRAGE_RESULT_OK);
        lanrage_string_free(json);
        expect("stop from the callback", lanrage_daemon_stop(member), LANRAGE_RESULT_WRONG_THREAD);
        expect("new callback from the callback", lanrage_set_event_callback(member, NULL, NULL),
               LANRAGE_RESULT_WRONG_THREAD);
    }
}

static volatile int polling = 1;
static int polls;

/* Another thread asks for the status all along, while the main thread starts, joins and stops. */
static void *poll_status(void *unused) {
    (void)unused;
    while (polling) {
        char *json = NULL;
        if (lanrage_status(member, &json) == LANRAGE_RESULT_OK) {
            if (json == NULL || strstr(json, "\"interface\"") == NULL) fail("status without an interface");
            polls++;
        }
        lanrage_string_free(json);
        usleep(20000);
    }
    return NULL;
}

/* The value of "key":"..." in json, copied into out. */
static int field(const char *json, const char *key, char *out, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = strstr(json, pattern);
    if (start == NULL) return 0;
    start += strlen(pattern);
    const char *end = strchr(start, '"');
    if (end == NULL || (size_t)(end - start) >= size) return 0;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = '\0';
    return 1;
}

static int run(const char *data_dir, const char *ifname, const char *name, const char *code) {
    char config[1024], value[128];
    char *json = NULL;
    pthread_t poller;

    snprintf(config, sizeof config,
             "{\"data_dir\": \"%s\", \"settings\": {\"interface\": \"%s\", \"name\": \"%s\", \"threads\": 1,"
             " \"stun_servers\": [], \"port_mapping\": false, \"game_detection\": false}}",
             data_dir, ifname, name);
    expect("new", lanrage_daemon_new(config, &member), LANRAGE_RESULT_OK);
    if (member == NULL) return 1;
    expect("set the callback", lanrage_set_event_callback(member, on_event, &peers_joined), LANRAGE_RESULT_OK);
    if (pthread_create(&poller, NULL, poll_status, NULL) != 0) fail("no poller thread");
    expect("start", lanrage_daemon_start(member), LANRAGE_RESULT_OK);
    expect("start again", lanrage_daemon_start(member), LANRAGE_RESULT_ALREADY_RUNNING);

    if (code == NULL) {
        expect("create", lanrage_party_create(member, "ffi party", &json), LANRAGE_RESULT_OK);
        if (json != NULL && field(json, "code", value, sizeof value)) printf("code %s\n", value);
        else fail("no code in %s", json ? json : "(null)");
    } else {
        expect("join a malformed code", lanrage_party_join(member, "not a code", &json),
               LANRAGE_RESULT_INVALID_ARGUMENT);
        expect("join", lanrage_party_join(member, code, &json), LANRAGE_RESULT_OK);
    }
    lanrage_string_free(json);
    json = NULL;
    expect("status", lanrage_status(member, &json), LANRAGE_RESULT_OK);
    if (json != NULL && field(json, "virtual_ip", value, sizeof value)) printf("virtual_ip %s\n", value);
    else fail("no virtual_ip in %s", json ? json : "(null)");
    lanrage_string_free(json);
    fflush(stdout);

    /* Up until the test closes stdin. */
    char line[256];
    while (fgets(line, sizeof line, stdin) != NULL) {
    }

    json = NULL;
    expect("peers", lanrage_peers(member, &json), LANRAGE_RESULT_OK);
    if (json == NULL || json[0] != '[') fail("peers is not a JSON array: %s", json ? json : "(null)");
    lanrage_string_free(json);
    pthread_mutex_lock(&lock);
    int joined = peers_joined;
    pthread_mutex_unlock(&lock);
    if (joined < 1) fail("no peer_joined event");
    expect("leave", lanrage_party_leave(member), LANRAGE_RESULT_OK);
    expect("leave again", lanrage_party_leave(member), LANRAGE_RESULT_REFUSED);
    expect("stop", lanrage_daemon_stop(member), LANRAGE_RESULT_OK);
    expect("stop again", lanrage_daemon_stop(member), LANRAGE_RESULT_NOT_RUNNING);
    /* A handle starts again after a stop: same key, new interface, in no party now. */
    expect("restart", lanrage_daemon_start(member), LANRAGE_RESULT_OK);
    json = NULL;
    expect("status after the restart", lanrage_status(member, &json), LANRAGE_RESULT_OK);
    if (json == NULL || strstr(json, "\"party\":null") == NULL) fail("in a party after leaving: %s", json ? json : "(null)");
    lanrage_string_free(json);
    expect("stop after the restart", lanrage_daemon_stop(member), LANRAGE_RESULT_OK);
    polling = 0;
    pthread_join(poller, NULL);
    if (polls == 0) fail("the poller never got a status");
    printf("polls %d\n", polls);
    lanrage_daemon_free(member);
    printf("stopped\n");
    return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && strcmp(argv[1], "misuse") == 0) return misuse();
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "run") == 0)
        return run(argv[2], argv[3], argv[4], argc == 6 ? argv[5] : NULL);
    fprintf(stderr, "usage: member misuse | member run DATA_DIR IFNAME NAME [CODE]\n");
    return 2;
}
