# Shared by the token set-up scripts (softhsm/setup.sh, nss/setup.sh, tpm/setup.sh): sourced, never run.
# Each script sets $root (the project folder), $dir (its token folder) and $quiet before calling these.

say() { [ "$quiet" = 1 ] || echo "$@"; }

random_pin() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }

find_lib() {  # find_lib NAME: the first NAME in the usual library folders
  local d
  for d in /usr/lib/x86_64-linux-gnu/pkcs11 /usr/lib/aarch64-linux-gnu/pkcs11 /usr/lib/x86_64-linux-gnu \
           /usr/lib/aarch64-linux-gnu /usr/lib64/pkcs11 /usr/lib64 /usr/lib/pkcs11 /usr/lib /usr/local/lib; do
    [ -f "$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  return 1
}

# apt_install WHAT ELSEWHERE PACKAGE...: install Debian's PACKAGEs (as root, or through sudo), saying it is
# for WHAT; without apt-get, say ELSEWHERE (how to install them by hand) and stop.
apt_install() {
  local what=$1 elsewhere=$2
  shift 2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$what is missing: $elsewhere, then run this again" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "$what is missing and this user cannot install it: run 'apt-get install $*' as root" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing $what (apt-get install $*)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "$@" >/dev/null; }
}

# reset_target: $dir resolved, when it lies inside the project folder (--reset removes nothing elsewhere).
reset_target() {
  local project target
  project=$(cd "$root" && pwd -P)
  target=$(realpath -m -- "$dir")
  case "$target" in
    "$project"/?*) echo "$target" ;;
    *) echo "setup.sh: --reset removes development tokens only inside the project folder $project; '$dir' is not inside it" >&2; exit 1 ;;
  esac
}
