#!/usr/bin/env bash
# Set up tpm2-pkcs11 on a software TPM (swtpm) and its tokens in a project-local folder.
#
#   bash tpm/setup.sh [--dir DIR] [--reset] [--stop] [--quiet]
#
# 1. installs what is missing (Debian/Ubuntu: apt-get install swtpm libtpm2-pkcs11-1
#    libtpm2-pkcs11-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 dbus;
#    elsewhere it says what to install);
# 2. starts, unless they already run, three processes of its own, each with its pid in DIR/run:
#    swtpm on DIR/state (TCP on two free, adjacent ports of 127.0.0.1), a private D-Bus bus (DIR/run/bus)
#    and tpm2-abrmd on it, the TPM resource manager tpm2_ptool and the module need (swtpm
#    alone holds three objects at a time);
# 3. creates, only where they do not exist yet, tpm2-pkcs11's store in DIR/store and one token
#    per label below, each with random PINs kept in DIR/pins/LABEL.pin and LABEL.so-pin (mode 0600);
# 4. writes DIR/env: VAULT_PKCS11_MODULE (libtpm2_pkcs11.so), TPM2_PKCS11_STORE, TPM2_PKCS11_TCTI
#    and DBUS_SESSION_BUS_ADDRESS.
# (DIR defaults to .tpm/ at the project root, git-ignored.)
#
# Running it again changes nothing; --stop ends the three processes (the TPM and store stay);
# --reset first stops them and removes what it made in DIR (only inside the project folder).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
dir="$root/.tpm"
quiet=0
reset=0
stop=0
# shellcheck source=softhsm/common.sh
. "$root/softhsm/common.sh"
parse_options 20 "$@"

TOKENS="tpm-officer-1 tpm-officer-2 tpm-approver-1 tpm-approver-2 tpm-release"
PACKAGES="swtpm libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 dbus"


install_tpm() {
  command -v swtpm >/dev/null 2>&1 && command -v tpm2_ptool >/dev/null 2>&1 \
    && command -v tpm2-abrmd >/dev/null 2>&1 && command -v dbus-daemon >/dev/null 2>&1 \
    && find_lib libtpm2_pkcs11.so >/dev/null && find_lib libtss2-tcti-tabrmd.so.0 >/dev/null \
    && find_lib libtss2-tcti-swtpm.so.0 >/dev/null && return 0
  # shellcheck disable=SC2086
  apt_install "the software TPM" "install swtpm, tpm2-pkcs11 (library and tpm2_ptool), tpm2-tools, tpm2-abrmd and D-Bus with your package manager" $PACKAGES
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_processes() {  # only the processes this script started for DIR, by the pids it kept
  local name
  for name in abrmd dbus swtpm; do
    if alive "$dir/run/$name.pid"; then kill "$(cat "$dir/run/$name.pid")" 2>/dev/null || true; fi
    rm -f -- "$dir/run/$name.pid"
  done
}

reset_tokens() {
  local target
  target=$(reset_target) || exit 1
  [ -e "$target" ] || return 0
  [ -f "$target/store/tpm2_pkcs11.sqlite3" ] || [ -d "$target/run" ] || {
    echo "setup.sh: --reset: $target is not a token folder this script made (no store/tpm2_pkcs11.sqlite3); nothing removed" >&2
    exit 1
  }
  stop_processes
  rm -rf -- "$target/state" "$target/store" "$target/pins" "$target/run"
  rm -f -- "$target/env"
  say "removed the software TPM, its tokens and PIN files in $target"
}

free_ports() {  # a free TCP port of 127.0.0.1 whose next one is free too (swtpm's TCTI: control = port + 1)
  python3 -c '
import random, socket
for _ in range(200):
    port = random.randrange(20000, 60000, 2)
    try:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port)); b.bind(("127.0.0.1", port + 1))
    except OSError:
        continue
    print(port); break
else:
    raise SystemExit("setup.sh: no two free TCP ports next to each other for swtpm")'
}

