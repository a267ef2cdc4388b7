# Shared by the test scripts: starting a sessiond binary on a free port and cleaning up.
# Source it, then: start_sessiond NAME BINARY [ARGS...]; port="$(port_of NAME)".
# Processes started this way are stopped, and the work directory removed, on exit.

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts sessiond (its log in $work/NAME.log) on a free loopback port, in this shell so that
# the cleanup sees its PID.
start_sessiond() {
  local name="$1" binary="$2"; shift 2
  SESSIOND_LOG_FORMAT=json "$binary" --listen 127.0.0.1:0 "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}

# Prints the port a started sessiond listens on, once it says so.
port_of() {
  for _ in $(seq 1 100); do
    local port
    port="$(grep -o '"port":[0-9]*' "$work/$1.log" | head -n1 | cut -d: -f2 || true)"
    if [ -n "$port" ]; then echo "$port"; return; fi
    sleep 0.1
  done
  echo "sessiond ($1) did not start:" >&2; cat "$work/$1.log" >&2; exit 1
}

# Runs apt-get as root, or through sudo.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  $sudo apt-get install -y "$@"
}
