#!/usr/bin/env bash
# Set up NSS softoken (the second PKCS#11 module vault is tested on) and its tokens in a project-local folder.
#
#   bash nss/setup.sh [--dir DIR] [--reset] [--quiet]
#
# 1. installs what is missing (Debian/Ubuntu: apt-get install libnss3 libnss3-tools;
#    elsewhere it says what to install);
# 2. creates, only where they do not exist yet, one NSS database per token in
#    DIR/db/LABEL (default DIR: .nss/ at the project root, git-ignored), each with
#    a random PIN kept in DIR/pins/LABEL.pin (mode 0600);
# 3. writes p11-kit's configuration for them in DIR/p11-kit (NSS softoken needs its
#    database folders at C_Initialize: p11-kit's proxy passes them, x-init-reserved),
#    and DIR/env with VAULT_PKCS11_MODULE (the proxy) and VAULT_P11KIT_CONFIG.
#
# NSS has no security officer: there are no SO PIN files. Running it again changes
# nothing; --reset first removes what it made in DIR (only inside the project folder).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
dir="$root/.nss"
quiet=0
reset=0
# shellcheck source=softhsm/common.sh
. "$root/softhsm/common.sh"
parse_options 17 "$@"

TOKENS="nss-root nss-release nss-officer-1 nss-officer-2 nss-officer-3 nss-approver-1 nss-approver-2 nss-approver-3 nss-station-1 nss-station-2 nss-auditor"

install_nss() {
  command -v certutil >/dev/null 2>&1 && find_lib libsoftokn3.so >/dev/null && find_lib libp11-kit.so.0 >/dev/null && return 0
  apt_install NSS "install NSS's libraries and tools and p11-kit with your package manager (Fedora: dnf install nss nss-tools p11-kit)" \
    libnss3 libnss3-tools libp11-kit0
}

reset_tokens() {
  local target
  target=$(reset_target) || exit 1
  [ -e "$target" ] || return 0
  [ -f "$target/p11-kit/modules/vault-nss.module" ] || {
    echo "setup.sh: --reset: $target is not a token folder this script made (no p11-kit/modules/vault-nss.module); nothing removed" >&2
    exit 1
  }
  rm -rf -- "$target/db" "$target/pins" "$target/p11-kit"
  rm -f -- "$target/env"
  say "removed the NSS development tokens and PIN files in $target"
}

[ "$reset" = 1 ] && reset_tokens
install_nss
softokn=$(find_lib libsoftokn3.so) || { echo "NSS is installed but libsoftokn3.so was not found" >&2; exit 1; }
proxy=$(find_lib p11-kit-proxy.so || find_lib libp11-kit.so.0) || { echo "p11-kit's proxy module was not found" >&2; exit 1; }

mkdir -p "$dir/db" "$dir/pins" "$dir/p11-kit/modules"
chmod 700 "$dir" "$dir/db" "$dir/pins"
dir=$(cd "$dir" && pwd)

# NSS's main database (no keys of vault's) and one database per token.
[ -f "$dir/db/main/cert9.db" ] || { mkdir -p "$dir/db/main"; certutil -N -d "sql:$dir/db/main" --empty-password; }
slots=""
slot=4  # NSS numbers the slots it opens for extra databases from 4
for label in $TOKENS; do
  db="$dir/db/$label"
  if [ ! -f "$db/key4.db" ]; then
    mkdir -p "$db"
    (umask 077; random_pin > "$dir/pins/$label.pin")
    certutil -N -d "sql:$db" -f "$dir/pins/$label.pin"
    say "created token $label"
  fi
  [ -f "$dir/pins/$label.pin" ] || { echo "token '$label' exists but its PIN file $dir/pins/$label.pin is missing" >&2; exit 1; }
  slots="$slots $(printf '0x%x' "$slot")=[configdir='sql:$db' tokenDescription='$label' slotDescription='vault $label']"
  slot=$((slot + 1))
done

# p11-kit reads only this folder (vault's VAULT_P11KIT_CONFIG; see docs/adr/0009-second-module.md).
new_conf=$'# written by nss/setup.sh\nuser-config: none'
new_module="# written by nss/setup.sh: NSS softoken with one database per vault development token
module: $softokn
x-init-reserved: configdir='sql:$dir/db/main' certPrefix='' keyPrefix='' secmod='secmod.db' flags=noModDB tokens=<${slots# }>"
[ "$(cat "$dir/p11-kit/pkcs11.conf" 2>/dev/null)" = "$new_conf" ] || printf '%s\n' "$new_conf" > "$dir/p11-kit/pkcs11.conf"
[ "$(cat "$dir/p11-kit/modules/vault-nss.module" 2>/dev/null)" = "$new_module" ] \
  || printf '%s\n' "$new_module" > "$dir/p11-kit/modules/vault-nss.module"

envfile="$dir/env"
new_env=$(printf 'export VAULT_PKCS11_MODULE=%q\nexport VAULT_P11KIT_CONFIG=%q\nexport VAULT_PIN_DIR=%q\n' "$proxy" "$dir/p11-kit" "$dir/pins")
[ "$(cat "$envfile" 2>/dev/null)" = "$new_env" ] || printf '%s\n' "$new_env" > "$envfile"
say "NSS development tokens are in $dir/db; to use them:"
[ "$quiet" = 1 ] || cat "$envfile"
