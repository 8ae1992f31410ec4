"""What every Python client check shares: the case the runner hands over (connection string,
port, trust setup), a deadline, and failures that name the case. Never prints the string:
it holds the password."""

import os
import sys
import threading


def _required(name):
    value = os.environ.get(name)
    if not value:
        print(f"FAIL: {name} is not set (run through scripts/lib/clients.sh)", file=sys.stderr)
        sys.exit(2)
    return value


URL = _required("BERTH_CLIENT_URL")
CASE = _required("BERTH_CLIENT_CASE")
PORT = _required("BERTH_CLIENT_PORT")  # "direct" or "pooled"
DEADLINE_SECONDS = int(os.environ.get("BERTH_CLIENT_DEADLINE_SECONDS", "60"))


def fail(message):
    print(f"FAIL {CASE}: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def check(condition, what):
    if not condition:
        fail(what)


def equal(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {expected!r}, got {actual!r}")


def run(main):
    """Runs main(), failing the case on an exception or when the deadline passes. The
    deadline is a thread, not SIGALRM: a Python signal handler waits for a blocking libpq
    call to return, a thread runs while that call has released the GIL."""
    deadline = threading.Timer(
        DEADLINE_SECONDS, fail, [f"no result within {DEADLINE_SECONDS} s (deadline)"]
    )
    deadline.daemon = True
    deadline.start()
    try:
        main()
    except Exception as e:  # noqa: BLE001 - every failure must name the case
        fail(f"{type(e).__name__}: {e}".strip())
    deadline.cancel()
    sys.exit(0)
