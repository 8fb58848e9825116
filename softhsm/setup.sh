#!/usr/bin/env bash
# Set up SoftHSM2 and vault's development tokens in a project-local folder.
#
#   bash softhsm/setup.sh [--dir DIR] [--reset] [--quiet]
#
# 1. installs SoftHSM2 when it is missing (Debian/Ubuntu: apt-get; elsewhere
#    it says what to install);
# 2. creates, only where they do not exist yet, the development tokens in
#    DIR/tokens (default: .softhsm/ at the project root, git-ignored), each
#    with a random user PIN and SO PIN kept in DIR/pins/ (mode 0600);
# 3. writes DIR/env and prints the SOFTHSM2_CONF and VAULT_PKCS11_MODULE to use.
#
# Running it again changes nothing. It never touches the system token folder.
# --reset first removes DIR's tokens, PIN files, softhsm2.conf and env (after a
# ceremony changed a token's PINs, say), then makes them all again; it refuses
# a DIR outside the project folder or one this script did not make.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
dir="$root/.softhsm"
quiet=0
reset=0
# shellcheck source=softhsm/common.sh
. "$here/common.sh"
parse_options 16 "$@"

TOKENS="vault-root vault-release vault-officer-1 vault-officer-2 vault-officer-3 vault-approver-1 vault-approver-2 vault-approver-3 vault-station-1 vault-station-2 vault-auditor vault-backend"

install_softhsm() {
  command -v softhsm2-util >/dev/null 2>&1 && return 0
  apt_install SoftHSM2 "install it with your package manager (Fedora: dnf install softhsm; macOS: brew install softhsm; Arch: pacman -S softhsm)" softhsm2
}

find_module() {
  local m
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
           /usr/local/lib/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && { echo "$m"; return 0; }
  done
  echo "SoftHSM2 is installed but libsofthsm2.so was not found" >&2
  exit 1
}

# --reset: remove only what this script made, only inside the project folder.
reset_tokens() {
  local target
  target=$(reset_target) || exit 1
  [ -e "$target" ] || return 0
  local made=""
  [ -f "$target/softhsm2.conf" ] && made=$(sed -n 's/^directories\.tokendir = //p' "$target/softhsm2.conf" | head -n1)
  if [ -z "$made" ] || [ "$(realpath -m -- "$made")" != "$target/tokens" ]; then
    echo "setup.sh: --reset: $target is not a token folder this script made (no softhsm2.conf naming $target/tokens); nothing removed" >&2
    exit 1
  fi
  rm -rf -- "$target/tokens" "$target/pins"
  rm -f -- "$target/softhsm2.conf" "$target/env"
  say "removed the development tokens and PIN files in $target"
}

[ "$reset" = 1 ] && reset_tokens
install_softhsm
module=$(find_module)

mkdir -p "$dir/tokens" "$dir/pins"
chmod 700 "$dir" "$dir/tokens" "$dir/pins"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
new_conf=$(sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.in")
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$conf"
fi
export SOFTHSM2_CONF="$conf"

existing=$(softhsm2-util --show-slots 2>/dev/null | awk '/^ *Label:/ {print $2}')
for label in $TOKENS; do
  if printf '%s\n' "$existing" | grep -qx -- "$label"; then
    [ -f "$dir/pins/$label.pin" ] || { echo "token '$label' exists but its PIN file $dir/pins/$label.pin is missing" >&2; exit 1; }
    continue
  fi
  (umask 077; random_pin > "$dir/pins/$label.pin"; random_pin > "$dir/pins/$label.so-pin")
  softhsm2-util --init-token --free --label "$label" \
    --pin "$(cat "$dir/pins/$label.pin")" --so-pin "$(cat "$dir/pins/$label.so-pin")" >/dev/null
  say "created token $label"
done

envfile="$dir/env"
new_env=$(printf 'export SOFTHSM2_CONF=%q\nexport VAULT_PKCS11_MODULE=%q\nexport VAULT_PIN_DIR=%q\n' "$conf" "$module" "$dir/pins")
if [ ! -f "$envfile" ] || [ "$(cat "$envfile")" != "$new_env" ]; then
  printf '%s\n' "$new_env" > "$envfile"
fi
say "SoftHSM2 development tokens are in $dir/tokens; to use them:"
[ "$quiet" = 1 ] || cat "$envfile"
