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

# parse_options HELP_LAST_LINE ARGS...: the set-up scripts' options, into the caller's variables:
# --dir DIR (dir), --quiet (quiet=1), --reset (reset=1), --stop (stop=1, only where the caller set
# stop=0), -h/--help (prints the calling script's header comment, lines 2..HELP_LAST_LINE).
parse_options() {
  local help_end=$1 script=${BASH_SOURCE[1]}
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      --quiet) quiet=1; shift ;;
      --reset) reset=1; shift ;;
      --stop) [ -n "${stop+set}" ] || { echo "setup.sh: unknown option '$1' (try --help)" >&2; exit 2; }; stop=1; shift ;;
      -h|--help) sed -n "2,${help_end}p" "$script" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "setup.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
  done
  [ -n "$dir" ] || { echo "setup.sh: --dir needs a folder" >&2; exit 2; }
}
