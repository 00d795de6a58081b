"""The defaults of the master side, written once: the config, tryserver, ``tryssh serve``,
the consumer and ``tryssh doctor`` all read them from here."""

MAX_JOB_SIZE = 64 * 1024 * 1024  # bytes: a job larger than this is refused (exit 65)
MAX_REQUEST_TIME = 86400  # seconds a stuck client may hold a tmp/ file (qmail's alarm)

# Below the jobdir, unless the config says otherwise.
STATE_DIR = "state"  # the job records
LOG_DIR = "logs"  # the build logs
AUDIT_LOG = "audit.log"  # one line per request

SERVE_HOST = "127.0.0.1"
SERVE_PORT = 2222
SERVE_LISTEN = f"{SERVE_HOST}:{SERVE_PORT}"
# In the state dir, in a 0700 directory of its own: the state dir is group-writable, and
# whoever can write the key's directory can swap the key (tryssh serve checks).
SERVE_HOST_KEY = "serve/ssh_host_ed25519_key"

POLL_INTERVAL = 1.0  # seconds between listings of new/ where inotify is missing
MAX_PARALLEL = 16  # jobs one consumer processes at once