wait_for() {  # wait_for WHAT COMMAND...: up to 10 s
  local i
  for i in $(seq 50); do "${@:2}" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "setup.sh: $1 did not start (see $dir/run/*.log)" >&2
  exit 1
}

start_processes() {
  local port ctrl
  export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/run/bus"
  export TPM2TOOLS_TCTI="tabrmd:bus_type=session"
  if alive "$dir/run/swtpm.pid" && alive "$dir/run/dbus.pid" && alive "$dir/run/abrmd.pid" \
     && tpm2_getcap properties-fixed >/dev/null 2>&1; then
    return 0
  fi
  stop_processes
  port=$(free_ports); ctrl=$((port + 1))
  swtpm socket --tpm2 --tpmstate "dir=$dir/state" --flags not-need-init,startup-clear \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$ctrl,bindaddr=127.0.0.1" \
    --pid "file=$dir/run/swtpm.pid" --log "file=$dir/run/swtpm.log" --daemon
  rm -f -- "$dir/run/bus"
  dbus-daemon --session --address="$DBUS_SESSION_BUS_ADDRESS" --nofork --nopidfile >"$dir/run/dbus.log" 2>&1 &
  echo $! > "$dir/run/dbus.pid"
  wait_for "D-Bus" test -S "$dir/run/bus"
  tpm2-abrmd --session --allow-root --tcti="swtpm:host=127.0.0.1,port=$port" >"$dir/run/abrmd.log" 2>&1 &
  echo $! > "$dir/run/abrmd.pid"
  wait_for "tpm2-abrmd" tpm2_getcap properties-fixed
  say "started swtpm (127.0.0.1:$port), D-Bus and tpm2-abrmd for $dir"
}

if [ "$stop" = 1 ]; then stop_processes; exit 0; fi
[ "$reset" = 1 ] && reset_tokens
PATH="$PATH:/usr/sbin"  # tpm2-abrmd
install_tpm
module=$(find_lib libtpm2_pkcs11.so) || { echo "tpm2-pkcs11 is installed but libtpm2_pkcs11.so was not found" >&2; exit 1; }

mkdir -p "$dir/state" "$dir/store" "$dir/pins" "$dir/run"
chmod 700 "$dir" "$dir/state" "$dir/store" "$dir/pins" "$dir/run"
dir=$(cd "$dir" && pwd)
start_processes

export TPM2_PKCS11_STORE="$dir/store" TPM2_PKCS11_TCTI="tabrmd:bus_type=session"
if [ ! -f "$dir/store/tpm2_pkcs11.sqlite3" ]; then
  tpm2_ptool init >/dev/null
fi
existing=$(tpm2_ptool listtokens --pid=1 2>/dev/null | sed -n 's/^ *label: //p')
for label in $TOKENS; do
  if ! grep -qx -- "$label" <<<"$existing"; then
    (umask 077; random_pin > "$dir/pins/$label.pin"; random_pin > "$dir/pins/$label.so-pin")
    tpm2_ptool addtoken --pid=1 --label="$label" --userpin="$(cat "$dir/pins/$label.pin")" \
      --sopin="$(cat "$dir/pins/$label.so-pin")" >/dev/null
    say "created token $label"
  fi
  [ -f "$dir/pins/$label.pin" ] || { echo "token '$label' exists but its PIN file $dir/pins/$label.pin is missing" >&2; exit 1; }
done

envfile="$dir/env"
new_env=$(printf 'export VAULT_PKCS11_MODULE=%q\nexport TPM2_PKCS11_STORE=%q\nexport TPM2_PKCS11_TCTI=%q\nexport DBUS_SESSION_BUS_ADDRESS=%q\nexport VAULT_PIN_DIR=%q\n' \
  "$module" "$dir/store" "tabrmd:bus_type=session" "unix:path=$dir/run/bus" "$dir/pins")
[ "$(cat "$envfile" 2>/dev/null)" = "$new_env" ] || printf '%s\n' "$new_env" > "$envfile"
say "tpm2-pkcs11 development tokens are in $dir/store (the TPM's state in $dir/state); to use them:"
[ "$quiet" = 1 ] || cat "$envfile"
